using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Recovery with a real etcd and real daemons: a node back from a short absence gets only what
/// it missed (the dirty-region log's objects, compared block by block), a gateway killed
/// mid-write leaves copies that are made equal, a node gone past the grace period is replaced
/// and every object has its copies again, and the background scrub repairs a corrupted copy.
/// </summary>
public sealed class ClusterRecoveryTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private static readonly TimeSpan RecoveryTimeout = TimeSpan.FromSeconds(90);

    private static async Task<long> Counter(OvisDaemon d, string name)
        => (await Json(d, "cluster", "recovery")).GetProperty(name).GetInt64();

    private static async Task<bool> CheckClean(OvisDaemon d, string volume)
    {
        var r = await d.Cli("cluster", "check", volume);
        return r.Succeeded && r.Stdout.Contains("0 copies differ", StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_node_back_within_the_grace_period_gets_only_the_bytes_written_while_it_was_away()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "s", "128M");
        await QemuIo(nodes[0].NbdUri("s"), "write -P 0x11 0 128M", "flush");
        await Eventually(() => CheckClean(nodes[0], "s"), RecoveryTimeout, "the volume's copies agree");
        long before = await Counter(nodes[0], "bytesResynced");

        await nodes[2].KillAsync();
        // 8 MiB written while node c is away, in two places.
        await QemuIo(nodes[0].NbdUri("s"), "write -P 0x22 8M 4M", "write -P 0x33 64M 4M", "flush");
        Assert.True(await IsStale(nodes[0], "n-c"));

        // While recovery is paused, node c comes back but stays stale, and nothing is copied.
        await SetPaused(nodes, true);
        await nodes[2].StartAsync();
        await Eventually(async () => (await Json(nodes[0], "node", "list")).EnumerateArray()
            .Single(n => n.GetProperty("id").GetString() == "n-c").GetProperty("state").GetString() == "up", LeaseMargin, "node c is back");
        await Task.Delay(TimeSpan.FromSeconds(4));
        Assert.True(await IsStale(nodes[0], "n-c"));
        Assert.Equal(before, await Counter(nodes[0], "bytesResynced"));

        await SetPaused(nodes, false);
        await Eventually(async () => !await IsStale(nodes[0], "n-c"), RecoveryTimeout, "node c is resynced and current again");
        long resynced = 0;
        await Eventually(async () => (resynced = await Counter(nodes[0], "bytesResynced") - before) >= 8L * MiB, LeaseMargin,
            "the resync is counted");
        Output.WriteLine($"written while away: {8L * MiB} bytes; resynced: {resynced} bytes; volume: {128L * MiB} bytes");
        Assert.InRange(resynced, 8L * MiB, 9L * MiB);

        // Node c's own copies, read through it: what it missed, and what it had.
        await QemuIoReadOnly(nodes[2].NbdUri("s"), "read -P 0x11 0 8M", "read -P 0x22 8M 4M", "read -P 0x11 12M 52M",
            "read -P 0x33 64M 4M", "read -P 0x11 68M 60M");
        Assert.True(await CheckClean(nodes[1], "s"));
    }

    [Fact]
    public async Task A_gateway_killed_in_the_middle_of_writes_leaves_every_copy_identical_and_every_flushed_write()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "g", "64M");
        await QemuIo(nodes[0].NbdUri("g"), "write -P 0x44 0 16M", "flush");

        // Unflushed random writes in flight on every copy when the gateway dies.
        var fio = Run("fio", ["--ioengine=nbd", $"--uri={nodes[0].NbdUri("g")}", "--name=crash", "--rw=randwrite", "--bs=4k",
            "--offset=16M", "--size=48M", "--iodepth=32", "--time_based=1", "--runtime=60"], TimeSpan.FromMinutes(2));
        await Eventually(async () => (await Json(nodes[0], "node", "info")).GetProperty("usedBytes").GetInt64() > 32L * MiB,
            TimeSpan.FromSeconds(60), "fio is writing");
        await nodes[0].KillAsync();
        await fio;

        // Without node a, the other two copies are made equal; with it back, all three.
        await nodes[0].StartAsync();
        await Eventually(() => CheckClean(nodes[1], "g"), RecoveryTimeout, "every copy of every object agrees");
        foreach (var d in nodes)
        {
            await QemuIoReadOnly(d.NbdUri("g"), "read -P 0x44 0 16M");
        }

        // Without a volume named, the check covers every volume.
        var all = await nodes[2].Cli("cluster", "check");
        Assert.True(all.Succeeded, all.Describe());
        Assert.Contains("g: 16 objects checked, 0 copies differ", all.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_node_killed_during_fio_verify_is_replaced_after_the_grace_period_and_every_object_has_its_copies_again()
    {
        // Two copies, and a write needs one while a node is down: every write goes on when node c dies.
        await using var nodes = await StartCluster(copies: 2, nodes: 3, minCopies: 1, extra: ["--down-out-interval", "2"]);
        await Create(nodes[0], "f", "64M");
        var fio = Run("fio", ["--ioengine=nbd", $"--uri={nodes[0].NbdUri("f")}", "--name=kill", "--rw=randwrite", "--bs=4k",
            "--size=64M", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json"],
            TimeSpan.FromMinutes(5));
        await Eventually(async () => (await Json(nodes[0], "node", "info")).GetProperty("usedBytes").GetInt64() > 8L * MiB,
            TimeSpan.FromSeconds(60), "fio is writing");
        await nodes[2].KillAsync();
        var r = await fio;
        Assert.True(r.Succeeded && !r.Stderr.Contains("verify", StringComparison.OrdinalIgnoreCase), $"{r.Describe()}\n{nodes[0].Log}");
        using (var doc = JsonDocument.Parse(r.Stdout[r.Stdout.IndexOf('{', StringComparison.Ordinal)..]))
        {
            Assert.Equal(0, doc.RootElement.GetProperty("jobs")[0].GetProperty("error").GetInt32());
        }

        // Past the grace period node c is taken out; its objects get their second copy on the others.
        await Eventually(async () => (await Json(nodes[0], "node", "list")).GetArrayLength() == 2, RecoveryTimeout, "node c is taken out");
        await Eventually(() => CheckClean(nodes[1], "f"), RecoveryTimeout, "every object has both copies, equal");
        var counts = (await Json(nodes[0], "node", "list")).EnumerateArray().Select(n => n.GetProperty("objects").GetInt64()).ToArray();
        Assert.True(counts.All(c => c == 16), $"objects per node (2 copies of 16 on 2 nodes): {string.Join(", ", counts)}");
        await Eventually(async () => await Counter(nodes[0], "bytesMoved") > 0, LeaseMargin, "the moved bytes are counted");

        r = await Run("fio", ["--ioengine=nbd", $"--uri={nodes[1].NbdUri("f")}", "--name=kill", "--rw=randwrite", "--bs=4k",
            "--size=64M", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--verify_only=1"], TimeSpan.FromMinutes(5));
        Assert.True(r.Succeeded && !r.Stderr.Contains("verify", StringComparison.OrdinalIgnoreCase), r.Describe());
    }

    [Fact]
    public async Task The_background_scrub_finds_and_repairs_a_copy_corrupted_by_hand_in_a_served_and_an_idle_volume()
    {
        await using var nodes = await StartCluster(copies: 3, extra: ["--scrub-interval", "0.05"]);
        await Create(nodes[0], "k", "16M");
        await QemuIo(nodes[0].NbdUri("k"), "write -P 0x6b 0 8M", "flush");
        var id = (await Json(nodes[0], "vdi", "info", "k")).GetProperty("id").GetUInt32();

        // The node serving the volume scrubs it in the background, one object at a time. Recovery
        // is paused while the damage is done, so the check sees it before the scrub mends it.
        await using (var open = await RawNbdClient.ConnectAsync(nodes[0].NbdPort, "k"))
        {
            await SetPaused(nodes, true);
            await CorruptObjectFile(nodes[2], id, 1, (2 * 4096) + 7);
            Assert.False(await CheckClean(nodes[1], "k"));
            await SetPaused(nodes, false);
            await Eventually(() => CheckClean(nodes[1], "k"), RecoveryTimeout, "the scrub repaired node c's copy");
        }
        await Eventually(async () => await Counter(nodes[0], "copiesRepaired") >= 1, LeaseMargin, "the repair is counted");
        await QemuIoReadOnly(nodes[2].NbdUri("k"), "read -P 0x6b 0 8M");

        // A volume nobody serves is scrubbed too, a slice at a time: node b's copy of object 0 this time.
        await SetPaused(nodes, true);
        await CorruptObjectFile(nodes[1], id, 0, (5 * 4096) + 3);
        Assert.False(await CheckClean(nodes[0], "k"));
        await SetPaused(nodes, false);
        await Eventually(() => CheckClean(nodes[0], "k"), RecoveryTimeout, "the scrub repaired node b's copy of the idle volume");
        await QemuIoReadOnly(nodes[1].NbdUri("k"), "read -P 0x6b 0 8M");
    }

    /// <summary>Pauses or resumes recovery and waits until every node says so.</summary>
    private static async Task SetPaused(ClusterNodes nodes, bool paused)
    {
        var r = await nodes[0].Cli("cluster", "recover", paused ? "pause" : "resume");
        Assert.True(r.Succeeded, r.Describe());
        await Eventually(async () => (await Json(nodes[0], "cluster", "recovery")).GetProperty("nodes").EnumerateArray()
            .All(n => n.GetProperty("paused").GetBoolean() == paused), LeaseMargin, paused ? "every node is paused" : "every node runs");
    }
}
