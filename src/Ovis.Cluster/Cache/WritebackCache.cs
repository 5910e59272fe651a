using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Gateway;
using Ovis.Store;
using Ovis.Volumes;

namespace Ovis.Cluster.Cache;

/// <summary>
/// The gateway writeback cache (docs/writeback-cache.md): an <see cref="IObjectStore"/> over the
/// replicating gateway. A whole-block write to a layer in writeback mode is acknowledged once its
/// record is durable in the node's <see cref="CacheLog"/>; the layer's pusher sends it to every copy
/// at once, under the lock generation it was acknowledged in. A FLUSH closes the layer's epoch,
/// waits until everything acknowledged before it is on every copy, then flushes those copies.
/// Reads see the cached blocks. Everything else — other layers, partial blocks, zeroes, hole
/// fills, deletes — goes straight to the gateway, after the layer's cached writes (an epoch
/// closes for it) and after a tombstone in the log voids their records, so that a replay after a
/// crash can never land them over it. Unpushed bytes are bounded; at the bound a write waits for
/// pushes, which is write-through latency.
/// </summary>
public sealed partial class WritebackCache : IObjectStore
{
    private const string LogFile = "cache.log";

    private readonly string _directory;
    private readonly long _size;
    private readonly Func<uint, bool> _writeback;
    private readonly bool _writeAround;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<uint, LayerCache> _layers = new();
    private readonly LiveRecords _live = new();
    private readonly Lock _budgetLock = new();
    private readonly SemaphoreSlim _opening = new(1, 1);
    // Writes waiting for room under the bound, served in arrival order: with a broadcast wake the
    // unlucky ones lost every race and waited seconds at the bound.
    private readonly Queue<(int Bytes, TaskCompletionSource Admitted)> _budgetWaiters = new();
    private CacheLog? _log;
    private long _dirty;
    private volatile bool _wantsSpace;
    private volatile bool _stopping;

    private WritebackCache(ReplicatedStore inner, string directory, long size, Func<uint, bool> writeback, bool writeAround, ILogger logger)
    {
        Inner = inner;
        _directory = directory;
        _size = size;
        _writeback = writeback;
        _writeAround = writeAround;
        _logger = logger;
    }

    /// <summary>
    /// The cache of a node whose log is in <paramref name="directory"/>: what a log left there holds
    /// is taken in now; a node that never had a writeback volume creates none until one is opened.
    /// </summary>
    /// <param name="inner">The gateway every write ends up on.</param>
    /// <param name="size">Unpushed bytes the cache may hold; the log is twice that (the other half
    /// holds pushed writes until a replica flush lets their records go).</param>
    /// <param name="writeback">Whether a layer's volume is in writeback mode now.</param>
    /// <param name="writeAround">Whether a layer's writes go around the cache while the copies
    /// answer faster than it (<see cref="WriteAround"/>); off, every write of it is cached.</param>
    public static WritebackCache Open(ReplicatedStore inner, string directory, long size, Func<uint, bool> writeback, ILogger logger, bool writeAround = true)
    {
        var cache = new WritebackCache(inner, directory, size, writeback, writeAround, logger);
        if (File.Exists(Path.Combine(directory, LogFile)))
            cache.Recover(cache.OpenLog());
        return cache;
    }

    private IReadOnlyList<CacheRecord> OpenLog()
    {
        var log = CacheLog.Open(_directory, 2 * _size, _logger, out IReadOnlyList<CacheRecord> recovered);
        log.SpaceWanted += () => _wantsSpace = true;
        _log = log;
        return recovered;
    }

    /// <summary>The log, created the first time a writeback volume is opened here (it is
    /// preallocated, which takes a moment once).</summary>
    private async ValueTask<CacheLog> LogAsync()
    {
        if (Volatile.Read(ref _log) is { } log)
            return log;
        await _opening.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_log is null)
                await Task.Run(OpenLog).ConfigureAwait(false);
            return _log!;
        }
        finally
        {
            _opening.Release();
        }
    }

    internal ReplicatedStore Inner { get; }

    internal bool Stopping => _stopping;

    internal bool WritesAround => _writeAround;

    internal bool WantsSpace => _wantsSpace;

    /// <summary>Pushed, unflushed bytes of a layer past which its pusher flushes the copies.</summary>
    internal long FlushEveryBytes => _size / 4;

    /// <summary>Layers holding writes found in the log at start, not yet taken over by a lock of this node.</summary>
    public IReadOnlyCollection<uint> RecoveredLayers => [.. _layers.Values.Where(l => l.Tenure == 0 && !l.IsEmpty).Select(l => l.Layer)];

    public int BlockSize => Inner.BlockSize;

    public long MaxObjectSize => Inner.MaxObjectSize;

    public uint MaxObjectIndex => ((IObjectStore)Inner).MaxObjectIndex;

    public bool ListsEveryObject => Inner.ListsEveryObject;

    public long UsedBytes => Inner.UsedBytes;

    public IReadOnlyCollection<ObjectId> ListObjects() => Inner.ListObjects();

    /// <summary>Unpushed bytes over every layer.</summary>
    public long DirtyBytes => Interlocked.Read(ref _dirty);

    public long LogUsedBytes => _log?.UsedBytes ?? 0;

    public long LogCapacity => _log?.Capacity ?? 2 * _size;

    /// <summary>Dirty bytes, push lag (age of the oldest unpushed write) and the read hit counts of one layer.</summary>
    public VolumeCacheStats StatsOf(uint layer)
    {
        if (!_layers.TryGetValue(layer, out LayerCache? cache))
            return new VolumeCacheStats(0, 0, 0, 0);
        (long dirty, double lag, long hits, long blocks) = cache.Stats();
        return new VolumeCacheStats(dirty, lag, hits, blocks, cache.Around.AroundWrites, cache.Around.IsAround);
    }

    private bool Cacheable(uint layer, long offset, int length)
        => length > 0 && offset % BlockSize == 0 && length % BlockSize == 0 && _writeback(layer);

    public ValueTask<StoreStatus> WriteAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua, IBlockSource? underlay = null)
    {
        // A whole-block write needs nothing from the parents: the gateway never reads the underlay for it.
        if (Cacheable(id.Volume, offset, data.Length))
        {
            LayerCache cache = LayerOf(id.Volume);
            return cache.Around.GoAround() ? WriteAroundAsync(cache, id, offset, data, fua) : WriteCachedAsync(cache, id, offset, data, fua);
        }
        return Bypass(id.Volume, static (store, a) => store.WriteAsync(a.id, a.offset, a.data, a.fua, a.underlay), (id, offset, data, fua, underlay));
    }

    public ValueTask<StoreStatus> FillHolesAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false)
        => Bypass(id.Volume, static (store, a) => store.FillHolesAsync(a.id, a.offset, a.data, a.zeroes, a.fromReserve), (id, offset, data, zeroes, fromReserve));

    public ValueTask<StoreStatus> ZeroAsync(ObjectId id, long offset, long length, bool keepAllocated, bool fua)
        => Bypass(id.Volume, static (store, a) => store.ZeroAsync(a.id, a.offset, a.length, a.keepAllocated, a.fua), (id, offset, length, keepAllocated, fua));

    public ValueTask<StoreStatus> DeleteAsync(ObjectId id)
        => Bypass(id.Volume, static (store, a) => store.DeleteAsync(a), id);

    /// <summary>A change that does not go through the cache: straight to the gateway when the
    /// layer has nothing cached, else after its cached writes and a tombstone for their records.</summary>
    private ValueTask<StoreStatus> Bypass<TArgs>(uint layer, Func<ReplicatedStore, TArgs, ValueTask<StoreStatus>> change, TArgs args)
    {
        if (!_layers.TryGetValue(layer, out LayerCache? cache) || !cache.NeedsTombstone)
            return change(Inner, args);
        return BypassAfterCacheAsync(cache, change, args);
    }

    private async ValueTask<StoreStatus> BypassAfterCacheAsync<TArgs>(LayerCache cache, Func<ReplicatedStore, TArgs, ValueTask<StoreStatus>> change, TArgs args)
    {
        if (!await cache.CloseEpochAndWaitAsync().ConfigureAwait(false) || !await WriteTombstoneAsync(cache).ConfigureAwait(false))
            return StoreStatus.IoError;
        return await change(Inner, args).ConfigureAwait(false);
    }

    internal LayerCache LayerOf(uint layer) => _layers.GetOrAdd(layer, static (layer, owner) => new LayerCache(layer, owner.BlockSize, owner), this);

    /// <summary>A whole-block write sent straight to the copies, as a change that bypasses the
    /// cache is (after the layer's cached writes and a tombstone, when it holds any).</summary>
    private async ValueTask<StoreStatus> WriteAroundAsync(LayerCache cache, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        long started = Stopwatch.GetTimestamp();
        StoreStatus status = StoreStatus.IoError;
        try
        {
            status = await Bypass(id.Volume, static (store, a) => store.WriteAsync(a.id, a.offset, a.data, a.fua), (id, offset, data, fua)).ConfigureAwait(false);
            return status;
        }
        finally
        {
            cache.Around.AroundEnded(started, sample: status == StoreStatus.Ok && !fua);
        }
    }

    private async ValueTask<StoreStatus> WriteCachedAsync(LayerCache cache, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        long started = Stopwatch.GetTimestamp();
        // Acknowledged only under this node's valid lock: a write taken while the lock is gone could
        // never be pushed, and after a takeover it must not be served from here either.
        if ((Inner.GenerationOf(id.Volume) ?? await Inner.WaitGenerationAsync(id.Volume).ConfigureAwait(false)) is not { } generation)
            return StoreStatus.IoError;
        await cache.Around.AroundDrained().ConfigureAwait(false);
        if (cache.Tenure != generation)
        {
            // A tenure this cache was not told of: only an empty layer may start one by itself.
            if (!cache.IsEmpty)
                return StoreStatus.IoError;
            cache.Adopt(generation);
        }
        await TakeBudgetAsync(data.Length).ConfigureAwait(false);
        byte[] copy = data.ToArray();
        long floor = _live.BeginAppend();
        cache.AppendStarting(floor);
        long? lsn = null;
        try
        {
            CacheLog log = await LogAsync().ConfigureAwait(false);
            lsn = await log.AppendAsync(id.Volume, id.Index, offset, cache.CurrentEpoch, copy).ConfigureAwait(false);
            cache.Add(id, offset, copy, lsn.Value);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            LogAppendFailed(_logger, id.ToString(), ex);
            Freed(copy.Length);
            return StoreStatus.IoError;
        }
        finally
        {
            cache.AppendEnded(floor);
            _live.EndAppend(floor, lsn);
        }
        if (!fua)
            cache.Around.Cached(started, cache.DirtyBytes);
        return fua ? await FlushAsync(id.Volume).ConfigureAwait(false) : StoreStatus.Ok;
    }

    /// <summary>Waits until <paramref name="bytes"/> more unpushed bytes fit under the bound (one
    /// write alone always fits, so a write larger than the bound still goes), after every write
    /// that waited before it.</summary>
    private ValueTask TakeBudgetAsync(int bytes)
    {
        TaskCompletionSource admitted;
        lock (_budgetLock)
        {
            if (_budgetWaiters.Count == 0 && Fits(bytes))
            {
                _dirty += bytes;
                return ValueTask.CompletedTask;
            }
            admitted = new(TaskCreationOptions.RunContinuationsAsynchronously);
            _budgetWaiters.Enqueue((bytes, admitted));
        }
        return new ValueTask(admitted.Task);
    }

    // Caller holds _budgetLock.
    private bool Fits(int bytes) => _dirty == 0 || _dirty + bytes <= _size;

    internal void Freed(long bytes)
    {
        List<TaskCompletionSource>? admitted = null;
        lock (_budgetLock)
        {
            _dirty -= bytes;
            while (_budgetWaiters.TryPeek(out var waiter) && Fits(waiter.Bytes))
            {
                _budgetWaiters.Dequeue();
                _dirty += waiter.Bytes;
                (admitted ??= []).Add(waiter.Admitted);
            }
        }
        admitted?.ForEach(a => a.TrySetResult());
    }

    /// <summary>The layer's cache, when what it holds may be read: it belongs to the tenure of the
    /// lock this node holds now (a lock taken anew adopts or drops it before the first request; a
    /// lock taken only to recover the volume never does, and must not see it).</summary>
    private LayerCache? Readable(uint layer)
        => _layers.TryGetValue(layer, out LayerCache? cache) && (Inner.GenerationOf(layer) ?? cache.Tenure) == cache.Tenure ? cache : null;

    public ValueTask<StoreStatus> ReadAsync(ObjectId id, long offset, Memory<byte> buffer)
    {
        if (buffer.Length == 0 || Readable(id.Volume) is not { } cache
            || cache.Lookup(id.Index, offset, buffer.Length) is not { } cached)
            return Inner.ReadAsync(id, offset, buffer);
        return ReadOverAsync(id, offset, buffer, cached);
    }

    /// <summary>The blocks the cache held when the read began, over what the copies have: a block
    /// pushed and let go meanwhile is still read from the write it was (a concurrent newer write
    /// may or may not show, as for any read racing a write).</summary>
    private async ValueTask<StoreStatus> ReadOverAsync(ObjectId id, long offset, Memory<byte> buffer, List<(int Block, CachedWrite Write)> cached)
    {
        int bs = BlockSize;
        long end = offset + buffer.Length;
        long firstBlock = offset / bs;
        long blocks = (end - 1) / bs - firstBlock + 1;
        if (cached.Count < blocks)
        {
            StoreStatus s = await Inner.ReadAsync(id, offset, buffer).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
                return s;
        }
        foreach ((int block, CachedWrite write) in cached)
        {
            long from = Math.Max(offset, (long)block * bs);
            long to = Math.Min(end, (long)(block + 1) * bs);
            write.Data.AsSpan((int)(from - write.Offset), (int)(to - from)).CopyTo(buffer.Span[(int)(from - offset)..]);
        }
        return StoreStatus.Ok;
    }

    public async ValueTask<StoreStatus> GetAllocationAsync(ObjectId id, long offset, Memory<BlockState> states)
    {
        StoreStatus s = await Inner.GetAllocationAsync(id, offset, states).ConfigureAwait(false);
        if (s != StoreStatus.Ok || Readable(id.Volume) is not { } cache
            || cache.Lookup(id.Index, offset, (long)states.Length * BlockSize, isRead: false) is not { } cached)
            return s;
        // An unpushed block is data, whatever the copies say yet (a copy tool skips holes).
        long first = offset / BlockSize;
        foreach ((int block, _) in cached)
            states.Span[(int)(block - first)] = BlockState.Data;
        return StoreStatus.Ok;
    }

    [LoggerMessage(EventId = 120, Level = LogLevel.Error, Message = "Object {Object}: the write could not be logged in the writeback cache: EIO")]
    private static partial void LogAppendFailed(ILogger logger, string @object, Exception exception);
}
