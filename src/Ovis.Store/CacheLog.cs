using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>One record of the cache log: a write of <see cref="Data"/> at <see cref="Offset"/> of
/// object <see cref="Index"/> in layer <see cref="Layer"/>, under the volume's cache epoch.</summary>
public readonly record struct CacheRecord(long Lsn, uint Layer, uint Index, long Offset, long Epoch, ReadOnlyMemory<byte> Data);

/// <summary>
/// The gateway writeback cache's durable log: one circular, preallocated file, cache.log.
///
/// Layout (little-endian; the file never leaves this node; buffered I/O, so nothing is padded
/// beyond 8 bytes):
///
///   0         4096      8192                                     8192 + capacity
///   +---------+---------+------------------------------------------+
///   | slot A  | slot B  | record | record | ...  (ring of records)  |
///   +---------+---------+------------------------------------------+
///
/// Header slot (the first 40 bytes of each 4 KiB slot; header number n goes to slot n mod 2, so
/// a write never touches the newer slot and a torn one leaves the other intact):
///   0 u32 magic 'OVCH' | 4 u32 version | 8 u64 capacity | 16 u64 sequence n | 24 u64 tail LSN
///  32 u32 generation (bumped by every Open) | 36 u32 crc32c(0..36)
/// Open uses the valid slot with the higher sequence; none valid on an existing file is an error,
/// never an empty log. Space is reused only behind the OLDER slot's tail, so even losing the newer
/// slot afterwards leaves a tail whose records are all still in place (a checkpoint that needs room
/// writes both slots, one after the other).
///
/// Record (8-byte aligned):
///   0 u32 magic 'OVCR' | 4 u32 crc32c(8..48 + data) | 8 u64 LSN | 16 u32 layer | 20 u32 index
///  24 u64 offset | 32 u32 data length | 36 u32 generation | 40 u64 epoch | 48 data, zero padding
///
/// The LSN is the record's logical byte position: it sits at 8192 + LSN mod capacity. The records
/// of one group commit (a batch) are written with one write and never straddle the end of the
/// file: a batch that does not fit before the end starts the next lap (LSN rounded up to a
/// multiple of the capacity).
///
/// Recovery scans from the header's tail. A record is valid when its magic, checksum and LSN are
/// the expected ones (a record left from an earlier lap has another LSN) and its generation is not
/// below the previous record's. At an invalid record the scan tries the next lap's start once; then
/// it stops, and appends continue there, over any torn tail. The generation check is what keeps an
/// unacknowledged record of a torn batch that lies beyond a shorter record written after the crash
/// from being read again after a second crash.
/// </summary>
public sealed partial class CacheLog : IAsyncDisposable
{
    // A larger batch gains little (a 4 MiB write is long past a device flush) and wastes more
    // of the lap end when it has to skip to the next lap.
    private const long MaxBatchBytes = 4 << 20;

    private readonly string _path;
    private readonly SafeFileHandle _file;
    private readonly long _capacity;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    // The committer blocks in a plain wait, not a SemaphoreSlim: see Journal for why.
    private readonly AutoResetEvent _wake = new(false);
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Guarded by _lock.
    private readonly Queue<Append> _pending = new();
    private readonly Queue<long> _live = new();   // LSN of every record placed and not released, in order
    private List<TaskCompletionSource> _checkpointWaiters = [];
    private readonly long[] _slotTail = new long[2];
    private long _head;             // where the next batch goes (before rounding to the next lap)
    private long _tail;             // in-memory tail: the first record not released
    private long _releasedBefore;
    private bool _waitingForRoom;
    private bool _stopping;
    private Exception? _failure;

    // Written by the committer (and Open, before it starts) under _lock: the newest header's number.
    private long _sequence;
    private readonly uint _generation;
    private long _syncCount;

    private CacheLog(string path, SafeFileHandle file, long capacity, uint generation, ILogger logger)
    {
        _path = path;
        _file = file;
        _capacity = capacity;
        _generation = generation;
        _logger = logger;
    }

    /// <summary>Bytes usable for records (the file is 8 KiB larger).</summary>
    public long Capacity => _capacity;

    /// <summary>Head minus the durable tail: the room writers compete for. The durable tail here is
    /// the older header slot's (see the format), so one checkpoint after a release may not lower it yet;
    /// an append that needs room checkpoints as often as that takes.</summary>
    public long UsedBytes
    {
        get
        {
            lock (_lock)
            {
                return _head - RoomTail;
            }
        }
    }

    /// <summary>Head minus the in-memory tail: the bytes of records not released.</summary>
    public long LiveBytes
    {
        get
        {
            lock (_lock)
            {
                return _head - _tail;
            }
        }
    }

    /// <summary>Durable writes (RWF_DSYNC writes or fdatasync calls) of records and headers so far.</summary>
    internal long SyncCount => Interlocked.Read(ref _syncCount);

    /// <summary>Raised (possibly on the committer's thread; keep handlers short) each time an
    /// appender starts waiting for room that only <see cref="ReleaseBefore"/> can free.</summary>
    public event Action? SpaceWanted;

    // Space is reused only behind both slots' tails; caller holds _lock.
    private long RoomTail => Math.Min(_slotTail[0], _slotTail[1]);

    /// <summary>
    /// Appends one record and completes, with its LSN, once it is durable. Concurrent appends share
    /// one write and sync. When the log is full it checkpoints the tail if that frees room, and
    /// otherwise waits (raising <see cref="SpaceWanted"/>) until <see cref="ReleaseBefore"/> does.
    /// <paramref name="data"/> must stay unchanged until the append completes.
    /// </summary>
    /// <exception cref="ArgumentException">The record alone is larger than the capacity.</exception>
    /// <exception cref="IOException">The disk failed, now or for an earlier append.</exception>
    /// <exception cref="ObjectDisposedException">The log is disposed.</exception>
    public ValueTask<long> AppendAsync(uint layer, uint index, long offset, long epoch, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        long size = CacheLogFormat.RecordSize(data.Length);
        if (size > _capacity)
        {
            throw new ArgumentException($"a record of {data.Length} bytes does not fit in a cache log of {_capacity} bytes", nameof(data));
        }
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled<long>(cancellationToken);
        }
        var append = new Append(this, layer, index, offset, epoch, data, size);
        // Before it is queued, so the committer never finishes it ahead of the registration.
        if (cancellationToken.CanBeCanceled)
        {
            append.Registration = cancellationToken.Register(static (s, token) => ((Append)s!).Cancel(token), append);
        }
        lock (_lock)
        {
            if (_stopping || _failure is not null)
            {
                append.Registration.Unregister();
            }
            ThrowIfUnusable();
            _pending.Enqueue(append);
        }
        Wake();
        return new ValueTask<long>(append.Task);
    }

    /// <summary>
    /// Every record with an LSN below <paramref name="lsn"/> is no longer needed (lower values than
    /// an earlier call are ignored). In memory only: Open may still return them until the next
    /// checkpoint, and their space is reused after it.
    /// </summary>
    public void ReleaseBefore(long lsn)
    {
        bool wake;
        lock (_lock)
        {
            if (lsn <= _releasedBefore)
            {
                return;
            }
            _releasedBefore = lsn;
            while (_live.TryPeek(out long first) && first < lsn)
            {
                _live.Dequeue();
            }
            // The tail is always a record's start (or the head), where a scan can begin.
            _tail = _live.TryPeek(out long next) ? next : _head;
            wake = _waitingForRoom;
            // If this release is not enough, the appender starts waiting anew and says so again.
            _waitingForRoom = false;
        }
        if (wake)
        {
            Wake();
        }
    }

    /// <summary>Wakes the committer. After dispose there is none: an append, release or checkpoint
    /// racing with dispose may still get here.</summary>
    private void Wake()
    {
        try
        {
            _wake.Set();
        }
        catch (ObjectDisposedException)
        {
            // Closed: the committer has exited and waits for nothing.
        }
    }

    /// <summary>
    /// Makes the in-memory tail durable with one small synchronous header write, so that records
    /// before it are never returned by Open again. Completes at once when that is already so.
    /// </summary>
    public ValueTask CheckpointAsync(CancellationToken cancellationToken = default)
    {
        TaskCompletionSource done;
        lock (_lock)
        {
            ThrowIfUnusable();
            if (_tail == _slotTail[_sequence % 2] && _checkpointWaiters.Count == 0)
            {
                return ValueTask.CompletedTask;
            }
            done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _checkpointWaiters.Add(done);
        }
        Wake();
        return new ValueTask(done.Task.WaitAsync(cancellationToken));
    }

    /// <summary>Completes the appends already placed, fails those still waiting for room,
    /// checkpoints the tail and closes the file.</summary>
    public async ValueTask DisposeAsync()
    {
        bool first;
        lock (_lock)
        {
            first = !_stopping;
            _stopping = true;
        }
        if (first)
        {
            Wake();
        }
        await _stopped.Task.ConfigureAwait(false);
        if (first)
        {
            _file.Dispose();
            _wake.Dispose();
        }
    }

    // Caller holds _lock.
    private void ThrowIfUnusable()
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        if (_failure is not null)
        {
            throw Failed();
        }
    }

    private IOException Failed() => new($"cache log {_path} failed: {_failure!.Message}", _failure);

    /// <summary>An append on its way: waiting in <see cref="_pending"/>, then in a batch.</summary>
    private sealed class Append(CacheLog log, uint layer, uint index, long offset, long epoch, ReadOnlyMemory<byte> data, long size)
        // Continuations run where the append completes (see FinishBatch). A failure completes it
        // through the pool, since FailQueuedLocked runs under the log's lock; so does a cancellation,
        // so that the thread cancelling the token never runs the writer's code (as before).
        : TaskCompletionSource<long>
    {
        public uint Layer { get; } = layer;
        public uint Index { get; } = index;
        public long Offset { get; } = offset;
        public long Epoch { get; } = epoch;
        public ReadOnlyMemory<byte> Data { get; } = data;
        public long Size { get; } = size;
        public long Lsn { get; set; }
        // Guarded by the log's lock: a batch has taken it (it can no longer be cancelled), or it was cancelled.
        public bool Taken { get; set; }
        public bool Cancelled { get; set; }
        public CancellationTokenRegistration Registration { get; set; }

        public void Cancel(CancellationToken token)
        {
            lock (log._lock)
            {
                if (Taken || Cancelled)
                {
                    return;
                }
                // Left in the queue; the committer drops it.
                Cancelled = true;
            }
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.Append.TrySetCanceled(s.token), (Append: this, token), preferLocal: false);
        }

        public void Finish(long lsn)
        {
            Registration.Unregister();
            TrySetResult(lsn);
        }

        public void Fail(Exception e)
        {
            Registration.Unregister();
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.Append.TrySetException(s.e), (Append: this, e), preferLocal: false);
        }
    }
}
