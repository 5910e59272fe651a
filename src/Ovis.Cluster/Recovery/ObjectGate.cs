using System.Collections.Concurrent;
using Ovis.Store;

namespace Ovis.Cluster.Recovery;

/// <summary>
/// Keeps client IO and recovery off the same object at the same time. Client requests enter and
/// leave an object (a striped in-flight count: no allocation, no lock); recovery work on an
/// object is first queued in the <em>pending</em> set, and when it starts it waits for the
/// requests already inside to leave, and holds off new ones until it is done. Queued work that
/// has not started is run by a read that needs it (urgent for reads), and otherwise lets requests
/// in and moves to the front of the background work. The common case, nothing pending, costs one
/// interlocked increment and one decrement per request.
/// </summary>
public sealed class ObjectGate
{
    private const int Stripes = 1024;
    private readonly int[] _inside = new int[Stripes];
    private readonly ConcurrentDictionary<ObjectId, PendingObject> _pending = new();
    private readonly ConcurrentQueue<ObjectId> _touched = new();
    private readonly Lock _holdLock = new();
    private TaskCompletionSource? _held;

    public bool IsPending(ObjectId id) => _pending.ContainsKey(id);

    /// <summary>
    /// Enters <paramref name="id"/> for one client request. Work running on the object is waited
    /// for. Work only queued is run first (or waited for) by a read when the work is urgent for
    /// reads — some copy a read may use may not be right yet; otherwise the request goes on, and
    /// the work waits for it: a write reaches every copy, the source included, so copying later
    /// loses nothing, and a read uses only current copies. False when the work failed: the
    /// request must fail too, as no copy is known to be right. Call <see cref="Leave"/> after a
    /// true result.
    /// </summary>
    public ValueTask<bool> EnterAsync(ObjectId id, bool forWrite)
    {
        ref int stripe = ref _inside[StripeOf(id)];
        Interlocked.Increment(ref stripe);
        // The increment is a full fence: a worker that adds the object after this read waits for us to leave.
        if (Volatile.Read(ref _held) is { } held)
        {
            Interlocked.Decrement(ref stripe);
            return EnterAfterHoldAsync(id, held.Task, forWrite);
        }
        if (_pending.IsEmpty || !_pending.TryGetValue(id, out PendingObject? pending))
            return new(true);
        if (pending.LetsIn(forWrite))
        {
            // In without waiting; the object goes to the front of the background work.
            if (!pending.Touched)
            {
                pending.Touched = true;
                _touched.Enqueue(id);
            }
            return new(true);
        }
        Interlocked.Decrement(ref stripe);
        return EnterAfterWorkAsync(id, pending, forWrite);
    }

    private async ValueTask<bool> EnterAfterHoldAsync(ObjectId id, Task held, bool forWrite)
    {
        await held.ConfigureAwait(false);
        return await EnterAsync(id, forWrite).ConfigureAwait(false);
    }

    /// <summary>
    /// Stops new requests at the gate until <see cref="Open"/>: while a new placement is installed
    /// and the objects it moved are queued, no request may read the new placement unqueued.
    /// Requests already inside go on.
    /// </summary>
    public void Shut()
    {
        lock (_holdLock)
            _held ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public void Open()
    {
        TaskCompletionSource? held;
        lock (_holdLock)
        {
            held = _held;
            _held = null;
        }
        held?.SetResult();
    }

    private async ValueTask<bool> EnterAfterWorkAsync(ObjectId id, PendingObject pending, bool forWrite)
    {
        while (true)
        {
            // Running work is waited for; queued work is run now (the caller needs it done).
            if (!await pending.RunAsync(this).ConfigureAwait(false))
                return false;
            Interlocked.Increment(ref _inside[StripeOf(id)]);
            if (!_pending.TryGetValue(id, out PendingObject? next) || next.LetsIn(forWrite))
                return true;
            Interlocked.Decrement(ref _inside[StripeOf(id)]);
            pending = next;
        }
    }

    public void Leave(ObjectId id) => Interlocked.Decrement(ref _inside[StripeOf(id)]);

    /// <summary>Steps out of <paramref name="id"/>'s gate and back in, behind the work queued for
    /// it meanwhile: for a request inside that has just seen a newer view. Inside again on return
    /// either way (the caller leaves once, as usual); false when that work failed.</summary>
    public async ValueTask<bool> ReenterAsync(ObjectId id, bool forWrite)
    {
        Leave(id);
        if (await EnterAsync(id, forWrite).ConfigureAwait(false))
            return true;
        Interlocked.Increment(ref _inside[StripeOf(id)]);
        return false;
    }

    /// <summary>
    /// Queues <paramref name="work"/> for <paramref name="id"/> unless work is queued for it
    /// already; it runs when a client touches the object or <see cref="RunAsync"/> is called.
    /// Work that is running already began before whatever asks again (a new placement, say) and
    /// may not cover it: the object is queued again for when it is done.
    /// </summary>
    /// <param name="urgentForReads">A read of the object must wait for the work (a copy reads may use is not right yet).</param>
    /// <returns>Whether the object was not pending before.</returns>
    public bool Queue(ObjectId id, Func<ObjectId, Task<bool>> work, bool urgentForReads)
    {
        while (true)
        {
            if (_pending.TryAdd(id, new PendingObject(id, work, urgentForReads)))
                return true;
            if (_pending.TryGetValue(id, out PendingObject? queued) && queued.Merge(work, urgentForReads))
                return false;
            // That work has just finished and is leaving the set: look again.
            Thread.Yield();
        }
    }

    /// <summary>Runs the queued work of <paramref name="id"/> now (once, however many callers);
    /// true when there was none or it succeeded.</summary>
    public Task<bool> RunAsync(ObjectId id)
        => _pending.TryGetValue(id, out PendingObject? pending) ? pending.RunAsync(this) : Task.FromResult(true);

    /// <summary>Runs <paramref name="work"/> on <paramref name="id"/> alone, now: queued like any
    /// other work, so clients wait for it.</summary>
    public Task<bool> RunExclusiveAsync(ObjectId id, Func<ObjectId, Task<bool>> work)
    {
        var mine = new PendingObject(id, work, urgentForReads: true);
        while (true)
        {
            if (_pending.TryAdd(id, mine))
                return mine.RunAsync(this);
            // Other work is queued for the object: let it finish, then take a turn.
            if (_pending.TryGetValue(id, out PendingObject? other))
                return ThenAsync(other, id, work);
        }
    }

    private async Task<bool> ThenAsync(PendingObject other, ObjectId id, Func<ObjectId, Task<bool>> work)
    {
        // Work that failed stays queued; this run gives up rather than spin on it.
        return await other.RunAsync(this).ConfigureAwait(false) && await RunExclusiveAsync(id, work).ConfigureAwait(false);
    }

    /// <summary>Drops the queued work of the objects <paramref name="match"/> picks (work already
    /// running finishes): their volume's recovery stopped, and whoever recovers it next queues
    /// what it needs again.</summary>
    /// <returns>How many were dropped.</returns>
    public int Forget(Func<ObjectId, bool> match)
    {
        int dropped = 0;
        foreach (var (id, pending) in _pending)
        {
            if (match(id) && !pending.Started && _pending.TryRemove(new KeyValuePair<ObjectId, PendingObject>(id, pending)))
                dropped++;
        }
        return dropped;
    }

    /// <summary>An object with work queued that a client touched without waiting for it: background
    /// work takes these first.</summary>
    public bool TryTakeTouched(out ObjectId id)
    {
        while (_touched.TryDequeue(out id))
        {
            if (_pending.ContainsKey(id))
                return true;
        }
        return false;
    }

    /// <summary>Objects with work queued, for a background pass to take in turn.</summary>
    public IReadOnlyCollection<ObjectId> Pending() => [.. _pending.Keys];

    private async Task WaitForClientsAsync(ObjectId id)
    {
        // Requests inside the stripe entered before the object was pending; they are short.
        int delay = 0;
        while (Volatile.Read(ref _inside[StripeOf(id)]) > 0)
        {
            if (delay == 0)
                await Task.Yield();
            else
                await Task.Delay(delay).ConfigureAwait(false);
            delay = Math.Min(delay + 1, 10);
        }
    }

    private static int StripeOf(ObjectId id) => (int)(PlacementHash.Mix(id.Packed) & (Stripes - 1));

    private sealed class PendingObject(ObjectId id, Func<ObjectId, Task<bool>> work, bool urgentForReads)
    {
        private volatile bool _urgentForReads = urgentForReads;
        private Func<ObjectId, Task<bool>> _work = work;
        // Asked for again while running, to run once more when done (seen lost: a node taken out
        // while the scrub compared an object; the object's new holder never got its copy).
        private (Func<ObjectId, Task<bool>> Work, bool Urgent)? _again;
        private bool _finished;

        public volatile bool Touched;

        /// <summary>Whether a request may go in without waiting for this work: it has not started,
        /// and the request is a write or the work is not urgent for reads.</summary>
        public bool LetsIn(bool forWrite) => !Started && (forWrite || !UrgentForReads);

        public bool UrgentForReads
        {
            get => _urgentForReads;
            set => _urgentForReads = value;
        }

        private readonly Lock _lock = new();
        private Task<bool>? _running;

        public bool Started
        {
            get
            {
                lock (_lock)
                    return _running is not null;
            }
        }

        public Task<bool> RunAsync(ObjectGate gate)
        {
            lock (_lock)
                return _running ??= RunOnceAsync(gate);
        }

        /// <summary>Takes another request for work on the object: the newest work is the one to run
        /// (its recovery may have replaced the one that queued this), urgency only ever grows, and
        /// running work runs again after. False when this work is done and about to leave the set.</summary>
        public bool Merge(Func<ObjectId, Task<bool>> next, bool urgent)
        {
            lock (_lock)
            {
                if (_finished)
                    return false;
                if (_running is null)
                {
                    _work = next;
                    if (urgent)
                        UrgentForReads = true;
                }
                else
                {
                    _again = (next, urgent || (_again?.Urgent ?? false));
                }
                return true;
            }
        }

        private async Task<bool> RunOnceAsync(ObjectGate gate)
        {
            bool ok = false;
            bool cancelled = false;
            try
            {
                await gate.WaitForClientsAsync(id).ConfigureAwait(false);
                ok = await _work(id).ConfigureAwait(false);
                return ok;
            }
            catch (OperationCanceledException)
            {
                // The recovery that queued it stopped (its volume closed, its lock lost): whoever
                // recovers the volume next queues what it needs again.
                cancelled = true;
                return false;
            }
#pragma warning disable CA1031 // Whatever else stopped the work (a node gone): the object stays queued.
            catch (Exception)
#pragma warning restore CA1031
            {
                return false;
            }
            finally
            {
                // Work asked for again meanwhile runs next; failed work stays queued, with a fresh
                // start for whoever tries next.
                PendingObject? next;
                lock (_lock)
                {
                    _finished = true;
                    bool failed = !ok && !cancelled;
                    next = _again is { } again
                        ? new PendingObject(id, again.Work, again.Urgent || (failed && UrgentForReads))
                        : failed ? new PendingObject(id, _work, UrgentForReads) : null;
                }
                if (next is null)
                    gate._pending.TryRemove(new KeyValuePair<ObjectId, PendingObject>(id, this));
                else
                    gate._pending.TryUpdate(id, next, this);
            }
        }
    }
}
