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
    }

    private static Ok<NodeInfo> GetNode(NodeStatus node, VolumeManager volumes)
        => TypedResults.Ok(new NodeInfo(
            NodeStatus.Version,
            node.DataDirectory,
            new NodeListeners(node.NbdListeners, node.AdminListeners),
            volumes.UsedBytes,
            volumes.List().Count,
            node.Started,
            (long)node.Uptime.TotalSeconds));

    private static Ok<IReadOnlyList<VolumeInfo>> ListVolumes(VolumeManager volumes)
        => TypedResults.Ok(volumes.List());

    private static async Task<Created<VolumeInfo>> CreateVolumeAsync(HttpRequest request, VolumeManager volumes, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadCreateVolumeAsync(request, cancellationToken);
        var info = volumes.Create(body.Name, body.Size, body.ObjectSize);
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

    private static string VolumeUri(string name) => $"{Prefix}/volumes/{Uri.EscapeDataString(name)}";
}
