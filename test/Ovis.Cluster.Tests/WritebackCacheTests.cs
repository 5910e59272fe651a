using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Cache;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Fencing;
using Ovis.Cluster.Gateway;
using Ovis.Cluster.Peer;
using Ovis.Store;
using Ovis.Volumes;

namespace Ovis.Cluster.Tests;

/// <summary>
/// The writeback cache over a real gateway and three real local stores; the two remote copies
/// behind a wrapper that can hold their writes (a slow link) or refuse them (a cut one) and
/// records the order they arrive in. The interop tests run the same with daemons and delayed links.
/// </summary>
// The gateway holds nothing to dispose (its DisposeAsync is a no-op); the stores are disposed below.
#pragma warning disable CA1001
public sealed class WritebackCacheTests : IAsyncLifetime
#pragma warning restore CA1001
{
    private const uint Layer = 9;
    private static readonly TimeSpan T = TimeSpan.FromSeconds(30);
    private static readonly string[] Zones = ["a", "b", "c"];
    private readonly List<(string Dir, LocalStore Store, FenceTable Fences)> _stores = [];
    private readonly Dictionary<string, HeldReplica> _remote = new(StringComparer.Ordinal);
    private readonly Control _control = new();
    private readonly string _cacheDir = Path.Combine(Path.GetTempPath(), "ovis-wbc-" + Guid.NewGuid().ToString("N"));
    private ReplicatedStore _gateway = null!;
    private readonly List<WritebackCache> _caches = [];

    public Task InitializeAsync()
    {
        foreach (var zone in Zones)
        {
            var dir = Path.Combine(Path.GetTempPath(), "ovis-wbc-" + Guid.NewGuid().ToString("N"));
            var store = LocalStore.Open(dir, new LocalStoreOptions { JournalSize = 32L << 20, BatchSize = 1 << 20, BatchCount = 8 }, NullLogger.Instance);
            _stores.Add((dir, store, FenceTable.Open(Path.Combine(dir, "fences"))));
        }
        _remote["n-b"] = new HeldReplica(new LocalReplica("n-b", B, _stores[1].Fences));
        _remote["n-c"] = new HeldReplica(new LocalReplica("n-c", C, _stores[2].Fences));
        var replicas = new ReplicaSet(new LocalReplica("n-a", A, _stores[0].Fences), node => _remote[node.Id]);
        NodeInfo[] members = [.. Zones.Select(z => new NodeInfo($"n-{z}", $"127.0.0.1:{z[0]}", z))];
        var view = new MembershipView(5, members, 100) { Members = members };
        _gateway = new ReplicatedStore(A, ClusterView.Build(view, new ClusterFormat("t", 3, DateTimeOffset.UtcNow), "n-a", replicas), _control, NullLogger.Instance);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        foreach (var r in _remote.Values)
            r.Release();
        foreach (var cache in _caches)
            await cache.DisposeAsync();
        foreach (var (dir, store, _) in _stores)
        {
            await store.DisposeAsync();
            Directory.Delete(dir, recursive: true);
        }
        if (Directory.Exists(_cacheDir))
            Directory.Delete(_cacheDir, recursive: true);
    }

    private LocalStore A => _stores[0].Store;

    private LocalStore B => _stores[1].Store;

    private LocalStore C => _stores[2].Store;

    private IEnumerable<HeldReplica> Remotes => _remote.Values;

    /// <summary>A cache over the gateway on the log in the test's directory (reopened: what it held comes back).</summary>
    /// <summary>... with every write cached unless <paramref name="writeAround"/>: these copies answer
    /// faster than the log syncs, so writes would go around it.</summary>
    private WritebackCache OpenCache(long size = 4L << 20, bool writeAround = false)
    {
        var cache = WritebackCache.Open(_gateway, _cacheDir, size, layer => layer == Layer, NullLogger.Instance, writeAround);
        _caches.Add(cache);
        return cache;
    }

    private async Task CloseAsync(WritebackCache cache)
    {
        _caches.Remove(cache);
        await cache.DisposeAsync();
    }

    private static byte[] Block(int seed, int blocks = 1)
    {
        var b = new byte[4096 * blocks];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static async Task<byte[]> Read(IObjectStore store, ObjectId id, long offset, int length)
    {
        var buffer = new byte[length];
        Assert.Equal(StoreStatus.Ok, await store.ReadAsync(id, offset, buffer).AsTask().WaitAsync(T));
        return buffer;
    }

    private static async Task Ok(ValueTask<StoreStatus> pending) => Assert.Equal(StoreStatus.Ok, await pending.AsTask().WaitAsync(T));

    [Fact]
    public async Task A_write_is_acknowledged_before_the_copies_have_it_read_from_the_cache_and_a_flush_waits_for_them()
    {
        var cache = OpenCache();
        var id = new ObjectId(Layer, 0);
        foreach (var r in Remotes)
            r.Hold();
        byte[] data = Block(1);
        await Ok(cache.WriteAsync(id, 8192, data, fua: false));
        Assert.Equal(data, await Read(cache, id, 8192, 4096));
        // Read a range around it: the rest from the copies (zeroes), the block from the cache.
        byte[] wide = await Read(cache, id, 4096, 3 * 4096);
        Assert.Equal(data, wide[4096..8192]);
        Assert.All(wide[..4096], b => Assert.Equal(0, b));
        var states = new BlockState[3];
        await Ok(cache.GetAllocationAsync(id, 4096, states));
        Assert.Equal([BlockState.Hole, BlockState.Data, BlockState.Hole], states);

        Task<StoreStatus> flush = cache.FlushAsync(Layer).AsTask();
        await Task.Delay(200);
        Assert.False(flush.IsCompleted, "a flush completed while the copies did not have the write");
        Assert.True(cache.StatsOf(Layer).DirtyBytes > 0);
        foreach (var r in Remotes)
            r.Release();
        Assert.Equal(StoreStatus.Ok, await flush.WaitAsync(T));
        foreach (var store in new[] { A, B, C })
            Assert.Equal(data, await Read(store, id, 8192, 4096));
        Assert.Equal(0, cache.StatsOf(Layer).DirtyBytes);
        Assert.True(cache.StatsOf(Layer).ReadHits >= 2);
    }

    [Fact]
    public async Task Writes_go_around_the_cache_while_the_copies_answer_faster_than_its_log_and_every_block_keeps_its_last_write()
    {
        var cache = OpenCache(writeAround: true);
        var last = new byte[4][][];
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(11));
        int switches = 0;
        // Sample the way in use: it starts cached, goes around, and every 5 s tries the cache again.
        Task watch = Task.Run(async () =>
        {
            bool around = false;
            while (!stop.IsCancellationRequested)
            {
                if (cache.StatsOf(Layer).Around != around)
                {
                    around = !around;
                    switches++;
                }
                await Task.Delay(5);
            }
        });
        // Four writers at once over their own blocks of four objects, each flushing now and then:
        // the switches happen under concurrent writes, flushes and pushes.
        Task[] writers = [.. Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            var rng = new Random(w);
            last[w] = new byte[64][];
            for (int n = 0; !stop.IsCancellationRequested; n++)
            {
                int block = rng.Next(64);
                byte[] data = Block(rng.Next());
                await Ok(cache.WriteAsync(new ObjectId(Layer, (uint)(block % 4)), (w * 64 + block) * 4096L, data, fua: false));
                last[w][block] = data;
                if (n % 50 == 49)
                    await Ok(cache.FlushAsync(Layer));
            }
        }))];
        await Task.WhenAll(writers).WaitAsync(T);
        await watch;
        await Ok(cache.FlushAsync(Layer));

        VolumeCacheStats stats = cache.StatsOf(Layer);
        Assert.True(stats.AroundWrites > 0, "no write went around the cache with copies faster than its log");
        Assert.True(switches >= 3, $"the way switched {switches} times in 11 s: around, and back to try the cache");
        Assert.Equal(0, stats.DirtyBytes);
        for (int w = 0; w < 4; w++)
        {
            for (int block = 0; block < 64; block++)
            {
                if (last[w][block] is not { } expected)
                    continue;
                var id = new ObjectId(Layer, (uint)(block % 4));
                long offset = (w * 64 + block) * 4096L;
                Assert.Equal(expected, await Read(cache, id, offset, 4096));
                foreach (var store in new[] { A, B, C })
                    Assert.Equal(expected, await Read(store, id, offset, 4096));
            }
        }
    }

    /// <summary>Feeds the layer's way a window of writes that took <paramref name="took"/>: the
    /// real decision, with made-up latencies, so the test says when the way switches.</summary>
    private static async Task FeedWindow(Action<long> sample, TimeSpan took)
    {
        long started() => System.Diagnostics.Stopwatch.GetTimestamp() - (long)(took.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
        sample(started());
        await Task.Delay(120); // a window is at least 100 ms
        for (int i = 0; i < 31; i++)
            sample(started());
    }

    [Fact]
    public async Task A_switch_either_way_never_lets_a_copy_take_an_older_write_of_a_block_after_a_newer_one()
    {
        var cache = OpenCache(writeAround: true);
        var id = new ObjectId(Layer, 0);
        WriteAround way = cache.LayerOf(Layer).Around;
        byte[] cachedFirst = Block(1), aroundAfter = Block(2), aroundFirst = Block(3), cachedAfter = Block(4);

        // Cached, its push held on the copies; then the way turns around (fast pushes, slow cache).
        foreach (var r in Remotes)
            r.HoldData(cachedFirst);
        await Ok(cache.WriteAsync(id, 0, cachedFirst, fua: false));
        for (int i = 0; i < 4; i++)
            way.Pushed(System.Diagnostics.Stopwatch.GetTimestamp(), fua: false);
        await FeedWindow(started => way.Cached(started, dirtyBytes: 0), TimeSpan.FromMilliseconds(10));
        Assert.True(way.IsAround);
        // The write around waits for the cached one of the same block to be on the copies.
        Task<StoreStatus> around = cache.WriteAsync(id, 0, aroundAfter, fua: false).AsTask();
        await Task.Delay(300);
        Assert.False(around.IsCompleted, "a write around the cache went out while an older cached write of its block was not on the copies");
        foreach (var r in Remotes)
            r.ReleaseData();
        Assert.Equal(StoreStatus.Ok, await around.WaitAsync(T));
        await Ok(cache.FlushAsync(Layer));
        foreach (var store in new[] { A, B, C })
            Assert.Equal(aroundAfter, await Read(store, id, 0, 4096));

        // Around, held on one copy; then the way turns back to the cache (a slow window around it).
        HeldReplica gate = _remote["n-b"];
        gate.HoldData(aroundFirst);
        Task<StoreStatus> aroundPending = cache.WriteAsync(id, 4096, aroundFirst, fua: false).AsTask();
        await FeedWindow(way.SampledAround, TimeSpan.FromMilliseconds(100));
        Assert.False(way.IsAround);
        // A cached write of the same block is acknowledged only after the write around is done.
        Task<StoreStatus> cached = cache.WriteAsync(id, 4096, cachedAfter, fua: false).AsTask();
        await Task.Delay(300);
        Assert.False(cached.IsCompleted, "a cached write was acknowledged while an older write around the cache of its block was on its way");
        gate.ReleaseData();
        Assert.Equal(StoreStatus.Ok, await aroundPending.WaitAsync(T));
        Assert.Equal(StoreStatus.Ok, await cached.WaitAsync(T));
        await Ok(cache.FlushAsync(Layer));
        foreach (var store in new[] { A, B, C })
            Assert.Equal(cachedAfter, await Read(store, id, 4096, 4096));
    }

    [Fact]
    public async Task Behind_slow_copies_every_write_is_cached()
    {
        var cache = OpenCache(writeAround: true);
        foreach (var r in Remotes)
            r.Delay = TimeSpan.FromMilliseconds(20);
        var id = new ObjectId(Layer, 0);
        long maxDirty = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; clock.Elapsed < TimeSpan.FromSeconds(1.5); i++)
        {
            await Ok(cache.WriteAsync(id, i % 256 * 4096L, Block(i), fua: false));
            maxDirty = Math.Max(maxDirty, cache.StatsOf(Layer).DirtyBytes);
        }
        await Ok(cache.FlushAsync(Layer));
        Assert.Equal(0, cache.StatsOf(Layer).AroundWrites);
        Assert.True(maxDirty > 0);
    }

    [Fact]
    public async Task With_only_FUA_pushes_to_go_by_going_around_is_tried_behind_near_copies_and_not_far_ones()
    {
        var cache = OpenCache(writeAround: true);
        WriteAround way = cache.LayerOf(Layer).Around;
        static long Ago(TimeSpan t) => System.Diagnostics.Stopwatch.GetTimestamp() - (long)(t.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
        // Queue depth 1 with a flush after each write: every push goes alone, with FUA. Far
        // copies: the quickest FUA push costs twenty cached writes, and going around is not tried
        // (it was, every 5 s, when no push without FUA had been seen).
        way.Pushed(Ago(TimeSpan.FromMilliseconds(20)), fua: true);
        await FeedWindow(started => way.Cached(started, dirtyBytes: 0), TimeSpan.FromMilliseconds(1));
        Assert.False(way.IsAround, "going around was tried behind copies twenty cached writes away");
        // Near copies whose sync under load makes a FUA push three cached writes: worth a try.
        way.Pushed(Ago(TimeSpan.FromMilliseconds(3)), fua: true);
        await FeedWindow(started => way.Cached(started, dirtyBytes: 0), TimeSpan.FromMilliseconds(1));
        Assert.True(way.IsAround, "going around was not tried behind near copies");
    }

    [Fact]
    public async Task A_lone_push_goes_with_FUA_so_the_flush_behind_it_sends_no_flush_of_its_own()
    {
        var cache = OpenCache();
        var id = new ObjectId(Layer, 0);
        long storeFlushes = B.FlushRequestCount;
        // Queue depth 1: each write's push is the only one under way.
        for (int i = 0; i < 3; i++)
        {
            await Ok(cache.WriteAsync(id, i * 4096, Block(i), fua: false));
            await Ok(cache.FlushAsync(Layer));
        }
        foreach (var r in Remotes)
        {
            Assert.Equal(3, r.FuaWrites);
            Assert.Equal(0, r.Flushes);
        }
        // Pushes that overlap go without: one replica flush covers them all.
        foreach (var r in Remotes)
            r.Hold();
        for (int i = 0; i < 4; i++)
            await Ok(cache.WriteAsync(id, (8 + i) * 4096, Block(10 + i), fua: false));
        foreach (var r in Remotes)
            r.Release();
        await Ok(cache.FlushAsync(Layer));
        foreach (var r in Remotes)
        {
            Assert.Equal(4, r.FuaWrites); // only the first of the four went alone
            Assert.Equal(1, r.Flushes);
        }
    }

    [Fact]
    public async Task Nothing_written_after_a_flush_reaches_a_copy_before_everything_written_before_it()
    {
        var cache = OpenCache();
        foreach (var r in Remotes)
            r.Hold();
        // Epoch 1: objects 0..3; a flush; epoch 2: objects 4..7 (other objects, so only the epoch orders them).
        for (uint i = 0; i < 4; i++)
            await Ok(cache.WriteAsync(new ObjectId(Layer, i), 0, Block((int)i), fua: false));
        Task<StoreStatus> flush = cache.FlushAsync(Layer).AsTask();
        for (uint i = 4; i < 8; i++)
            await Ok(cache.WriteAsync(new ObjectId(Layer, i), 0, Block((int)i), fua: false));
        await Task.Delay(200);
        foreach (var r in Remotes)
            Assert.All(r.Arrived, a => Assert.True(a.Index < 4, $"object {a.Index} of epoch 2 reached {r.NodeId} while epoch 1 was not on every copy"));
        foreach (var r in Remotes)
            r.Release();
        Assert.Equal(StoreStatus.Ok, await flush.WaitAsync(T));
        await Ok(cache.FlushAsync(Layer));
        foreach (var r in Remotes)
        {
            var order = r.Arrived.Select(a => a.Index).ToList();
            Assert.Equal(8, order.Count);
            Assert.True(order.Take(4).All(i => i < 4) && order.Skip(4).All(i => i >= 4), $"{r.NodeId} got {string.Join(",", order)}");
        }
    }

    [Fact]
    public async Task Overwrites_within_an_epoch_are_merged_and_land_in_order()
    {
        var cache = OpenCache();
        var id = new ObjectId(Layer, 1);
        foreach (var r in Remotes)
            r.Hold();
        for (int i = 0; i < 20; i++)
            await Ok(cache.WriteAsync(id, 0, Block(100 + i), fua: false));
        Assert.Equal(Block(119), await Read(cache, id, 0, 4096));
        foreach (var r in Remotes)
            r.Release();
        await Ok(cache.FlushAsync(Layer));
        foreach (var store in new[] { A, B, C })
            Assert.Equal(Block(119), await Read(store, id, 0, 4096));
        // The first went out before the others were written; of the 19 after it only the last.
        foreach (var r in Remotes)
            Assert.True(r.Arrived.Count <= 2, $"{r.NodeId} got {r.Arrived.Count} writes of one block");
    }

    [Fact]
    public async Task After_a_restart_the_logged_writes_go_out_once_the_lock_is_this_nodes_again()
    {
        var cache = OpenCache();
        var id = new ObjectId(Layer, 2);
        foreach (var r in Remotes)
            r.Refuse = true;
        byte[] first = Block(7, 2);
        byte[] second = Block(8);
        await Ok(cache.WriteAsync(id, 0, first, fua: false));
        await Ok(cache.WriteAsync(id, 4096, second, fua: false));
        Assert.NotEqual(StoreStatus.Ok, await cache.FlushAsync(Layer).AsTask().WaitAsync(T));
        await CloseAsync(cache);

        foreach (var r in Remotes)
            r.Refuse = false;
        var reopened = OpenCache();
        Assert.Equal(new[] { Layer }, reopened.RecoveredLayers);
        // Before the lock is taken, nothing goes out, and nothing is read from the cache (another
        // node may have served the volume since); once it is, reads see the writes.
        byte[] expected = [.. first[..4096], .. second];
        await Read(reopened, id, 0, 8192);
        Assert.Equal(0, reopened.StatsOf(Layer).ReadHits);
        await reopened.AdoptAsync([Layer], tenure: 1, lastServedHere: true);
        Assert.Equal(expected, await Read(reopened, id, 0, 8192));
        await Ok(reopened.FlushAsync(Layer));
        foreach (var store in new[] { A, B, C })
            Assert.Equal(expected, await Read(store, id, 0, 8192));
        Assert.True(await reopened.ReleaseAsync([Layer]));
        await CloseAsync(reopened);
        // Pushed, flushed and voided: a restart finds nothing to send again.
        Assert.Empty(OpenCache().RecoveredLayers);
    }

    [Fact]
    public async Task Writes_from_before_another_nodes_tenure_are_dropped_for_good()
    {
        var cache = OpenCache();
        var id = new ObjectId(Layer, 3);
        foreach (var r in Remotes)
            r.Refuse = true;
        await Ok(cache.WriteAsync(id, 0, Block(9), fua: false));
        await CloseAsync(cache);
        foreach (var r in Remotes)
            r.Refuse = false;

        var reopened = OpenCache();
        // Not adopted by any lock yet: never read from the cache (the copies answer).
        await Read(reopened, id, 0, 4096);
        Assert.Equal(0, reopened.StatsOf(Layer).ReadHits);
        _control.Generation = 5;
        Assert.Equal(4096, reopened.StatsOf(Layer).DirtyBytes);
        await reopened.AdoptAsync([Layer], tenure: 5, lastServedHere: false);
        // Served from the cache no more (the local copy may hold it from the failed pushes, as
        // after any write that failed; the remote ones never got it).
        Assert.Equal(0, reopened.StatsOf(Layer).DirtyBytes);
        await Ok(reopened.FlushAsync(Layer));
        Assert.Equal(new byte[4096], await Read(B, id, 0, 4096));
        Assert.Equal(new byte[4096], await Read(C, id, 0, 4096));
        await CloseAsync(reopened);
        Assert.Empty(OpenCache().RecoveredLayers);
    }

    [Fact]
    public async Task A_change_that_bypasses_the_cache_is_never_undone_by_a_replay()
    {
        var cache = OpenCache();
        var id = new ObjectId(Layer, 4);
        await Ok(cache.WriteAsync(id, 0, Block(10), fua: false));
        await Ok(cache.FlushAsync(Layer));
        // Pushed and flushed, but its record may stay in the log until the space is reused;
        // the zero goes straight to the copies, after a tombstone for it.
        await Ok(cache.ZeroAsync(id, 0, 4096, keepAllocated: false, fua: false));
        await Ok(cache.WriteAsync(id, 4096, Block(11), fua: false)); // partial of nothing: cached again
        await CloseAsync(cache);

        var reopened = OpenCache();
        await reopened.AdoptAsync([Layer], tenure: 1, lastServedHere: true);
        await Ok(reopened.FlushAsync(Layer));
        Assert.Equal(new byte[4096], await Read(B, id, 0, 4096));
        Assert.Equal(Block(11), await Read(B, id, 4096, 4096));
    }

    [Fact]
    public async Task At_the_bound_a_write_waits_for_pushes_instead_of_failing()
    {
        var cache = OpenCache(size: 512 * 1024);
        foreach (var r in Remotes)
            r.Hold();
        var writes = new List<Task<StoreStatus>>();
        for (uint i = 0; i < 40; i++)
            writes.Add(cache.WriteAsync(new ObjectId(Layer, 10 + i), 0, Block((int)i, 4), fua: false).AsTask());
        await Task.Delay(300);
        int done = writes.Count(w => w.IsCompleted);
        Assert.True(done < writes.Count, "every write was taken with nothing pushed: the bound did not hold");
        Assert.True(cache.DirtyBytes <= 512 * 1024, $"{cache.DirtyBytes} bytes unpushed over a 512 KiB bound");
        foreach (var r in Remotes)
            r.Release();
        Assert.All(await Task.WhenAll(writes).WaitAsync(T), s => Assert.Equal(StoreStatus.Ok, s));
        await Ok(cache.FlushAsync(Layer));
        for (uint i = 0; i < 40; i++)
            Assert.Equal(Block((int)i, 4), await Read(C, new ObjectId(Layer, 10 + i), 0, 4 * 4096));
    }

    [Fact]
    public async Task A_push_under_a_lock_generation_that_ended_never_goes_out()
    {
        var cache = OpenCache();
        var id = new ObjectId(Layer, 5);
        foreach (var r in Remotes)
            r.Refuse = true;
        await Ok(cache.WriteAsync(id, 0, Block(12), fua: false));
        Assert.NotEqual(StoreStatus.Ok, await cache.FlushAsync(Layer).AsTask().WaitAsync(T));
        // The lock is lost and taken anew meanwhile (say, after a pause): the push, sent again,
        // must not go out under the new tenure unless the cache is told to adopt it.
        _control.Generation = 2;
        foreach (var r in Remotes)
            r.Refuse = false;
        await Task.Delay(2500);
        Assert.Equal(new byte[4096], await Read(B, id, 0, 4096));
        // Nor is it read under the new tenure (a lock taken only to recover the volume adopts
        // nothing): the read goes to the copies, not one block from the cache.
        long hits = cache.StatsOf(Layer).ReadHits;
        await Read(cache, id, 0, 4096);
        Assert.Equal(hits, cache.StatsOf(Layer).ReadHits);
        Assert.NotEqual(StoreStatus.Ok, await cache.FlushAsync(Layer).AsTask().WaitAsync(T));
        await cache.AdoptAsync([Layer], tenure: 2, lastServedHere: false);
        await Ok(cache.FlushAsync(Layer));
        Assert.Equal(new byte[4096], await Read(B, id, 0, 4096));
    }

    private sealed class Control : IGatewayControl
    {
        public long? Generation { get; set; } = 1;

        public long? GenerationOf(uint layer) => Generation;

        public ValueTask<long?> WaitGenerationAsync(uint layer) => new(Generation);

        public void OnFenced(uint layer, long generation)
        {
        }

        public ValueTask RefreshAsync(long seen) => ValueTask.CompletedTask;

        public ValueTask MarkStaleAsync(string nodeId, long epoch) => ValueTask.CompletedTask;
    }

    /// <summary>A copy whose writes can be held back (a slow link) or refused (a cut one); it
    /// records the order writes reach it in.</summary>
    private sealed class HeldReplica(IReplica inner) : IReplica
    {
        private TaskCompletionSource _open = Opened();

        public bool Refuse { get; set; }

        /// <summary>Added before each write: a link's round trip.</summary>
        public TimeSpan Delay { get; set; }

        private byte[]? _heldData;
        private TaskCompletionSource _dataGate = Opened();

        /// <summary>A write of exactly these bytes waits until <see cref="ReleaseData"/>; others pass.</summary>
        public void HoldData(byte[] data)
        {
            _dataGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
            _heldData = data;
        }

        public void ReleaseData() => _dataGate.TrySetResult();

        public List<ObjectId> Arrived { get; } = [];

        /// <summary>Writes that asked for FUA, and FLUSH requests, that reached the copy.</summary>
        public int FuaWrites;
        public int Flushes;

        public string NodeId => inner.NodeId;

        private static TaskCompletionSource Opened()
        {
            var t = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            t.SetResult();
            return t;
        }

        public void Hold() => _open = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Release() => _open.TrySetResult();

        public async ValueTask<PeerResult> WriteAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua)
        {
            if (Refuse)
                return PeerResult.Unreachable;
            await _open.Task;
            if (Delay > TimeSpan.Zero)
                await Task.Delay(Delay);
            if (_heldData is { } held && data.Span.SequenceEqual(held))
                await _dataGate.Task;
            lock (Arrived)
                Arrived.Add(id);
            if (fua)
                Interlocked.Increment(ref FuaWrites);
            return await inner.WriteAsync(epoch, generation, id, offset, data, fua);
        }

        public ValueTask<PeerResult> ReadAsync(long epoch, ObjectId id, long offset, Memory<byte> buffer) => inner.ReadAsync(epoch, id, offset, buffer);

        public ValueTask<PeerResult> ZeroAsync(long epoch, long generation, ObjectId id, long offset, long length, bool keepAllocated, bool fua)
            => Refuse ? new(PeerResult.Unreachable) : inner.ZeroAsync(epoch, generation, id, offset, length, keepAllocated, fua);

        public ValueTask<PeerResult> FillHolesAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false)
            => Refuse ? new(PeerResult.Unreachable) : inner.FillHolesAsync(epoch, generation, id, offset, data, zeroes, fromReserve);

        public ValueTask<PeerResult> DeleteAsync(long epoch, long generation, ObjectId id)
            => Refuse ? new(PeerResult.Unreachable) : inner.DeleteAsync(epoch, generation, id);

        public ValueTask<PeerResult> FenceAsync(long epoch, uint layer, long generation) => inner.FenceAsync(epoch, layer, generation);

        public ValueTask<PeerResult> FlushAsync(long epoch)
        {
            if (Refuse)
                return new(PeerResult.Unreachable);
            Interlocked.Increment(ref Flushes);
            return inner.FlushAsync(epoch);
        }

        public ValueTask<PeerResult> GetAllocationAsync(long epoch, ObjectId id, long offset, Memory<BlockState> states) => inner.GetAllocationAsync(epoch, id, offset, states);

        public ValueTask<PeerResult> GetBlockSumsAsync(long epoch, ObjectId id, long offset, Memory<BlockSum> sums, bool verify) => inner.GetBlockSumsAsync(epoch, id, offset, sums, verify);

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
