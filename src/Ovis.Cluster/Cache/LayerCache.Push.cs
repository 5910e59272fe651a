using Ovis.Store;

namespace Ovis.Cluster.Cache;

/// <summary>
/// The pusher: sends a layer's cached writes to every copy as soon as they are acknowledged.
/// Within an epoch up to <see cref="MaxInFlight"/> go out at once, one at a time per block (so
/// overlapping writes land in order; writes to other blocks of the same object go side by side),
/// and a write whose every block a newer write of the same epoch replaced is merged away unsent. Before the first write of an epoch goes out, every write
/// of the epoch before is on every copy: the replicas never see a write from after a flush before
/// all from before it. A failed push stops the stream until the pushes under way settle, then the
/// queue is sent again from its oldest write; nothing acknowledged is ever skipped.
/// </summary>
internal sealed partial class LayerCache
{
    // Enough to keep the copies busy at the rate a guest writes into the cache: by Little's law
    // 15,000 writes/s over a 4 ms round trip need 60 under way. At 32, 2 ms links held QD32 at
    // 8,500 IOPS; at 128, 13,900 (docs/benchmarks.md).
    private const int MaxInFlight = 128;
    private static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(1);
    // When nothing new arrives for this long, the pusher flushes the replicas so the records can go.
    private static readonly TimeSpan IdleFlushAfter = TimeSpan.FromMilliseconds(100);

    private readonly WritebackCache _owner;
    private readonly SemaphoreSlim _wake = new(0);
    // The push under way per block, so a write waits only for an earlier one it overlaps.
    private readonly Dictionary<(uint Index, int Block), CachedWrite> _lastSent = [];
    private readonly List<CachedWrite> _sending = [];
    private LinkedListNode<CachedWrite>? _cursor;
    private TaskCompletionSource _failure = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _tenure;
    private bool _stalled;
    private Task? _loop;
    private Task _flushing = Task.CompletedTask;

    /// <summary>The lock generation the pushes go under; 0 until the layer's volume is taken by this node.</summary>
    public long Tenure
    {
        get { lock (_lock) return _tenure; }
    }

    /// <summary>Pushes from now on under <paramref name="tenure"/> (this node took the volume's lock),
    /// from the oldest write still held.</summary>
    public void Adopt(long tenure)
    {
        lock (_lock)
        {
            _tenure = tenure;
            _stalled = _sending.Count > 0;
            if (!_stalled)
                _cursor = _queue.First;
            if (_loop is null || _loop.IsCompleted)
                _loop = Task.Run(RunAsync);
        }
        Wake();
    }

    private void Wake()
    {
        if (_wake.CurrentCount == 0)
            _wake.Release();
    }

    /// <summary>The node is stopping: the pusher ends, and flushes still waiting fail.</summary>
    public Task StopAsync()
    {
        Wake();
        lock (_lock)
        {
            _failure.TrySetResult();
            return _loop ?? Task.CompletedTask;
        }
    }

    private async Task RunAsync()
    {
        while (!_owner.Stopping)
        {
            Task? wait = null;
            CachedWrite? send = null;
            bool fua = false;
            long tenure;
            bool idle = false;
            bool retry = false;
            bool merged = false;
            lock (_lock)
            {
                tenure = _tenure;
                if (_stalled)
                {
                    if (_sending.Count > 0)
                        wait = Task.WhenAll(_sending.Select(w => w.Attempt!));
                    else
                        retry = true;
                }
                else if (_cursor is null)
                {
                    idle = true;
                }
                else
                {
                    CachedWrite next = _cursor.Value;
                    if (_sending.Count > 0 && next.Epoch != _sending[0].Epoch)
                        wait = Task.WhenAll(_sending.Select(w => w.Attempt!)); // the barrier between epochs
                    else if (OverlappedPushLocked(next) is { } busy)
                        wait = busy;
                    else if (_sending.Count >= MaxInFlight)
                        wait = Task.WhenAny(_sending.Select(w => w.Attempt!));
                    else if (SupersededLocked(next))
                    {
                        RemovePushedLocked(next);
                        merged = true;
                        send = next;
                    }
                    else
                    {
                        _cursor = _cursor.Next;
                        fua = _sending.Count == 0;
                        _sending.Add(next);
                        foreach (int block in next.Blocks(_blockSize))
                            _lastSent[(next.Id.Index, block)] = next;
                        send = next;
                    }
                }
            }
            if (merged)
            {
                send!.Complete(true);
                _owner.Freed(send.Data.Length);
                continue;
            }
            if (send is not null)
            {
                send.Attempt = PushAsync(send, tenure, fua);
                MaybeFlushForSpace();
                continue;
            }
            if (wait is not null)
            {
                await wait.ConfigureAwait(false);
                continue;
            }
            if (retry)
            {
                await Task.Delay(RetryAfter).ConfigureAwait(false);
                lock (_lock)
                {
                    _stalled = false;
                    _cursor = _queue.First;
                }
                continue;
            }
            if (idle && !await _wake.WaitAsync(IdleFlushAfter).ConfigureAwait(false) && PushedUnflushedBytes > 0)
                await FlushOnceAsync().ConfigureAwait(false);
        }
    }

    /// <summary>A push under way of an earlier write to one of <paramref name="write"/>'s blocks, or null.</summary>
    private Task? OverlappedPushLocked(CachedWrite write)
    {
        foreach (int block in write.Blocks(_blockSize))
        {
            if (_lastSent.TryGetValue((write.Id.Index, block), out CachedWrite? previous) && previous.Attempt is { IsCompleted: false } busy)
                return busy;
        }
        return null;
    }

    /// <summary>Every block of <paramref name="write"/> has a newer write of the same epoch: it need not go out.</summary>
    private bool SupersededLocked(CachedWrite write)
    {
        foreach (int block in write.Blocks(_blockSize))
        {
            if (!_index.TryGetValue((write.Id.Index, block), out CachedWrite? newest)
                || ReferenceEquals(newest, write) || newest.Epoch != write.Epoch)
                return false;
        }
        return true;
    }

    /// <summary>One attempt to put <paramref name="write"/> on every copy. With <paramref name="fua"/>
    /// (the pusher sends it when no other push is under way, as at queue depth 1) the copies make
    /// it durable before they answer, so it needs no replica flush: a FLUSH behind it waits one
    /// round trip and one journal sync, not the push's round trip and then a flush's. Under load
    /// pushes go without, and one replica flush covers many of them.</summary>
    private async Task PushAsync(CachedWrite write, long tenure, bool fua)
    {
        StoreStatus status;
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            status = await _owner.Inner.WriteUnderAsync(tenure, write.Id, write.Offset, write.Data, fua).ConfigureAwait(false);
            if (status == StoreStatus.Ok)
                Around.Pushed(started, fua);
        }
#pragma warning disable CA1031 // A push that throws failed like one that answered an error: it is sent again.
        catch (Exception)
#pragma warning restore CA1031
        {
            status = StoreStatus.IoError;
        }
        TaskCompletionSource? failed = null;
        bool pushed = false;
        lock (_lock)
        {
            _sending.Remove(write);
            foreach (int block in write.Blocks(_blockSize))
            {
                if (_lastSent.TryGetValue((write.Id.Index, block), out CachedWrite? last) && ReferenceEquals(last, write))
                    _lastSent.Remove((write.Id.Index, block));
            }
            if (status != StoreStatus.Ok)
            {
                _stalled = true;
                failed = _failure;
                _failure = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }
            else if (write.Node is not null) // not dropped meanwhile
            {
                RemovePushedLocked(write);
                pushed = true;
            }
        }
        if (pushed)
        {
            write.Complete(true);
            _owner.Freed(write.Data.Length);
        }
        if (failed is not null)
        {
            _owner.PushFailed(Layer, status);
            failed.TrySetResult();
        }
        Wake();
    }

    /// <summary>Under sustained writes the pusher is never idle: a replica flush is started when
    /// the log wants room, or once a quarter of the bound is pushed and unflushed (well before
    /// the log is full: appends waiting for room would stall for a replica flush and a checkpoint),
    /// so the records of pushed writes can go. One at a time; a flush costs each copy one journal sync.</summary>
    private void MaybeFlushForSpace()
    {
        if (!_flushing.IsCompleted)
            return;
        long unflushed = PushedUnflushedBytes;
        if (unflushed == 0 || !(_owner.WantsSpace || unflushed >= _owner.FlushEveryBytes))
            return;
        _flushing = FlushOnceAsync();
    }

    private async Task FlushOnceAsync() => await _owner.FlushReplicasAsync(this).ConfigureAwait(false);
}
