using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Ovis.Cluster.Catalog;
using Ovis.Nbd;
using Ovis.Node.Metrics;
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
    private static Task<IAsyncDisposable?> LockForChangeAsync(IServiceProvider services, VolumeManager volumes, string name)
        => LockForChangeAsync(services.GetService(typeof(VolumeLocks)) as VolumeLocks, volumes, name);

    /// <summary>As above, with the node's locks looked up already (a job runs after its request's services are gone).</summary>
    private static async Task<IAsyncDisposable?> LockForChangeAsync(VolumeLocks? locks, VolumeManager volumes, string name)
    {
        volumes.Get(name);
        if (locks is null)
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
        api.MapDelete("/nodes/{id}", RemoveNodeAsync);
        api.MapPost("/nodes/{id}/drain", StartDrainAsync);
        api.MapDelete("/nodes/{id}/drain", CancelDrainAsync);
        api.MapPost("/volumes/{name}/check", CheckVolumeAsync);
    }

    private static async Task<Ok<ClusterInfo>> GetClusterAsync(ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
    {
        var format = membership.Format ?? throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        var view = await membership.ReadMembershipAsync(cancellationToken);
        var runtime = services.GetService(typeof(ClusterRuntime)) as ClusterRuntime;
        return TypedResults.Ok(new ClusterInfo(format.Name, format.Copies, format.EffectiveMinCopies, view.Epoch, format.FormattedAt,
            await MembersAsync(membership, view, runtime, services.GetService(typeof(PeerRoundTrips)) as PeerRoundTrips, cancellationToken), runtime?.Store.View.PlacementError));
    }

    private static async Task<Ok<IReadOnlyList<MemberInfo>>> ListNodesAsync(ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
    {
        if (!membership.IsClustered)
        {
            throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        }

        var view = await membership.ReadMembershipAsync(cancellationToken);
        return TypedResults.Ok(await MembersAsync(membership, view, services.GetService(typeof(ClusterRuntime)) as ClusterRuntime,
            services.GetService(typeof(PeerRoundTrips)) as PeerRoundTrips, cancellationToken));
    }

    /// <summary>
    /// Takes a down member out of the cluster now, rather than after the down-out interval (an
    /// operator who knows the node is gone for good: a dead disk, a machine returned): its objects
    /// are placed on the others and recovery copies them there. Refused while the node is up — a
    /// live node holds the only copy of what it wrote since the last view, and taking it out would
    /// lose redundancy for no reason; stop it first — and when the others would span too few zones.
    /// </summary>
    private static async Task<Ok<IReadOnlyList<MemberInfo>>> RemoveNodeAsync(string id, ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
    {
        var catalog = membership.Catalog ?? throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        var view = await membership.ReadMembershipAsync(cancellationToken);
        if (!view.Members.Any(m => m.Id == id))
        {
            throw new AdminRequestException($"node '{id}' is not a member of cluster '{catalog.Cluster}'", StatusCodes.Status404NotFound);
        }

        if (view.Nodes.Any(n => n.Id == id))
        {
            // A drained node too: taking out is the down-out transaction, which holds only for a node
            // that is not live (docs/operations.md, "Draining and removing a node").
            throw new AdminRequestException(view.Draining.Contains(id, StringComparer.Ordinal)
                ? $"node '{id}' is up: stop it first (only a down node can be removed; once drained, stopping it costs no copy)"
                : $"node '{id}' is up: stop it first (only a down node can be removed)", StatusCodes.Status409Conflict);
        }

        if (EtcdCatalog.WhyNotTakeOut(membership.Format!, view, id) is { } why)
        {
            throw new AdminRequestException($"node '{id}' cannot be removed: {why}", StatusCodes.Status409Conflict);
        }

        // The down record first: taking out is a transaction on it, as the down-out monitor's is.
        await catalog.MarkDownAsync(id, cancellationToken);
        if (!await catalog.TakeOutAsync(id, DateTimeOffset.MaxValue, cancellationToken))
        {
            throw new AdminRequestException($"node '{id}' was not removed: it came back up, or another node took it out first", StatusCodes.Status409Conflict);
        }

        var after = await membership.ReadMembershipAsync(cancellationToken);
        return TypedResults.Ok(await MembersAsync(membership, after, services.GetService(typeof(ClusterRuntime)) as ClusterRuntime,
            services.GetService(typeof(PeerRoundTrips)) as PeerRoundTrips, cancellationToken));
    }

    /// <summary>
    /// Starts (or, with <paramref name="draining"/> false, cancels) the drain of a member: placement
    /// stops naming it, and recovery copies each of its objects to the node that takes its place
    /// while it keeps serving as a source; <c>GET /nodes</c> shows it <c>draining</c>, then
    /// <c>drained</c>. Refused (409) when the members left to hold copies would span fewer zones
    /// than the copies. Doing it twice changes nothing.
    /// </summary>
    private static Task<Ok<IReadOnlyList<MemberInfo>>> StartDrainAsync(string id, ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
        => DrainNodeAsync(id, draining: true, membership, services, cancellationToken);

    private static Task<Ok<IReadOnlyList<MemberInfo>>> CancelDrainAsync(string id, ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
        => DrainNodeAsync(id, draining: false, membership, services, cancellationToken);

    private static async Task<Ok<IReadOnlyList<MemberInfo>>> DrainNodeAsync(string id, bool draining, ClusterMembership membership, IServiceProvider services,
        CancellationToken cancellationToken)
    {
        var catalog = membership.Catalog ?? throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        var view = await membership.ReadMembershipAsync(cancellationToken);
        // Looked up before the catalog validates the id: a malformed one is just no member.
        if (!view.Members.Any(m => m.Id == id))
        {
            throw new AdminRequestException($"node '{id}' is not a member of cluster '{catalog.Cluster}'", StatusCodes.Status404NotFound);
        }

        try
        {
            await catalog.SetDrainingAsync(id, draining, cancellationToken);
        }
        catch (CatalogException ex)
        {
            throw new AdminRequestException(ex.Message, StatusCodes.Status409Conflict);
        }

        // This node's own view follows at once, so the list it answers shows the change.
        if (services.GetService(typeof(ClusterRuntime)) is ClusterRuntime runtime)
        {
            await runtime.RefreshAsync(0);
        }

        var after = await membership.ReadMembershipAsync(cancellationToken);
        return TypedResults.Ok(await MembersAsync(membership, after, services.GetService(typeof(ClusterRuntime)) as ClusterRuntime,
            services.GetService(typeof(PeerRoundTrips)) as PeerRoundTrips, cancellationToken));
    }

    /// <summary>
    /// Compares the copies of every object of a volume and the snapshots it reads through, one
    /// object at a time. With <paramref name="repair"/>, this node takes (or shares) the volume's
    /// lock and a copy that differs is rewritten from a current one by the volume's recovery, which
    /// takes the object from client requests meanwhile — so a volume in use can be repaired.
    /// </summary>
    private static async Task<Ok<CheckReport>> CheckVolumeAsync(string name, bool? repair, VolumeManager volumes, IServiceProvider services, CancellationToken cancellationToken)
    {
        var runtime = services.GetService(typeof(ClusterRuntime)) as ClusterRuntime
            ?? throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        var volume = volumes.Get(name);
        await using var held = repair == true ? await LockForChangeAsync(services, volumes, name) : null;
        var maintenance = repair == true ? runtime.Recovery?.Find(name) : null;
        if (repair == true && maintenance is null)
        {
            throw new AdminRequestException($"volume {name}: its recovery is not running on this node yet; try again in a moment", StatusCodes.Status503ServiceUnavailable);
        }

        if (!volumes.TryGetLayout(name, out uint[] chain, out long size, out long objectSize))
        {
            throw new AdminRequestException($"volume '{name}' not found", StatusCodes.Status404NotFound);
        }
        var layout = new Ovis.Cluster.Recovery.VolumeLayout(chain, size, objectSize);
        var differences = new List<CheckDifference>();
        var repaired = new List<CheckDifference>();
        long objects = 0;
        foreach (var id in layout.Objects())
        {
            objects++;
            var found = await runtime.Store.CheckObjectAsync(id, objectSize, cancellationToken);
            differences.AddRange(found.Select(d => new CheckDifference(id.ToString(), d.Node, d.Reason)));
            var bad = found.Where(d => !d.Reason.StartsWith("down", StringComparison.Ordinal)).Select(d => d.Node).ToList();
            if (maintenance is not null && bad.Count > 0
                && await maintenance.ScrubAsync(id, cancellationToken) != Ovis.Cluster.Recovery.ReconcileResult.Failed)
            {
                repaired.AddRange(bad.Select(node => new CheckDifference(id.ToString(), node, "rewritten from a current copy")));
            }
        }

        return TypedResults.Ok(new CheckReport(volume.Name, objects, differences, repaired));
    }

    /// <summary>Every node that ever joined, up or down, with the space and objects each reports (asked in parallel),
    /// and for a down one since when, and how long until it is taken out.</summary>
    private static async Task<IReadOnlyList<MemberInfo>> MembersAsync(ClusterMembership membership, MembershipView view, ClusterRuntime? runtime,
        PeerRoundTrips? roundTrips, CancellationToken cancellationToken)
    {
        var live = view.Nodes.Select(n => n.Id).ToHashSet(StringComparer.Ordinal);
        var members = view.Members.Count > 0 ? view.Members : view.Nodes;
        var stats = await Task.WhenAll(members.Select(async m =>
            live.Contains(m.Id) && runtime is not null ? await runtime.StatsAsync(m.Id) : null));
        var downSince = members.Count > live.Count
            ? await membership.Catalog!.ReadDownSinceAsync(cancellationToken)
            : new Dictionary<string, DateTimeOffset>();
        var drained = new HashSet<string>(StringComparer.Ordinal);
        foreach (string id in view.Draining)
        {
            if (runtime is not null && await runtime.DrainedAsync(id, cancellationToken))
            {
                drained.Add(id);
            }
        }

        return [.. members.Select((m, i) =>
        {
            DateTimeOffset? since = !live.Contains(m.Id) && downSince.TryGetValue(m.Id, out var at) ? at : null;
            return new MemberInfo(m.Id, m.Address, m.Zone, live.Contains(m.Id) ? "up" : "down",
                view.Stale.Contains(m.Id, StringComparer.Ordinal), stats[i]?.UsedBytes, stats[i]?.ObjectCount)
            {
                Space = stats[i]?.Space is { } space ? NodeSpace.From(space) : null,
                DownSince = since,
                OutIn = since is { } s ? runtime?.DownOut?.SecondsUntilOut(view, m.Id, s) : null,
                RoundTripMs = roundTrips?.LastMilliseconds(m.Id),
                Peer = m.Peer,
                Drain = drained.Contains(m.Id) ? "drained" : view.Draining.Contains(m.Id, StringComparer.Ordinal) ? "draining" : null,
            };
        })];
    }
}
