using System.Diagnostics;
using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// The cluster catalog goes away and comes back (docs/fencing.md, "Rejoin"): etcd killed for
/// longer than the lease under <c>fio --verify</c>, a node started while etcd is down, a node
/// paused past its lease. Each class gets its own etcd, so killing it touches no other test.
/// </summary>
public sealed class CatalogOutageTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    // Longer than the lease (3 s) by far: every node's renewals fail for more than two TTLs.
    private static readonly TimeSpan Outage = TimeSpan.FromSeconds(8);
    private static readonly TimeSpan BackWithin = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Etcd_killed_for_longer_than_the_lease_under_fio_verify_costs_no_error_and_every_node_is_current_again()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "o", "64M");
        await Create(nodes[0], "idle", "4M");
        // Paced so that the outage falls in the middle of the writes: 16384 writes at 800 a second.
        var fio = Run("fio", ["--ioengine=nbd", $"--uri={nodes[0].NbdUri("o")}", "--name=outage", "--rw=randwrite", "--bs=4k",
            "--size=64M", "--iodepth=16", "--rate_iops=800", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
            "--output-format=json"], TimeSpan.FromMinutes(5));
        await Eventually(async () => (await Json(nodes[0], "node", "info")).GetProperty("usedBytes").GetInt64() > 4L * MiB,
            TimeSpan.FromSeconds(60), "fio is writing");

        await Etcd.KillAsync();
        var outage = Stopwatch.StartNew();
        // Meanwhile a volume no node holds cannot be opened (its lock is in etcd), and the client is told why.
        var refused = await Run("qemu-io", QemuIoArgs(nodes[1].NbdUri("idle"), ["read 0 4k"]));
        Assert.False(refused.Succeeded, refused.Describe());
        Assert.Contains("the cluster catalog does not answer", refused.Stderr, StringComparison.Ordinal);
        if (Outage > outage.Elapsed)
            await Task.Delay(Outage - outage.Elapsed);
        Assert.False(fio.IsCompleted, "fio finished before etcd came back: the outage did not fall under it");
        await Etcd.RestartAsync();
        var back = Stopwatch.StartNew();

        var r = await fio;
        Assert.True(r.Succeeded && !r.Stderr.Contains("verify", StringComparison.OrdinalIgnoreCase), $"{r.Describe()}\n{nodes[0].Log}");
        using (var doc = JsonDocument.Parse(r.Stdout[r.Stdout.IndexOf('{', StringComparison.Ordinal)..]))
        {
            Assert.Equal(0, doc.RootElement.GetProperty("jobs")[0].GetProperty("error").GetInt32());
        }
        await Eventually(() => AllCurrent(nodes), BackWithin - back.Elapsed, "every node is up and not stale after etcd is back");
        foreach (var node in nodes)
            node.AssertAlive("after the etcd outage");
        var check = await nodes[1].Cli("cluster", "check", "o");
        Assert.True(check.Succeeded, check.Describe());
        Assert.Contains(", 0 copies differ", check.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_node_started_while_etcd_is_down_waits_for_it_and_joins_when_it_is_back()
    {
        await using var nodes = await StartCluster(copies: 2, nodes: 2);
        await Etcd.KillAsync();
        var late = new OvisDaemon { ExtraArguments = NodeArguments(nodes.Cluster, "c") };
        nodes.Add(late);
        var starting = late.StartAsync();
        await Eventually(() => Task.FromResult(late.Log.Contains("Waiting for the cluster catalog", StringComparison.Ordinal)),
            TimeSpan.FromSeconds(30), "the node says it waits for etcd");
        Assert.False(starting.IsCompleted, $"the node finished starting without etcd\n{late.Log}");
        late.AssertAlive("while etcd is down");

        await Etcd.RestartAsync();
        await starting.WaitAsync(BackWithin);
        await Eventually(async () => (await Json(nodes[0], "node", "list")).GetArrayLength() == 3 && await AllCurrent(nodes),
            BackWithin, "the late node joined");
    }

    [Fact]
    public async Task A_node_paused_past_its_lease_rejoins_by_itself_and_serves_again()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "r", "16M");
        await QemuIo(nodes[0].NbdUri("r"), "write -P 0x21 0 4M", "flush");

        nodes[2].Pause();
        await Eventually(async () => (await Json(nodes[0], "node", "list")).EnumerateArray()
            .Any(n => n.GetProperty("id").GetString() == "n-c" && n.GetProperty("state").GetString() == "down"), LeaseMargin, "node c is seen down");
        // Written while it is out: it misses this, and must resync it before it serves reads.
        await QemuIo(nodes[0].NbdUri("r"), "write -P 0x22 0 4M", "flush");
        nodes[2].Resume();

        await Eventually(() => AllCurrent(nodes), BackWithin, "node c rejoined and resynced without a restart");
        Assert.Contains("rejoined cluster", nodes[2].Log, StringComparison.Ordinal);
        nodes[2].AssertAlive("after its rejoin");
        // It serves the volume again, with what was written while it was out.
        await QemuIoReadOnly(nodes[2].NbdUri("r"), "read -P 0x22 0 4M");
        var check = await nodes[2].Cli("cluster", "check", "r");
        Assert.True(check.Succeeded, check.Describe());
        Assert.Contains(", 0 copies differ", check.Stdout, StringComparison.Ordinal);
    }

    private static async Task<bool> AllCurrent(ClusterNodes nodes)
    {
        try
        {
            var list = await Json(nodes[0], "node", "list");
            return list.GetArrayLength() == nodes.Count && list.EnumerateArray()
                .All(n => n.GetProperty("state").GetString() == "up" && !n.GetProperty("stale").GetBoolean());
        }
        catch (Xunit.Sdk.XunitException)
        {
            return false; // the CLI could not ask yet
        }
    }
}
