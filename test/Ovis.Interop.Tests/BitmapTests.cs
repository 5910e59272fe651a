using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Persistent dirty bitmaps (docs/backup.md): what they mark, as real NBD clients read it through
/// the meta context qemu:dirty-bitmap:NAME, across a clean restart and a kill -9.
/// </summary>
public sealed class BitmapTests(ITestOutputHelper output) : InteropTest(null, output)
{
    private const int Block = 4096;

    [Fact]
    public async Task Nbdinfo_and_qemu_img_map_show_exactly_the_written_extents_rounded_out_to_the_granularity()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bm-map", "64M", "1M");
        var uri = daemon.NbdUri(vol);
        // Before the bitmap: not a change it tracks.
        await QemuIo(uri, "write -P 1 5M 1M");

        var added = await CliJson("vdi", "bitmap", "add", vol, "b1", "--granularity", "64K");
        Assert.Equal(64 * KiB, added.GetProperty("granularity").GetInt64());

        await QemuIo(uri,
            "write -P 2 0 64k",                 // one granule exactly
            "write -P 3 1048676 100",           // 100 bytes inside [1M, 1M+64K): the whole granule
            "write -P 4 3141632 8192",          // 8 KiB across the edge of two granules at 3M
            "write -z 10M 128k",                // zeroing changes content too
            "discard 20M 64k",
            "write -P 5 67043328 65536");       // the last granule
        long[][] expected =
        [
            [0, 64 * KiB],
            [1 * MiB, 64 * KiB],
            [3008 * KiB, 128 * KiB],
            [10 * MiB, 128 * KiB],
            [20 * MiB, 64 * KiB],
            [64 * MiB - 64 * KiB, 64 * KiB],
        ];

        var dirty = await DirtyExtents(uri, "b1");
        Assert.Equal(expected.Select(e => (e[0], e[1])), dirty);

        // qemu-img map reports a dirty extent as "data": false (x-dirty-bitmap replaces
        // base:allocation and its bit 0 is read as HOLE), as QEMU's own docs say.
        var map = await RunOk("qemu-img", ["map", "--output=json", "--image-opts",
            $"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={daemon.NbdPort},export={vol},x-dirty-bitmap=qemu:dirty-bitmap:b1"]);
        using var doc = JsonDocument.Parse(map.Stdout);
        var fromQemu = Merge(doc.RootElement.EnumerateArray()
            .Where(e => !e.GetProperty("data").GetBoolean())
            .Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64())));
        Assert.Equal(expected.Select(e => (e[0], e[1])), fromQemu);

        // base:allocation is still there beside it, and a list names both.
        var contexts = (await RunOk("nbdinfo", ["--content", uri])).Stdout;
        Assert.Contains("base:allocation", contexts, StringComparison.Ordinal);
        Assert.Contains("qemu:dirty-bitmap:b1", contexts, StringComparison.Ordinal);
        Assert.Contains((await NbdMap(uri)), e => e.Type == 0 && e.Offset <= 5 * MiB && e.Offset + e.Length > 5 * MiB);

        // A list query for the namespace answers with what exists; an unknown bitmap is no context.
        await CliJson("vdi", "bitmap", "add", vol, "b2");
        // Debian's python3-libnbd is in the system Python (see LibnbdTests).
        var listed = await RunOk("/usr/bin/python3", ["-c",
            "import nbd, sys\n" +
            "out = []\n" +
            "for q in ([\"qemu:dirty-bitmap:\"], [\"qemu:\"], [\"qemu:dirty-bitmap:nope\"], [\"qemu:dirty-bitmap:b2\"]):\n" +
            "    h = nbd.NBD()\n" +
            "    h.set_opt_mode(True)\n" +
            "    h.connect_uri(sys.argv[1])\n" +
            "    names = []\n" +
            "    h.add_meta_context(q[0])\n" +
            "    h.opt_list_meta_context(lambda name: names.append(name) or 0)\n" +
            "    out.append(sorted(names))\n" +
            "    h.opt_abort()\n" +
            "print(out)\n", uri]);
        Assert.Equal("[['qemu:dirty-bitmap:b1', 'qemu:dirty-bitmap:b2'], ['qemu:dirty-bitmap:b1', 'qemu:dirty-bitmap:b2'], [], ['qemu:dirty-bitmap:b2']]", listed.Stdout.Trim());

        // Both contexts selected on one connection: one BLOCK_STATUS answers each (a chunk per context).
        var both = await RunOk("/usr/bin/python3", ["-c",
            "import nbd, sys\n" +
            "h = nbd.NBD()\n" +
            "h.add_meta_context('base:allocation')\n" +
            "h.add_meta_context('qemu:dirty-bitmap:b1')\n" +
            "h.connect_uri(sys.argv[1])\n" +
            "seen = {}\n" +
            "def cb(ctx, offset, entries, err):\n" +
            "    seen[ctx] = entries[:4]\n" +
            "    return 0\n" +
            "h.block_status(2 * 1024 * 1024, 0, cb)\n" +
            "print(sorted(seen.keys()), seen['qemu:dirty-bitmap:b1'])\n", uri]);
        Assert.Equal($"['base:allocation', 'qemu:dirty-bitmap:b1'] [{64 * KiB}, 1, {960 * KiB}, 0]", both.Stdout.Trim());

        var list = await CliJson("vdi", "bitmap", "list", vol);
        Assert.Equal(["b1", "b2"], list.EnumerateArray().Select(b => b.GetProperty("name").GetString()));
        Assert.Equal(expected.Sum(e => e[1]), list[0].GetProperty("dirtyBytes").GetInt64());
        Assert.Equal(0, list[1].GetProperty("dirtyBytes").GetInt64());
    }

    [Fact]
    public async Task A_bitmap_survives_a_clean_restart_and_clear_and_remove_do_what_they_say()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bm-restart", "32M");
        await CliJson("vdi", "bitmap", "add", vol, "nightly", "--granularity", "4K");
        await QemuIo(daemon.NbdUri(vol), "write -P 7 8k 4k", "write -P 8 16M 12k");

        Assert.Equal(0, await daemon.StopAsync());
        await daemon.StartAsync();
        Assert.Equal([(8 * KiB, 4 * KiB), (16 * MiB, 12 * KiB)], await DirtyExtents(daemon.NbdUri(vol), "nightly"));

        await CliJson("vdi", "bitmap", "clear", vol, "nightly");
        Assert.Empty(await DirtyExtents(daemon.NbdUri(vol), "nightly"));
        await QemuIo(daemon.NbdUri(vol), "write -P 9 1M 4k");
        Assert.Equal(0, await daemon.StopAsync());
        await daemon.StartAsync();
        Assert.Equal([(1 * MiB, 4 * KiB)], await DirtyExtents(daemon.NbdUri(vol), "nightly"));

        await Cli("vdi", "bitmap", "remove", vol, "nightly");
        var gone = await Cli("vdi", "bitmap", "clear", vol, "nightly");
        Assert.Equal(1, gone.ExitCode);
        Assert.Equal($"ovis: bitmap 'nightly' not found on volume '{vol}'", gone.Stderr.Trim());
        Assert.Empty((await CliJson("vdi", "bitmap", "list", vol)).EnumerateArray());
    }

    [Fact]
    public async Task Bad_bitmap_requests_get_one_line_and_a_non_zero_exit()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bm-bad", "8M");
        var r = await Cli("vdi", "bitmap", "add", vol, "b", "--granularity", "3K");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal("ovis: invalid granularity 3072: use a power of two from 4 KiB to 64 MiB", r.Stderr.Trim());
        r = await Cli("vdi", "bitmap", "add", "nosuchvol", "b");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal("ovis: volume 'nosuchvol' not found", r.Stderr.Trim());
        await CliJson("vdi", "bitmap", "add", vol, "b");
        r = await Cli("vdi", "bitmap", "add", vol, "b");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"ovis: bitmap 'b' already exists on volume '{vol}'", r.Stderr.Trim());
        r = await Cli("vdi", "bitmap", "remove", vol, "nope");
        Assert.Equal(1, r.ExitCode);
        Assert.Single(r.Stderr.Trim().Split('\n'));
    }

    /// <summary>
    /// kill -9 with writes on the way, after enough data that checkpoints have moved the journal's
    /// tail (so bits must have been saved by them, not only replayed): every block that reads
    /// differently after the restart, and every flushed one, is marked. Never fewer.
    /// </summary>
    [Fact]
    public async Task After_kill_9_during_writes_the_bitmap_marks_at_least_every_block_written()
    {
        const int size = 160 * MiB;
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bm-crash", "160M");
        var uri = daemon.NbdUri(vol);
        await CliJson("vdi", "bitmap", "add", vol, "b", "--granularity", "4K");

        // 96 MiB flushed: more than a quarter of the 256 MiB journal, so checkpoints run meanwhile.
        await RunOk("qemu-io", QemuIoArgs(uri, ["write -P 0x11 0 96M", "flush"]), TimeSpan.FromSeconds(120));
        var flushedEnd = 96L * MiB;

        // Then unflushed writes, some of them in flight at the kill.
        var rng = new Random(4242);
        var written = new HashSet<long>();
        await using (var c = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol))
        {
            for (var i = 0; i < 200; i++)
            {
                long block = rng.Next((int)(flushedEnd / Block), size / Block);
                written.Add(block);
                var data = new byte[Block];
                rng.NextBytes(data);
                data[0] = 0xee; // never all zeroes
                await c.WriteOkAsync(block * Block, data);
            }
            await daemon.KillAsync();
        }
        await daemon.StartAsync();

        var dirty = await DirtyExtents(daemon.NbdUri(vol), "b");
        bool Marked(long offset) => dirty.Any(d => d.Offset <= offset && offset < d.Offset + d.Length);
        Assert.True(dirty.Count > 0 && dirty[0] == (0, dirty[0].Length) && dirty[0].Length >= flushedEnd,
            $"the flushed 96 MiB are not all marked: {string.Join(", ", dirty.Take(5))}");

        // Every block that survived the crash with new data is marked.
        var image = Path.Combine(ScratchDirectory(), "after.raw");
        await RunOk("qemu-img", ["convert", "-f", "raw", "-O", "raw", daemon.NbdUri(vol), image], TimeSpan.FromSeconds(120));
        using var f = File.OpenRead(image);
        var buf = new byte[Block];
        int survived = 0;
        foreach (long block in written)
        {
            f.Position = block * Block;
            f.ReadExactly(buf);
            if (buf.Any(b => b != 0))
            {
                survived++;
                Assert.True(Marked(block * Block), $"block {block} holds data written after the bitmap, but the bitmap does not mark it");
            }
        }
        Log($"{survived} of {written.Count} unflushed blocks survived the kill; all marked");
    }

    private async Task<List<(long Offset, long Length)>> DirtyExtents(string uri, string bitmap)
    {
        var r = await RunOk("nbdinfo", ["--map=qemu:dirty-bitmap:" + bitmap, "--json", uri]);
        using var doc = JsonDocument.Parse(r.Stdout);
        return Merge(doc.RootElement.EnumerateArray()
            .Where(e => (e.GetProperty("type").GetInt32() & 1) != 0)
            .Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64())));
    }

    private static List<(long Offset, long Length)> Merge(IEnumerable<(long Offset, long Length)> extents)
    {
        var merged = new List<(long Offset, long Length)>();
        foreach (var (o, l) in extents.OrderBy(e => e.Offset))
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
