using Microsoft.Extensions.Logging;
using Ovis.Cluster.Cache;
using Ovis.Cluster.Catalog;
using Ovis.Nbd;

namespace Ovis.Node;

/// <summary>
/// After a restart: the writes the cache log still held go out without waiting for a client. For
/// each volume they belong to, the node takes the lock as a gateway would (the cache adopts them
/// if this node was the volume's last server, else drops them) and lets go of it at once, which
/// pushes and flushes them. A volume another node serves now had them dropped by that takeover
/// already: they are dropped here too; a deleted one's go with it.
/// </summary>
internal sealed partial class CacheReplay : IAsyncDisposable
{
    private static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(2);

    private readonly CancellationTokenSource _stop = new();
    private readonly Task _run;

    private CacheReplay(WritebackCache cache, VolumeLocks locks, NodeVolumes volumes, EtcdCatalog catalog, string nodeId, ILogger logger)
        => _run = Task.Run(() => RunAsync(cache, locks, volumes, catalog, nodeId, logger, _stop.Token));

    public static CacheReplay Start(WritebackCache cache, VolumeLocks locks, NodeVolumes volumes, EtcdCatalog catalog, string nodeId, ILogger logger)
        => new(cache, locks, volumes, catalog, nodeId, logger);

    private static async Task RunAsync(WritebackCache cache, VolumeLocks locks, NodeVolumes volumes, EtcdCatalog catalog, string nodeId, ILogger logger, CancellationToken stop)
    {
        var pending = new Queue<uint>(cache.RecoveredLayers);
        while (pending.TryDequeue(out uint layer) && !stop.IsCancellationRequested)
        {
            if (volumes.TryGet()?.VolumeOfLayer(layer) is not { } volume)
            {
                await cache.DropAsync(layer).ConfigureAwait(false);
                continue;
            }
            try
            {
                IAsyncDisposable share = await locks.AcquireAsync(volume).ConfigureAwait(false);
                await share.DisposeAsync().ConfigureAwait(false);
                LogReplayed(logger, volume);
            }
#pragma warning disable CA1031 // Whatever went wrong, the writes stay in the log and this is tried again.
            catch (Exception ex) when (ex is not OperationCanceledException)
#pragma warning restore CA1031
            {
                string? holder = null;
                try
                {
                    holder = await catalog.GetVolumeLockHolderAsync(volume, stop).ConfigureAwait(false);
                }
                catch (Exception e) when (e is Ovis.Cluster.Etcd.EtcdException or HttpRequestException)
                {
                }
                if (ex is ExportUnavailableException && holder is not null && holder != nodeId)
                {
                    await cache.DropAsync(layer).ConfigureAwait(false);
                    continue;
                }
                LogRetry(logger, volume, ex.Message);
                pending.Enqueue(layer);
                try
                {
                    await Task.Delay(RetryAfter, stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        try
        {
            await _run.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        _stop.Dispose();
    }

    [LoggerMessage(EventId = 130, Level = LogLevel.Information, Message = "Volume {Volume}: the writes the cache log held from before the restart are pushed, or dropped if another node served it since")]
    private static partial void LogReplayed(ILogger logger, string volume);

    [LoggerMessage(EventId = 131, Level = LogLevel.Warning, Message = "Volume {Volume}: the cached writes from before the restart cannot go out yet ({Reason}); trying again")]
    private static partial void LogRetry(ILogger logger, string volume, string reason);
}
