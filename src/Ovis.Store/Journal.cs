using System.Buffers.Binary;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>Receives each durable batch, in journal order, to apply it to the object files.</summary>
internal interface IJournalSink
{
    void Apply(BatchBuffer batch);

    /// <summary>After <see cref="Apply"/> (whether it succeeded or not), before the buffer is reused.</summary>
    void Applied(BatchBuffer batch);

    /// <summary>In a round that serves a flush, before the journal's own write and sync: makes
    /// durable what the journal's records point at outside it (direct writes).</summary>
    void BeforeFlush();
}

/// <summary>Outcome of asking the journal for room for a record.</summary>
internal enum ReserveResult
{
    Ok,
    /// <summary>No free batch buffer or no journal space yet: await <see cref="Journal.WaitForSpaceAsync"/> and retry.</summary>
    Wait,
    /// <summary>The journal failed or is closed.</summary>
    Failed,
}

/// <summary>
/// The write-ahead journal and its group commit. Writers reserve room for a record in the
/// open batch and fill it; a committer loop writes sealed batches with O_DIRECT and makes
/// them durable with one fdatasync for all of them, then completes every flush that was
/// waiting (concurrent flushes share the sync), then hands the batches, in order, to the
/// applier, which copies them into the object files and frees the buffers.
/// Data reaches an object file only after its journal record is durable, so a crash never
/// leaves an object file holding data the journal cannot vouch for.
/// </summary>
internal sealed partial class Journal : IDisposable
{
    private readonly SafeFileHandle _file;
    private readonly long _capacity;
    private readonly BatchBuffer[] _buffers;
    private readonly TimeSpan _commitInterval;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly Queue<BatchBuffer> _sealed = new();
    private readonly List<BatchBuffer> _writing = [];
    // Not a SemaphoreSlim: its Wait spins (sched_yield) before it blocks, and on two shared cores
    // that spinning took a third of the CPU of a QD1 write+flush load from the threads it waits for.
    private readonly AutoResetEvent _wake = new(false);
    private readonly Channel<BatchBuffer> _applyQueue = Channel.CreateUnbounded<BatchBuffer>(new() { SingleReader = true, SingleWriter = true });

    private BatchBuffer? _current;
    private long _nextSeq;          // seq of the next batch to open
    private long _headLsn;          // where the next sealed batch is placed
    private long _tailLsn;          // first batch still needed after a crash
    private long _tailSeq;
    private long _appliedLsn;       // end of the last batch applied to the object files
    private long _appliedSeq;
    private long _generation;
    private bool _flushRequested;
    private bool _stopping;
    private bool _aborted;
    private bool _closed;       // the committer has exited: no flush can be served any more
    private long _syncCount;
    private Exception? _failure;
    private TaskCompletionSource _round = NewTcs();
    private TaskCompletionSource _space = NewTcs();
    private readonly TaskCompletionSource _commitDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _started;
    private Task? _applyLoop;
    private IJournalSink? _sink;

    private Journal(SafeFileHandle file, long capacity, int batchSize, int batchCount, TimeSpan commitInterval, ILogger logger)
    {
        _file = file;
        _capacity = capacity;
        _commitInterval = commitInterval;
        _logger = logger;
        _buffers = new BatchBuffer[batchCount];
        for (int i = 0; i < batchCount; i++)
        {
            _buffers[i] = new BatchBuffer(batchSize);
        }
    }

    public int BatchSize => _buffers[0].Capacity;

    /// <summary>Journal bytes between the tail and the head: what a checkpoint would free.</summary>
    public long UsedBytes
    {
        get
        {
            lock (_lock)
            {
                return _headLsn - _tailLsn;
            }
        }
    }

    public long Capacity => _capacity;

    /// <summary>Where a checkpoint may move the tail: the end of the last applied batch.</summary>
    public (long Lsn, long Seq) AppliedPosition
    {
        get
        {
            lock (_lock)
            {
                return (_appliedLsn, _appliedSeq);
            }
        }
    }

    public bool IsFailed => Volatile.Read(ref _failure) is not null;

    /// <summary>Whether some record has been reserved that is not yet applied to the object files.</summary>
    public bool HasUnapplied
    {
        get
        {
            lock (_lock)
            {
                return _current is { RecordCount: > 0 } || _appliedSeq < (_current?.Seq ?? _nextSeq);
            }
        }
    }

    /// <summary>fdatasync calls made on the journal since it was opened.</summary>
    public long SyncCount => Interlocked.Read(ref _syncCount);

    private static TaskCompletionSource NewTcs() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Starts the committer and the applier; call after replay.</summary>
    public void Start(IJournalSink sink)
    {
        _sink = sink;
        _started = true;
        // The committer is a thread of its own blocked in a plain wait: a flush wakes it at once,
        // without waiting for a thread-pool thread (that hop is most of a QD1 flush's latency).
        var committer = new Thread(CommitLoop) { IsBackground = true, Name = "ovis-journal-commit" };
        committer.Start();
        _applyLoop = Task.Factory.StartNew(ApplyLoopAsync, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
    }

    /// <summary>
    /// Reserves <paramref name="size"/> bytes for one record. On Ok the caller fills
    /// batch.Span[offset..offset+size] and then calls <see cref="Commit"/>; the batch is not
    /// written before that. The caller holds its object's lock, so record order in the journal
    /// is the order in which writes to one object took effect.
    /// </summary>
    public ReserveResult TryReserve(int size, out BatchBuffer batch, out int offset)
    {
        batch = null!;
        offset = 0;
        ArgumentOutOfRangeException.ThrowIfGreaterThan(size, BatchSize - JournalFormat.BatchHeaderSize);
        lock (_lock)
        {
            if (_failure is not null || _stopping)
            {
                return ReserveResult.Failed;
            }
            if (_current is not null && _current.Length + size > _current.Capacity)
            {
                SealCurrent();
            }
            if (_current is null && !TryOpenBatch())
            {
                return ReserveResult.Wait;
            }
            batch = _current!;
            offset = batch.Length;
            batch.Length += size;
            batch.RecordCount++;
            // Interlocked although under the lock: Commit decrements without it.
            Interlocked.Increment(ref batch.Outstanding);
            return ReserveResult.Ok;
        }
    }

    /// <summary>Marks a reservation as filled.</summary>
    public static void Commit(BatchBuffer batch) => Interlocked.Decrement(ref batch.Outstanding);

    /// <summary>The buffer of the batch with sequence number <paramref name="seq"/> (valid while any record of it is pending).</summary>
    public BatchBuffer BufferOf(long seq) => _buffers[seq % _buffers.Length];

    /// <summary>Completes when a batch buffer or journal space has been freed, or the journal failed;
    /// at once when a batch could be opened now (the space may have been freed between the
    /// caller's <see cref="TryReserve"/> and this call: that wake-up went to the previous waiters).</summary>
    public Task WaitForSpaceAsync()
    {
        lock (_lock)
        {
            if (_failure is not null || _stopping || _current is not null || CanOpenBatch())
            {
                return Task.CompletedTask;
            }
            return _space.Task;
        }
    }

    private bool CanOpenBatch()
    {
        BatchBuffer next = _buffers[_nextSeq % _buffers.Length];
        return next.Seq == 0 && _headLsn + 2L * next.Capacity <= _tailLsn + _capacity;
    }

    /// <summary>
    /// Completes when every batch sealed before the call (all that a completed flush covers) has
    /// been applied to the object files, or when the journal has failed. For tests, which may
    /// then count what the applier left behind.
    /// </summary>
    internal async Task WhenAppliedAsync()
    {
        long sealedEnd;
        lock (_lock)
        {
            // Batches before the open one are sealed; batches are applied in seq order.
            sealedEnd = _current?.Seq ?? _nextSeq;
        }
        while (true)
        {
            Task applied;
            lock (_lock)
            {
                if (_appliedSeq >= sealedEnd || _failure is not null)
                {
                    return;
                }
                // Completed after each batch is applied (and when space is freed or the journal fails).
                applied = _space.Task;
            }
            await applied.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Makes every record reserved and committed before the call durable. Flushes that arrive
    /// while a sync is running share the next one.
    /// </summary>
    public Task FlushAsync()
    {
        Task round;
        lock (_lock)
        {
            if (_failure is not null)
            {
                return Task.FromException(new IOException("journal failed", _failure));
            }
            if (_closed)
            {
                return Task.FromException(new ObjectDisposedException(nameof(Journal), "the store is closed"));
            }
            _flushRequested = true;
            round = _round.Task;
        }
        Signal();
        return round;
    }

    private void Signal()
    {
        _wake.Set();
    }

    private bool TryOpenBatch()
    {
        BatchBuffer next = _buffers[_nextSeq % _buffers.Length];
        // Room for this batch even if it has to skip to the next lap.
        if (!CanOpenBatch())
        {
            return false;
        }
        next.Seq = _nextSeq++;
        next.Length = JournalFormat.BatchHeaderSize;
        next.RecordCount = 0;
        next.Outstanding = 0;
        next.SpaceCharged = 0;
        _current = next;
        return true;
    }

    private void SealCurrent()
    {
        BatchBuffer b = _current!;
        _current = null;
        long padded = JournalFormat.Align4K(b.Length);
        long lsn = _headLsn;
        if (lsn % _capacity + padded > _capacity)
        {
            lsn = (lsn / _capacity + 1) * _capacity;
        }
        b.Lsn = lsn;
        _headLsn = lsn + padded;
        JournalFormat.WriteBatchHeader(b.Span, b.Lsn, b.Seq, b.Length, b.RecordCount);
        _sealed.Enqueue(b);
        Signal();
    }

    private void CommitLoop()
    {
        try
        {
            CommitRounds();
        }
        finally
        {
            _commitDone.TrySetResult();
        }
    }

    private void CommitRounds()
    {
        while (true)
        {
            bool signaled = _wake.WaitOne(_commitInterval);
            TaskCompletionSource round;
            List<FlushWaiter> inline;
            StoreStatus roundStatus = StoreStatus.IoError;
            bool stop;
            bool flushing;
            lock (_lock)
            {
                if (_aborted)
                {
                    CloseRounds();
                    return;
                }
                // A flush seals the open batch; so does the commit interval, which bounds how
                // long an acknowledged write stays only in memory when nobody flushes.
                if (_current is not null && _current.RecordCount > 0 && (_flushRequested || !signaled || _stopping))
                {
                    SealCurrent();
                }
                flushing = _flushRequested || _stopping;
                _flushRequested = false;
                round = _round;
                _round = NewTcs();
                inline = TakeInlineWaiters();
                while (_sealed.TryDequeue(out BatchBuffer? b))
                {
                    _writing.Add(b);
                }
                stop = _stopping && (_current is null || _current.RecordCount == 0);
            }
            try
            {
                if (_failure is not null)
                {
                    throw new IOException("journal failed", _failure);
                }
                if (flushing)
                {
                    _sink!.BeforeFlush();
                }
                for (int i = 0; i < _writing.Count; i++)
                {
                    BatchBuffer b = _writing[i];
                    SpinWait spin = default;
                    while (Volatile.Read(ref b.Outstanding) != 0)
                    {
                        spin.SpinOnce();
                    }
                    long position = JournalFormat.DataStart + b.Lsn % _capacity;
                    // A round of one batch (a lone flush, the QD1 case) is one write that returns
                    // durable (RWF_DSYNC: FUA, or write + device flush) instead of a write and an
                    // fdatasync. With more batches each would need its own FUA, so they share one sync.
                    if (_writing.Count == 1 && _dsyncWrites && TryWriteDurable(b.Padded, position))
                    {
                        Interlocked.Increment(ref _syncCount);
                        break;
                    }
                    RandomAccess.Write(_file, b.Padded, position);
                    if (i == _writing.Count - 1)
                    {
                        NativeIo.DataSync(_file);
                        Interlocked.Increment(ref _syncCount);
                    }
                }
                // The batches go to the applier first: an inline waiter's continuation runs on
                // this thread and should not delay them.
                foreach (BatchBuffer b in _writing)
                {
                    _applyQueue.Writer.TryWrite(b);
                }
                round.SetResult();
                roundStatus = StoreStatus.Ok;
            }
            catch (Exception e)
            {
                Fail(e);
                round.TrySetException(new IOException("journal write failed", e));
            }
            // Outside the try: what a waiter's continuation does is not the journal's failure.
            try
            {
                CompleteInlineWaiters(inline, roundStatus);
            }
            catch (Exception e)
            {
                LogWaiterFault(_logger, e);
            }
            _writing.Clear();
            if (stop)
            {
                lock (_lock)
                {
                    CloseRounds();
                }
                return;
            }
        }
    }

    // Cleared when the kernel or file system refuses RWF_DSYNC: write + fdatasync from then on.
    private bool _dsyncWrites = true;

    /// <summary>One write that is durable when it returns, with the metadata to read it (the
    /// journal is preallocated and written in place, so there is none to commit); false, and
    /// nothing written, when pwritev2 cannot do it here.</summary>
    private bool TryWriteDurable(ReadOnlySpan<byte> data, long position)
    {
        if (NativeIo.TryWriteDataSync(_file, data, position))
        {
            return true;
        }
        _dsyncWrites = false;
        return false;
    }

    /// <summary>Fails the round that flushes arriving from now on would wait for, since no
    /// committer will run it; caller holds the lock.</summary>
    private void CloseRounds()
    {
        _closed = true;
        _round.TrySetException(new ObjectDisposedException(nameof(Journal), "the store is closed"));
        FailInlineWaiters();
        _applyQueue.Writer.TryComplete();
    }

    private async Task ApplyLoopAsync()
    {
        await foreach (BatchBuffer b in _applyQueue.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            if (Volatile.Read(ref _aborted))
            {
                return;
            }
            while (true)
            {
                try
                {
                    _sink!.Apply(b);
                }
                catch (Exception e) when (NativeIo.IsNoSpace(e) && !Volatile.Read(ref _aborted) && !Volatile.Read(ref _stopping))
                {
                    // The space accounting keeps this from happening to Ovis's own writes; something
                    // else filled the file system. Applying is idempotent: try again once there is
                    // room, rather than refusing every write until a restart. Reads are served from
                    // the batch meanwhile.
                    LogApplyNoSpace(_logger, b.Seq);
                    await Task.Delay(ApplyRetryDelay).ConfigureAwait(false);
                    continue;
                }
                catch (Exception e)
                {
                    // The batch is durable in the journal; replay will apply it after a restart.
                    Fail(e);
                }
                break;
            }
            _sink!.Applied(b);
            TaskCompletionSource space;
            lock (_lock)
            {
                _appliedLsn = b.Lsn + JournalFormat.Align4K(b.Length);
                _appliedSeq = b.Seq + 1;
                b.Seq = 0;
                space = _space;
                _space = NewTcs();
            }
            space.SetResult();
        }
    }

    private void Fail(Exception e)
    {
        TaskCompletionSource space;
        lock (_lock)
        {
            _failure ??= e;
            space = _space;
            _space = NewTcs();
        }
        LogJournalFailed(_logger, e);
        space.TrySetResult();
    }

    /// <summary>Refuses new records, then writes, syncs and applies everything reserved so far.</summary>
    public async Task StopAsync()
    {
        WakeWaitersForStop(aborted: false);
        if (_started)
        {
            await _commitDone.Task.ConfigureAwait(false);
        }
        if (_applyLoop is not null)
        {
            await _applyLoop.ConfigureAwait(false);
        }
    }

    /// <summary>Refuses new reservations and wakes writers waiting for space, who then see that.</summary>
    private void WakeWaitersForStop(bool aborted)
    {
        TaskCompletionSource space;
        lock (_lock)
        {
            _stopping = true;
            _aborted |= aborted;
            space = _space;
            _space = NewTcs();
        }
        space.TrySetResult();
        Signal();
    }

    /// <summary>For crash tests: stops where it is, as a killed process would; nothing more is written.</summary>
    internal async Task AbortAsync()
    {
        WakeWaitersForStop(aborted: true);
        if (_started)
        {
            await _commitDone.Task.ConfigureAwait(false);
        }
        if (_applyLoop is not null)
        {
            await _applyLoop.ConfigureAwait(false);
        }
    }

    public void Dispose()
    {
        _file.Dispose();
        _wake.Dispose();
    }

    private static readonly TimeSpan ApplyRetryDelay = TimeSpan.FromSeconds(1);

    [LoggerMessage(Level = LogLevel.Error, Message = "No space to apply journal batch {Seq} to the object files (the file system was filled from outside the store); retrying")]
    private static partial void LogApplyNoSpace(ILogger logger, long seq);

    [LoggerMessage(Level = LogLevel.Error, Message = "A flush waiter's continuation failed on the journal's committer thread")]
    private static partial void LogWaiterFault(ILogger logger, Exception e);

    [LoggerMessage(Level = LogLevel.Critical, Message = "Journal failed; the store refuses writes until restarted")]
    private static partial void LogJournalFailed(ILogger logger, Exception e);
}
