using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// The gateway writeback cache (docs/writeback-cache.md) on real daemons whose peer links cross
/// delaying proxies: writes acknowledged from the gateway's cache log, flushed onto every copy,
/// read back through another node; a frozen gateway's cache never lands over its successor's
/// writes; a killed gateway loses nothing that was flushed.
/// </summary>
public sealed class ClusterCacheTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private static readonly TimeSpan OneWay = TimeSpan.FromMilliseconds(2);

    /// <summary>Three nodes, three copies, links delayed by <paramref name="oneWay"/> (2 ms if not
    /// given); volume <c>v</c> (16 MiB) in writeback, known to every node. Every write is cached
    /// unless <paramref name="writeAround"/>.</summary>
    private async Task<ClusterNodes> WritebackCluster(TimeSpan? oneWay = null, bool writeAround = false)
    {
        string[] extra = writeAround ? ["--cache-size", "16M"] : ["--cache-size", "16M", "--no-write-around"];
        var nodes = await StartDelayedCluster(copies: 3, oneWay ?? OneWay, extra: extra);
        try
        {
            await Create(nodes[0], "v", "16M");
            await Json(nodes[0], "vdi", "set", "v", "cache=writeback");
            foreach (var node in nodes)
                await Eventually(async () => (await Json(node, "vdi", "info", "v")).GetProperty("cache").GetString() == "writeback", LeaseMargin, $"{node} has v in writeback");
            return nodes;
        }
        catch
        {
            await nodes.DisposeAsync();
            throw;
        }
    }

    [Fact]
    public async Task Writes_acknowledged_from_the_cache_are_flushed_onto_every_copy_and_read_through_another_node()
    {
        await using var nodes = await WritebackCluster();
        await using (var client = await ConnectWhenFree(nodes[0]))
        {
            // Links to b and c so slow that nothing reaches them for a while: what the gateway
            // acknowledged is in its cache only, and it says so. Slowed once the volume is open:
            // a recovery slice that holds its lock (a node's background scan of idle volumes)
            // would otherwise take longer than a client waits for it.
            nodes.Proxies[1].Delay = nodes.Proxies[2].Delay = TimeSpan.FromSeconds(4);
            byte[] data = TestData.RandomBytes(1 * TestData.MiB, seed: 7);
            for (int off = 0; off < data.Length; off += 64 * 1024)
                await client.WriteAsync(off, data.AsMemory(off, 64 * 1024), CancellationToken.None);
            var info = await Json(nodes[0], "vdi", "info", "v");
            var stats = info.GetProperty("cacheStats");
            Assert.True(stats.GetProperty("dirtyBytes").GetInt64() > 0, $"nothing dirty right after the writes: {info}");
            var back = new byte[data.Length];
            await client.ReadAsync(0, back, CancellationToken.None);
            Assert.Equal(data, back);
            Assert.True((await Json(nodes[0], "vdi", "info", "v")).GetProperty("cacheStats").GetProperty("readHits").GetInt64() > 0, "the read was not served from the cache");
            var text = await nodes[0].Cli("vdi", "info", "v");
            Assert.Matches(@"(?m)^Cache:\s+writeback \(dirty .+, push lag \d+ ms, hit ratio", text.Stdout);
            var metrics = await nodes[0].AdminHttp().GetStringAsync(new Uri(nodes[0].AdminUrl + "/metrics"));
            Assert.Matches(@"ovis_cache_dirty_bytes\{[^}]*volume=""v""[^}]*\} [1-9]", metrics);

            nodes.Proxies[1].Delay = nodes.Proxies[2].Delay = OneWay;
            await client.FlushAsync(CancellationToken.None);
            Assert.Equal(0, (await Json(nodes[0], "vdi", "info", "v")).GetProperty("cacheStats").GetProperty("dirtyBytes").GetInt64());
        }
        // The gateway let go of the lock after pushing everything: another node reads it all.
        await QemuIo(nodes[1].NbdUri("v"), "read -P 0 1M 15M");
        var copy = await ReadAll(nodes[1], 1 * TestData.MiB);
        Assert.Equal(TestData.RandomBytes(1 * TestData.MiB, seed: 7), copy);
    }

    [Fact]
    public async Task Writes_go_around_the_cache_while_the_links_are_fast_and_through_it_once_they_are_slow()
    {
        await using var nodes = await WritebackCluster(oneWay: TimeSpan.Zero, writeAround: true);
        const int Blocks = 1024;
        var last = new byte[Blocks][];
        var rng = new Random(12);
        async Task WriteFor(Ovis.Nbd.NbdClient client, TimeSpan time)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (clock.Elapsed < time)
            {
                int b = rng.Next(Blocks);
                last[b] = TestData.RandomBytes(4096, seed: rng.Next());
                await client.WriteAsync(b * 4096L, last[b], CancellationToken.None);
            }
        }
        JsonElement Stats(JsonElement info) => info.GetProperty("cacheStats");
        await using (var client = await Ovis.Nbd.NbdClient.ConnectAsync(nodes[0].NbdUri("v"), CancellationToken.None))
        {
            // The copies answer in well under the cache log's sync: writes go straight to them.
            await WriteFor(client, TimeSpan.FromSeconds(2));
            var info = await Json(nodes[0], "vdi", "info", "v");
            Assert.True(Stats(info).GetProperty("aroundWrites").GetInt64() > 0, $"no write went around the cache on fast links: {info}");
            var metrics = await nodes[0].AdminHttp().GetStringAsync(new Uri(nodes[0].AdminUrl + "/metrics"));
            Assert.Matches(@"ovis_cache_around_writes_total\{[^}]*volume=""v""[^}]*\} [1-9]", metrics);
            Assert.Matches(@"(?m)^Cache:\s+writeback \(.*writes around\)", (await nodes[0].Cli("vdi", "info", "v")).Stdout);

            // Slow links: a window of writes around costs their round trip, and the cache takes over.
            foreach (var p in nodes.Proxies)
                p.Delay = TimeSpan.FromMilliseconds(5);
            await WriteFor(client, TimeSpan.FromSeconds(1));
            info = await Json(nodes[0], "vdi", "info", "v");
            Assert.False(Stats(info).GetProperty("around").GetBoolean(), $"writes still go around the cache behind 5 ms links: {info}");
            long around = Stats(info).GetProperty("aroundWrites").GetInt64();
            await WriteFor(client, TimeSpan.FromSeconds(1));
            info = await Json(nodes[0], "vdi", "info", "v");
            Assert.Equal(around, Stats(info).GetProperty("aroundWrites").GetInt64());
            await client.FlushAsync(CancellationToken.None);
        }
        // Whatever way each write took, another node reads the last write of every block.
        var copy = await ReadAll(nodes[1], Blocks * 4096);
        for (int b = 0; b < Blocks; b++)
            Assert.True(copy.AsSpan(b * 4096, 4096).SequenceEqual(last[b] ?? new byte[4096]), $"block {b} differs through node b");
    }

    [Fact]
    public async Task A_killed_gateway_loses_no_flushed_write_and_the_next_one_sees_a_flush_order_prefix()
    {
        await using var nodes = await WritebackCluster();
        const int Blocks = 256;
        var flushed = new byte[Blocks][];
        var client = await Ovis.Nbd.NbdClient.ConnectAsync(nodes[0].NbdUri("v"), CancellationToken.None);
        // Epoch 1: every block written and flushed; epoch 2: every block again, not flushed, behind slow links.
        for (int b = 0; b < Blocks; b++)
        {
            flushed[b] = Block(1, b);
            await client.WriteAsync(b * 4096L, flushed[b], CancellationToken.None);
        }
        await client.FlushAsync(CancellationToken.None);
        nodes.Proxies[1].Delay = nodes.Proxies[2].Delay = TimeSpan.FromMilliseconds(50);
        for (int b = 0; b < Blocks; b++)
            await client.WriteAsync(b * 4096L, Block(2, b), CancellationToken.None);
        await nodes[0].KillAsync();
        await client.DisposeAsync();
        nodes.Proxies[1].Delay = nodes.Proxies[2].Delay = OneWay;

        // Node b takes over once a's lease is gone: each block is epoch 1 or epoch 2, never torn.
        byte[] seen = await ReadAll(nodes[1], Blocks * 4096);
        int second = 0;
        for (int b = 0; b < Blocks; b++)
        {
            var block = seen.AsSpan(b * 4096, 4096);
            if (block.SequenceEqual(Block(2, b)))
                second++;
            else
                Assert.True(block.SequenceEqual(flushed[b]), $"block {b} is neither its flushed value nor its later write");
        }
        Output.WriteLine($"{second} of {Blocks} unflushed writes reached the copies before the kill");

        Assert.Equal(seen, await ReadAll(nodes[2], Blocks * 4096));

        // The killed gateway comes back with a cache for a volume another node served since: it
        // drops it (its log says so). Its own store's copy may still hold unflushed writes the
        // others never got; b's takeover marked it stale for them, so serving the volume itself
        // now, it reads exactly what b read — no old write comes back.
        await nodes[0].StartAsync();
        await Eventually(() => Task.FromResult(nodes[0].Log.Contains("unflushed bytes in the writeback cache dropped", StringComparison.Ordinal)),
            LeaseMargin, "node a drops the cache of a volume node b served since");
        int? changed = Changed(seen, await ReadAll(nodes[0], Blocks * 4096));
        Assert.True(changed is null, $"block {changed} read through the restarted gateway differs from what node b read");
    }

    [Fact]
    public async Task A_frozen_gateways_cache_never_lands_over_the_next_holders_writes()
    {
        await using var nodes = await WritebackCluster();
        const int Blocks = 128;
        // a acknowledges writes it cannot push yet (its links are slow), then freezes.
        nodes.Proxies[1].Delay = nodes.Proxies[2].Delay = TimeSpan.FromSeconds(2);
        var stale = await Ovis.Nbd.NbdClient.ConnectAsync(nodes[0].NbdUri("v"), CancellationToken.None);
        for (int b = 0; b < Blocks; b++)
            await stale.WriteAsync(b * 4096L, Block(1, b), CancellationToken.None);
        nodes[0].Pause();
        nodes.Proxies[1].Delay = nodes.Proxies[2].Delay = OneWay;

        // b takes the volume over (a's lease runs out) and writes every block, flushed.
        await using (var next = await ConnectWhenFree(nodes[1]))
        {
            for (int b = 0; b < Blocks; b++)
                await next.WriteAsync(b * 4096L, Block(2, b), CancellationToken.None);
            await next.FlushAsync(CancellationToken.None);
            nodes[0].Resume();
            // a's pushes of its old writes go out now, under its old lock generation: fenced.
            await Task.Delay(TimeSpan.FromSeconds(4));
            var back = new byte[Blocks * 4096];
            await next.ReadAsync(0, back, CancellationToken.None);
            for (int b = 0; b < Blocks; b++)
                Assert.True(back.AsSpan(b * 4096, 4096).SequenceEqual(Block(2, b)), $"block {b}: the frozen gateway's write landed over the new holder's");
        }
        await stale.DisposeAsync();

        // a serves the volume again: its cache from the old tenure is dropped, never read.
        byte[] viaA = await ReadAll(nodes[0], Blocks * 4096);
        for (int b = 0; b < Blocks; b++)
        {
            if (!viaA.AsSpan(b * 4096, 4096).SequenceEqual(Block(2, b)))
                Assert.Fail($"block {b}: node a served a stale block after the takeover (its own {(viaA.AsSpan(b * 4096, 4096).SequenceEqual(Block(1, b)) ? "cached write" : "unknown data")}); node a:\n{nodes[0].Log}\nnode b:\n{nodes[1].Log}");
        }
    }

    /// <summary>The first 4 KiB block where <paramref name="b"/> differs from <paramref name="a"/>, or null.</summary>
    private static int? Changed(byte[] a, byte[] b)
    {
        for (int i = 0; i < a.Length / 4096; i++)
        {
            if (!a.AsSpan(i * 4096, 4096).SequenceEqual(b.AsSpan(i * 4096, 4096)))
                return i;
        }
        return null;
    }

    /// <summary>A block whose content names its epoch and index.</summary>
    private static byte[] Block(int epoch, int index) => TestData.RandomBytes(4096, seed: epoch * 100_000 + index);

    private async Task<byte[]> ReadAll(OvisDaemon node, int length)
    {
        await using var client = await ConnectWhenFree(node);
        var data = new byte[length];
        await client.ReadAsync(0, data, CancellationToken.None);
        return data;
    }
}
