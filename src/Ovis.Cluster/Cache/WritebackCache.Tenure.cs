using Microsoft.Extensions.Logging;
using Ovis.Store;

namespace Ovis.Cluster.Cache;

/// <summary>
/// Flushes, and the cache's side of the volume lock: what it holds belongs to this node's tenure
/// of the lock. Taking the lock adopts what the log holds of the volume's layers — only when the
/// tenure before was this node's own (<see cref="Catalog.VolumeLock.LastServedHere"/>); else it is
/// dropped, and a tombstone makes sure no replay ever brings it back. Letting go of the lock first
/// pushes and flushes everything.
/// </summary>
public sealed partial class WritebackCache
{
    /// <summary>A tombstone's epoch field: the record voids its layer's earlier ones (below the LSN in its offset field).</summary>
    internal const long TombstoneEpoch = -1;

    public ValueTask<StoreStatus> FlushAsync(uint volume)
        => _layers.TryGetValue(volume, out LayerCache? cache) ? FlushLayerAsync(cache) : Inner.FlushAsync(volume);

    public async ValueTask<StoreStatus> FlushAsync()
    {
        StoreStatus result = StoreStatus.Ok;
        foreach (LayerCache cache in _layers.Values)
        {
            StoreStatus s = await FlushLayerAsync(cache).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
                result = s;
        }
        StoreStatus rest = await Inner.FlushAsync().ConfigureAwait(false);
        return result != StoreStatus.Ok ? result : rest;
    }

    /// <summary>A FLUSH: everything acknowledged before it onto every copy (the pushes under way,
    /// and what is queued behind them), then one flush of the nodes holding them.</summary>
    private async ValueTask<StoreStatus> FlushLayerAsync(LayerCache cache)
        => await cache.CloseEpochAndWaitAsync().ConfigureAwait(false) ? await FlushReplicasAsync(cache).ConfigureAwait(false) : StoreStatus.IoError;

    /// <summary>Flushes the layer's copies; the records of the writes pushed before it started may go.</summary>
    internal async ValueTask<StoreStatus> FlushReplicasAsync(LayerCache cache)
    {
        (List<long> Lsns, long Bytes) pushed = cache.TakePushedUnflushed();
        StoreStatus s = await Inner.FlushAsync(cache.Layer).ConfigureAwait(false);
        if (s != StoreStatus.Ok)
        {
            cache.ReturnPushedUnflushed(pushed);
            return s;
        }
        if (pushed.Lsns.Count > 0)
            Release(pushed.Lsns);
        return s;
    }

    private void Release(IEnumerable<long> lsns)
    {
        long before = _live.Release(lsns);
        // Before the release: the log may say at once that it still wants room, and that must stick.
        _wantsSpace = false;
        _log?.ReleaseBefore(before);
    }

    /// <summary>Voids the layer's records of writes already pushed: from here on a change may bypass the cache.</summary>
    private async ValueTask<bool> WriteTombstoneAsync(LayerCache cache)
    {
        (long voidBefore, long added) = cache.TombstoneBound();
        if (!await AppendTombstoneAsync(cache.Layer, voidBefore).ConfigureAwait(false))
            return false;
        cache.TombstoneWritten(added);
        return true;
    }

    private async ValueTask<bool> AppendTombstoneAsync(uint layer, long voidBefore)
    {
        long floor = _live.BeginAppend();
        long? lsn = null;
        try
        {
            CacheLog log = await LogAsync().ConfigureAwait(false);
            lsn = await log.AppendAsync(layer, 0, voidBefore, TombstoneEpoch, ReadOnlyMemory<byte>.Empty).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            LogTombstoneFailed(_logger, layer, ex);
            return false;
        }
        finally
        {
            _live.EndAppend(floor, lsn, tombstone: true);
        }
    }

    /// <summary>
    /// This node took the lock of a volume with <paramref name="layers"/> under <paramref name="tenure"/>.
    /// What the cache holds of them goes out under it when <paramref name="lastServedHere"/> (nobody
    /// else wrote the volume since it was acknowledged); otherwise it is dropped for good before
    /// the first request is served.
    /// </summary>
    public async Task AdoptAsync(IReadOnlyList<uint> layers, long tenure, bool lastServedHere)
    {
        ArgumentNullException.ThrowIfNull(layers);
        // The first writeback volume opened here creates the log, before its first write.
        if (layers.Any(_writeback))
            await LogAsync().ConfigureAwait(false);
        foreach (uint layer in layers)
        {
            if (!_layers.TryGetValue(layer, out LayerCache? cache))
                continue;
            if (!lastServedHere && (!cache.IsEmpty || cache.NeedsTombstone || cache.PushedUnflushedBytes > 0))
            {
                (long bytes, List<long> lsns) = cache.Drop();
                if (bytes > 0)
                    LogDropped(_logger, layer, bytes);
                if (!await AppendTombstoneAsync(layer, long.MaxValue).ConfigureAwait(false))
                    throw new IOException($"layer {layer}: the writeback cache could not void what it held of an older tenure");
                Freed(bytes);
                Release(lsns);
            }
            else if (!cache.IsEmpty)
            {
                LogAdopted(_logger, layer, cache.Stats().DirtyBytes, tenure);
            }
            cache.Adopt(tenure);
        }
    }

    /// <summary>Before this node lets go of a volume's lock: every cached write onto every copy and
    /// flushed there, and their records voided, so whoever takes the volume next finds it all.
    /// False when that failed: what is left stays in the log, for this node's next tenure if
    /// nobody else takes the volume meanwhile.</summary>
    public async Task<bool> ReleaseAsync(IReadOnlyList<uint> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        bool ok = true;
        foreach (uint layer in layers)
        {
            if (!_layers.TryGetValue(layer, out LayerCache? cache))
                continue;
            if (await FlushLayerAsync(cache).ConfigureAwait(false) != StoreStatus.Ok || !await WriteTombstoneAsync(cache).ConfigureAwait(false))
            {
                LogReleaseUnflushed(_logger, layer, cache.Stats().DirtyBytes);
                ok = false;
            }
        }
        return ok;
    }

    /// <summary>
    /// Takes in what the log held at start: every write no tombstone voids, per layer in log order,
    /// each with the highest epoch seen so far in its layer (the epochs of writes racing a flush may
    /// be logged out of order; this keeps the order the replicas get them in a flush order). They
    /// wait, unpushed, for this node to take their volume's lock (<see cref="AdoptAsync"/>).
    /// </summary>
    private void Recover(IReadOnlyList<CacheRecord> records)
    {
        var kept = new Dictionary<uint, List<CacheRecord>>();
        foreach (CacheRecord r in records)
        {
            if (r.Epoch == TombstoneEpoch)
            {
                _live.Register(r.Lsn, tombstone: true);
                if (kept.TryGetValue(r.Layer, out List<CacheRecord>? list))
                    list.RemoveAll(w => w.Lsn < r.Offset);
                continue;
            }
            (kept.TryGetValue(r.Layer, out List<CacheRecord>? writes) ? writes : kept[r.Layer] = []).Add(r);
        }
        long bytes = 0;
        foreach ((uint layer, List<CacheRecord> writes) in kept)
        {
            if (writes.Count == 0)
                continue;
            var cache = new LayerCache(layer, BlockSize, this);
            _layers[layer] = cache;
            foreach (CacheRecord w in writes)
            {
                _live.Register(w.Lsn);
                cache.Add(new ObjectId(layer, w.Index), w.Offset, w.Data.ToArray(), w.Lsn, w.Epoch);
                bytes += w.Data.Length;
            }
            LogRecovered(_logger, layer, writes.Count, cache.Stats().DirtyBytes);
        }
        lock (_budgetLock)
            _dirty += bytes;
        // Voided records may go as soon as nothing older is needed.
        _log!.ReleaseBefore(_live.Release([]));
    }

    /// <summary>A layer found in the log at start whose volume no longer exists, or is served by
    /// another node now: what it held is dropped.</summary>
    public async Task DropAsync(uint layer)
    {
        if (!_layers.TryGetValue(layer, out LayerCache? cache) || cache.Tenure != 0)
            return;
        (long bytes, List<long> lsns) = cache.Drop();
        if (bytes > 0)
            LogDropped(_logger, layer, bytes);
        if (await AppendTombstoneAsync(layer, long.MaxValue).ConfigureAwait(false))
        {
            Freed(bytes);
            Release(lsns);
        }
    }

    internal void PushFailed(uint layer, StoreStatus status) => LogPushFailed(_logger, layer, status);

    public async ValueTask DisposeAsync()
    {
        _stopping = true;
        foreach (LayerCache cache in _layers.Values)
            await cache.StopAsync().ConfigureAwait(false);
        if (_log is not null)
            await _log.DisposeAsync().ConfigureAwait(false);
        _opening.Dispose();
    }

    [LoggerMessage(EventId = 121, Level = LogLevel.Error, Message = "Layer {Layer}: could not log a tombstone in the writeback cache")]
    private static partial void LogTombstoneFailed(ILogger logger, uint layer, Exception exception);

    [LoggerMessage(EventId = 122, Level = LogLevel.Warning, Message = "Layer {Layer}: {Bytes} unflushed bytes in the writeback cache dropped: another node served the volume since they were written")]
    private static partial void LogDropped(ILogger logger, uint layer, long bytes);

    [LoggerMessage(EventId = 123, Level = LogLevel.Information, Message = "Layer {Layer}: {Bytes} cached bytes from before go out under lock generation {Tenure}")]
    private static partial void LogAdopted(ILogger logger, uint layer, long bytes, long tenure);

    [LoggerMessage(EventId = 124, Level = LogLevel.Error, Message = "Layer {Layer}: the lock is let go with {Bytes} bytes not pushed or not flushed on the copies; they stay in the cache log")]
    private static partial void LogReleaseUnflushed(ILogger logger, uint layer, long bytes);

    [LoggerMessage(EventId = 125, Level = LogLevel.Information, Message = "Layer {Layer}: {Count} writes ({Bytes} bytes) found in the writeback cache log")]
    private static partial void LogRecovered(ILogger logger, uint layer, int count, long bytes);

    [LoggerMessage(EventId = 126, Level = LogLevel.Warning, Message = "Layer {Layer}: a push failed ({Status}); it is sent again")]
    private static partial void LogPushFailed(ILogger logger, uint layer, StoreStatus status);
}
