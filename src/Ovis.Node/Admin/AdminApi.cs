using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

/// <summary>The routes of the admin HTTP API; docs/admin-api.md describes them for clients.</summary>
public static class AdminApi
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
        api.MapDelete("/volumes/{name}", DeleteVolumeAsync);

        // Snapshots are named NAME@TAG and addressed like volumes; the router sees the path
        // already percent-decoded, so /volumes/disk0@v1 and /volumes/disk0%40v1 are the same.
        api.MapPost("/volumes/{name}/snapshots", SnapshotVolumeAsync);
        api.MapPost("/volumes/{name}/clone", CloneSnapshotAsync);
        api.MapPost("/volumes/{name}/rollback", RollbackVolumeAsync);
        api.MapPost("/volumes/{name}/flatten", FlattenVolume);
        api.MapGet("/jobs/{id}", GetJob);

        api.MapGet("/cluster", GetClusterAsync);
        api.MapGet("/nodes", ListNodesAsync);
    }

    public const string NotClustered = "this node is not in a cluster (start it with --cluster)";

    private static async Task<Ok<ClusterInfo>> GetClusterAsync(ClusterMembership membership, CancellationToken cancellationToken)
    {
        var format = membership.Format ?? throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        var view = await membership.ReadMembershipAsync(cancellationToken);
        return TypedResults.Ok(new ClusterInfo(format.Name, format.Copies, view.Epoch, format.FormattedAt, Members(view)));
    }

    private static async Task<Ok<IReadOnlyList<MemberInfo>>> ListNodesAsync(ClusterMembership membership, CancellationToken cancellationToken)
    {
        if (!membership.IsClustered)
        {
            throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict);
        }

        return TypedResults.Ok(Members(await membership.ReadMembershipAsync(cancellationToken)));
    }

    // Only live members are listed (a dead node's key goes with its lease), so every one is up.
    private static IReadOnlyList<MemberInfo> Members(Ovis.Cluster.Catalog.MembershipView view)
        => [.. view.Nodes.Select(n => new MemberInfo(n.Id, n.Address, n.Zone, "up"))];

    private static Ok<NodeInfo> GetNode(NodeStatus node, VolumeManager volumes)
    {
        var layers = volumes.List();
        var snapshots = layers.Count(v => v.IsSnapshot);
        return TypedResults.Ok(new NodeInfo(
            NodeStatus.Version,
            node.DataDirectory,
            new NodeListeners(node.NbdListeners, node.AdminListeners),
            volumes.UsedBytes,
            volumes.CopyOnWriteBytes,
            layers.Count - snapshots,
            snapshots,
            node.Started,
            (long)node.Uptime.TotalSeconds));
    }

    private static Ok<IReadOnlyList<VolumeInfo>> ListVolumes(VolumeManager volumes)
        => TypedResults.Ok(volumes.List());

    private static async Task<Created<VolumeInfo>> CreateVolumeAsync(HttpRequest request, VolumeManager volumes, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadCreateVolumeAsync(request, cancellationToken);
        var info = await volumes.CreateAsync(body.Name, body.Size, body.ObjectSize);
        return TypedResults.Created(VolumeUri(info.Name), info);
    }

    private static Ok<VolumeInfo> GetVolume(string name, VolumeManager volumes)
        => TypedResults.Ok(volumes.Get(name));

    private static async Task<Ok<VolumeInfo>> ResizeVolumeAsync(string name, HttpRequest request, VolumeManager volumes, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadResizeVolumeAsync(request, cancellationToken);
        return TypedResults.Ok(await volumes.ResizeAsync(name, body.Size, body.AllowShrink));
    }

    private static async Task<NoContent> DeleteVolumeAsync(string name, VolumeManager volumes)
    {
        await volumes.DeleteAsync(name);
        return TypedResults.NoContent();
    }

    private static async Task<Created<VolumeInfo>> SnapshotVolumeAsync(string name, HttpRequest request, VolumeManager volumes, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadSnapshotAsync(request, cancellationToken);
        var info = await volumes.SnapshotAsync(name, body.Tag);
        return TypedResults.Created(VolumeUri(info.Name), info);
    }

    private static async Task<Created<VolumeInfo>> CloneSnapshotAsync(string name, HttpRequest request, VolumeManager volumes, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadCloneAsync(request, cancellationToken);
        var info = await volumes.CloneAsync(name, body.Name);
        return TypedResults.Created(VolumeUri(info.Name), info);
    }

    private static async Task<Ok<VolumeInfo>> RollbackVolumeAsync(string name, HttpRequest request, VolumeManager volumes, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadRollbackAsync(request, cancellationToken);
        return TypedResults.Ok(await volumes.RollbackAsync(name, body.Tag));
    }

    // Flatten copies up to the whole volume: it runs as a job, and the answer says where to poll.
    private static Accepted<JobAccepted> FlattenVolume(string name, VolumeManager volumes, JobRegistry jobs)
    {
        volumes.Get(name); // 404 now rather than a job that fails at once
        var job = jobs.Start("flatten", name, progress => volumes.FlattenAsync(name, progress));
        return TypedResults.Accepted($"{Prefix}/jobs/{job.Id}", new JobAccepted(job.Id));
    }

    private static Ok<JobInfo> GetJob(string id, JobRegistry jobs)
        => TypedResults.Ok(jobs.Get(id) ?? throw new AdminRequestException(
            $"job '{id}' not found (jobs are kept in memory: the node forgets them when it restarts, and finished ones after {JobRegistry.MaxFinishedJobs} more)",
            StatusCodes.Status404NotFound));

    // '@' may stand unescaped in a path segment (RFC 3986 pchar): /volumes/disk0@v1 reads better.
    private static string VolumeUri(string name) => $"{Prefix}/volumes/{Uri.EscapeDataString(name).Replace("%40", "@", StringComparison.Ordinal)}";
}
