using Ovis.Cluster.Catalog;
using Ovis.Cluster.Etcd;
using Ovis.Cluster.Tests.Infrastructure;

namespace Ovis.Cluster.Tests;

[Collection(EtcdCollection.Name)]
public sealed class CatalogTests(EtcdCluster etcd)
{
    private static readonly TimeSpan T = Eventually.Timeout;
    private readonly EtcdCatalog _catalog = new(etcd.Client, EtcdCluster.NewPrefix("catalog"));

    private static NodeInfo Node(string id, string zone = "z1") => new(id, $"127.0.0.1:{7000 + id.Length}", zone);

    [Fact]
    public async Task A_cluster_is_formatted_once()
    {
        Assert.Null(await _catalog.ReadFormatAsync().WaitAsync(T));
        var format = await _catalog.FormatAsync(3).WaitAsync(T);
        Assert.Equal(3, format.Copies);
        Assert.Equal(3, (await _catalog.ReadFormatAsync().WaitAsync(T))!.Copies);

        var e = await Assert.ThrowsAsync<CatalogException>(() => _catalog.FormatAsync(2).WaitAsync(T));
        Assert.Contains("already formatted (copies 3", e.Message, StringComparison.Ordinal);
        Assert.Equal(3, (await _catalog.ReadFormatAsync().WaitAsync(T))!.Copies);
        Assert.Equal(0, (await _catalog.ReadMembershipAsync().WaitAsync(T)).Epoch);
    }

    [Fact]
    public async Task Bad_input_is_refused_clearly()
    {
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _catalog.FormatAsync(0).WaitAsync(T));
        Assert.Throws<ArgumentException>(() => new EtcdCatalog(etcd.Client, "a/b"));
        var e = await Assert.ThrowsAsync<CatalogException>(() => _catalog.JoinAsync(Node("n1")).WaitAsync(T));
        Assert.Contains("is not formatted", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Joins_and_leaves_bump_the_epoch_and_a_watcher_sees_them()
    {
        await _catalog.FormatAsync(2).WaitAsync(T);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await using var views = _catalog.WatchMembershipAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        var initial = await views.NextAsync(T, "initial view");
        Assert.Equal((0L, 0), (initial.Epoch, initial.Nodes.Count));

        await using var a = await _catalog.JoinAsync(Node("a")).WaitAsync(T);
        Assert.Equal(1, a.JoinedEpoch);
        var v1 = await views.NextAsync(T, "view after a joined");
        AssertView(v1, 1, "a");

        var b = await _catalog.JoinAsync(Node("b", "z2")).WaitAsync(T);
        var v2 = await views.NextAsync(T, "view after b joined");
        AssertView(v2, 2, "a", "b");
        Assert.Equal("z2", v2.Nodes[1].Zone);

        await b.DisposeAsync().AsTask().WaitAsync(T);
        var v3 = await views.NextAsync(T, "view after b left");
        AssertView(v3, 3, "a");
        await cts.CancelAsync();
    }

    [Fact]
    public async Task A_node_id_cannot_join_twice()
    {
        await _catalog.FormatAsync(1).WaitAsync(T);
        await using var a = await _catalog.JoinAsync(Node("a")).WaitAsync(T);
        // The second waits as long as a lease of its own would live (2 s here), then gives up.
        var e = await Assert.ThrowsAsync<CatalogException>(() => _catalog.JoinAsync(Node("a"), ttlSeconds: 2).WaitAsync(T));
        Assert.Contains("already a member", e.Message, StringComparison.Ordinal);
        Assert.Equal(1, (await _catalog.ReadMembershipAsync().WaitAsync(T)).Epoch);
    }

    [Fact]
    public async Task A_node_restarted_after_a_crash_joins_once_its_old_lease_runs_out()
    {
        await _catalog.FormatAsync(1).WaitAsync(T);
        var crashed = await _catalog.JoinAsync(Node("a"), ttlSeconds: 2).WaitAsync(T);
        await crashed.AbandonAsync(); // stops renewing, as kill -9 would
        await using var again = await _catalog.JoinAsync(Node("a"), ttlSeconds: 2).WaitAsync(T);
        Assert.Equal(["a"], (await _catalog.ReadMembershipAsync().WaitAsync(T)).Nodes.Select(n => n.Id));
    }

    [Fact]
    public async Task A_dead_node_disappears_when_its_lease_runs_out_and_the_epoch_moves_on()
    {
        await _catalog.FormatAsync(2).WaitAsync(T);
        await using var survivor = await _catalog.JoinAsync(Node("survivor"), ttlSeconds: 10).WaitAsync(T);
        var dead = await _catalog.JoinAsync(Node("dead"), ttlSeconds: 2).WaitAsync(T);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await using var views = _catalog.WatchMembershipAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        var before = await views.NextAsync(T, "initial view");
        AssertView(before, 2, "dead", "survivor");

        // A kill -9: the keepalive stops and nothing is given back.
        await dead.AbandonAsync().WaitAsync(T);
        var after = await views.NextAsync(T, "view after the dead node's lease ran out");
        AssertView(after, 3, "survivor");
        Assert.False(survivor.Lost.IsCancellationRequested);
        // Its renewals kept the survivor alive past several of the dead node's TTLs.
        Assert.Equal(["survivor"], Ids(await _catalog.ReadMembershipAsync().WaitAsync(T)));
        await cts.CancelAsync();
    }

    [Fact]
    public async Task A_volume_lock_is_exclusive_and_released_on_dispose()
    {
        await _catalog.FormatAsync(2).WaitAsync(T);
        await using var a = await _catalog.JoinAsync(Node("a")).WaitAsync(T);
        await using var b = await _catalog.JoinAsync(Node("b")).WaitAsync(T);

        var lockA = await _catalog.TryAcquireVolumeLockAsync("vol1", a).WaitAsync(T);
        Assert.NotNull(lockA);
        Assert.Null(await _catalog.TryAcquireVolumeLockAsync("vol1", b).WaitAsync(T));
        Assert.Null(await _catalog.TryAcquireVolumeLockAsync("vol1", a).WaitAsync(T));
        Assert.Equal("a", await _catalog.GetVolumeLockHolderAsync("vol1").WaitAsync(T));
        // Locks are per volume.
        await using var other = await _catalog.TryAcquireVolumeLockAsync("vol2", b).WaitAsync(T);
        Assert.NotNull(other);

        await lockA.DisposeAsync().AsTask().WaitAsync(T);
        Assert.Null(await _catalog.GetVolumeLockHolderAsync("vol1").WaitAsync(T));
        await using var lockB = await _catalog.TryAcquireVolumeLockAsync("vol1", b).WaitAsync(T);
        Assert.NotNull(lockB);
        Assert.Equal("b", await _catalog.GetVolumeLockHolderAsync("vol1").WaitAsync(T));
    }

    [Fact]
    public async Task A_crashed_holder_loses_the_lock_when_its_lease_runs_out()
    {
        await _catalog.FormatAsync(2).WaitAsync(T);
        var crashed = await _catalog.JoinAsync(Node("crashed"), ttlSeconds: 2).WaitAsync(T);
        await using var taker = await _catalog.JoinAsync(Node("taker")).WaitAsync(T);
        var stale = await _catalog.TryAcquireVolumeLockAsync("vol", crashed).WaitAsync(T);
        Assert.NotNull(stale);

        await crashed.AbandonAsync().WaitAsync(T);
        Assert.Null(await _catalog.TryAcquireVolumeLockAsync("vol", taker).WaitAsync(T));
        await using var taken = await Eventually.ValueAsync(
            () => _catalog.TryAcquireVolumeLockAsync("vol", taker), T, "the taker gets the lock after the holder's lease ran out");
        Assert.Equal("taker", await _catalog.GetVolumeLockHolderAsync("vol").WaitAsync(T));

        // The old holder's late release must not free the new tenure.
        await stale.DisposeAsync().AsTask().WaitAsync(T);
        Assert.Equal("taker", await _catalog.GetVolumeLockHolderAsync("vol").WaitAsync(T));
    }

    [Fact]
    public async Task Leaving_releases_the_nodes_locks()
    {
        await _catalog.FormatAsync(1).WaitAsync(T);
        var a = await _catalog.JoinAsync(Node("a")).WaitAsync(T);
        Assert.NotNull(await _catalog.TryAcquireVolumeLockAsync("vol", a).WaitAsync(T));
        await a.DisposeAsync().AsTask().WaitAsync(T);
        Assert.Null(await _catalog.GetVolumeLockHolderAsync("vol").WaitAsync(T));
        Assert.Null(await etcd.Client.GetAsync($"/ovis/{_catalog.Cluster}/nodes/a").WaitAsync(T));
    }

    [Fact]
    public async Task A_live_node_is_neither_marked_down_nor_taken_out()
    {
        await _catalog.FormatAsync(1).WaitAsync(T);
        await using var a = await _catalog.JoinAsync(Node("a")).WaitAsync(T);
        await using var b = await _catalog.JoinAsync(Node("b", "z2")).WaitAsync(T);

        Assert.Null(await _catalog.MarkDownAsync("b").WaitAsync(T));
        Assert.False(await _catalog.TakeOutAsync("b", DateTimeOffset.UtcNow).WaitAsync(T));
        var view = await _catalog.ReadMembershipAsync().WaitAsync(T);
        Assert.Equal(2, view.Epoch);
        Assert.Equal(["a", "b"], MemberIds(view));
        Assert.Empty(await _catalog.ReadDownSinceAsync().WaitAsync(T));
    }

    [Fact]
    public async Task Taking_out_is_refused_when_the_others_would_span_fewer_zones_than_copies()
    {
        await _catalog.FormatAsync(2).WaitAsync(T);
        await using var a = await _catalog.JoinAsync(Node("a", "z1")).WaitAsync(T);
        var b = await _catalog.JoinAsync(Node("b", "z2")).WaitAsync(T);
        await b.DisposeAsync().AsTask().WaitAsync(T); // leaves: no longer live, still a member

        Assert.NotNull(await _catalog.MarkDownAsync("b").WaitAsync(T));
        Assert.False(await _catalog.TakeOutAsync("b", DateTimeOffset.UtcNow).WaitAsync(T));
        var view = await _catalog.ReadMembershipAsync().WaitAsync(T);
        Assert.Equal(3, view.Epoch);
        Assert.Equal(["a", "b"], MemberIds(view));
        Assert.Contains("fewer than the 2 copies", EtcdCatalog.WhyNotTakeOut((await _catalog.ReadFormatAsync().WaitAsync(T))!, view, "b"),
            StringComparison.Ordinal);
    }

    [Fact]
    public async Task Draining_bumps_the_epoch_keeps_the_member_and_is_refused_when_too_few_zones_would_hold_copies()
    {
        await _catalog.FormatAsync(2).WaitAsync(T);
        await using var a = await _catalog.JoinAsync(Node("a", "z1")).WaitAsync(T);
        await using var b = await _catalog.JoinAsync(Node("b", "z2")).WaitAsync(T);
        var c = await _catalog.JoinAsync(Node("c", "z3")).WaitAsync(T);

        Assert.True(await _catalog.SetDrainingAsync("c", true).WaitAsync(T));
        var view = await _catalog.ReadMembershipAsync().WaitAsync(T);
        Assert.Equal(4, view.Epoch);
        Assert.Equal(["c"], view.Draining);
        Assert.Equal(["a", "b", "c"], MemberIds(view));
        Assert.Equal(3, view.Nodes.Count);
        Assert.False(await _catalog.SetDrainingAsync("c", true).WaitAsync(T)); // already: nothing changes
        Assert.Equal(4, (await _catalog.ReadMembershipAsync().WaitAsync(T)).Epoch);

        // Two zones left to hold two copies: neither a nor b may go too.
        var e = await Assert.ThrowsAsync<CatalogException>(() => _catalog.SetDrainingAsync("b", true).WaitAsync(T));
        Assert.Equal("draining node 'b' would leave 1 zone(s) (z1) for the 2 copies of cluster '" + _catalog.Cluster + "': add a node in another zone first", e.Message);
        e = await Assert.ThrowsAsync<CatalogException>(() => _catalog.SetDrainingAsync("x", true).WaitAsync(T));
        Assert.Contains("node 'x' is not a member", e.Message, StringComparison.Ordinal);
        var format = (await _catalog.ReadFormatAsync().WaitAsync(T))!;
        Assert.Contains("the other members that are not draining span 1 zone(s)", EtcdCatalog.WhyNotTakeOut(format, view, "b"), StringComparison.Ordinal);

        Assert.True(await _catalog.SetDrainingAsync("c", false).WaitAsync(T));
        Assert.Empty((await _catalog.ReadMembershipAsync().WaitAsync(T)).Draining);
        Assert.True(await _catalog.SetDrainingAsync("c", true).WaitAsync(T));

        // Taken out (stopped, then removed): the mark goes with the member.
        await c.DisposeAsync().AsTask().WaitAsync(T);
        Assert.NotNull(await _catalog.MarkDownAsync("c").WaitAsync(T));
        Assert.True(await _catalog.TakeOutAsync("c", DateTimeOffset.MaxValue).WaitAsync(T));
        var after = await _catalog.ReadMembershipAsync().WaitAsync(T);
        Assert.Equal(["a", "b"], MemberIds(after));
        Assert.Empty(after.Draining);
    }

    [Fact]
    public async Task A_down_member_is_taken_out_once_when_callers_race_and_not_before_its_time()
    {
        await _catalog.FormatAsync(2).WaitAsync(T);
        await using var a = await _catalog.JoinAsync(Node("a", "z1")).WaitAsync(T);
        await using var b = await _catalog.JoinAsync(Node("b", "z2")).WaitAsync(T);
        var c = await _catalog.JoinAsync(Node("c", "z3")).WaitAsync(T);
        await c.DisposeAsync().AsTask().WaitAsync(T);
        await _catalog.MarkStaleAsync("c", "a", 4).WaitAsync(T);

        var since = await _catalog.MarkDownAsync("c").WaitAsync(T);
        Assert.NotNull(since);
        // The first record stands: a second caller gets the same time.
        Assert.Equal(since, await _catalog.MarkDownAsync("c").WaitAsync(T));
        Assert.Equal(since, (await _catalog.ReadDownSinceAsync().WaitAsync(T))["c"]);
        Assert.False(await _catalog.TakeOutAsync("c", since!.Value.AddSeconds(-1)).WaitAsync(T));
        var before = await _catalog.ReadMembershipAsync().WaitAsync(T);
        Assert.Equal(4, before.Epoch);
        Assert.Equal(["a", "b", "c"], MemberIds(before));

        var raced = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => _catalog.TakeOutAsync("c", since.Value))).WaitAsync(T);
        Assert.Single(raced, taken => taken);
        var after = await _catalog.ReadMembershipAsync().WaitAsync(T);
        Assert.Equal(5, after.Epoch); // bumped once, for the same live nodes
        Assert.Equal(["a", "b"], MemberIds(after));
        Assert.Equal(["a", "b"], Ids(after));
        Assert.Empty(after.Stale);
        Assert.Empty(await _catalog.ReadDownSinceAsync().WaitAsync(T));
        Assert.False(await _catalog.TakeOutAsync("c", DateTimeOffset.UtcNow).WaitAsync(T));
        Assert.Null(await _catalog.MarkDownAsync("c").WaitAsync(T));
    }

    [Fact]
    public async Task Joining_again_deletes_the_down_record_and_a_node_taken_out_joins_as_a_new_member()
    {
        await _catalog.FormatAsync(1).WaitAsync(T);
        await using var a = await _catalog.JoinAsync(Node("a")).WaitAsync(T);
        var b = await _catalog.JoinAsync(Node("b")).WaitAsync(T);
        await b.DisposeAsync().AsTask().WaitAsync(T);
        Assert.NotNull(await _catalog.MarkDownAsync("b").WaitAsync(T));

        b = await _catalog.JoinAsync(Node("b"), asMember: true).WaitAsync(T);
        Assert.Empty(await _catalog.ReadDownSinceAsync().WaitAsync(T));

        await b.DisposeAsync().AsTask().WaitAsync(T);
        var since = await _catalog.MarkDownAsync("b").WaitAsync(T);
        Assert.True(await _catalog.TakeOutAsync("b", since!.Value).WaitAsync(T));
        // A node that trusted its copies as a member must not join as a new one with them.
        var e = await Assert.ThrowsAsync<CatalogException>(() => _catalog.JoinAsync(Node("b"), asMember: true).WaitAsync(T));
        Assert.Contains("was taken out of cluster", e.Message, StringComparison.Ordinal);
        await using var again = await _catalog.JoinAsync(Node("b")).WaitAsync(T);
        Assert.Equal(["a", "b"], MemberIds(await _catalog.ReadMembershipAsync().WaitAsync(T)));
    }

    private static void AssertView(MembershipView view, long epoch, params string[] ids)
    {
        Assert.Equal(epoch, view.Epoch);
        Assert.Equal(ids, Ids(view));
    }

    private static string[] Ids(MembershipView view) => [.. view.Nodes.Select(n => n.Id)];

    private static string[] MemberIds(MembershipView view) => [.. view.Members.Select(n => n.Id)];
}
