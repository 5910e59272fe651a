using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Etcd;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Store;
using Ovis.Volumes;

namespace Ovis.Cluster.Tests;

/// <summary>
/// Two volume managers, each with a local store of its own, sharing one volume registry on etcd
/// as two nodes of a cluster do: what one changes, the other sees.
/// </summary>
[Collection(EtcdCollection.Name)]
public sealed class SharedRegistryTests(EtcdCluster etcd) : IAsyncLifetime
{
    private const long MiB = 1 << 20;
    private static readonly TimeSpan T = Eventually.Timeout;
    private static readonly LocalStoreOptions StoreOptions = new() { JournalSize = 32L << 20, BatchSize = 1 << 20, BatchCount = 8 };
    private readonly string _cluster = EtcdCluster.NewPrefix("volumes");
    private Node _a = null!;
    private Node _b = null!;

    public async Task InitializeAsync()
    {
        _a = await Node.StartAsync(etcd, _cluster);
        _b = await Node.StartAsync(etcd, _cluster);
    }

    public async Task DisposeAsync()
    {
        await _a.DisposeAsync();
        await _b.DisposeAsync();
    }

    [Fact]
    public async Task A_volume_created_on_one_node_can_be_listed_and_opened_on_the_other()
    {
        VolumeInfo created = await _a.Manager.CreateAsync("vm", 64 * MiB).WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_b.Manager.List().Any(v => v.Name == "vm")), T, "B lists the volume A created");
        VolumeInfo seen = _b.Manager.Get("vm");
        Assert.Equal((created.Id, created.Size, created.ObjectSize), (seen.Id, seen.Size, seen.ObjectSize));
        using Volume? opened = _b.Manager.Open("vm");
        Assert.NotNull(opened);
        Assert.Equal(64 * MiB, opened.Size);

        // Changes go both ways: a resize on B shows on A, a delete on A goes from B.
        await _b.Manager.ResizeAsync("vm", 128 * MiB, allowShrink: false).WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_a.Manager.Get("vm").Size == 128 * MiB), T, "A sees B's resize");
        opened.Dispose();
        await _a.Manager.DeleteAsync("vm").WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_b.Manager.List().Count == 0), T, "B sees A's delete");
        Assert.Null(_b.Manager.Open("vm"));
    }

    [Fact]
    public async Task Concurrent_creates_on_both_nodes_all_succeed_with_distinct_ids()
    {
        const int PerNode = 20;
        Task<VolumeInfo>[] creates =
        [
            .. Enumerable.Range(0, PerNode).Select(i => Task.Run(() => _a.Manager.CreateAsync($"a{i}", 16 * MiB))),
            .. Enumerable.Range(0, PerNode).Select(i => Task.Run(() => _b.Manager.CreateAsync($"b{i}", 16 * MiB))),
        ];
        VolumeInfo[] created = await Task.WhenAll(creates).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(2 * PerNode, created.Select(v => v.Id).Distinct().Count());

        var expected = created.Select(v => (v.Name, v.Id)).OrderBy(v => v.Name, StringComparer.Ordinal).ToList();
        foreach (Node node in (Node[])[_a, _b])
        {
            await Eventually.TrueAsync(() => Task.FromResult(node.Manager.List().Count == 2 * PerNode), T, $"node {node.Name} lists all {2 * PerNode} volumes");
            Assert.Equal(expected, node.Manager.List().Select(v => (v.Name, v.Id)));
        }
        CatalogState registry = (await _a.Registry.LoadAsync().WaitAsync(T)).State;
        Assert.Equal(2 * PerNode, registry.Volumes.Count);
        Assert.True(registry.NextId > registry.Volumes.Max(v => v.Id));
    }

    [Fact]
    public async Task The_same_name_created_on_both_nodes_at_once_is_created_once()
    {
        Task<VolumeInfo>[] creates = [_a.Manager.CreateAsync("same", 16 * MiB), _b.Manager.CreateAsync("same", 32 * MiB)];
        await Task.WhenAll(creates.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).WaitAsync(T);
        Task<VolumeInfo> won = Assert.Single(creates, t => t.IsCompletedSuccessfully);
        var refused = Assert.IsType<VolumeException>(Assert.Single(creates, t => t.IsFaulted).Exception!.InnerException);
        Assert.Equal(VolumeErrorCode.AlreadyExists, refused.Code);

        VolumeInfo winner = await won;
        foreach (Node node in (Node[])[_a, _b])
        {
            await Eventually.TrueAsync(() => Task.FromResult(node.Manager.List().Count == 1), T, $"node {node.Name} lists the volume");
            Assert.Equal((winner.Id, winner.Size), (node.Manager.Get("same").Id, node.Manager.Get("same").Size));
        }
    }

    [Fact]
    public async Task A_cache_mode_set_on_one_node_is_what_the_other_answers_for_the_volume_s_layer()
    {
        VolumeInfo created = await _a.Manager.CreateAsync("vm", 64 * MiB).WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_b.Manager.List().Count == 1), T, "B lists the volume");
        Assert.Equal(CacheMode.Writethrough, _b.Manager.CacheModeOf(created.Id));

        await _a.Manager.SetCacheAsync("vm", CacheMode.Writeback).WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_b.Manager.CacheModeOf(created.Id) == CacheMode.Writeback), T, "B answers writeback for A's volume");
        Assert.Equal(CacheMode.Writeback, _b.Manager.Get("vm").Cache);

        // A snapshot on B moves the volume to a new layer: A follows, the frozen layer is writethrough.
        VolumeInfo snapshot = await _b.Manager.SnapshotAsync("vm", "s1").WaitAsync(T);
        uint live = _b.Manager.Get("vm").Id;
        await Eventually.TrueAsync(() => Task.FromResult(_a.Manager.CacheModeOf(live) == CacheMode.Writeback), T, "A answers writeback for the volume's new layer");
        Assert.Equal(CacheMode.Writethrough, _a.Manager.CacheModeOf(snapshot.Id));

        await _b.Manager.SetCacheAsync("vm", CacheMode.Writethrough).WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_a.Manager.CacheModeOf(live) == CacheMode.Writethrough), T, "A answers writethrough again");
    }

    [Fact]
    public async Task A_snapshot_taken_on_one_node_is_visible_on_the_other()
    {
        VolumeInfo created = await _a.Manager.CreateAsync("vm", 64 * MiB).WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_b.Manager.List().Count == 1), T, "B lists the volume");
        // B has the volume open across A's snapshot.
        using Volume onB = _b.Manager.Open("vm")!;

        VolumeInfo snapshot = await _a.Manager.SnapshotAsync("vm", "s1").WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_b.Manager.List().Any(v => v.Name == "vm@s1")), T, "B lists A's snapshot");
        VolumeInfo snapOnB = _b.Manager.Get("vm@s1");
        Assert.True(snapOnB.IsSnapshot);
        Assert.Equal(snapshot.Id, snapOnB.Id);
        Assert.Equal(created.Id, snapOnB.Id); // the frozen layer keeps its id
        VolumeInfo liveOnB = _b.Manager.Get("vm");
        Assert.Equal(_a.Manager.Get("vm").Id, liveOnB.Id);
        Assert.Equal("vm@s1", liveOnB.Parent);
        using (Volume frozen = _b.Manager.Open("vm@s1")!)
        {
            Assert.True(frozen.IsReadOnly);
        }

        // B's open handle moved to the volume's new top layer: its writes go there, not into the snapshot.
        Assert.Equal(1, liveOnB.Connections);
        Assert.False(onB.IsReadOnly);
        Assert.Equal(StoreStatus.Ok, await onB.WriteAsync(0, new byte[4096], fua: false).AsTask().WaitAsync(T));
        Assert.Equal([liveOnB.Id], _b.Store.ListObjects().Select(o => o.Volume).Distinct());

        // And the other way round: a clone made on B is seen on A, standing on the snapshot.
        await _b.Manager.CloneAsync("vm@s1", "clone").WaitAsync(T);
        await Eventually.TrueAsync(() => Task.FromResult(_a.Manager.List().Any(v => v.Name == "clone")), T, "A lists B's clone");
        Assert.Equal("vm@s1", _a.Manager.Get("clone").Parent);
    }

    private sealed class Node : IAsyncDisposable
    {
        private readonly string _dir;
        private readonly EtcdClient _client;

        private Node(string name, string dir, EtcdClient client, LocalStore store, EtcdVolumeRegistry registry, VolumeManager manager)
        {
            Name = name;
            _dir = dir;
            _client = client;
            Store = store;
            Registry = registry;
            Manager = manager;
        }

        public string Name { get; }

        public LocalStore Store { get; }

        public EtcdVolumeRegistry Registry { get; }

        public VolumeManager Manager { get; }

        public static async Task<Node> StartAsync(EtcdCluster etcd, string cluster)
        {
            string dir = Directory.CreateTempSubdirectory("ovis-node-").FullName;
            var client = new EtcdClient([etcd.ClientUrl]);
            var store = LocalStore.Open(dir, StoreOptions, NullLogger.Instance);
            var registry = new EtcdVolumeRegistry(client, cluster);
            VolumeManager manager = await VolumeManager.OpenAsync(store, registry, NullLogger.Instance).WaitAsync(T);
            return new Node(Path.GetFileName(dir), dir, client, store, registry, manager);
        }

        public async ValueTask DisposeAsync()
        {
            // The manager leaves what it was given: the store and the client are closed here.
            await Manager.DisposeAsync().AsTask().WaitAsync(T);
            await Store.DisposeAsync().AsTask().WaitAsync(T);
            _client.Dispose();
            Directory.Delete(_dir, recursive: true);
        }
    }
}
