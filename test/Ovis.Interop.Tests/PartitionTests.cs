using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Network partitions, for real (docs/partitions.md): three daemons and etcd, each in a network
/// namespace of its own (<see cref="PartitionNetwork"/>), and a node cut off from etcd, from its
/// peers, or both, under real clients that run next to their gateway. Needs root and `ip`: without
/// them the fixture fails every test here with the reason.
/// </summary>
public sealed class PartitionTests(PartitionNetwork network, ITestOutputHelper output)
    : ClusterTest(network.Etcd, output), IClassFixture<PartitionNetwork>
{
    private static readonly TimeSpan Refused = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan RejoinWithin = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan WritesGoOnWithin = TimeSpan.FromSeconds(90);

    private PartitionNetwork Network { get; } = network;

    [Fact]
    public async Task A_cut_drops_what_crosses_it_both_ways_and_a_heal_restores_it()
    {
        await using var nodes = await StartCluster(copies: 3);
        try
        {
            var (h1, h2, h3) = (Network.Nodes[0], Network.Nodes[1], Network.Nodes[2]);
            var etcd = Network.EtcdHost;
            // The daemon runs in its namespace under the pid the test pauses and kills.
            for (int i = 0; i < nodes.Count; i++)
            {
                var where = await Run("ip", ["netns", "identify", nodes[i].ProcessId.ToString(CultureInfo.InvariantCulture)]);
                Assert.Equal(Network.Nodes[i].Namespace, where.Stdout.Trim());
                Assert.Contains("ovis.dll\0serve", File.ReadAllText($"/proc/{nodes[i].ProcessId}/cmdline"), StringComparison.Ordinal);
            }
            await AssertReach(h1, etcd.Address, 2379, true);
            await AssertReach(h1, h2.Address, nodes[1].NbdPort, true);

            await Network.CutFromEtcd(h1);
            await AssertReach(h1, etcd.Address, 2379, false);
            await AssertReach(etcd, h1.Address, nodes[0].NbdPort, false);
            await AssertReach(h1, h2.Address, nodes[1].NbdPort, true);
            await AssertReach(h2, h1.Address, nodes[0].NbdPort, true);
            await AssertReach(h2, etcd.Address, 2379, true);
            // The node sees it too: it can no longer renew its lease, and the others see it down.
            await Eventually(async () => await State(nodes[1], "n-a") == "down", LeaseMargin, "n-a is seen down while cut off from etcd");

            await Network.HealAll();
            await AssertReach(h1, etcd.Address, 2379, true);
            await AssertReach(etcd, h1.Address, nodes[0].NbdPort, true);
            await Eventually(() => AllCurrent(nodes), RejoinWithin, "n-a is up again after the heal");

            await Network.CutFromPeers(h3);
            await AssertReach(h3, etcd.Address, 2379, true);
            await AssertReach(h3, h1.Address, nodes[0].NbdPort, false);
            await AssertReach(h2, h3.Address, nodes[2].NbdPort, false);
            await AssertReach(h1, h2.Address, nodes[1].NbdPort, true);
            await Network.HealAll();
            await AssertReach(h3, h1.Address, nodes[0].NbdPort, true);
            await AssertReach(h2, h3.Address, nodes[2].NbdPort, true);
        }
        finally
        {
            await Network.HealAll();
        }
    }

    /// <summary>
    /// The gateway's requests wait for a late renewal (up to 60 s) once it cannot renew its lease;
    /// healed meanwhile, it finds its lease gone when it rejoins and fails them; left cut off, it
    /// fails them when the wait runs out. Neither may land a write.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_gateway_cut_off_from_etcd_but_not_from_its_replicas_lands_no_write_after_another_node_took_its_volume(bool healWhileWritesWait)
    {
        await using var nodes = await StartCluster(copies: 3);
        try
        {
            OvisDaemon old = nodes[0], next = nodes[1];
            await Create(old, "g", "32M");
            await Eventually(async () => (await Json(next, "vdi", "list")).EnumerateArray().Any(v => v.GetProperty("name").GetString() == "g"),
                LeaseMargin, "the volume is known to the next holder");
            // Paced so that the cut falls early in the writes: 8192 writes at 400 a second.
            var fio = RunIn(old, "fio", ["--ioengine=nbd", $"--uri={old.NbdUri("g")}", "--name=partition", "--rw=randwrite", "--bs=4k",
                "--size=32M", "--iodepth=16", "--rate_iops=400", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
                "--output-format=json"], TimeSpan.FromMinutes(5));
            await Eventually(async () => (await Json(old, "node", "info")).GetProperty("usedBytes").GetInt64() > 2L * MiB,
                TimeSpan.FromSeconds(60), "fio is writing");

            await Network.CutFromEtcd(Network.Nodes[0]);
            var cut = Stopwatch.StartNew();
            Assert.False(fio.IsCompleted, "fio finished before the cut");
            // Its lease runs out in etcd; the next node takes the volume over, writes every byte and flushes.
            await Eventually(async () => (await RunIn(next, "qemu-io", QemuIoArgs(next.NbdUri("g"), ["write -P 0x5a 0 32M", "flush"]),
                TimeSpan.FromSeconds(120))).Succeeded, LeaseMargin * 2, "the next node takes the volume over");
            Log($"taken over {cut.Elapsed.TotalSeconds:F1} s after the cut");

            ProcessResult r;
            if (healWhileWritesWait)
            {
                await Network.HealAll();
                var healed = Stopwatch.StartNew();
                r = await fio;
                Log($"fio ended {healed.Elapsed.TotalSeconds:F1} s after the heal");
            }
            else
            {
                r = await fio;
                Log($"fio ended {cut.Elapsed.TotalSeconds:F1} s after the cut, still cut off");
                await Network.HealAll();
            }
            // Whatever it did after it lost the lease failed, and it was told so.
            Assert.False(r.Succeeded, $"fio on the cut-off gateway succeeded:\n{r.Describe()}\n{old.Log}");
            Assert.DoesNotContain("verify:", r.Stderr, StringComparison.OrdinalIgnoreCase);
            Assert.True(FioError(r) != 0 || r.Stderr.Contains("Input/output error", StringComparison.Ordinal), $"fio failed without an I/O error:\n{r.Describe()}");

            // Back by itself, and resynced.
            await Eventually(() => AllCurrent(nodes), RejoinWithin, "the old gateway rejoined and every node is current");
            old.AssertAlive("after the partition");
            Assert.Contains("rejoined cluster", old.Log, StringComparison.Ordinal);
            // The next holder's data stands on every copy: each node reads its own.
            foreach (var node in nodes)
                await QemuIoIn(node, "g", readOnly: true, "read -P 0x5a 0 32M");
            var check = await next.Cli("cluster", "check", "g");
            Log(check.Describe());
            Assert.True(check.Succeeded, $"{check.Describe()}\n{old.Log}\n--- next ---\n{next.Log}");
            Assert.Contains(", 0 copies differ", check.Stdout, StringComparison.Ordinal);
        }
        finally
        {
            await Network.HealAll();
            foreach (var node in nodes)
                Log(node.Log);
        }
    }

    [Fact]
    public async Task A_node_cut_off_from_its_peers_but_not_from_etcd_is_marked_stale_under_fio_verify_and_resyncs_after_the_heal()
    {
        await using var nodes = await StartCluster(copies: 3);
        try
        {
            OvisDaemon gateway = nodes[0], cut = nodes[2];
            await Create(gateway, "s", "32M");
            var fio = RunIn(gateway, "fio", ["--ioengine=nbd", $"--uri={gateway.NbdUri("s")}", "--name=peers", "--rw=randwrite", "--bs=4k",
                "--size=32M", "--iodepth=16", "--rate_iops=400", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
                "--output-format=json"], TimeSpan.FromMinutes(5));
            await Eventually(async () => (await Json(gateway, "node", "info")).GetProperty("usedBytes").GetInt64() > 2L * MiB,
                TimeSpan.FromSeconds(60), "fio is writing");

            await Network.CutFromPeers(Network.Nodes[2]);
            var cutAt = Stopwatch.StartNew();
            Assert.False(fio.IsCompleted, "fio finished before the cut");
            // Its copy cannot be reached: once its connection times out the gateway marks it stale
            // and the writes go on with two copies. It keeps its lease: up, though no peer reaches it.
            await Eventually(() => IsStale(gateway, "n-c"), TimeSpan.FromSeconds(90), "the gateway marks n-c stale");
            Log($"n-c marked stale {cutAt.Elapsed.TotalSeconds:F1} s after the cut");
            Assert.Equal("up", await State(gateway, "n-c"));

            // What is left of fio's 8192 writes takes 20 s at its pace once the writes go on.
            var stale = Stopwatch.StartNew();
            bool wentOn = await Task.WhenAny(fio, Task.Delay(WritesGoOnWithin)) == fio;
            Log($"fio {(wentOn ? "ended" : "still runs")} {stale.Elapsed.TotalSeconds:F1} s after the stale mark");
            string gatewayLog = gateway.Log;
            if (wentOn)
                Assert.True(await IsStale(gateway, "n-c"), "n-c is current again while still cut off");

            // Healed either way, to see that the rest holds even when the writes crawled.
            await Network.HealAll();
            var healed = Stopwatch.StartNew();
            var r = await fio;
            Log($"fio ended {healed.Elapsed.TotalSeconds:F1} s after the heal");
            Assert.True(r.Succeeded && FioError(r) == 0, $"fio failed while a replica was cut off:\n{r.Describe()}\n{gateway.Log}");
            Assert.DoesNotContain("verify", r.Stderr, StringComparison.OrdinalIgnoreCase);
            await Eventually(() => AllCurrent(nodes), RejoinWithin * 2, "n-c resynced after the heal");
            Log($"n-c current {healed.Elapsed.TotalSeconds:F1} s after the heal");
            cut.AssertAlive("after the partition");
            var check = await cut.Cli("cluster", "check", "s");
            Log(check.Describe());
            Assert.True(check.Succeeded, $"{check.Describe()}\n{gateway.Log}\n--- cut ---\n{cut.Log}");
            Assert.Contains(", 0 copies differ", check.Stdout, StringComparison.Ordinal);
            Assert.True(wentOn, $"the writes did not go on with two copies: fio was not done {WritesGoOnWithin.TotalSeconds:F0} s after n-c was marked stale "
                + $"(each write to the unreachable copy waits for a peer connect attempt; see 'Cannot connect to peer'):\n{gatewayLog}");
        }
        finally
        {
            await Network.HealAll();
            foreach (var node in nodes)
                Log(node.Log);
        }
    }

    [Fact]
    public async Task A_node_cut_off_from_everything_is_seen_down_its_volume_is_served_elsewhere_and_it_rejoins_current_after_the_heal()
    {
        await using var nodes = await StartCluster(copies: 3);
        try
        {
            OvisDaemon isolated = nodes[0], next = nodes[1];
            await Create(isolated, "i", "16M");
            await QemuIoIn(isolated, "i", readOnly: false, "write -P 0x41 0 8M", "flush");

            await Network.Isolate(Network.Nodes[0]);
            await Eventually(async () => await State(next, "n-a") == "down", LeaseMargin, "n-a is seen down");
            // Down, so not tried: the writes go on with the two others, at once, and mark it stale.
            var write = Stopwatch.StartNew();
            await Eventually(async () => (await RunIn(next, "qemu-io", QemuIoArgs(next.NbdUri("i"), ["write -P 0x42 0 8M", "flush"]),
                TimeSpan.FromSeconds(120))).Succeeded, LeaseMargin, "another node serves the volume");
            Log($"written through n-b {write.Elapsed.TotalSeconds:F1} s after n-a was seen down");
            Assert.True(await IsStale(next, "n-a"), $"n-a is not stale after a write it missed\n{next.Log}");

            await Network.HealAll();
            await Eventually(() => AllCurrent(nodes), RejoinWithin, "n-a rejoined and resynced after the heal");
            isolated.AssertAlive("after the partition");
            // Through n-b, then through n-a (its own copy), then through n-b again: what n-a serves,
            // and whether serving it changed what the others hold.
            var reads = new List<string>();
            foreach (var node in new[] { next, isolated, next })
            {
                var (c, args) = node.InNamespace("qemu-io", ["-r", .. QemuIoArgs(node.NbdUri("i"), ["read -P 0x42 0 8M"])]);
                var read = await Run(c, args, TimeSpan.FromSeconds(120));
                // The previous reader's gateway lets go of the lock just after its client is gone:
                // an open that races it is refused, naming that gateway, and a client tries again.
                for (int attempt = 0; attempt < 40 && read.Stderr.Contains("is being served by node", StringComparison.Ordinal); attempt++)
                {
                    await Task.Delay(250);
                    read = await Run(c, args, TimeSpan.FromSeconds(120));
                }
                bool ok = read.Succeeded && !read.Stdout.Contains("failed", StringComparison.OrdinalIgnoreCase);
                reads.Add($"{node.Address}: {(ok ? "0x42" : "NOT 0x42")}");
            }
            Log(string.Join(", ", reads));
            Assert.True(reads.All(r => r.EndsWith(": 0x42", StringComparison.Ordinal)),
                $"the write acknowledged while n-a was cut off does not read back everywhere after the heal (in order: {string.Join(", ", reads)})\n"
                + $"{isolated.Log}\n--- next ---\n{next.Log}");
            var check = await next.Cli("cluster", "check", "i");
            Log(check.Describe());
            Assert.True(check.Succeeded, $"{check.Describe()}\n{isolated.Log}\n--- next ---\n{next.Log}");
            Assert.Contains(", 0 copies differ", check.Stdout, StringComparison.Ordinal);
        }
        finally
        {
            await Network.HealAll();
            foreach (var node in nodes)
                Log(node.Log);
        }
    }

    protected override OvisDaemon NewNode(int index, string[] arguments)
    {
        var host = Network.Nodes[index];
        return new OvisDaemon { Namespace = host.Namespace, Address = host.Address, ExtraArguments = arguments };
    }

    // From etcd's namespace: the only one that reaches etcd whatever is cut.
    protected override Task<ProcessResult> RunCatalogCli(string[] args) =>
        Run("ip", ["netns", "exec", Network.EtcdHost.Namespace, OvisDaemon.DotnetHost, OvisDaemon.OvisDll, .. args], OvisDaemon.CliTimeout);

    /// <summary>Runs a client in <paramref name="node"/>'s namespace, as on that node's host: what is cut never lies between them.</summary>
    private Task<ProcessResult> RunIn(OvisDaemon node, string command, IEnumerable<string> args, TimeSpan timeout)
    {
        var (c, a) = node.InNamespace(command, args);
        return Run(c, a, timeout);
    }

    /// <summary>`qemu-io` on VOLUME through <paramref name="node"/>, from its namespace; fails on an error or a pattern mismatch.</summary>
    private async Task QemuIoIn(OvisDaemon node, string volume, bool readOnly, params string[] commands)
    {
        var args = QemuIoArgs(node.NbdUri(volume), commands);
        var r = await RunIn(node, "qemu-io", readOnly ? ["-r", .. args] : args, TimeSpan.FromSeconds(120));
        if (!r.Succeeded || r.Stdout.Contains("verification failed", StringComparison.OrdinalIgnoreCase)
            || r.Stdout.Contains("failed:", StringComparison.OrdinalIgnoreCase))
        {
            Assert.Fail($"qemu-io on {node.Address} failed:\n{r.Describe()}\n{node.Log}");
        }
    }

    private async Task AssertReach(NetHost from, string address, int port, bool expected)
    {
        bool reached = await PartitionNetwork.CanConnect(from, address, port, Refused);
        Log($"{from} -> {address}:{port}: {(reached ? "connects" : "cut")}");
        Assert.True(reached == expected, $"{from} {(reached ? "reaches" : "does not reach")} {address}:{port}");
    }

    private static async Task<string?> State(OvisDaemon asked, string node)
    {
        try
        {
            return (await Json(asked, "node", "list")).EnumerateArray().SingleOrDefault(n => n.GetProperty("id").GetString() == node) is { ValueKind: JsonValueKind.Object } n
                ? n.GetProperty("state").GetString()
                : null;
        }
        catch (Xunit.Sdk.XunitException)
        {
            return null; // the CLI could not ask
        }
    }

    private static async Task<bool> AllCurrent(ClusterNodes nodes)
    {
        try
        {
            var list = await Json(nodes[1], "node", "list");
            return list.GetArrayLength() == nodes.Count && list.EnumerateArray()
                .All(n => n.GetProperty("state").GetString() == "up" && !n.GetProperty("stale").GetBoolean());
        }
        catch (Xunit.Sdk.XunitException)
        {
            return false; // the CLI could not ask yet
        }
    }

    private static int FioError(ProcessResult r)
    {
        int start = r.Stdout.IndexOf('{', StringComparison.Ordinal);
        if (start < 0)
            return 0;
        try
        {
            using var doc = JsonDocument.Parse(r.Stdout[start..]);
            return doc.RootElement.GetProperty("jobs")[0].GetProperty("error").GetInt32();
        }
        catch (JsonException)
        {
            return 0;
        }
    }
}
