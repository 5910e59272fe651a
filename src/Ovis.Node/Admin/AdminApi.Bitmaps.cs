using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

/// <summary>Dirty bitmaps of a volume (docs/backup.md). In a cluster the node holding the volume's
/// lock holds its bitmaps: each call takes (or shares) the lock, and is refused naming the holder
/// while another node serves the volume.</summary>
public static partial class AdminApi
{
    private static void MapBitmaps(RouteGroupBuilder api)
    {
        api.MapGet("/volumes/{name}/bitmaps", ListBitmapsAsync);
        api.MapPost("/volumes/{name}/bitmaps", AddBitmapAsync);
        api.MapGet("/volumes/{name}/bitmaps/{bitmap}", GetBitmapAsync);
        api.MapDelete("/volumes/{name}/bitmaps/{bitmap}", RemoveBitmapAsync);
        api.MapPost("/volumes/{name}/bitmaps/{bitmap}/clear", ClearBitmapAsync);
    }

    private static async Task<Ok<IReadOnlyList<BitmapInfo>>> ListBitmapsAsync(string name, VolumeManager volumes, IServiceProvider services)
    {
        await using var held = await LockForBitmapsAsync(services, volumes, name);
        return TypedResults.Ok(volumes.ListBitmaps(name));
    }

    private static async Task<Ok<BitmapInfo>> GetBitmapAsync(string name, string bitmap, VolumeManager volumes, IServiceProvider services)
    {
        await using var held = await LockForBitmapsAsync(services, volumes, name);
        return TypedResults.Ok(volumes.GetBitmap(name, bitmap));
    }

    private static async Task<Created<BitmapInfo>> AddBitmapAsync(string name, HttpRequest request, VolumeManager volumes, IServiceProvider services, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadAddBitmapAsync(request, cancellationToken);
        await using var held = await LockForBitmapsAsync(services, volumes, name);
        var info = await volumes.AddBitmapAsync(name, body.Name, body.Granularity);
        return TypedResults.Created($"{VolumeUri(name)}/bitmaps/{Uri.EscapeDataString(info.Name)}", info);
    }

    private static async Task<NoContent> RemoveBitmapAsync(string name, string bitmap, VolumeManager volumes, IServiceProvider services)
    {
        await using var held = await LockForBitmapsAsync(services, volumes, name);
        await volumes.RemoveBitmapAsync(name, bitmap);
        return TypedResults.NoContent();
    }

    private static async Task<Ok<BitmapInfo>> ClearBitmapAsync(string name, string bitmap, VolumeManager volumes, IServiceProvider services)
    {
        await using var held = await LockForBitmapsAsync(services, volumes, name);
        return TypedResults.Ok(await volumes.ClearBitmapAsync(name, bitmap));
    }

    // A snapshot has no bitmaps: refused as on a single node, without taking its volume's lock.
    private static Task<IAsyncDisposable?> LockForBitmapsAsync(IServiceProvider services, VolumeManager volumes, string name)
        => name.Contains('@', StringComparison.Ordinal) ? Task.FromResult<IAsyncDisposable?>(null) : LockForChangeAsync(services, volumes, name);
}
