using System.Net;
using System.Net.Sockets;
using System.Text;
using Ovis.Cluster.Etcd;
using Ovis.Cluster.Tests.Infrastructure;

namespace Ovis.Cluster.Tests;

[Collection(EtcdCollection.Name)]
public sealed class EtcdClientTests(EtcdCluster etcd)
{
    private static readonly TimeSpan T = Eventually.Timeout;
    private readonly EtcdClient _client = etcd.Client;
    private readonly string _prefix = $"/test/{EtcdCluster.NewPrefix("client")}/";

    [Fact]
    public async Task Put_get_range_delete()
    {
        long r1 = await _client.PutAsync(_prefix + "a", "one").WaitAsync(T);
        long r2 = await _client.PutAsync(_prefix + "b", "two").WaitAsync(T);
        await _client.PutAsync(_prefix.TrimEnd('/') + "0", "outside the prefix").WaitAsync(T);
        Assert.True(r2 > r1);

        var a = await _client.GetAsync(_prefix + "a").WaitAsync(T);
        Assert.NotNull(a);
        Assert.Equal("one", a.ValueText);
        Assert.Equal(r1, a.CreateRevision);
        Assert.Equal(r1, a.ModRevision);
        Assert.Equal(1, a.Version);
        Assert.Null(await _client.GetAsync(_prefix + "missing").WaitAsync(T));

        await _client.PutAsync(_prefix + "a", "uno").WaitAsync(T);
        a = await _client.GetAsync(_prefix + "a").WaitAsync(T);
        Assert.Equal(("uno", r1, 2L), (a!.ValueText, a.CreateRevision, a.Version));

        var range = await _client.RangePrefixAsync(_prefix).WaitAsync(T);
        Assert.Equal([_prefix + "a", _prefix + "b"], range.Kvs.Select(kv => kv.Key));
        Assert.True(range.Revision >= a.ModRevision);

        Assert.Equal(1, await _client.DeleteAsync(_prefix + "a").WaitAsync(T));
        Assert.Equal(0, await _client.DeleteAsync(_prefix + "a").WaitAsync(T));
        Assert.Null(await _client.GetAsync(_prefix + "a").WaitAsync(T));
        Assert.Equal(1, await _client.DeletePrefixAsync(_prefix).WaitAsync(T));
        Assert.Empty((await _client.RangePrefixAsync(_prefix).WaitAsync(T)).Kvs);
    }

    [Fact]
    public async Task Binary_values_and_non_ascii_keys_round_trip()
    {
        byte[] value = [0, 1, 2, 0xff, 0xfe, (byte)'\n'];
        string key = _prefix + "ключ/ü";
        await _client.PutAsync(key, value).WaitAsync(T);
        var kv = await _client.GetAsync(key).WaitAsync(T);
        Assert.Equal(value, kv!.Value);
        Assert.Equal(key, kv.Key);
    }

    [Fact]
    public void Prefix_end_increments_the_last_byte_below_0xff()
    {
        Assert.Equal("/b"u8.ToArray(), EtcdClient.PrefixEnd("/a"u8.ToArray()));
        Assert.Equal(new byte[] { 0x62 }, EtcdClient.PrefixEnd([0x61, 0xff, 0xff]));
        Assert.Equal(new byte[] { 0 }, EtcdClient.PrefixEnd([0xff]));
    }

    [Fact]
    public async Task Create_if_absent_succeeds_once()
    {
        string key = _prefix + "once";
        var (created, existing) = await _client.CreateAsync(key, "first"u8.ToArray()).WaitAsync(T);
        Assert.True(created);
        Assert.Null(existing);

        (created, existing) = await _client.CreateAsync(key, "second"u8.ToArray()).WaitAsync(T);
        Assert.False(created);
        Assert.Equal("first", existing!.ValueText);
        Assert.Equal("first", (await _client.GetAsync(key).WaitAsync(T))!.ValueText);
    }

    [Fact]
    public async Task Compare_and_swap_on_mod_revision()
    {
        string key = _prefix + "cas";
        long rev = await _client.PutAsync(key, "v1").WaitAsync(T);

        Assert.True(await _client.CompareAndSwapAsync(key, rev, "v2"u8.ToArray()).WaitAsync(T));
        // A writer that read at `rev` lost the race: its swap is refused and changes nothing.
        Assert.False(await _client.CompareAndSwapAsync(key, rev, "v3"u8.ToArray()).WaitAsync(T));
        var kv = await _client.GetAsync(key).WaitAsync(T);
        Assert.Equal("v2", kv!.ValueText);
        Assert.True(await _client.CompareAndSwapAsync(key, kv.ModRevision, "v3"u8.ToArray()).WaitAsync(T));
    }

    [Fact]
    public async Task Txn_runs_one_branch_atomically_and_returns_its_reads()
    {
        string a = _prefix + "a", b = _prefix + "b";
        await _client.PutAsync(a, "x").WaitAsync(T);
        var result = await _client.TxnAsync(
            [EtcdCompare.ValueEquals(a, "x"u8.ToArray()), EtcdCompare.Absent(b)],
            [EtcdOp.PutText(b, "y"), new EtcdOp.Delete(a), new EtcdOp.Range(_prefix, Prefix: true)],
            [new EtcdOp.Range(a)]).WaitAsync(T);
        Assert.True(result.Succeeded);
        Assert.Equal(3, result.Reads.Count);
        Assert.Equal([b], result.Reads[2].Select(kv => kv.Key));

        result = await _client.TxnAsync([EtcdCompare.Absent(b)], [new EtcdOp.Delete(b)], [new EtcdOp.Range(b)]).WaitAsync(T);
        Assert.False(result.Succeeded);
        Assert.Equal("y", Assert.Single(result.Reads[0]).ValueText);
        Assert.NotNull(await _client.GetAsync(b).WaitAsync(T));
    }

    [Fact]
    public async Task A_key_disappears_when_its_lease_runs_out()
    {
        var lease = await _client.GrantLeaseAsync(2).WaitAsync(T);
        Assert.NotEqual(0, lease.Id);
        string key = _prefix + "leased";
        await _client.PutAsync(key, "alive", lease.Id).WaitAsync(T);
        Assert.Equal(lease.Id, (await _client.GetAsync(key).WaitAsync(T))!.Lease);
        Assert.True(await _client.KeepAliveOnceAsync(lease.Id).WaitAsync(T) > 0);

        await Eventually.TrueAsync(async () => await _client.GetAsync(key) is null, T, "the leased key expires");
        Assert.Equal(0, await _client.KeepAliveOnceAsync(lease.Id).WaitAsync(T));
        Assert.False(await _client.RevokeAsync(lease.Id).WaitAsync(T));
    }

    [Fact]
    public async Task Revoking_a_lease_deletes_its_keys()
    {
        var lease = await _client.GrantLeaseAsync(60).WaitAsync(T);
        await _client.PutAsync(_prefix + "k", "v", lease.Id).WaitAsync(T);
        Assert.InRange(await _client.TimeToLiveAsync(lease.Id).WaitAsync(T), 1, 60);
        Assert.True(await _client.RevokeAsync(lease.Id).WaitAsync(T));
        Assert.Null(await _client.GetAsync(_prefix + "k").WaitAsync(T));
        Assert.Equal(-1, await _client.TimeToLiveAsync(lease.Id).WaitAsync(T));
    }

    [Fact]
    public async Task Putting_with_an_unknown_lease_is_a_clear_error()
    {
        var e = await Assert.ThrowsAsync<EtcdException>(() => _client.PutAsync(_prefix + "k", "v", leaseId: 12345).WaitAsync(T));
        Assert.Contains("lease not found", e.Message, StringComparison.Ordinal);
        Assert.Equal(5, e.GrpcCode);
    }

    [Fact]
    public async Task Watch_sees_puts_and_deletes_in_order()
    {
        var start = await _client.RangePrefixAsync(_prefix).WaitAsync(T);
        using var cts = new CancellationTokenSource(T);
        await using var events = _client.WatchPrefixAsync(_prefix, start.Revision + 1, cts.Token).GetAsyncEnumerator(cts.Token);
        var first = events.NextAsync(T, "first watch event");

        long put = await _client.PutAsync(_prefix + "w", "hello").WaitAsync(T);
        await _client.PutAsync("/test/elsewhere-" + Guid.NewGuid().ToString("N"), "unrelated").WaitAsync(T);
        await _client.DeleteAsync(_prefix + "w").WaitAsync(T);

        var e1 = await first;
        Assert.Equal((EtcdEventType.Put, _prefix + "w", "hello", put), (e1.Type, e1.Kv.Key, e1.Kv.ValueText, e1.Kv.ModRevision));
        var e2 = await events.NextAsync(T, "delete event");
        Assert.Equal((EtcdEventType.Delete, _prefix + "w"), (e2.Type, e2.Kv.Key));
        Assert.True(e2.Kv.ModRevision > put);
        await cts.CancelAsync();
    }

    [Fact]
    public async Task Watch_from_a_past_revision_replays_history()
    {
        long r1 = await _client.PutAsync(_prefix + "h", "1").WaitAsync(T);
        await _client.PutAsync(_prefix + "h", "2").WaitAsync(T);
        using var cts = new CancellationTokenSource(T);
        await using var events = _client.WatchPrefixAsync(_prefix, r1, cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.Equal("1", (await events.NextAsync(T, "replayed put 1")).Kv.ValueText);
        Assert.Equal("2", (await events.NextAsync(T, "replayed put 2")).Kv.ValueText);
        await cts.CancelAsync();
    }

    [Fact]
    public async Task A_dead_endpoint_is_skipped()
    {
        using var client = new EtcdClient([$"http://127.0.0.1:{ClosedPort()}", etcd.ClientUrl]);
        await client.PutAsync(_prefix + "failover", "ok").WaitAsync(T);
        Assert.Equal("ok", (await client.GetAsync(_prefix + "failover").WaitAsync(T))!.ValueText);
        // Txns are retried too when the connection could not even be opened.
        var (created, _) = await client.CreateAsync(_prefix + "failover-txn", "x"u8.ToArray()).WaitAsync(T);
        Assert.True(created);
    }

    [Fact]
    public async Task No_reachable_endpoint_is_a_clear_error()
    {
        using var client = new EtcdClient([$"http://127.0.0.1:{ClosedPort()}"]);
        var e = await Assert.ThrowsAsync<EtcdException>(() => client.GetAsync("/x").WaitAsync(T));
        Assert.Contains("no etcd endpoint answered", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Endpoints_must_be_http_urls()
    {
        Assert.Throws<ArgumentException>(() => new EtcdClient(["127.0.0.1:2379"]));
        Assert.Throws<ArgumentException>(() => new EtcdClient([]));
    }

    private static int ClosedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
