using System.Diagnostics;
using Ovis.Store;

namespace Ovis.Cluster.Cache;

/// <summary>
/// What the writeback cache holds of one layer: its acknowledged writes not yet on every copy,
/// in the order they were acknowledged, an index of the newest of them per block (for reads and
/// merging), and the flush epochs. Its pusher (LayerCache.Push.cs) sends them on.
/// </summary>
// The semaphore is only ever awaited (WaitAsync), which allocates no wait handle: nothing to dispose.
#pragma warning disable CA1001
internal sealed partial class LayerCache
#pragma warning restore CA1001
{
    private readonly Lock _lock = new();
    private readonly int _blockSize;
    // Acknowledged and not yet on every copy, in acknowledgement order (so in epoch order).
    private readonly LinkedList<CachedWrite> _queue = new();
    private readonly Dictionary<(uint Index, int Block), CachedWrite> _index = [];
    // Per epoch: writes not yet on every copy, and who waits for them all.
    private readonly SortedDictionary<long, EpochState> _epochs = [];
    // Pushed since the last replica flush of the layer: their records go once one covers them.
    private List<long> _pushedUnflushed = [];
    private long _pushedUnflushedBytes;
    private long _epoch = 1;
    private long _dirtyBytes;
    private long _readHits;
    private long _readBlocks;
    // Writes taken in, and how many of them the last tombstone covered.
    private long _added;
    private long _voided;
    // Floors of this layer's appends under way (LiveRecords.BeginAppend): their LSNs lie above.
    private readonly SortedDictionary<long, int> _appending = [];

    public LayerCache(uint layer, int blockSize, WritebackCache owner)
    {
        Layer = layer;
        _blockSize = blockSize;
        _owner = owner;
        Around = new WriteAround(owner.WritesAround);
    }

    /// <summary>Whether its writes go through the cache or around it now.</summary>
    public WriteAround Around { get; }

    public uint Layer { get; }

    /// <summary>Writes acknowledged since the last tombstone: a write that bypasses the cache must
    /// first void their records, or a replay after a crash could land them over it.</summary>
    public bool NeedsTombstone
    {
        get { lock (_lock) return _added != _voided || _appending.Count > 0; }
    }

    /// <summary>For a tombstone: the LSN below which every record of the layer is pushed (so may be
    /// voided), and the count of writes it covers. Writes still unpushed or being logged lie above.</summary>
    public (long VoidBefore, long Added) TombstoneBound()
    {
        lock (_lock)
        {
            long bound = long.MaxValue;
            foreach (CachedWrite w in _queue)
                bound = Math.Min(bound, w.Lsn);
            if (_appending.Count > 0)
                bound = Math.Min(bound, _appending.First().Key);
            return (bound, _added);
        }
    }

    public void TombstoneWritten(long added)
    {
        lock (_lock)
            _voided = Math.Max(_voided, added);
    }

    public void AppendStarting(long floor)
    {
        lock (_lock)
            _appending[floor] = _appending.GetValueOrDefault(floor) + 1;
    }

    public void AppendEnded(long floor)
    {
        lock (_lock)
        {
            if (_appending[floor] <= 1)
                _appending.Remove(floor);
            else
                _appending[floor]--;
        }
    }

    /// <summary>Bytes acknowledged and not yet on every copy.</summary>
    public long DirtyBytes
    {
        get { lock (_lock) return _dirtyBytes; }
    }

    public bool IsEmpty
    {
        get { lock (_lock) return _queue.Count == 0; }
    }

    /// <summary>Takes an acknowledged write in (its record is durable) in the epoch open now: from
    /// now on reads see it and the pusher sends it. A write found in the log at start brings the
    /// epoch it was logged in (never lower than the last one's): its order survives the restart.</summary>
    public void Add(ObjectId id, long offset, byte[] data, long lsn, long loggedEpoch = 0)
    {
        lock (_lock)
        {
            _epoch = Math.Max(_epoch, loggedEpoch);
            var write = new CachedWrite(id, offset, data, _epoch, lsn);
            write.Node = _queue.AddLast(write);
            foreach (int block in write.Blocks(_blockSize))
                _index[(write.Id.Index, block)] = write;
            EpochOf(write.Epoch).Pending++;
            _dirtyBytes += write.Data.Length;
            _added++;
            _cursor ??= write.Node;
        }
        Wake();
    }

    /// <summary>The epoch a write acknowledged now belongs to (the label of its log record).</summary>
    public long CurrentEpoch
    {
        get { lock (_lock) return _epoch; }
    }

    private EpochState EpochOf(long epoch)
    {
        if (!_epochs.TryGetValue(epoch, out EpochState? state))
            _epochs[epoch] = state = new EpochState();
        return state;
    }

    /// <summary>
    /// Closes the current epoch (a FLUSH, or a change that bypasses the cache) and waits until every
    /// write acknowledged before is on every copy. False when a push failed meanwhile (it is retried
    /// in the background) or a write was dropped: the caller answers EIO.
    /// </summary>
    public async ValueTask<bool> CloseEpochAndWaitAsync()
    {
        List<Task<bool>> waits = [];
        Task failure;
        lock (_lock)
        {
            long closing = _epoch++;
            foreach ((long epoch, EpochState state) in _epochs)
            {
                if (epoch > closing)
                    break;
                if (state.Pending > 0)
                    waits.Add(state.Drained.Task);
            }
            failure = _failure.Task;
        }
        if (waits.Count == 0)
            return true;
        Task<bool[]> all = Task.WhenAll(waits);
        return await Task.WhenAny(all, failure).ConfigureAwait(false) == all && all.Result.All(ok => ok);
    }

    /// <summary>Pushed writes a replica flush starting now covers: their records may go once it succeeds.</summary>
    public (List<long> Lsns, long Bytes) TakePushedUnflushed()
    {
        lock (_lock)
        {
            (List<long>, long) taken = (_pushedUnflushed, _pushedUnflushedBytes);
            _pushedUnflushed = [];
            _pushedUnflushedBytes = 0;
            return taken;
        }
    }

    /// <summary>A replica flush that took these records failed: the next one covers them.</summary>
    public void ReturnPushedUnflushed((List<long> Lsns, long Bytes) taken)
    {
        lock (_lock)
        {
            _pushedUnflushed.AddRange(taken.Lsns);
            _pushedUnflushedBytes += taken.Bytes;
        }
    }

    /// <summary>Bytes of the writes pushed since the last replica flush: their records still take
    /// log space. Above 0 exactly when there are such writes (a cached write is never empty).</summary>
    public long PushedUnflushedBytes
    {
        get { lock (_lock) return _pushedUnflushedBytes; }
    }

    /// <summary>
    /// The blocks of [offset, offset + length) of object <paramref name="index"/> the cache holds,
    /// as they are now; null when it holds none. Counted for the hit ratio.
    /// </summary>
    public List<(int Block, CachedWrite Write)>? Lookup(uint index, long offset, long length, bool isRead = true)
    {
        int first = (int)(offset / _blockSize);
        int last = (int)((offset + length - 1) / _blockSize);
        List<(int, CachedWrite)>? found = null;
        lock (_lock)
        {
            if (isRead)
                _readBlocks += last - first + 1;
            if (_index.Count == 0)
                return null;
            for (int b = first; b <= last; b++)
            {
                if (_index.TryGetValue((index, b), out CachedWrite? w))
                    (found ??= []).Add((b, w));
            }
            if (isRead)
                _readHits += found?.Count ?? 0;
        }
        return found;
    }

    public (long DirtyBytes, double PushLagSeconds, long ReadHits, long ReadBlocks) Stats()
    {
        lock (_lock)
        {
            double lag = _queue.First is { } oldest ? Stopwatch.GetElapsedTime(oldest.Value.AckedAt).TotalSeconds : 0;
            return (_dirtyBytes, lag, _readHits, _readBlocks);
        }
    }

    /// <summary>Forgets every write unpushed (a takeover: someone else served the volume since, so
    /// they must never land); waiters fail. Returns the bytes and the records to release.</summary>
    public (long Bytes, List<long> Lsns) Drop()
    {
        List<CachedWrite> dropped;
        List<long> lsns;
        long bytes;
        lock (_lock)
        {
            dropped = [.. _queue];
            _queue.Clear();
            _index.Clear();
            _cursor = null;
            _lastSent.Clear();
            lsns = [.. dropped.Select(w => w.Lsn), .. _pushedUnflushed];
            _pushedUnflushed = [];
            _pushedUnflushedBytes = 0;
            foreach (EpochState state in _epochs.Values)
                state.Drained.TrySetResult(false);
            _epochs.Clear();
            bytes = _dirtyBytes;
            _dirtyBytes = 0;
        }
        foreach (CachedWrite w in dropped)
            w.Complete(false);
        return (bytes, lsns);
    }

    /// <summary>Called under the lock when a write is on every copy (or merged into a newer one of its epoch).</summary>
    private void RemovePushedLocked(CachedWrite write)
    {
        if (write.Node is { } node)
        {
            if (ReferenceEquals(_cursor, node))
                _cursor = node.Next;
            _queue.Remove(node);
            write.Node = null;
        }
        foreach (int block in write.Blocks(_blockSize))
        {
            if (_index.TryGetValue((write.Id.Index, block), out CachedWrite? current) && ReferenceEquals(current, write))
                _index.Remove((write.Id.Index, block));
        }
        // Nobody waits for an epoch still open, and later writes of it start a new count.
        if (_epochs.TryGetValue(write.Epoch, out EpochState? state) && --state.Pending == 0)
        {
            state.Drained.TrySetResult(true);
            _epochs.Remove(write.Epoch);
        }
        _dirtyBytes -= write.Data.Length;
        _pushedUnflushed.Add(write.Lsn);
        _pushedUnflushedBytes += write.Data.Length;
    }

    private sealed class EpochState
    {
        public int Pending { get; set; }

        public TaskCompletionSource<bool> Drained { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
