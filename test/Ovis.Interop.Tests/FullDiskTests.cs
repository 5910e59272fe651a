using System.Globalization;
using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// A node whose data directory is a 64 MiB tmpfs, filled through NBD: the writes that find no
/// space get ENOSPC (qemu-io says "No space left on device"), the daemon stays healthy, reads,
/// overwrites and flushes keep working, a snapshot is deleted (merged into the volume over it,
/// which needs more space than the disk has left past its full ratio), it restarts after a kill
/// -9 on a file system filled to its last block, and deleting a volume makes room for writes at once.
/// </summary>
public sealed class FullDiskTests(ITestOutputHelper output) : InteropTest(null, output)
{
    private const string NoSpace = "No space left on device";

    /// <summary>qemu-io commands writing 4 MiB chunks from..to-1 of a volume, chunk i with pattern 0x10 + i.</summary>
    private static string[] Chunks(int from, int to) =>
        [.. Enumerable.Range(from, to - from).Select(i => string.Create(CultureInfo.InvariantCulture, $"write -P 0x{0x10 + i:x2} {i * 4}M 4M"))];

    private async Task<JsonElement> Space() => (await CliJson("node", "info")).GetProperty("space");

    [Fact]
    public async Task A_full_disk_gives_ENOSPC_keeps_the_daemon_healthy_restarts_and_frees_space_on_delete()
    {
        await using var d = new OvisDaemon { ExtraArguments = ["--journal-size", "16M", "--nearfull-ratio", "0.5"] };
        await d.MountDataTmpfsAsync(64 * MiB);
        await d.StartAsync();
        Daemon = d;

        // 16 MiB of journal on 64 MiB: a quarter used, below near-full.
        Assert.Equal("ok", (await Space()).GetProperty("state").GetString());
        var big = await CreateVolume("big", "256M");
        var small = await CreateVolume("small", "16M");
        await QemuIo(d.NbdUri(small), "write -P 0x33 0 8M", "flush");
        var snapshot = await Cli("vdi", "snapshot", small, "s1");
        Assert.True(snapshot.Succeeded, snapshot.Describe());
        await QemuIo(d.NbdUri(small), "write -P 0x55 2M 1M", "flush");
        string[] smallReads = ["read -P 0x33 0 2M", "read -P 0x55 2M 1M", "read -P 0x33 3M 5M"];

        // 16 MiB more: past the near-full ratio (0.5 here), a warning only.
        await QemuIo(d.NbdUri(big), [.. Chunks(0, 4), "flush"]);
        Assert.Equal("nearfull", (await Space()).GetProperty("state").GetString());

        // 64 MiB more into what cannot hold 32: the writes past the full ratio fail with ENOSPC, not EIO.
        var r = await Run("qemu-io", QemuIoArgs(d.NbdUri(big), [.. Chunks(4, 20), "flush"]), TimeSpan.FromSeconds(120));
        Assert.Contains(NoSpace, r.Stdout + r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Input/output error", r.Stdout + r.Stderr, StringComparison.Ordinal);
        int written = 4 + Enumerable.Range(4, 16).Count(i => r.Stdout.Contains(string.Create(CultureInfo.InvariantCulture, $"wrote 4194304/4194304 bytes at offset {i * 4L * MiB}\n"), StringComparison.Ordinal));
        Assert.InRange(written, 5, 10);
        d.AssertAlive("after the writes that found the disk full");
        Assert.DoesNotContain("Journal failed", d.Log, StringComparison.Ordinal);

        var space = await Space();
        Assert.Equal("full", space.GetProperty("state").GetString());
        Assert.Equal(0.5, space.GetProperty("nearFullRatio").GetDouble());
        Assert.Equal(0.95, space.GetProperty("fullRatio").GetDouble());
        var info = await Cli("node", "info");
        Assert.Contains("full:", info.Stdout, StringComparison.Ordinal);

        // Full, and still: reads, overwrites of written blocks, flushes; a new block is refused.
        await QemuIo(d.NbdUri(big), [.. Enumerable.Range(0, written).Select(i => string.Create(CultureInfo.InvariantCulture, $"read -P 0x{0x10 + i:x2} {i * 4}M 4M"))]);
        await QemuIo(d.NbdUri(big), "write -P 0x7f 0 4M", "flush", "read -P 0x7f 0 4M");
        var refused = await Run("qemu-io", QemuIoArgs(d.NbdUri(small), ["write -P 0x44 8M 1M"]));
        Assert.Contains(NoSpace, refused.Stdout + refused.Stderr, StringComparison.Ordinal);
        // Deleting a snapshot merges it into the layer over it: the 7 MiB that layer inherits are
        // more than the disk has past its full ratio (about 2 MiB here), so they move a MiB at a
        // time, each trimmed from the snapshot before the next needs its space.
        long usedBefore = (await Space()).GetProperty("usedBytes").GetInt64();
        var merge = await Cli("vdi", "delete", $"{small}@s1");
        Assert.True(merge.Succeeded, $"{merge.Describe()}\n{d.Log}");
        await QemuIo(d.NbdUri(small), smallReads);
        Assert.DoesNotContain((await CliJson("vdi", "list")).EnumerateArray(), v => v.GetProperty("name").GetString() == $"{small}@s1");
        await Eventually(async () => (await Space()).GetProperty("usedBytes").GetInt64() <= usedBefore, TimeSpan.FromSeconds(10), "the merge takes no space in the end");

        // kill -9, another program takes the last free block, and the daemon still starts: replay
        // and checkpoint need no new space. Flushed data reads back.
        await d.KillAsync();
        var ballast = d.FillDataFileSystem();
        await d.StartAsync();
        await QemuIoReadOnly(d.NbdUri(big), [.. Enumerable.Range(1, written - 1).Select(i => string.Create(CultureInfo.InvariantCulture, $"read -P 0x{0x10 + i:x2} {i * 4}M 4M")), "read -P 0x7f 0 4M"]);
        await QemuIoReadOnly(d.NbdUri(small), smallReads);
        Assert.Equal("full", (await Space()).GetProperty("state").GetString());
        File.Delete(ballast);

        // Deleting the big volume makes room at once: the next write succeeds.
        var deleted = await Cli("vdi", "delete", big);
        Assert.True(deleted.Succeeded, $"{deleted.Describe()}\n{d.Log}");
        await QemuIo(d.NbdUri(small), ["write -P 0x44 8M 1M", "flush", "read -P 0x44 8M 1M", .. smallReads]);
        Assert.Equal("ok", (await Space()).GetProperty("state").GetString());
        Assert.DoesNotContain("Journal failed", d.Log, StringComparison.Ordinal);
    }
}

/// <summary>
/// Three copies, at least two: a node whose disk (its own tmpfs) is full misses writes like a
/// down node — they succeed on the others and it is marked stale — until a second node is full;
/// then the client gets ENOSPC. Every node's disk state shows in `ovis node list`.
/// </summary>
public sealed class ClusterFullDiskTests(Ovis.Cluster.Tests.Infrastructure.EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<Ovis.Cluster.Tests.Infrastructure.EtcdCluster>
{
    private static string[] Chunks(int from, int to) =>
        [.. Enumerable.Range(from, to - from).Select(i => string.Create(CultureInfo.InvariantCulture, $"write -P 0x{0x10 + i:x2} {i * 4}M 4M"))];

    private static async Task<string?> DiskState(OvisDaemon asked, string node)
        => (await Json(asked, "node", "list")).EnumerateArray().Single(n => n.GetProperty("id").GetString() == node)
            .TryGetProperty("space", out var space) && space.ValueKind == JsonValueKind.Object ? space.GetProperty("state").GetString() : null;

    [Fact]
    public async Task A_full_replica_is_missed_like_a_down_one_until_too_few_copies_have_room()
    {
        var name = await Format(copies: 3, minCopies: 2);
        // Node a's disk is the machine's; b has 96 MiB, c 48 MiB (each less a 16 MiB journal).
        await using var nodes = new ClusterNodes(name);
        foreach ((string zone, long tmpfs) in new[] { ("a", 0L), ("b", 96 * MiB), ("c", 48 * MiB) })
        {
            var d = new OvisDaemon { ExtraArguments = NodeArguments(name, zone, "--journal-size", "16M") };
            nodes.Add(d);
            if (tmpfs > 0)
            {
                await d.MountDataTmpfsAsync(tmpfs);
            }
            await d.StartAsync();
        }
        await Eventually(async () => (await Json(nodes[0], "node", "list")).GetArrayLength() == 3, LeaseMargin, "every node is up");
        Assert.Equal("ok", await DiskState(nodes[0], "n-c"));
        await Create(nodes[0], "v", "256M");

        // 40 MiB: more than c can hold, all of it acknowledged (a and b have it), c stale.
        var r = await QemuIo(nodes[0].NbdUri("v"), [.. Chunks(0, 10), "flush"]);
        Assert.True(await IsStale(nodes[0], "n-c"), "the full node is marked stale");
        Assert.False(await IsStale(nodes[0], "n-b"), "the node with room is not stale");
        Assert.Equal("full", await DiskState(nodes[0], "n-c"));
        Assert.Equal("full", await DiskState(nodes[1], "n-c"));
        var list = await nodes[1].Cli("node", "list");
        Assert.Contains("stale, full", list.Stdout, StringComparison.Ordinal);

        // Then b fills too: a write only a could take is refused with ENOSPC.
        var more = await Run("qemu-io", QemuIoArgs(nodes[0].NbdUri("v"), [.. Chunks(10, 30), "flush"]), TimeSpan.FromSeconds(120));
        Assert.Contains("No space left on device", more.Stdout + more.Stderr, StringComparison.Ordinal);
        Assert.Equal("full", await DiskState(nodes[0], "n-b"));

        // Everything acknowledged reads back, through another node too; nobody's journal failed.
        string[] reads = [.. Enumerable.Range(0, 10).Select(i => string.Create(CultureInfo.InvariantCulture, $"read -P 0x{0x10 + i:x2} {i * 4}M 4M"))];
        await QemuIo(nodes[0].NbdUri("v"), reads);
        foreach (var d in nodes)
        {
            d.AssertAlive("after the disks filled");
            Assert.DoesNotContain("Journal failed", d.Log, StringComparison.Ordinal);
        }
    }
}
