using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

public sealed partial class ReplicatedStore
{
    /// <summary>
    /// Makes every completed write to layer <paramref name="volume"/> durable on every copy that
    /// took it: one flush to each node that holds unflushed writes of the layer — each a single
    /// journal sync there, shared with concurrent flushes — and nothing to the others.
    /// </summary>
    public ValueTask<StoreStatus> FlushAsync(uint volume)
    {
        if (DirtyLog is null)
            return FlushLayerAsync(volume);
        return FlushCoveringLogAsync(volume);
    }

    private ValueTask<StoreStatus> FlushLayerAsync(uint volume)
        => _dirty.TryGetValue(volume, out DirtyNodes? dirty) ? dirty.FlushAsync(this) : new(StoreStatus.Ok);

    /// <summary>A flush that succeeds makes the layer's earlier writes durable on every copy that took
    /// them: the dirty-region log may then clear those objects (lazily).</summary>
    private async ValueTask<StoreStatus> FlushCoveringLogAsync(uint volume)
    {
        long generation = DirtyLog!.FlushStarting(volume);
        StoreStatus status = await FlushLayerAsync(volume).ConfigureAwait(false);
        if (status == StoreStatus.Ok)
            DirtyLog.FlushDone(volume, generation);
        return status;
    }

    /// <summary>Flushes every layer's nodes.</summary>
    public async ValueTask<StoreStatus> FlushAsync()
    {
        StoreStatus result = StoreStatus.Ok;
        foreach (uint layer in _dirty.Keys)
        {
            StoreStatus s = await FlushAsync(layer).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
                result = s;
        }
        return result;
    }

    /// <summary>Flushes the nodes in <paramref name="mask"/> (slots); how many copies each write
    /// still has durably decides whether losing a node on the way fails the flush.
    /// <paramref name="minReached"/> is, per slot, the fewest copies any write that node took reached.</summary>
    private async Task<StoreStatus> FlushNodesAsync(uint layer, ulong mask, int[] minReached)
    {
        for (int attempt = 1; ; attempt++)
        {
            ClusterView view = View;
            var pending = new List<(int Node, ValueTask<PeerResult> Reply)>();
            int lost = 0;
            for (int n = 0; n < view.Replicas.Length; n++)
            {
                if ((mask & (1UL << view.Slots[n])) == 0)
                    continue;
                // Started together, each awaited exactly once below.
#pragma warning disable CA2012
                if (view.Live[n])
                    pending.Add((n, view.Replicas[n].FlushAsync(view.Epoch)));
#pragma warning restore CA2012
                else
                    pending.Add((n, new(new PeerResult(PeerStatus.Unreachable, view.Epoch))));
            }
            long newest = view.Epoch;
            var failed = new List<int>();
            foreach ((int n, ValueTask<PeerResult> reply) in pending)
            {
                PeerResult r = await reply.ConfigureAwait(false);
                if (r.Status == PeerStatus.StaleEpoch)
                    newest = Math.Max(newest, r.Epoch);
                else if (!r.IsOk)
                    failed.Add(n);
            }
            if (newest > view.Epoch && attempt < MaxAttempts)
            {
                await _control.RefreshAsync(newest).ConfigureAwait(false);
                continue;
            }
            if (newest > view.Epoch)
                return StoreStatus.IoError;
            // A node that failed its flush may have lost the writes it had: it is stale now, and
            // every write must still be durable on enough of the others.
            foreach (int n in failed)
            {
                lost++;
                // What the node had of the layer may be gone: its objects stay logged until resynced.
                DirtyLog?.MissedAll(layer);
                if (!await EnsureStaleAsync(view, n).ConfigureAwait(false))
                    return StoreStatus.IoError;
            }
            // Only the writes a failed node took can have lost copies, each at worst every failed
            // node: a write the node missed (it died before it, as a replica does before the
            // flush that finds it gone) keeps every copy it reached, and it reached MinCopies or
            // it was not acknowledged. Counting the fewest copies of any write against every lost
            // node failed such a flush for good, with every write on two durable copies.
            foreach (int n in failed)
            {
                if (minReached[view.Slots[n]] - lost < view.MinCopies)
                    return StoreStatus.IoError;
            }
            return StoreStatus.Ok;
        }
    }

    /// <summary>
    /// The nodes holding unflushed writes of one layer, as a mask over <see cref="ReplicaSet"/>
    /// slots, and per slot the fewest copies any of its writes reached. A flush takes them and waits
    /// for the flush before it, so a flush never answers while an earlier one, which took writes
    /// it must cover, is still on its way.
    /// </summary>
    private sealed class DirtyNodes(uint layer)
    {
        private const int MaxSlots = 64;
        private readonly Lock _lock = new();
        private ulong _mask;
        private int[] _minReached = NoWrites();
        // The largest of the set slots' minima: a change that reached at least that many copies,
        // on nodes already set, changes nothing.
        private int _floor = int.MaxValue;
        private Task<StoreStatus> _last = Task.FromResult(StoreStatus.Ok);

        private static int[] NoWrites()
        {
            var minima = new int[MaxSlots];
            Array.Fill(minima, int.MaxValue);
            return minima;
        }

        /// <summary>Called when a change is on the nodes in <paramref name="mask"/>, before it is acknowledged.
        /// When the bits are set already a flush that takes them later syncs those nodes after
        /// this change reached them, so the common case takes no lock.</summary>
        public void Add(ulong mask, int reached)
        {
            if ((Volatile.Read(ref _mask) & mask) == mask && reached >= Volatile.Read(ref _floor))
                return;
            lock (_lock)
            {
                Merge(mask, reached);
            }
        }

        // Under the lock. The floor is out of the way while the mask grows: an Add that sees the
        // new mask never pairs it with the old floor (a new slot's minimum may be above it).
        private void Merge(ulong mask, int reached)
        {
            Volatile.Write(ref _floor, int.MaxValue);
            for (ulong bits = mask; bits != 0; bits &= bits - 1)
            {
                int slot = System.Numerics.BitOperations.TrailingZeroCount(bits);
                _minReached[slot] = Math.Min(_minReached[slot], reached);
            }
            Volatile.Write(ref _mask, _mask | mask);
            int floor = 0;
            for (ulong bits = _mask; bits != 0; bits &= bits - 1)
                floor = Math.Max(floor, _minReached[System.Numerics.BitOperations.TrailingZeroCount(bits)]);
            Volatile.Write(ref _floor, floor);
        }

        // Under the lock: gives a flush's nodes back to the next one.
        private void Merge(ulong mask, int[] minReached)
        {
            for (ulong bits = mask; bits != 0; bits &= bits - 1)
            {
                int slot = System.Numerics.BitOperations.TrailingZeroCount(bits);
                Merge(1UL << slot, minReached[slot]);
            }
        }

        // Under the lock: what a flush takes.
        private (ulong Mask, int[] MinReached) Take()
        {
            var taken = (_mask, _minReached);
            Volatile.Write(ref _floor, int.MaxValue);
            Volatile.Write(ref _mask, 0UL);
            _minReached = NoWrites();
            return taken;
        }

        public ValueTask<StoreStatus> FlushAsync(ReplicatedStore store)
        {
            ulong mask;
            int[] minReached;
            Task<StoreStatus> previous;
            var done = new TaskCompletionSource<StoreStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_lock)
            {
                previous = _last;
                if (_mask == 0 && previous.IsCompletedSuccessfully && previous.Result == StoreStatus.Ok)
                    return new(StoreStatus.Ok);
                (mask, minReached) = Take();
                _last = done.Task;
            }
            _ = RunAsync(store, mask, minReached, previous, done);
            return new(done.Task);
        }

        private async Task RunAsync(ReplicatedStore store, ulong mask, int[] minReached, Task<StoreStatus> previous, TaskCompletionSource<StoreStatus> done)
        {
            try
            {
                if (await previous.ConfigureAwait(false) != StoreStatus.Ok)
                {
                    // The earlier flush gave its nodes back (below): this one covers them too.
                    lock (_lock)
                    {
                        Merge(mask, minReached);
                        (mask, minReached) = Take();
                    }
                }
                StoreStatus result = mask == 0 ? StoreStatus.Ok : await store.FlushNodesAsync(layer, mask, minReached).ConfigureAwait(false);
                if (result != StoreStatus.Ok)
                {
                    lock (_lock)
                        Merge(mask, minReached);
                }
                done.SetResult(result);
            }
#pragma warning disable CA1031 // The flush's caller gets an error, never a lost task.
            catch (Exception)
#pragma warning restore CA1031
            {
                lock (_lock)
                    Merge(mask, minReached);
                done.SetResult(StoreStatus.IoError);
            }
        }
    }
}
