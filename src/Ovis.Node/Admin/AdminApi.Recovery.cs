using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Ovis.Cluster.Catalog;

namespace Ovis.Node.Admin;

public static partial class AdminApi
{
    private static void MapRecovery(RouteGroupBuilder api)
    {
        api.MapGet("/recovery", GetRecoveryAsync);
        api.MapPost("/recovery/pause", PauseRecoveryAsync);
        api.MapPost("/recovery/resume", ResumeRecoveryAsync);
    }

    /// <summary>The switch and every live node's figures, straight from the catalog: any node answers for the whole cluster.</summary>
    private static async Task<Ok<RecoveryStatus>> GetRecoveryAsync(ClusterMembership membership, CancellationToken cancellationToken)
        => TypedResults.Ok(await RecoveryStatusAsync(RecoveryCatalogOf(membership), cancellationToken));

    private static Task<Ok<RecoveryStatus>> PauseRecoveryAsync(ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
        => SetRecoveryPausedAsync(true, membership, services, cancellationToken);

    private static Task<Ok<RecoveryStatus>> ResumeRecoveryAsync(ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
        => SetRecoveryPausedAsync(false, membership, services, cancellationToken);

    /// <summary>Flips the cluster-wide switch; every node sees it within a second or so (they poll it).</summary>
    private static async Task<Ok<RecoveryStatus>> SetRecoveryPausedAsync(bool paused, ClusterMembership membership, IServiceProvider services, CancellationToken cancellationToken)
    {
        var catalog = RecoveryCatalogOf(membership);
        var runtime = (ClusterRuntime)services.GetService(typeof(ClusterRuntime))!;
        await catalog.SetPausedAsync(paused, runtime.NodeId, cancellationToken);
        return TypedResults.Ok(await RecoveryStatusAsync(catalog, cancellationToken));
    }

    private static RecoveryCatalog RecoveryCatalogOf(ClusterMembership membership)
        => new(membership.Catalog ?? throw new AdminRequestException(NotClustered, StatusCodes.Status409Conflict));

    private static async Task<RecoveryStatus> RecoveryStatusAsync(RecoveryCatalog catalog, CancellationToken cancellationToken)
    {
        var pause = await catalog.ReadPausedAsync(cancellationToken);
        var nodes = await catalog.ReadProgressAsync(cancellationToken);
        return new RecoveryStatus(
            pause is not null,
            nodes.Sum(n => n.ObjectsQueued),
            nodes.Sum(n => n.ObjectsDone),
            nodes.Sum(n => n.BytesMoved),
            nodes.Sum(n => n.BytesResynced),
            nodes.Sum(n => n.ObjectsScrubbed),
            nodes.Sum(n => n.CopiesRepaired),
            nodes)
        {
            PausedBy = pause?.By,
            PausedAt = pause?.At,
        };
    }
}
