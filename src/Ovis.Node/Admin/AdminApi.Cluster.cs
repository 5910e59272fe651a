using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Ovis.Cluster.Catalog;
using Ovis.Nbd;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

public static partial class AdminApi
{
    public const string NotClustered = "this node is not in a cluster (start it with --cluster)";

    /// <summary>
    /// In a cluster, the node that changes a volume's data or layers must be the one writing it:
    /// a snapshot, rollback, resize, delete or flatten takes (or shares) the volume's lock, and is
    /// refused with 409 naming the holder while another node serves the volume. Null on an
    /// embedded node. The volume is looked up first, so a missing one is still a 404.
    /// </summary>
    private static async Task<IAsyncDisposable?> LockForChangeAsync(IServiceProvider services, VolumeManager volumes, string name)
    {
        volumes.Get(name);
        if (services.GetService(typeof(VolumeLocks)) is not VolumeLocks locks)
        {
            return null;
        }

        int at = name.IndexOf('@', StringComparison.Ordinal);
        try
        {
            return await locks.AcquireAsync(at < 0 ? name : name[..at]);
        }
        catch (ExportUnavailableException ex)
        {
            throw new AdminRequestException(ex.Message, StatusCodes.Status409Conflict);
        }
    }

    private static void MapCluster(RouteGroupBuilder api)
    {
        api.MapGet("/cluster", GetClusterAsync);
        api.MapGet("/nodes", ListNodesAsync);
        api.MapPost("/volumes/{name}/check", CheckVolumeAsync);
    }

    private static async Task<Ok<ClusterInfo>> GetClusterAsync(ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
    {
        var format = membership.Format ?? throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        var view = await membership.ReadMembershipAsync(cancellationToken);
        var runtime = services.GetService(typeof(ClusterRuntime)) as ClusterRuntime;
        return TypedResults.Ok(new ClusterInfo(format.Name, format.Copies, format.EffectiveMinCopies, view.Epoch, format.FormattedAt,
            await MembersAsync(membership, view, runtime, cancellationToken), runtime?.Store.View.PlacementError));
    }

    private static async Task<Ok<IReadOnlyList<MemberInfo>>> ListNodesAsync(ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
    {
        if (!membership.IsClustered)
        {
            throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        }

        var view = await membership.ReadMembershipAsync(cancellationToken);
        return TypedResults.Ok(await MembersAsync(membership, view, services.GetService(typeof(ClusterRuntime)) as ClusterRuntime, cancellationToken));
    }

    /// <summary>
    /// Compares the copies of every object of one layer, one object at a time. With
    /// <paramref name="repair"/>, a copy that differs is rewritten from a current one: that needs
    /// the volume quiet — this node takes its lock and refuses while a client has it open — or a
    /// write racing the rewrite could be undone on that copy.
    /// </summary>
    private static async Task<Ok<CheckReport>> CheckVolumeAsync(string name, bool? repair, VolumeManager volumes, IServiceProvider services, CancellationToken cancellationToken)
    {
        var runtime = services.GetService(typeof(ClusterRuntime)) as ClusterRuntime
            ?? throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        var volume = volumes.Get(name);
        await using var held = repair == true ? await LockForChangeAsync(services, volumes, name) : null;
        if (repair == true && volumes.Get(name).Connections > 0)
        {
            throw new AdminRequestException($"volume {name} is open by an NBD client: close it before repairing its copies", StatusCodes.Status409Conflict);
        }

        long objects = (volume.Size + volume.ObjectSize - 1) / volume.ObjectSize;
        var differences = new List<CheckDifference>();
        var repaired = new List<CheckDifference>();
        for (long i = 0; i < objects; i++)
        {
            var id = new Ovis.Store.ObjectId(volume.Id, (uint)i);
            var found = await runtime.Store.CheckObjectAsync(id, volume.ObjectSize, cancellationToken);
            differences.AddRange(found.Select(d => new CheckDifference(id.ToString(), d.Node, d.Reason)));
            var bad = found.Where(d => !d.Reason.StartsWith("down", StringComparison.Ordinal)).Select(d => d.Node).ToList();
            if (repair == true && bad.Count > 0)
            {
                foreach (var node in await runtime.Store.RepairObjectAsync(id, volume.ObjectSize, bad, cancellationToken))
                {
                    repaired.Add(new CheckDifference(id.ToString(), node, "rewritten from a current copy"));
                }
            }
        }

        return TypedResults.Ok(new CheckReport(volume.Name, objects, differences, repaired));
    }

    /// <summary>Every node that ever joined, up or down, with the space and objects each reports (asked in parallel),
    /// and for a down one since when, and how long until it is taken out.</summary>
    private static async Task<IReadOnlyList<MemberInfo>> MembersAsync(ClusterMembership membership, MembershipView view, ClusterRuntime? runtime,
        CancellationToken cancellationToken)
    {
        var live = view.Nodes.Select(n => n.Id).ToHashSet(StringComparer.Ordinal);
        var members = view.Members.Count > 0 ? view.Members : view.Nodes;
        var stats = await Task.WhenAll(members.Select(async m =>
            live.Contains(m.Id) && runtime is not null ? await runtime.StatsAsync(m.Id) : null));
        var downSince = members.Count > live.Count
            ? await membership.Catalog!.ReadDownSinceAsync(cancellationToken)
            : new Dictionary<string, DateTimeOffset>();
        return [.. members.Select((m, i) =>
        {
            DateTimeOffset? since = !live.Contains(m.Id) && downSince.TryGetValue(m.Id, out var at) ? at : null;
            return new MemberInfo(m.Id, m.Address, m.Zone, live.Contains(m.Id) ? "up" : "down",
                view.Stale.Contains(m.Id, StringComparer.Ordinal), stats[i]?.UsedBytes, stats[i]?.ObjectCount)
            {
                DownSince = since,
                OutIn = since is { } s ? runtime?.DownOut?.SecondsUntilOut(view, m.Id, s) : null,
            };
        })];
    }
}
