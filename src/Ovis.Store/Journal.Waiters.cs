using System.Threading.Tasks.Sources;

namespace Ovis.Store;

internal sealed partial class Journal
{
    // Guarded by _lock: inline waiters of the next round, and idle ones for reuse.
    private List<FlushWaiter> _inlineWaiters = [];
    private List<FlushWaiter> _completing = [];
    private readonly Stack<FlushWaiter> _idleWaiters = new();

    /// <summary>
    /// Like <see cref="FlushAsync"/>, for a caller whose continuation is short and never blocks
    /// (an NBD FLUSH: its continuation queues the reply, and writes it when the connection's writer
    /// is idle). The first such waiter of a round continues on the committer's thread as soon as
    /// the round is durable, which saves a thread-pool hop; the others are completed from the thread
    /// pool, so one slow connection cannot hold up the next round. Allocates nothing.
    /// </summary>
    public ValueTask<StoreStatus> FlushInlineAsync()
    {
        FlushWaiter waiter;
        lock (_lock)
        {
            if (_failure is not null)
            {
                return new(StoreStatus.IoError);
            }
            if (_closed)
            {
                return new(StoreStatus.Closed);
            }
            _flushRequested = true;
            waiter = _idleWaiters.TryPop(out FlushWaiter? idle) ? idle : new FlushWaiter(this);
            waiter.Arm();
            _inlineWaiters.Add(waiter);
        }
        Signal();
        return new ValueTask<StoreStatus>(waiter, waiter.Version);
    }

    /// <summary>Takes the inline waiters of the round that starts now; caller holds the lock.</summary>
    private List<FlushWaiter> TakeInlineWaiters()
    {
        List<FlushWaiter> taken = _inlineWaiters;
        _inlineWaiters = _completing;
        _completing = taken;
        return taken;
    }

    /// <summary>Completes a round's inline waiters (see <see cref="FlushInlineAsync"/>); committer only.</summary>
    private static void CompleteInlineWaiters(List<FlushWaiter> waiters, StoreStatus status)
    {
        for (int i = 1; i < waiters.Count; i++)
        {
            waiters[i].CompleteLater(status);
        }
        if (waiters.Count > 0)
        {
            FlushWaiter first = waiters[0];
            waiters.Clear();
            first.Complete(status);
        }
    }

    /// <summary>Fails the waiters nobody will serve any more; caller holds the lock.</summary>
    private void FailInlineWaiters()
    {
        foreach (FlushWaiter w in _inlineWaiters)
        {
            w.CompleteLater(StoreStatus.Closed);
        }
        _inlineWaiters.Clear();
    }

    private void ReturnWaiter(FlushWaiter waiter)
    {
        lock (_lock)
        {
            _idleWaiters.Push(waiter);
        }
    }

    /// <summary>One pooled wait for a round; continuations run where it is completed.</summary>
    private sealed class FlushWaiter(Journal journal) : IValueTaskSource<StoreStatus>, IThreadPoolWorkItem
    {
        private ManualResetValueTaskSourceCore<StoreStatus> _core;
        private StoreStatus _pending;

        public short Version => _core.Version;

        public void Arm() => _core.Reset();

        public void Complete(StoreStatus status) => _core.SetResult(status);

        public void CompleteLater(StoreStatus status)
        {
            _pending = status;
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }

        void IThreadPoolWorkItem.Execute() => _core.SetResult(_pending);

        public StoreStatus GetResult(short token)
        {
            StoreStatus s = _core.GetResult(token);
            journal.ReturnWaiter(this);
            return s;
        }

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
            => _core.OnCompleted(continuation, state, token, flags);
    }
}
