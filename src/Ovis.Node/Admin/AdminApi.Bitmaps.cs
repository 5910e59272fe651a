using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

/// <summary>Dirty bitmaps of a volume (docs/backup.md).</summary>
public static partial class AdminApi
{
    private static void MapBitmaps(RouteGroupBuilder api)
    {
        api.MapGet("/volumes/{name}/bitmaps", (string name, VolumeManager volumes) => TypedResults.Ok(volumes.ListBitmaps(name)));
        api.MapPost("/volumes/{name}/bitmaps", AddBitmapAsync);
        api.MapGet("/volumes/{name}/bitmaps/{bitmap}", (string name, string bitmap, VolumeManager volumes) => TypedResults.Ok(volumes.GetBitmap(name, bitmap)));
        api.MapDelete("/volumes/{name}/bitmaps/{bitmap}", RemoveBitmapAsync);
        api.MapPost("/volumes/{name}/bitmaps/{bitmap}/clear", ClearBitmapAsync);
    }

    private static async Task<Created<BitmapInfo>> AddBitmapAsync(string name, HttpRequest request, VolumeManager volumes, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadAddBitmapAsync(request, cancellationToken);
        var info = await volumes.AddBitmapAsync(name, body.Name, body.Granularity);
        return TypedResults.Created($"{VolumeUri(name)}/bitmaps/{Uri.EscapeDataString(info.Name)}", info);
    }

    private static async Task<NoContent> RemoveBitmapAsync(string name, string bitmap, VolumeManager volumes)
    {
        await volumes.RemoveBitmapAsync(name, bitmap);
        return TypedResults.NoContent();
    }

    private static async Task<Ok<BitmapInfo>> ClearBitmapAsync(string name, string bitmap, VolumeManager volumes)
        => TypedResults.Ok(await volumes.ClearBitmapAsync(name, bitmap));
}
