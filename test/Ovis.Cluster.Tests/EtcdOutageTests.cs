using Ovis.Cluster.Etcd;
using Ovis.Cluster.Tests.Infrastructure;

namespace Ovis.Cluster.Tests;

/// <summary>
/// The etcd client when etcd goes away: killed and restarted, or frozen with its sockets open.
/// Each test has an etcd of its own, so the shared one stays up for the others.
/// </summary>
public sealed class EtcdOutageTests
{
    private static readonly TimeSpan T = Eventually.Timeout;

    [Fact]
    public async Task A_watch_resumes_after_etcd_restarts_and_sees_each_change_once()
    {
        await using var etcd = new EtcdCluster();
        await etcd.InitializeAsync();
        using var client = new EtcdClient([etcd.ClientUrl]);
        var start = await client.RangePrefixAsync("/w/").WaitAsync(T);
        using var cts = new CancellationTokenSource(T * 2);
        await using var events = client.WatchPrefixAsync("/w/", start.Revision + 1, cts.Token).GetAsyncEnumerator(cts.Token);
        var first = events.NextAsync(T, "the put before the restart");
        await client.PutAsync("/w/a", "1").WaitAsync(T);
        Assert.Equal("1", (await first).Kv.ValueText);

        await etcd.KillAsync();
        await etcd.RestartAsync();
        // The stream broke with etcd; the watch reopens it from the revision after "a".
        await Eventually.TrueAsync(async () =>
        {
            try
            {
                await client.PutAsync("/w/b", "2").WaitAsync(T);
                return true;
            }
            catch (EtcdException)
            {
                return false;
            }
        }, T, "a put after the restart");
        var next = await events.NextAsync(T, "the put after the restart");
        Assert.Equal(("/w/b", "2"), (next.Kv.Key, next.Kv.ValueText));
        await cts.CancelAsync();
    }

    [Fact]
    public async Task A_frozen_etcd_bounds_every_call_and_says_whether_a_transaction_may_have_applied()
    {
        await using var etcd = new EtcdCluster();
        await etcd.InitializeAsync();
        using var client = new EtcdClient([etcd.ClientUrl], TimeSpan.FromSeconds(2));
        await client.PutAsync("/f/k", "before").WaitAsync(T);
        etcd.Pause();
        try
        {
            var txn = await Assert.ThrowsAsync<EtcdException>(() => client.CreateAsync("/f/new", "x"u8.ToArray()).WaitAsync(T));
            Assert.Contains("may have been applied", txn.Message, StringComparison.Ordinal);
            var read = await Assert.ThrowsAsync<EtcdException>(() => client.GetAsync("/f/k").WaitAsync(T));
            Assert.Contains("no etcd endpoint answered", read.Message, StringComparison.Ordinal);
            var watch = client.WatchKeyAsync("/f/k", 0).GetAsyncEnumerator();
            await using (watch)
            {
                await Assert.ThrowsAsync<EtcdException>(() => watch.MoveNextAsync().AsTask().WaitAsync(T));
            }
        }
        finally
        {
            etcd.Resume();
        }
        Assert.Equal("before", (await client.GetAsync("/f/k").WaitAsync(T))!.ValueText);
    }

    [Fact]
    public async Task An_open_watch_on_an_etcd_that_freezes_ends_with_an_error_instead_of_hanging()
    {
        await using var etcd = new EtcdCluster();
        await etcd.InitializeAsync();
        using var client = new EtcdClient([etcd.ClientUrl], TimeSpan.FromSeconds(2));
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        // From the put's revision: a watch from "now" (0) may open after the put and miss it.
        long put = await client.PutAsync("/p/k", "1").WaitAsync(T);
        await using var events = client.WatchKeyAsync("/p/k", put, cts.Token).GetAsyncEnumerator(cts.Token);
        await events.NextAsync(T, "a put before the freeze");

        etcd.Pause();
        try
        {
            // HTTP/2 pings find the dead stream (10 s + 5 s); reopening it fails within the
            // request timeout, and the watcher hears of it (the catalog then retries or fences).
            await Assert.ThrowsAsync<EtcdException>(() => events.MoveNextAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(90)));
        }
        finally
        {
            etcd.Resume();
        }
    }
}
