using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Dirty bitmaps and backups on cluster nodes, with a real etcd and three real daemons: a bitmap
/// survives a clean restart of its gateway exactly, and after the gateway is killed another node
/// that takes the volume over shows every block written through the dead one marked (the bits
/// it saved, and whole objects for what the dirty-region log still names); a full and two
/// incremental backups taken on a cluster node, one while fio writes, restore byte for byte.
/// </summary>
public sealed class ClusterBitmapTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private const long Granule = 64 * KiB;
    private const long ObjectSize = 1 * MiB;

    [Fact]
    public async Task A_bitmap_survives_a_clean_restart_of_its_cluster_gateway_exactly()
    {
        await using var nodes = await StartCluster(copies: 2);
        await CreateSmall(nodes[0], "rb", "16M");
        await Cli(nodes[0], "vdi", "bitmap", "add", "rb", "b");
        await QemuIo(nodes[0].NbdUri("rb"), "write -P 1 0 64k", "write -P 2 5M 4k", "write -P 3 9437184 131072", "flush");

        await nodes[0].StopAsync();
        await nodes[0].StartAsync();

        // Nothing was left in the dirty-region log by a clean stop: no object-sized over-report.
        var dirty = await DirtyExtents(nodes[0].NbdUri("rb"), "b", LeaseMargin);
        Assert.Equal([(0, Granule), (5 * MiB, Granule), (9 * MiB, 2 * Granule)], dirty);
        var listed = await Json(nodes[0], "vdi", "bitmap", "list", "rb");
        Assert.Equal(4 * Granule, listed[0].GetProperty("dirtyBytes").GetInt64());

        // While node a serves the volume, its bitmaps are asked of node a.
        await using var held = await RawNbdClient.ConnectAsync(nodes[0].NbdPort, "rb");
        var refused = await nodes[1].Cli("vdi", "bitmap", "list", "rb");
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("is being served by node n-a", refused.Stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// Writes through node a in three ways — with a connection that closed (its lock was let go),
    /// with one still open whose objects the dirty-region log has forgotten since (so their bits
    /// were saved first), and acknowledged just before the kill with no save at all — then
    /// kill -9 of node a, and node b takes the volume over: every written block is marked.
    /// </summary>
    [Fact]
    public async Task After_the_gateway_is_killed_the_node_that_takes_over_marks_every_block_written_through_it()
    {
        await using var nodes = await StartCluster(copies: 2);
        await CreateSmall(nodes[0], "kb", "32M");
        await Cli(nodes[0], "vdi", "bitmap", "add", "kb", "b");
        var written = new List<(long Offset, long Length)>();

        await QemuIo(nodes[0].NbdUri("kb"), "write -P 1 0 64k", "write -P 2 3M 4k", "flush");
        written.AddRange([(0, 64 * KiB), (3 * MiB, 4 * KiB)]);

        await using (var c = await RawNbdClient.ConnectAsync(nodes[0].NbdPort, "kb"))
        {
            await c.WriteOkAsync(6 * MiB, RandomBytes((int)(128 * KiB), seed: 1));
            await c.WriteOkAsync(10 * MiB + 8 * KiB, RandomBytes((int)(4 * KiB), seed: 2));
            Assert.Equal(0u, await c.FlushAsync());
            written.AddRange([(6 * MiB, 128 * KiB), (10 * MiB + 8 * KiB, 4 * KiB)]);
            // Idle and flushed, their objects leave the log (after 10 s): the bitmap was saved before.
            await Eventually(async () => !(await LoggedObjects(nodes.Cluster)).Overlaps([0, 3, 6, 10]), LeaseMargin + TimeSpan.FromSeconds(20),
                "the dirty-region log forgot objects 0, 3, 6 and 10");

            // Acknowledged, never flushed, nothing saved: only the log names their objects.
            var rng = new Random(77);
            for (var i = 0; i < 40; i++)
            {
                long offset = (16 * MiB) + (rng.Next(0, 16 * 256) * 4 * KiB);
                await c.WriteOkAsync(offset, RandomBytes((int)(4 * KiB), seed: 100 + i));
                written.Add((offset, 4 * KiB));
            }
            await nodes[0].KillAsync();
        }

        // Node b takes the volume over once node a's lease is gone.
        var dirty = await DirtyExtents(nodes[1].NbdUri("kb"), "b", LeaseMargin + LeaseMargin);
        foreach (var (offset, length) in written)
        {
            Assert.True(dirty.Any(d => d.Offset <= offset && offset + length <= d.Offset + d.Length),
                $"[{offset}, +{length}) was written through the dead gateway but is not marked: {string.Join(", ", dirty)}");
        }
        // What the log had forgotten comes from the saved bits: exact granules, not whole objects.
        Assert.Contains((0L, Granule), dirty);
        Assert.Contains((3 * MiB, Granule), dirty);
        Assert.Contains((6 * MiB, 2 * Granule), dirty);
        Assert.Contains((10 * MiB, Granule), dirty);
        Log($"marked after the takeover: {string.Join(", ", dirty)}");
    }

    [Fact]
    public async Task A_full_and_two_incremental_backups_on_a_cluster_node_one_under_fio_restore_byte_for_byte()
    {
        await using var nodes = await StartCluster(copies: 2);
        var a = nodes[0];
        await CreateSmall(a, "bk", "32M");
        await QemuIo(a.NbdUri("bk"), "write -P 0x5a 0 20M");
        var dir = ScratchDirectory();
        var files = new List<string>();
        var snapshots = new List<string>();

        // The full backup while fio writes through the same node: the volume stays in use.
        var fio = Run("fio", ["--ioengine=nbd", $"--uri={a.NbdUri("bk")}", "--name=guest", "--rw=randwrite", "--bs=4k", "--iodepth=8",
            "--size=32M", "--time_based", "--runtime=8", "--output-format=json"], TimeSpan.FromSeconds(120));
        await Eventually(async () => (await Json(a, "vdi", "info", "bk")).GetProperty("connections").GetInt32() > 0, LeaseMargin, "fio connected");
        await Backup(a, files, snapshots, Path.Combine(dir, "full.raw"), "--bitmap", "b");
        var r = await fio;
        Assert.True(r.Succeeded, r.Describe());

        // The first incremental has fio's writes after the full's instant, and these.
        await QemuIo(a.NbdUri("bk"), "write -P 1 24M 64k", "write -z 2M 128k");
        await Backup(a, files, snapshots, Path.Combine(dir, "inc1.raw"), "--incremental", "--bitmap", "b");

        // The second has exactly these: 64 KiB, and 8 KiB across a granule edge (two granules).
        await QemuIo(a.NbdUri("bk"), "write -P 2 30M 64k", "write -P 3 1044480 8192");
        var job = await Backup(a, files, snapshots, Path.Combine(dir, "inc2.raw"), "--incremental", "--bitmap", "b");
        Assert.Equal(3 * Granule, job.GetProperty("backup").GetProperty("totalBytes").GetInt64());

        for (var point = 0; point < files.Count; point++)
        {
            var restored = $"bk-restored-{point}";
            await JobJson(a, ["vdi", "restore", .. files.Take(point + 1), restored]);
            var compare = await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", a.NbdUri(restored), a.NbdUri(snapshots[point])], TimeSpan.FromSeconds(120));
            Assert.Contains("identical", compare.Stdout, StringComparison.OrdinalIgnoreCase);
        }
    }

    private static async Task CreateSmall(OvisDaemon d, string name, string size)
    {
        var r = await d.Cli("vdi", "create", name, size, "--object-size", "1M");
        Assert.True(r.Succeeded, $"{r.Describe()}\n{d.Log}");
    }

    private async Task Cli(OvisDaemon d, params string[] args)
    {
        var r = await d.Cli(args);
        Log(r.Describe());
        Assert.True(r.Succeeded, $"{r.Describe()}\n{d.Log}");
    }

    private async Task<JsonElement> Backup(OvisDaemon d, List<string> files, List<string> snapshots, string dest, params string[] options)
    {
        var job = await JobJson(d, ["vdi", "backup", "bk", dest, "--keep-snapshot", .. options]);
        files.Add(dest);
        snapshots.Add(job.GetProperty("backup").GetProperty("snapshot").GetString()!);
        return job;
    }

    /// <summary>The object indexes the dirty-region log names now, in any layer (one volume per cluster here).</summary>
    private async Task<HashSet<long>> LoggedObjects(string cluster)
    {
        var range = await Etcd.Client.RangePrefixAsync($"/ovis/{cluster}/dirty/");
        return [.. range.Kvs.SelectMany(kv => JsonSerializer.Deserialize<long[]>(kv.Value) ?? [])];
    }

    /// <summary>The extents `nbdinfo --map=qemu:dirty-bitmap:B` marks, merged; retried while the
    /// export is refused (another node's lease has not run out yet).</summary>
    private async Task<List<(long Offset, long Length)>> DirtyExtents(string uri, string bitmap, TimeSpan timeout)
    {
        ProcessResult? r = null;
        await Eventually(async () => (r = await Run("nbdinfo", ["--map=qemu:dirty-bitmap:" + bitmap, "--json", uri])).Succeeded, timeout,
            $"nbdinfo maps {uri}");
        using var doc = JsonDocument.Parse(r!.Stdout);
        var merged = new List<(long Offset, long Length)>();
        foreach (var (o, l) in doc.RootElement.EnumerateArray()
            .Where(e => (e.GetProperty("type").GetInt32() & 1) != 0)
            .Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64())).OrderBy(e => e.Item1))
        {
            if (merged.Count > 0 && merged[^1].Offset + merged[^1].Length == o)
            {
                merged[^1] = (merged[^1].Offset, merged[^1].Length + l);
            }
            else
            {
                merged.Add((o, l));
            }
        }
        return merged;
    }
}
