namespace Ovis.Store;

public sealed partial class CacheLog
{
    // Committer only.
    private readonly List<Append> _batch = [];
    private byte[] _buffer = [];
    // Cleared when the kernel or file system refuses RWF_DSYNC: write + fdatasync from then on.
    private bool _dsyncWrites = true;

    private enum Work
    {
        None,
        Batch,
        Checkpoint,
    }

    private void StartCommitter()
    {
        // A thread of its own blocked in a plain wait: an append wakes it at once, without
        // waiting for a thread-pool thread.
        var committer = new Thread(CommitLoop) { IsBackground = true, Name = "ovis-cachelog-commit" };
        committer.Start();
    }

    private void CommitLoop()
    {
        try
        {
            while (true)
            {
                _wake.WaitOne();
                while (Step())
                {
                }
                lock (_lock)
                {
                    if (_stopping && _pending.Count == 0 && _checkpointWaiters.Count == 0)
                    {
                        break;
                    }
                }
            }
            Close();
        }
        finally
        {
            _stopped.TrySetResult();
        }
    }

    /// <summary>At dispose: makes the released records' space free for the next Open too.</summary>
    private void Close()
    {
        long tail;
        lock (_lock)
        {
            if (_failure is not null || _tail == _slotTail[_sequence % 2])
            {
                return;
            }
            tail = _tail;
        }
        try
        {
            WriteHeader(tail);
        }
        catch (IOException e)
        {
            // Nothing is lost: the next Open returns the released records once more.
            LogCloseCheckpointFailed(_logger, _path, e);
        }
    }

    /// <summary>One batch or one header write; false when there is nothing to do until woken.</summary>
    private bool Step()
    {
        Work work;
        long tail = 0;
        List<TaskCompletionSource>? waiters = null;
        bool spaceWanted = false;
        lock (_lock)
        {
            if (_failure is not null)
            {
                FailQueuedLocked(Failed());
                return false;
            }
            if (_checkpointWaiters.Count > 0)
            {
                waiters = _checkpointWaiters;
                _checkpointWaiters = [];
                tail = _tail;
                work = Work.Checkpoint;
            }
            else
            {
                work = TakeBatchLocked(out tail, out spaceWanted);
            }
        }
        if (spaceWanted)
        {
            RaiseSpaceWanted();
        }
        try
        {
            switch (work)
            {
                case Work.Checkpoint:
                    WriteHeader(tail);
                    break;
                case Work.Batch:
                    WriteBatch(tail);
                    break;
                default:
                    return false;
            }
        }
        catch (Exception e)
        {
            Fail(e);
            IOException failed;
            lock (_lock)
            {
                failed = Failed();
            }
            foreach (Append a in _batch)
            {
                a.Fail(failed);
            }
            waiters?.ForEach(w => w.TrySetException(failed));
            _batch.Clear();
            return false;
        }
        FinishBatch();
        waiters?.ForEach(w => w.TrySetResult());
        return true;
    }

    /// <summary>
    /// Completes the batch's appends. The last one runs its continuation here, on the committer
    /// (the rest of the write up to its NBD reply, which never waits on the client): at queue depth
    /// one that saves waking a pool thread, a vCPU wake-up, per write. The others go to the pool
    /// first, so one batch's writers still reply in parallel.
    /// </summary>
    private void FinishBatch()
    {
        if (_batch.Count == 0)
        {
            return; // a checkpoint's step
        }
        for (int i = 0; i < _batch.Count - 1; i++)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static a => a.Finish(a.Lsn), _batch[i], preferLocal: false);
        }
        Append last = _batch[^1];
        _batch.Clear();
        last.Finish(last.Lsn);
    }

    /// <summary>
    /// Moves the appends that fit into <see cref="_batch"/> and gives them their LSNs
    /// (<paramref name="position"/> is the first); or asks for a checkpoint that frees room; or
    /// nothing, when the first append must wait for a release. Caller holds _lock.
    /// </summary>
    private Work TakeBatchLocked(out long position, out bool spaceWanted)
    {
        position = 0;
        spaceWanted = false;
        while (_pending.TryPeek(out Append? a) && a.Cancelled)
        {
            _pending.Dequeue();
        }
        if (!_pending.TryPeek(out Append? first))
        {
            return Work.None;
        }
        if (!Fits(first.Size) && _live.Count == 0)
        {
            // Nothing is live, but the record needs the next lap and the room behind the tail
            // is not enough: move the (empty) log there, so the checkpoint below frees a whole lap.
            _head = _tail = CacheLogFormat.Place(_head, first.Size, _capacity);
        }
        if (!Fits(first.Size))
        {
            if (_tail > RoomTail)
            {
                position = _tail;
                return Work.Checkpoint;
            }
            if (_stopping)
            {
                FailQueuedLocked(new ObjectDisposedException(nameof(CacheLog), "the cache log was disposed while the append waited for room"));
                return Work.None;
            }
            spaceWanted = !_waitingForRoom;
            _waitingForRoom = true;
            return Work.None;
        }
        _waitingForRoom = false;
        long total = 0;
        while (_pending.TryPeek(out Append? a))
        {
            if (!a.Cancelled)
            {
                if (total > 0 && (total + a.Size > MaxBatchBytes || !Fits(total + a.Size)))
                {
                    break;
                }
                a.Taken = true;
                a.Lsn = total; // relative until the batch is placed
                _batch.Add(a);
                total += a.Size;
            }
            _pending.Dequeue();
        }
        position = CacheLogFormat.Place(_head, total, _capacity);
        foreach (Append a in _batch)
        {
            a.Lsn += position;
            _live.Enqueue(a.Lsn);
        }
        _head = position + total;
        return Work.Batch;
    }

    // A batch may overwrite only what lies a lap behind the older slot's tail. Caller holds _lock.
    private bool Fits(long size) => CacheLogFormat.Place(_head, size, _capacity) + size <= RoomTail + _capacity;

    private void WriteBatch(long position)
    {
        long total = _batch[^1].Lsn + _batch[^1].Size - position;
        if (_buffer.Length < total)
        {
            _buffer = GC.AllocateUninitializedArray<byte>((int)Math.Max(total, MaxBatchBytes));
        }
        Span<byte> buffer = _buffer.AsSpan(0, (int)total);
        foreach (Append a in _batch)
        {
            CacheLogFormat.WriteRecord(buffer[(int)(a.Lsn - position)..], a.Lsn, _generation, a.Layer, a.Index, a.Offset, a.Epoch, a.Data.Span);
        }
        WriteDurable(buffer, CacheLogFormat.PositionOf(position, _capacity));
    }

    /// <summary>Writes the next header (into the slot of the older one) with <paramref name="tail"/>.</summary>
    private void WriteHeader(long tail)
    {
        long sequence = _sequence + 1;
        Span<byte> header = stackalloc byte[CacheLogFormat.HeaderBytes];
        CacheLogFormat.WriteHeader(header, new CacheLogFormat.Header(_capacity, sequence, tail, _generation));
        WriteDurable(header, sequence % 2 * CacheLogFormat.SlotSize);
        lock (_lock)
        {
            _sequence = sequence;
            _slotTail[sequence % 2] = tail;
        }
    }

    /// <summary>One write that is durable when it returns: pwritev2(RWF_DSYNC), or where that is
    /// refused, write + fdatasync. The file is preallocated and zero-filled, so there is no
    /// metadata to commit with it.</summary>
    private void WriteDurable(ReadOnlySpan<byte> data, long position)
    {
        if (!_dsyncWrites || !NativeIo.TryWriteDataSync(_file, data, position))
        {
            _dsyncWrites = false;
            RandomAccess.Write(_file, data, position);
            NativeIo.DataSync(_file);
        }
        Interlocked.Increment(ref _syncCount);
    }

    private void RaiseSpaceWanted()
    {
        try
        {
            SpaceWanted?.Invoke();
        }
        catch (Exception e)
        {
            LogSpaceWantedFault(_logger, _path, e);
        }
    }

    /// <summary>After a failed write: every later append and checkpoint fails too, since what
    /// reached the disk is unknown.</summary>
    private void Fail(Exception e)
    {
        lock (_lock)
        {
            _failure ??= e;
            FailQueuedLocked(Failed());
        }
        LogFailed(_logger, _path, e);
    }

    // Caller holds _lock.
    private void FailQueuedLocked(Exception e)
    {
        while (_pending.TryDequeue(out Append? a))
        {
            if (!a.Cancelled)
            {
                a.Taken = true;
                a.Fail(e);
            }
        }
        foreach (TaskCompletionSource w in _checkpointWaiters)
        {
            w.TrySetException(e);
        }
        _checkpointWaiters.Clear();
    }
}
