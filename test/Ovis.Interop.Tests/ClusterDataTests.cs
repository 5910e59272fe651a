using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Replication with a real etcd and three real daemons on loopback, driven by qemu-io,
/// qemu-img, nbdcopy and fio: data written through one node reads back through the others, a
/// node killed under load costs no acknowledged write, a dead gateway's volume is taken over
/// within the lease, flushes reach only the nodes that hold unflushed writes.
/// </summary>
public sealed class ClusterDataTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    [Fact]
    public async Task Written_through_one_node_read_through_the_others_with_qemu_io_and_qemu_img()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "v", "64M");
        await Eventually(async () => (await Json(nodes[2], "vdi", "list")).GetArrayLength() == 1, LeaseMargin, "the volume is known to every node");

        await QemuIo(nodes[0].NbdUri("v"), "write -P 0x5a 0 1M", "write -P 0xa5 33M 4k", "write -P 0x11 63M 1M", "flush");
        foreach (var d in nodes.Skip(1))
        {
            await QemuIo(d.NbdUri("v"), "read -P 0x5a 0 1M", "read -P 0xa5 33M 4k", "read -P 0x11 63M 1M", "read -P 0 1M 32M");
        }

        // A whole image in through node b, compared through node c.
        var image = Path.Combine(ScratchDirectory(), "in.raw");
        WriteImage(image, 64L * MiB, seed: 7, (8L * MiB, 8L * MiB));
        await RunOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", image, nodes[1].NbdUri("v")]);
        await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, nodes[2].NbdUri("v")]);

        // Every node holds a copy of everything (3 copies on 3 nodes): the same object count everywhere.
        var list = await Json(nodes[0], "node", "list");
        var objects = list.EnumerateArray().Select(n => n.GetProperty("objects").GetInt64()).ToArray();
        Assert.True(objects.All(o => o == objects[0] && o > 0), $"objects per node: {string.Join(", ", objects)}");
    }

    [Fact]
    public async Task Nbdcopy_256_MiB_in_through_one_node_and_out_through_another()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "big", "256M");
        var dir = ScratchDirectory();
        var image = Path.Combine(dir, "in.raw");
        var copy = Path.Combine(dir, "out.raw");
        WriteImage(image, 256L * MiB, seed: 11, (100L * MiB, 20L * MiB));

        await RunOk("nbdcopy", [image, nodes[0].NbdUri("big")], TimeSpan.FromMinutes(4));
        await Eventually(async () => (await Json(nodes[1], "vdi", "list")).GetArrayLength() == 1, LeaseMargin, "the volume is known to node b");
        await RunOk("nbdcopy", [nodes[1].NbdUri("big"), copy], TimeSpan.FromMinutes(4));
        Assert.Null(FirstDifference(image, copy));
    }

    [Fact]
    public async Task A_replica_killed_during_fio_verify_costs_no_write_and_rejoins()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "f", "64M");
        var fio = Run("fio", ["--ioengine=nbd", $"--uri={nodes[0].NbdUri("f")}", "--name=kill", "--rw=randwrite", "--bs=4k",
            "--size=64M", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json"],
            TimeSpan.FromMinutes(5));
        // Kill node c once the writes are under way.
        await Eventually(async () => (await Json(nodes[0], "node", "info")).GetProperty("usedBytes").GetInt64() > 8L * MiB,
            TimeSpan.FromSeconds(60), "fio is writing");
        await nodes[2].KillAsync();
        var r = await fio;
        Assert.True(r.Succeeded && !r.Stderr.Contains("verify", StringComparison.OrdinalIgnoreCase), $"{r.Describe()}\n{nodes[0].Log}");
        using (var doc = JsonDocument.Parse(r.Stdout[r.Stdout.IndexOf('{', StringComparison.Ordinal)..]))
        {
            var job = doc.RootElement.GetProperty("jobs")[0];
            Assert.Equal(0, job.GetProperty("error").GetInt32());
            Assert.Equal(64L * MiB, job.GetProperty("read").GetProperty("io_bytes").GetInt64());
        }

        // The killed node missed writes: it is marked stale, so no read is ever served from it.
        var list = await Json(nodes[0], "node", "list");
        Assert.True(list.EnumerateArray().Single(n => n.GetProperty("id").GetString() == "n-c").GetProperty("stale").GetBoolean());

        await nodes[2].StartAsync();
        await Eventually(async () => (await Json(nodes[0], "node", "list")).EnumerateArray()
            .Single(n => n.GetProperty("id").GetString() == "n-c").GetProperty("state").GetString() == "up", LeaseMargin, "node c rejoined");

        // Node b, a current copy, reads back what fio verified.
        r = await Run("fio", ["--ioengine=nbd", $"--uri={nodes[1].NbdUri("f")}", "--name=kill", "--rw=randwrite", "--bs=4k",
            "--size=64M", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--verify_only=1"], TimeSpan.FromMinutes(5));
        Assert.True(r.Succeeded && !r.Stderr.Contains("verify", StringComparison.OrdinalIgnoreCase), $"{r.Describe()}\n{nodes[0].Log}\n{nodes[1].Log}");
    }

    [Fact]
    public async Task Another_node_takes_over_a_dead_gateways_volume_within_the_lease()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "g", "16M");
        var data = RandomBytes(256 * KiB, seed: 3);
        await using (var client = await RawNbdClient.ConnectAsync(nodes[0].NbdPort, "g"))
        {
            await client.WriteOkAsync(0, data);
            Assert.Equal(0u, await client.FlushAsync());

            // While node a serves the volume, node b refuses it: one gateway writes a volume at a time.
            var refused = await Run("qemu-io", QemuIoArgs(nodes[1].NbdUri("g"), ["read 0 4k"]));
            Assert.False(refused.Succeeded, refused.Describe());
            Assert.Contains("is being served by node n-a", refused.Stderr + refused.Stdout, StringComparison.Ordinal);
            // Nor may node b change its layers under node a.
            var snapshot = await nodes[1].Cli("vdi", "snapshot", "g", "s1");
            Assert.Equal(1, snapshot.ExitCode);
            Assert.Contains("is being served by node n-a", snapshot.Stderr, StringComparison.Ordinal);

            await nodes[0].KillAsync();
            var clock = Stopwatch.StartNew();
            ProcessResult? read = null;
            await Eventually(async () =>
            {
                read = await Run("qemu-io", QemuIoArgs(nodes[1].NbdUri("g"), ["read -v 0 4k"]));
                return read.Succeeded;
            }, LeaseMargin, "node b serves the volume");
            Output.WriteLine($"taken over after {clock.Elapsed.TotalSeconds:F1} s (lease {LeaseTtl} s)");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(LeaseTtl * 2 + 2), $"took {clock.Elapsed}");
        }
        var back = Path.Combine(ScratchDirectory(), "back.raw");
        await RunOk("qemu-img", ["convert", "-f", "raw", "-O", "raw", nodes[1].NbdUri("g"), back]);
        Assert.Equal(data, File.ReadAllBytes(back).AsSpan(0, data.Length).ToArray());
    }

    [Fact]
    public async Task A_flush_syncs_only_the_nodes_holding_unflushed_writes()
    {
        // Two copies on three nodes: one 4 KiB write lands on two of them.
        await using var nodes = await StartCluster(copies: 2);
        await Create(nodes[0], "s", "16M");
        // Flushes each node's store was asked for, and the journal syncs it made.
        async Task<(long Flushes, long Syncs)[]> Counters() => [.. await Task.WhenAll(nodes.Select(async d =>
        {
            var info = await Json(d, "node", "info");
            return (info.GetProperty("flushRequests").GetInt64(), info.GetProperty("journalSyncs").GetInt64());
        }))];

        await using var client = await RawNbdClient.ConnectAsync(nodes[0].NbdPort, "s");
        await client.WriteOkAsync(0, RandomBytes(4096, seed: 1));
        var before = await Counters();
        Assert.Equal(0u, await client.FlushAsync());
        var after = await Counters();
        var asked = Enumerable.Range(0, 3).Where(i => after[i].Flushes == before[i].Flushes + 1).ToArray();
        var untouched = Enumerable.Range(0, 3).Where(i => after[i] == before[i]).ToArray();
        Assert.True(asked.Length == 2 && untouched.Length == 1, $"(flushes, syncs) per node before {string.Join(" ", before)} after {string.Join(" ", after)}");

        // Nothing written since: a second flush asks nobody.
        Assert.Equal(0u, await client.FlushAsync());
        Assert.Equal(after, await Counters());
    }

    [Fact]
    public async Task More_copies_than_zones_is_a_clear_error()
    {
        await using var nodes = await StartCluster(copies: 3, nodes: 2);
        var r = await nodes[0].Cli("vdi", "create", "x", "16M");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("keeps 3 copies in distinct zones but its nodes span 2 zone(s) (a, b)", r.Stderr, StringComparison.Ordinal);
        var info = await Json(nodes[0], "cluster", "info");
        Assert.Contains("2 zone(s)", info.GetProperty("placementError").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_partial_write_over_a_snapshot_keeps_the_inherited_bytes_on_every_copy()
    {
        await using var nodes = await StartCluster(copies: 3);
        await Create(nodes[0], "l", "16M");
        await QemuIo(nodes[0].NbdUri("l"), "write -P 0x33 0 64k", "flush");
        var r = await nodes[0].Cli("vdi", "snapshot", "l", "before");
        Assert.True(r.Succeeded, r.Describe());

        // 512 bytes into an inherited 4 KiB block: the gateway completes the block from the
        // snapshot on every copy before it writes.
        await QemuIo(nodes[0].NbdUri("l"), "write -P 0x44 1024 512", "flush");
        await Eventually(async () => (await Json(nodes[2], "vdi", "list")).GetArrayLength() == 2, LeaseMargin, "node c knows the snapshot");
        await QemuIo(nodes[0].NbdUri("l"), "read -P 0x33 0 1024", "read -P 0x44 1024 512", "read -P 0x33 1536 2560", "read -P 0x33 4k 60k");
        await QemuIo(nodes[2].NbdUri("l"), "read -P 0x33 0 1024", "read -P 0x44 1024 512", "read -P 0x33 1536 2560", "read -P 0x33 4k 60k");
        await QemuIoReadOnly(nodes[1].NbdUri("l@before"), "read -P 0x33 0 64k");
    }

    [Fact]
    public async Task A_node_added_to_a_cluster_with_data_is_never_read_from_until_recovered_and_then_holds_its_share()
    {
        // Two copies on nodes a and b; then node c joins and placement names it for about a third
        // of the objects, which it does not have.
        await using var nodes = await StartCluster(copies: 2, nodes: 2);
        await Create(nodes[0], "n", "64M");
        var image = Path.Combine(ScratchDirectory(), "in.raw");
        WriteImage(image, 64L * MiB, seed: 5);
        await RunOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", image, nodes[0].NbdUri("n")]);

        nodes.Add(await OvisDaemon.StartNewAsync(extraArguments: NodeArguments(nodes.Cluster, "c")));
        var list = await Json(nodes[0], "node", "list");
        Assert.True(list.EnumerateArray().Single(n => n.GetProperty("id").GetString() == "n-c").GetProperty("stale").GetBoolean(), list.ToString());

        // Through the new node as gateway: every object reads back from a current copy.
        await Eventually(async () => (await Json(nodes[2], "vdi", "list")).GetArrayLength() == 1, LeaseMargin, "node c knows the volume");
        await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, nodes[2].NbdUri("n")]);

        // Recovery moves node c's share of the objects to it, and the nodes that gave them up
        // drop their copies: two copies of each of the 16 objects in all, c holding some.
        await Eventually(async () => !await IsStale(nodes[0], "n-c"), TimeSpan.FromSeconds(90), "node c is filled and current");
        long[] counts = [];
        await Eventually(async () =>
        {
            counts = [.. (await Json(nodes[0], "node", "list")).EnumerateArray().Select(n => n.GetProperty("objects").GetInt64())];
            return counts.Sum() == 32;
        }, LeaseMargin, "every object has exactly two copies");
        Assert.True(counts.All(c => c is > 0 and < 16), $"objects per node: {string.Join(", ", counts)}");
        var check = await nodes[1].Cli("cluster", "check", "n");
        Assert.True(check.Succeeded, check.Describe());
        await QemuIoReadOnly(nodes[2].NbdUri("n"), "read 0 64M");
        await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, nodes[2].NbdUri("n")]);
    }

    [Fact]
    public async Task Check_finds_a_copy_corrupted_by_hand_and_reads_still_return_the_right_data()
    {
        // No background scrub here: the check and the repair asked for are what is tested.
        await using var nodes = await StartCluster(copies: 3, extra: ["--scrub-interval", "0"]);
        await Create(nodes[0], "k", "16M");
        await QemuIo(nodes[0].NbdUri("k"), "write -P 0x6b 0 8M", "flush");
        var clean = await nodes[1].Cli("cluster", "check", "k");
        Assert.True(clean.Succeeded, clean.Describe());
        Assert.Contains("k: 4 objects checked, 0 copies differ", clean.Stdout, StringComparison.Ordinal);

        // Flip one byte of object 1 in node c's file, behind its store's back.
        var id = (await Json(nodes[0], "vdi", "info", "k")).GetProperty("id").GetUInt32();
        await CorruptObjectFile(nodes[2], id, 1, (3 * 4096) + 10);

        var found = await nodes[1].Cli("cluster", "check", "k");
        Assert.Equal(1, found.ExitCode);
        Assert.Contains($"object {id:x8}.00000001: copy on n-c: unreadable: a checksum failed", found.Stdout, StringComparison.Ordinal);
        Assert.Contains("k: 4 objects checked, 1 copy differs", found.Stdout, StringComparison.Ordinal);

        // Node c as the gateway: its own copy fails its checksum, the read comes from another.
        await QemuIo(nodes[2].NbdUri("k"), "read -P 0x6b 0 8M");

        // Repaired while a client has the volume open and writes it (object 2, next to the damaged
        // object 1): the repair takes each object from client requests while it rewrites a copy,
        // so no write is undone.
        await using (var open = await RawNbdClient.ConnectAsync(nodes[1].NbdPort, "k"))
        {
            var writing = Task.Run(async () =>
            {
                for (int i = 0; i < 64; i++)
                    await open.WriteOkAsync((8L * MiB) + (i * 4096L), Enumerable.Repeat((byte)0x77, 4096).ToArray());
            });
            var repaired = await nodes[1].Cli("cluster", "check", "k", "--repair");
            await writing;
            Assert.Equal(0u, await open.FlushAsync());
            Assert.True(repaired.Succeeded, repaired.Describe());
            Assert.Contains($"object {id:x8}.00000001: copy on n-c: rewritten from a current copy", repaired.Stdout, StringComparison.Ordinal);
        }

        // Every copy agrees, including the writes made during the repair (checked below), and
        // node c as the gateway reads them and the repaired object from its own copies.
        await QemuIoReadOnly(nodes[2].NbdUri("k"), "read -P 0x6b 0 8M", "read -P 0x77 8M 256k");
        var again = await nodes[0].Cli("cluster", "check", "k");
        Assert.True(again.Succeeded, again.Describe());
        Assert.Contains("k: 4 objects checked, 0 copies differ", again.Stdout, StringComparison.Ordinal);
    }
}
