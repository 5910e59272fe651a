using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// A writer that outruns slow replica links fills the writeback cache: at the bound writes wait
/// for pushes and never fail, dirty bytes never exceed the bound, and a flush drains it all.
/// How long a write waits at the bound is printed beside write-through's latency, not asserted
/// (speed is measured in bench/, never timed in a test; docs/writeback-cache.md has the figures).
/// </summary>
public sealed class ClusterCacheFullTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private static readonly TimeSpan OneWay = TimeSpan.FromMilliseconds(20);
    private const long Bound = 16L * 1024 * 1024;

    [Fact]
    public async Task A_full_cache_makes_writes_wait_for_pushes_and_never_fail_nor_exceed_the_bound()
    {
        await using var nodes = await StartDelayedCluster(copies: 3, OneWay, extra: ["--cache-size", "16M", "--no-write-around"]);
        await Create(nodes[0], "v", "64M");
        var uri = nodes[0].NbdUri("v");

        var through = await Fio(uri, seconds: 5);
        string throughClat = Clat(through);

        await Json(nodes[0], "vdi", "set", "v", "cache=writeback");
        foreach (var node in nodes)
            await Eventually(async () => (await Json(node, "vdi", "info", "v")).GetProperty("cache").GetString() == "writeback", LeaseMargin, $"{node} has v in writeback");

        var samples = new List<long>();
        using var stop = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                samples.Add((await Json(nodes[0], "vdi", "info", "v")).GetProperty("cacheStats").GetProperty("dirtyBytes").GetInt64());
                await Task.Delay(250);
            }
        });
        var back = await Fio(uri, seconds: 15);
        stop.Cancel();
        await sampler;

        long written = back.GetProperty("write").GetProperty("io_bytes").GetInt64();
        Output.WriteLine($"writethrough {throughClat}; writeback at the bound {Clat(back)}, {written >> 20} MiB; dirty max {samples.Max() >> 10} KiB over {samples.Count} samples");
        // TakeBudgetAsync admits a write only if it fits under the bound (or nothing is dirty): with
        // 4 KiB writes and a 16 MiB bound, dirty bytes never exceed the bound itself.
        Assert.All(samples, s => Assert.True(s <= Bound, $"dirty {s} over the bound {Bound}"));
        Assert.True(samples.Max() >= Bound / 2, $"dirty never came near the bound (max {samples.Max()}): the test proves nothing");

        // fio's disconnect lets go of the lock, which pushes and flushes everything first. A client
        // reconnecting to the same node meanwhile is served at once (the drain goes on under it),
        // never refused; the cache empties while it is connected.
        byte[] viaA = new byte[4 * 1024 * 1024];
        await using (var client = await Ovis.Nbd.NbdClient.ConnectAsync(uri, CancellationToken.None))
        {
            await client.ReadAsync(0, viaA, CancellationToken.None);
            Output.WriteLine($"reconnected with {(await Json(nodes[0], "vdi", "info", "v")).GetProperty("cacheStats").GetProperty("dirtyBytes").GetInt64() >> 10} KiB still draining");
            await Eventually(async () => (await Json(nodes[0], "vdi", "info", "v")).GetProperty("cacheStats").GetProperty("dirtyBytes").GetInt64() == 0,
                TimeSpan.FromSeconds(90), "the cache drains");
        }
        byte[] viaB = await Read(nodes[1], 4 * 1024 * 1024);
        Assert.True(viaA.AsSpan().SequenceEqual(viaB), "node b reads other data than node a after the flush");
    }

    /// <summary>4 KiB random writes at queue depth 32 over the whole volume; returns fio's job.</summary>
    private async Task<JsonElement> Fio(string uri, int seconds)
    {
        var r = await Run("fio", ["--ioengine=nbd", $"--uri={uri}", "--output-format=json", "--name=full", "--rw=randwrite", "--bs=4k",
            "--iodepth=32", "--size=64M", "--time_based", $"--runtime={seconds}"], TimeSpan.FromSeconds(seconds + 30));
        Assert.True(r.Succeeded, $"fio failed:\n{r.Describe()}\n{DaemonState()}");
        // fio prints "fio: connected to NBD server" before the JSON document.
        using var doc = JsonDocument.Parse(r.Stdout[r.Stdout.IndexOf('{', StringComparison.Ordinal)..]);
        var job = doc.RootElement.GetProperty("jobs")[0].Clone();
        Assert.True(job.GetProperty("error").GetInt32() == 0, $"fio error {job.GetProperty("error")}:\n{r.Describe()}");
        return job;
    }

    /// <summary>IOPS and completion latency (mean, p99, max) of a fio job's writes.</summary>
    private static string Clat(JsonElement job)
    {
        var write = job.GetProperty("write");
        var clat = write.GetProperty("clat_ns");
        double Ms(JsonElement e) => e.GetDouble() / 1e6;
        return FormattableString.Invariant($"{write.GetProperty("iops").GetDouble():F0} IOPS, clat mean {Ms(clat.GetProperty("mean")):F1} ms, p99 {Ms(clat.GetProperty("percentile").GetProperty("99.000000")):F1} ms, max {Ms(clat.GetProperty("max")):F1} ms");
    }

    /// <summary>Reads the first <paramref name="length"/> bytes of <c>v</c> through <paramref name="node"/> once its lock is free.</summary>
    private async Task<byte[]> Read(OvisDaemon node, int length)
    {
        // Generous: node a lets go of the lock only once its last client is gone and the drain
        // is done; a connection to b waits for that, or is refused and retries.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
        while (true)
        {
            try
            {
                await using var client = await Ovis.Nbd.NbdClient.ConnectAsync(node.NbdUri("v"), CancellationToken.None);
                var data = new byte[length];
                await client.ReadAsync(0, data, CancellationToken.None);
                return data;
            }
            catch (Exception ex)
            {
                if (DateTime.UtcNow >= deadline)
                    throw new InvalidOperationException($"v is still not readable through {node} ({ex.Message}); its log:\n{node.Log}", ex);
                Output.WriteLine($"not yet: {ex.Message}");
                await Task.Delay(500);
            }
        }
    }
}
