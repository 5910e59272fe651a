using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

/// <summary>The routes of the admin HTTP API; docs/admin-api.md describes them for clients.</summary>
public static partial class AdminApi
{
    public const string Prefix = "/api/v1";

    public static void MapAdminApi(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGet("/healthz", () => TypedResults.Ok(new HealthStatus("ok")));

        var api = endpoints.MapGroup(Prefix);
        api.MapGet("/node", GetNode);
        api.MapGet("/volumes", ListVolumes);
        api.MapPost("/volumes", CreateVolumeAsync);
        api.MapGet("/volumes/{name}", GetVolume);
        api.MapPost("/volumes/{name}/resize", ResizeVolumeAsync);
        api.MapPost("/volumes/{name}/settings", SetVolumeSettingsAsync);
        api.MapDelete("/volumes/{name}", DeleteVolumeAsync);

        // Snapshots are named NAME@TAG and addressed like volumes; the router sees the path
        // already percent-decoded, so /volumes/disk0@v1 and /volumes/disk0%40v1 are the same.
        api.MapPost("/volumes/{name}/snapshots", SnapshotVolumeAsync);
        api.MapPost("/volumes/{name}/clone", CloneSnapshotAsync);
        api.MapPost("/volumes/{name}/rollback", RollbackVolumeAsync);
        api.MapPost("/volumes/{name}/flatten", FlattenVolumeAsync);
        api.MapGet("/jobs/{id}", GetJob);
        MapBitmaps(api);
        MapBackups(api);

        MapCluster(api);
        MapRecovery(api);
    }

    private static Ok<NodeInfo> GetNode(NodeStatus node, VolumeManager volumes, NodeVolumes local)
    {
        var layers = volumes.List();
        var snapshots = layers.Count(v => v.IsSnapshot);
        return TypedResults.Ok(new NodeInfo(
            NodeStatus.Version,
            node.DataDirectory,
            new NodeListeners(node.NbdListeners, node.AdminListeners),
            local.LocalStore?.UsedBytes ?? volumes.UsedBytes,
            local.LocalStore?.JournalSyncCount ?? 0,
            local.LocalStore?.FlushRequestCount ?? 0,
            volumes.CopyOnWriteBytes,
            layers.Count - snapshots,
            snapshots,
            node.Started,
            (long)node.Uptime.TotalSeconds)
        {
            Space = local.LocalStore is { } store ? NodeSpace.From(store.Space) : null,
            TokenFile = node.TokenFile,
        });
    }

    private static Ok<IReadOnlyList<VolumeInfo>> ListVolumes(VolumeManager volumes)
        => TypedResults.Ok(volumes.List());

    private static async Task<Created<VolumeInfo>> CreateVolumeAsync(HttpRequest request, VolumeManager volumes, IServiceProvider services, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadCreateVolumeAsync(request, cancellationToken);
        // A volume nobody could write to helps nobody: say why now, not at the first write.
        if ((services.GetService(typeof(ClusterRuntime)) as ClusterRuntime)?.Store.View.PlacementError is { } placement)
        {
            throw new AdminRequestException(placement, StatusCodes.Status409Conflict);
        }

        var info = await volumes.CreateAsync(body.Name, body.Size, body.ObjectSize);
        return TypedResults.Created(VolumeUri(info.Name), info);
    }

    private static Ok<VolumeInfo> GetVolume(string name, VolumeManager volumes, IServiceProvider services)
    {
        VolumeInfo info = volumes.Get(name);
        // The cache is this node's: what it holds of the volume (all of it when this node serves it).
        return TypedResults.Ok(services.GetService(typeof(ClusterRuntime)) is ClusterRuntime { Cache: { } cache } && !info.IsSnapshot
            ? info with { CacheStats = cache.StatsOf(info.Id) }
            : info);
    }

    private static async Task<Ok<VolumeInfo>> ResizeVolumeAsync(string name, HttpRequest request, VolumeManager volumes, IServiceProvider services, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadResizeVolumeAsync(request, cancellationToken);
        await using var held = await LockForChangeAsync(services, volumes, name);
        return TypedResults.Ok(await volumes.ResizeAsync(name, body.Size, body.AllowShrink));
    }

    private static async Task<Ok<VolumeInfo>> SetVolumeSettingsAsync(string name, HttpRequest request, VolumeManager volumes, ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadVolumeSettingsAsync(request, cancellationToken);
        // Alone, a node acknowledges a write once its own journal has it: that is the local
        // disk's speed already, which is all a cache log would give.
        if (body.Cache == CacheMode.Writeback && !membership.IsClustered)
        {
            throw new AdminRequestException(
                "cache=writeback is for cluster gateways: a single node's journal already acknowledges writes at local-disk speed",
                StatusCodes.Status409Conflict);
        }

        await using var held = await LockForChangeAsync(services, volumes, name);
        return TypedResults.Ok(await volumes.SetCacheAsync(name, body.Cache));
    }

    private static async Task<NoContent> DeleteVolumeAsync(string name, VolumeManager volumes, IServiceProvider services)
    {
        await using (await LockForChangeAsync(services, volumes, name))
        {
            await volumes.DeleteAsync(name);
        }

        return TypedResults.NoContent();
    }

    private static async Task<Created<VolumeInfo>> SnapshotVolumeAsync(string name, HttpRequest request, VolumeManager volumes, IServiceProvider services, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadSnapshotAsync(request, cancellationToken);
        await using var held = await LockForChangeAsync(services, volumes, name);
        var info = await volumes.SnapshotAsync(name, body.Tag);
        return TypedResults.Created(VolumeUri(info.Name), info);
    }

    private static async Task<Created<VolumeInfo>> CloneSnapshotAsync(string name, HttpRequest request, VolumeManager volumes, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadCloneAsync(request, cancellationToken);
        var info = await volumes.CloneAsync(name, body.Name);
        return TypedResults.Created(VolumeUri(info.Name), info);
    }

    private static async Task<Ok<VolumeInfo>> RollbackVolumeAsync(string name, HttpRequest request, VolumeManager volumes, IServiceProvider services, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadRollbackAsync(request, cancellationToken);
        await using var held = await LockForChangeAsync(services, volumes, name);
        return TypedResults.Ok(await volumes.RollbackAsync(name, body.Tag));
    }

    // Flatten copies up to the whole volume: it runs as a job, and the answer says where to poll.
    private static async Task<Accepted<JobAccepted>> FlattenVolumeAsync(string name, VolumeManager volumes, JobRegistry jobs, IServiceProvider services)
    {
        // 404 or 409 now rather than a job that fails at once; the lock is held until the job ends.
        var held = await LockForChangeAsync(services, volumes, name);
        var job = jobs.Start("flatten", name, async progress =>
        {
            await using (held)
            {
                return await volumes.FlattenAsync(name, progress);
            }
        });
        return TypedResults.Accepted($"{Prefix}/jobs/{job.Id}", new JobAccepted(job.Id));
    }

    private static Ok<JobInfo> GetJob(string id, JobRegistry jobs)
        => TypedResults.Ok(jobs.Get(id) ?? throw new AdminRequestException(
            $"job '{id}' not found (jobs are kept in memory: the node forgets them when it restarts, and finished ones after {JobRegistry.MaxFinishedJobs} more)",
            StatusCodes.Status404NotFound));

    // '@' may stand unescaped in a path segment (RFC 3986 pchar): /volumes/disk0@v1 reads better.
    private static string VolumeUri(string name) => $"{Prefix}/volumes/{Uri.EscapeDataString(name).Replace("%40", "@", StringComparison.Ordinal)}";
}
