using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Fencing;
using Ovis.Cluster.Gateway;
using Ovis.Cluster.Peer;
using Ovis.Cluster.Recovery;
using Ovis.Store;

namespace Ovis.Cluster.Tests;

/// <summary>
/// The gateway over three real local stores, one per node; the two remote ones behind a wrapper
/// that can make them unreachable or answer from a newer epoch, as a dead node or a membership
/// change would. (The interop tests do the same with real daemons and a real etcd.)
/// </summary>
public sealed class ReplicatedStoreTests : IAsyncLifetime
{
    private static readonly TimeSpan T = TimeSpan.FromSeconds(30);
    private static readonly string[] Zones = ["a", "b", "c"];
    private readonly List<(string Dir, LocalStore Store, FenceTable Fences)> _stores = [];
    private readonly Dictionary<string, FaultyReplica> _remote = new(StringComparer.Ordinal);
    private readonly Control _control = new();

    public Task InitializeAsync()
    {
        foreach (var zone in Zones)
        {
            var dir = Path.Combine(Path.GetTempPath(), "ovis-gw-" + Guid.NewGuid().ToString("N"));
            var store = LocalStore.Open(dir, new LocalStoreOptions { JournalSize = 32L << 20, BatchSize = 1 << 20, BatchCount = 8 }, NullLogger.Instance);
            _stores.Add((dir, store, FenceTable.Open(Path.Combine(dir, "fences"))));
        }
        _remote["n-b"] = new FaultyReplica(new LocalReplica("n-b", _stores[1].Store, _stores[1].Fences));
        _remote["n-c"] = new FaultyReplica(new LocalReplica("n-c", _stores[2].Store, _stores[2].Fences));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        foreach (var (dir, store, _) in _stores)
        {
            await store.DisposeAsync();
            Directory.Delete(dir, recursive: true);
        }
    }

    private LocalStore A => _stores[0].Store;

    private LocalStore B => _stores[1].Store;

    private LocalStore C => _stores[2].Store;

    private static MembershipView View(long epoch, long revision, params string[] stale)
    {
        NodeInfo[] members = [.. Zones.Select(z => new NodeInfo($"n-{z}", $"127.0.0.1:{z[0]}", z))];
        return new MembershipView(epoch, members, revision) { Members = members, Stale = stale };
    }

    private ReplicatedStore Gateway(int copies, out ReplicaSet replicas)
    {
        replicas = new ReplicaSet(new LocalReplica("n-a", A, _stores[0].Fences), node => _remote[node.Id]);
        var format = new ClusterFormat("t", copies, DateTimeOffset.UtcNow);
        var set = replicas;
        var store = new ReplicatedStore(A, ClusterView.Build(View(5, 100), format, "n-a", replicas), _control, NullLogger.Instance);
        long revision = 100;
        _control.Next = (epoch, stale) => ClusterView.Build(View(epoch, Interlocked.Increment(ref revision), stale), format, "n-a", set);
        _control.Store = store;
        return store;
    }

    private static async Task<byte[]> Read(IObjectStore store, ObjectId id, int length)
    {
        var buffer = new byte[length];
        Assert.Equal(StoreStatus.Ok, await store.ReadAsync(id, 0, buffer).AsTask().WaitAsync(T));
        return buffer;
    }

    private static byte[] Data(int seed)
    {
        var b = new byte[4096];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public async Task A_write_reaches_every_copy_reads_are_local_and_a_flush_syncs_each_node_once()
    {
        var gw = Gateway(copies: 3, out _);
        var data = Data(1);
        var ids = Enumerable.Range(0, 50).Select(i => new ObjectId(7, (uint)i)).ToArray();
        await Task.WhenAll(ids.Select(id => gw.WriteAsync(id, 0, data, fua: false).AsTask()));
        foreach (var store in new[] { A, B, C })
        {
            Assert.Equal(data, await Read(store, ids[17], 4096));
        }
        Assert.Equal(data, await Read(gw, ids[3], 4096));
        Assert.Equal(0, _remote["n-b"].Reads + _remote["n-c"].Reads);

        long[] before = [A.JournalSyncCount, B.JournalSyncCount, C.JournalSyncCount];
        Assert.Equal(StoreStatus.Ok, await gw.FlushAsync(7).AsTask().WaitAsync(T));
        Assert.Equal([before[0] + 1, before[1] + 1, before[2] + 1], [A.JournalSyncCount, B.JournalSyncCount, C.JournalSyncCount]);

        // Nothing written since, or only to another volume: no node is asked.
        Assert.Equal(StoreStatus.Ok, await gw.FlushAsync(7).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await gw.FlushAsync(8).AsTask().WaitAsync(T));
        Assert.Equal([before[0] + 1, before[1] + 1, before[2] + 1], [A.JournalSyncCount, B.JournalSyncCount, C.JournalSyncCount]);
    }

    [Fact]
    public async Task A_FUA_write_is_durable_on_every_copy_when_answered_and_leaves_no_node_for_the_next_flush()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(7, 0);
        long[] before = [A.JournalSyncCount, B.JournalSyncCount, C.JournalSyncCount];
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, Data(1), fua: true).AsTask().WaitAsync(T));
        long[] synced = [A.JournalSyncCount, B.JournalSyncCount, C.JournalSyncCount];
        Assert.All(Enumerable.Range(0, 3), n => Assert.True(synced[n] > before[n], $"copy {n} did not sync before the reply"));

        // The flush asks no node: the copies answered the write durable (FlushRequestCount counts the
        // requests, since a journal sync with nothing new is not counted as one).
        long[] asked = [A.FlushRequestCount, B.FlushRequestCount, C.FlushRequestCount];
        Assert.Equal(StoreStatus.Ok, await gw.FlushAsync(7).AsTask().WaitAsync(T));
        Assert.Equal(asked, new[] { A.FlushRequestCount, B.FlushRequestCount, C.FlushRequestCount });

        // A write without FUA after it is the next flush's again.
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 4096, Data(2), fua: false).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await gw.FlushAsync(7).AsTask().WaitAsync(T));
        Assert.Equal([asked[0] + 1, asked[1] + 1, asked[2] + 1], [A.FlushRequestCount, B.FlushRequestCount, C.FlushRequestCount]);
        Assert.Equal([synced[0] + 1, synced[1] + 1, synced[2] + 1], [A.JournalSyncCount, B.JournalSyncCount, C.JournalSyncCount]);
    }

    [Fact]
    public async Task After_a_newer_holder_fences_the_layer_an_older_gateway_changes_no_copy_and_marks_none_stale()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(11, 0);
        byte[] mine = Data(3);
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, mine, fua: false).AsTask().WaitAsync(T));

        // The next holder (generation 2) fences the layer on every node and writes; this gateway
        // still believes it holds generation 1, as a paused one does.
        await gw.FenceAsync("v", [11], 2, CancellationToken.None).WaitAsync(T);
        byte[] theirs = Data(4);
        _control.Generation = 2;
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, theirs, fua: false).AsTask().WaitAsync(T));
        _control.Generation = 1;

        Assert.Equal(StoreStatus.IoError, await gw.WriteAsync(id, 0, Data(5), fua: false).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.IoError, await gw.ZeroAsync(id, 0, 4096, keepAllocated: false, fua: false).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.IoError, await gw.DeleteAsync(id).AsTask().WaitAsync(T));
        foreach (var store in new[] { A, B, C })
            Assert.Equal(theirs, await Read(store, id, 4096));
        Assert.Empty(_control.Marked);
        Assert.Contains((11u, 1L), _control.Fenced);
    }

    [Fact]
    public async Task A_change_from_a_holder_newer_than_a_copy_has_heard_of_raises_that_copys_fence_durably()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(12, 1);
        _control.Generation = 7;
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, Data(6), fua: false).AsTask().WaitAsync(T));
        foreach (var (dir, _, fences) in _stores)
        {
            Assert.Equal(7, fences.GenerationOf(12));
            // As after a restart: the fence is read back from disk.
            Assert.Equal(7, FenceTable.Open(Path.Combine(dir, "fences")).GenerationOf(12));
        }
    }

    [Fact]
    public async Task A_gateway_that_holds_no_lock_sends_no_change()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(13, 0);
        _control.Generation = null;
        Assert.Equal(StoreStatus.IoError, await gw.WriteAsync(id, 0, Data(7), fua: false).AsTask().WaitAsync(T));
        Assert.DoesNotContain(new[] { A, B, C }, store => store.ListObjects().Contains(id));
    }

    [Fact]
    public async Task A_change_waits_for_a_late_lease_renewal_and_goes_out_under_it()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(13, 1);
        var renewal = new TaskCompletionSource<long?>(TaskCreationOptions.RunContinuationsAsynchronously);
        _control.Generation = null;
        _control.Renewal = renewal.Task;
        var write = gw.WriteAsync(id, 0, Data(7), fua: false).AsTask();
        await Task.Delay(200);
        Assert.False(write.IsCompleted, "the write must wait for the renewal");
        Assert.DoesNotContain(new[] { A, B, C }, store => store.ListObjects().Contains(id));
        renewal.SetResult(1);
        Assert.Equal(StoreStatus.Ok, await write.WaitAsync(T));
        Assert.All(new[] { A, B, C }, store => Assert.Contains(id, store.ListObjects()));
    }

    [Fact]
    public async Task A_change_whose_lease_is_lost_while_it_waits_fails_and_goes_nowhere()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(13, 2);
        _control.Generation = null;
        _control.Renewal = Task.FromResult<long?>(null);
        Assert.Equal(StoreStatus.IoError, await gw.WriteAsync(id, 0, Data(7), fua: false).AsTask().WaitAsync(T));
        Assert.DoesNotContain(new[] { A, B, C }, store => store.ListObjects().Contains(id));
    }

    [Fact]
    public async Task With_two_copies_a_flush_syncs_only_the_two_nodes_that_hold_the_write()
    {
        var gw = Gateway(copies: 2, out _);
        var id = new ObjectId(9, 4);
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, Data(2), fua: false).AsTask().WaitAsync(T));
        var holders = new[] { A, B, C }.Select(s => s.ListObjects().Contains(id)).ToArray();
        Assert.Equal(2, holders.Count(h => h));

        long[] before = [A.JournalSyncCount, B.JournalSyncCount, C.JournalSyncCount];
        Assert.Equal(StoreStatus.Ok, await gw.FlushAsync(9).AsTask().WaitAsync(T));
        long[] after = [A.JournalSyncCount, B.JournalSyncCount, C.JournalSyncCount];
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(holders[i] ? before[i] + 1 : before[i], after[i]);
        }
    }

    [Fact]
    public async Task A_copy_that_misses_a_write_is_marked_stale_before_the_reply_and_never_read()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(3, 1);
        _remote["n-b"].Unreachable = true;
        _control.OnMarkStale = node => Assert.Equal(0, _control.Acknowledged);
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, Data(3), fua: false).AsTask().WaitAsync(T));
        Interlocked.Increment(ref _control.Acknowledged);
        Assert.Equal(["n-b"], _control.Marked);

        // Node b comes back with its old copy; then the local copy is found stale and c is
        // down: the only copy left is b's, and the read fails rather than return it.
        _remote["n-b"].Unreachable = false;
        _remote["n-c"].Unreachable = true;
        _control.Store!.Update(_control.Next!(5, ["n-a", "n-b"]));
        var buffer = new byte[4096];
        Assert.Equal(StoreStatus.IoError, await gw.ReadAsync(id, 0, buffer).AsTask().WaitAsync(T));
        Assert.Equal(0, _remote["n-b"].Reads);
    }

    [Fact]
    public async Task A_replica_that_dies_between_two_writes_fails_no_flush_while_every_write_has_two_copies()
    {
        var gw = Gateway(copies: 3, out _);
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(new ObjectId(5, 0), 0, Data(5), fua: false).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(new ObjectId(6, 0), 0, Data(6), fua: false).AsTask().WaitAsync(T));
        // b dies: the next write reaches a and c only, and b's flush fails. The first write is
        // still on two copies, the second never counted on b: the flush succeeds (the crash
        // oracle's replica kill found it failing with EIO, for good, while b was down).
        _remote["n-b"].Unreachable = true;
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(new ObjectId(6, 1), 0, Data(7), fua: false).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await gw.FlushAsync(6).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await gw.FlushAsync(6).AsTask().WaitAsync(T));

        // c dies too: the unflushed write of layer 5 has one copy left, and its flush fails.
        _remote["n-c"].Unreachable = true;
        Assert.Equal(StoreStatus.IoError, await gw.FlushAsync(5).AsTask().WaitAsync(T));
    }

    [Fact]
    public async Task Below_the_minimum_of_copies_a_write_fails_and_so_does_a_failed_stale_mark()
    {
        var gw = Gateway(copies: 3, out _);
        _remote["n-b"].Unreachable = true;
        _remote["n-c"].Unreachable = true;
        Assert.Equal(StoreStatus.IoError, await gw.WriteAsync(new ObjectId(4, 0), 0, Data(4), fua: false).AsTask().WaitAsync(T));

        _remote["n-c"].Unreachable = false;
        _control.FailMarks = true;
        Assert.Equal(StoreStatus.IoError, await gw.WriteAsync(new ObjectId(4, 1), 0, Data(5), fua: false).AsTask().WaitAsync(T));
    }

    [Fact]
    public async Task A_full_node_misses_the_write_like_a_dead_one_and_too_many_full_nodes_give_ENOSPC()
    {
        var gw = Gateway(copies: 3, out _);
        _remote["n-c"].Full = true;
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(new ObjectId(2, 0), 0, Data(8), fua: false).AsTask().WaitAsync(T));
        Assert.Equal(["n-c"], _control.Marked);

        _remote["n-b"].Full = true;
        Assert.Equal(StoreStatus.NoSpace, await gw.WriteAsync(new ObjectId(2, 1), 0, Data(9), fua: false).AsTask().WaitAsync(T));
    }

    [Fact]
    public async Task A_reply_from_a_newer_epoch_refreshes_the_view_and_the_write_is_sent_again()
    {
        var gw = Gateway(copies: 3, out _);
        _remote["n-c"].StaleEpochOnce = 6;
        var id = new ObjectId(5, 2);
        var data = Data(6);
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, data, fua: false).AsTask().WaitAsync(T));
        Assert.Equal([6L], _control.Refreshes);
        Assert.Equal(6, gw.View.Epoch);
        Assert.Equal(data, await Read(C, id, 4096));
        Assert.Empty(_control.Marked);
    }

    [Fact]
    public async Task A_read_falls_back_to_another_copy_when_the_local_one_is_bad()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(6, 0);
        var data = Data(7);
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, data, fua: false).AsTask().WaitAsync(T));
        _control.Store!.Update(_control.Next!(7, ["n-a"])); // the local copy is stale now
        Assert.Equal(data, await Read(gw, id, 4096));
        Assert.Equal(1, _remote["n-b"].Reads + _remote["n-c"].Reads);
    }

    [Fact]
    public async Task Check_compares_copies_by_their_block_sums_without_moving_their_data()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(8, 0);
        const long Size = 4 * 4096;
        byte[] data = Data(10);
        // Block 0 data, block 1 zero bytes written as data, block 2 allocated zeroes, block 3 a hole.
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, data, fua: false).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 4096, new byte[4096], fua: false).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await gw.ZeroAsync(id, 2 * 4096, 4096, keepAllocated: true, fua: false).AsTask().WaitAsync(T));
        Assert.Empty(await gw.CheckObjectAsync(id, Size).WaitAsync(T));

        // The first copy in placement order is the reference; the other two are changed behind
        // the gateway's back.
        var stores = new Dictionary<string, LocalStore> { ["n-a"] = A, ["n-b"] = B, ["n-c"] = C };
        int[] picks = new int[3];
        gw.View.Placement!.ChooseIndexes(id.Packed, picks);
        string[] nodes = [.. picks.Select(n => gw.View.Placement!.Nodes[n].Id)];

        // Zero bytes as data or as allocated zeroes read the same and are both allocated: no difference.
        Assert.Equal(StoreStatus.Ok, await stores[nodes[2]].ZeroAsync(id, 4096, 4096, keepAllocated: true, fua: false).AsTask().WaitAsync(T));
        Assert.Empty(await gw.CheckObjectAsync(id, Size).WaitAsync(T));

        // A hole where the others hold zeroes reads the same but is not allocated; one changed byte is data.
        Assert.Equal(StoreStatus.Ok, await stores[nodes[2]].ZeroAsync(id, 4096, 4096, keepAllocated: false, fua: false).AsTask().WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await stores[nodes[1]].WriteAsync(id, 100, new[] { (byte)~data[100] }, fua: false).AsTask().WaitAsync(T));
        Assert.Equal(
            [new CopyDifference(nodes[1], "data differs"), new CopyDifference(nodes[2], "allocation differs")],
            await gw.CheckObjectAsync(id, Size).WaitAsync(T));
        Assert.Equal(0, _remote["n-b"].Reads + _remote["n-c"].Reads);
    }

    /// <summary>The node's side of the gateway: refreshes install the next view, stale marks are recorded.</summary>
    /// <summary>The crash oracle's unfixed case (docs/writeback-cache.md): a node joined while an
    /// object's recovery ran, a copy answered from the newer epoch, and the recovery gave up —
    /// failing the client write that waited for it. It now refreshes its view and runs again.</summary>
    [Fact]
    public async Task A_recovery_that_meets_a_newer_epoch_runs_again_in_it_instead_of_failing()
    {
        var gw = Gateway(copies: 3, out _);
        var id = new ObjectId(21, 0);
        byte[] data = Data(21);
        _remote["n-c"].Unreachable = true;
        Assert.Equal(StoreStatus.Ok, await gw.WriteAsync(id, 0, data, fua: false).AsTask().WaitAsync(T));
        _remote["n-c"].Unreachable = false;
        _remote["n-c"].StaleEpochOnceOnWrite = 6; // the copy's write meets the new epoch

        var reconciler = new ObjectReconciler(gw, new RecoveryCounters(), new Throttle(1L << 30), NullLogger.Instance);
        (ReconcileResult result, _) = await reconciler.ReconcileAsync(id, 1L << 20, before: null, ReconcileReason.Resync, throttled: false, CancellationToken.None).WaitAsync(T);
        Assert.Equal(ReconcileResult.Complete, result);
        Assert.Contains(6L, _control.Refreshes);
        Assert.Equal(data, await Read(C, id, 4096));
    }

    private sealed class Control : IGatewayControl
    {
        public Func<long, string[], ClusterView>? Next { get; set; }

        public ReplicatedStore? Store { get; set; }

        public List<long> Refreshes { get; } = [];

        public List<string> Marked { get; } = [];

        public bool FailMarks { get; set; }

        public Action<string>? OnMarkStale { get; set; }

        public int Acknowledged;

        /// <summary>The gateway's lock generation; null as if it held no lock.</summary>
        public long? Generation { get; set; } = 1;

        public List<(uint Layer, long Generation)> Fenced { get; } = [];

        public long? GenerationOf(uint layer) => Generation;

        /// <summary>Set to a renewal that is late: <see cref="WaitGenerationAsync"/> waits for it.</summary>
        public Task<long?>? Renewal { get; set; }

        public async ValueTask<long?> WaitGenerationAsync(uint layer) => Renewal is { } renewal ? await renewal : Generation;

        public void OnFenced(uint layer, long generation)
        {
            lock (Fenced)
                Fenced.Add((layer, generation));
        }

        public ValueTask RefreshAsync(long seen)
        {
            lock (Refreshes)
                Refreshes.Add(seen);
            Store!.Update(Next!(seen, [.. Marked]));
            return ValueTask.CompletedTask;
        }

        public ValueTask MarkStaleAsync(string nodeId, long epoch)
        {
            if (FailMarks)
                throw new CatalogException("etcd is unreachable");
            OnMarkStale?.Invoke(nodeId);
            lock (Marked)
                Marked.Add(nodeId);
            Store!.Update(Next!(Store.View.Epoch, [.. Marked]));
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>A replica that can be cut off, or answer once from a newer epoch without applying the request.</summary>
    private sealed class FaultyReplica(IReplica inner) : IReplica
    {
        public bool Unreachable { get; set; }

        public bool Full { get; set; }

        public long StaleEpochOnce { get; set; }

        /// <summary>As <see cref="StaleEpochOnce"/>, for the next write only.</summary>
        public long StaleEpochOnceOnWrite { get; set; }

        public int Reads;

        public string NodeId => inner.NodeId;

        private bool Refuse(out PeerResult result)
        {
            if (Unreachable)
            {
                result = PeerResult.Unreachable;
                return true;
            }
            if (Full)
            {
                result = new PeerResult(PeerStatus.NoSpace, 5);
                return true;
            }
            if (StaleEpochOnce > 0)
            {
                result = new PeerResult(PeerStatus.StaleEpoch, StaleEpochOnce);
                StaleEpochOnce = 0;
                return true;
            }
            result = default;
            return false;
        }

        public ValueTask<PeerResult> WriteAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua)
        {
            if (StaleEpochOnceOnWrite > 0)
            {
                var stale = new PeerResult(PeerStatus.StaleEpoch, StaleEpochOnceOnWrite);
                StaleEpochOnceOnWrite = 0;
                return new(stale);
            }
            return Refuse(out var r) ? new(r) : inner.WriteAsync(epoch, generation, id, offset, data, fua);
        }

        public ValueTask<PeerResult> ReadAsync(long epoch, ObjectId id, long offset, Memory<byte> buffer)
        {
            Interlocked.Increment(ref Reads);
            return Refuse(out var r) ? new(r) : inner.ReadAsync(epoch, id, offset, buffer);
        }

        public ValueTask<PeerResult> ZeroAsync(long epoch, long generation, ObjectId id, long offset, long length, bool keepAllocated, bool fua)
            => Refuse(out var r) ? new(r) : inner.ZeroAsync(epoch, generation, id, offset, length, keepAllocated, fua);

        public ValueTask<PeerResult> FillHolesAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false)
            => Refuse(out var r) ? new(r) : inner.FillHolesAsync(epoch, generation, id, offset, data, zeroes, fromReserve);

        public ValueTask<PeerResult> DeleteAsync(long epoch, long generation, ObjectId id)
            => Refuse(out var r) ? new(r) : inner.DeleteAsync(epoch, generation, id);

        public ValueTask<PeerResult> FenceAsync(long epoch, uint layer, long generation)
            => Refuse(out var r) ? new(r) : inner.FenceAsync(epoch, layer, generation);

        public ValueTask<PeerResult> FlushAsync(long epoch)
            => Refuse(out var r) ? new(r) : inner.FlushAsync(epoch);

        public ValueTask<PeerResult> GetAllocationAsync(long epoch, ObjectId id, long offset, Memory<BlockState> states)
            => Refuse(out var r) ? new(r) : inner.GetAllocationAsync(epoch, id, offset, states);

        public ValueTask<PeerResult> GetBlockSumsAsync(long epoch, ObjectId id, long offset, Memory<BlockSum> sums, bool verify)
            => Refuse(out var r) ? new(r) : inner.GetBlockSumsAsync(epoch, id, offset, sums, verify);

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
