using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Backups to qcow2 files (written through a private qemu-nbd): a full is an image qemu-img
/// reads as the snapshot, an incremental is an overlay over the last link that holds only the
/// changed granules and reads as its own point, and restore and verify take the last link alone.
/// </summary>
public sealed class Qcow2BackupTests(ITestOutputHelper output) : InteropTest(null, output)
{
    [Fact]
    public async Task A_full_and_an_incremental_to_qcow2_read_as_their_points_in_qemu_img_and_restore_exactly()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-qcow2", "32M", "1M");
        var uri = daemon.NbdUri(vol);
        var dir = ScratchDirectory();
        await QemuIo(uri, "write -P 1 0 12M", "write -P 2 30M 2M");

        var full = Path.Combine(dir, "full.qcow2");
        var job = await BackupJson(vol, full, "--bitmap", "q", "--keep-snapshot");
        var first = job.GetProperty("backup").GetProperty("snapshot").GetString()!;
        using (var info = JsonDocument.Parse((await RunOk("qemu-img", ["info", "--output=json", full])).Stdout))
        {
            Assert.Equal("qcow2", info.RootElement.GetProperty("format").GetString());
            Assert.Equal(32 * MiB, info.RootElement.GetProperty("virtual-size").GetInt64());
        }
        await Identical(full, daemon.NbdUri(first));

        // Changed after the full: one granule, and 512 bytes inside another.
        await QemuIo(uri, "write -P 3 0 64k", "write -P 4 5242980 512");
        var inc = Path.Combine(dir, "inc1.qcow2");
        job = await BackupJson(vol, inc, "--incremental", "--bitmap", "q", "--backing", full, "--keep-snapshot");
        var second = job.GetProperty("backup").GetProperty("snapshot").GetString()!;
        Assert.Equal(128 * KiB, job.GetProperty("backup").GetProperty("totalBytes").GetInt64());
        Assert.Equal(128 * KiB, await BytesInTopLayer(inc));
        await Identical(inc, daemon.NbdUri(second));

        // The last link alone gives its point back, and verifies against it.
        var restored = UniqueName("bk-qcow2-restored");
        await JobJson("vdi", "restore", inc, restored);
        await Identical(daemon.NbdUri(restored), daemon.NbdUri(second), "raw");
        await JobJson("vdi", "backup", "verify", second, inc);
        var wrong = await Cli("vdi", "backup", "verify", first, inc);
        Assert.Equal(1, wrong.ExitCode);
        Assert.Contains("differs from the backup", wrong.Stderr, StringComparison.Ordinal);

        // What cannot be meant gets one line.
        var r = await Cli("vdi", "backup", vol, Path.Combine(dir, "inc2.qcow2"), "--incremental", "--bitmap", "q");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"ovis: an incremental backup to the qcow2 file '{Path.Combine(dir, "inc2.qcow2")}' needs --backing PREV.qcow2, the chain's last link", r.Stderr.Trim());
        r = await Cli("vdi", "backup", vol, Path.Combine(dir, "x.raw"), "--incremental", "--bitmap", "q", "--backing", full);
        Assert.Equal(1, r.ExitCode);
        Assert.Equal("ovis: --backing is for an incremental backup to a qcow2 file", r.Stderr.Trim());
        r = await Cli("vdi", "restore", full, inc, UniqueName("bk-qcow2-r"));
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"ovis: '{full}' is a qcow2 backup, which reads through its backing files: name only the chain's last link", r.Stderr.Trim());
    }

    /// <summary>A raw backup whose first bytes are a qcow2 header (the volume holds a qcow2 image) restores as raw bytes, not as the image inside.</summary>
    [Fact]
    public async Task A_raw_backup_of_a_volume_holding_a_qcow2_image_restores_the_raw_bytes()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-probe", "8M");
        var dir = ScratchDirectory();
        var inner = Path.Combine(dir, "inner.qcow2");
        await RunOk("qemu-img", ["create", "-q", "-f", "qcow2", inner, "4M"]);
        await RunOk("qemu-io", ["-f", "qcow2", "-c", "write -P 0x77 0 1M", inner]);
        // The qcow2 file's bytes, as they are, at the start of the volume.
        await RunOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", inner, daemon.NbdUri(vol)]);

        var raw = Path.Combine(dir, "probe.raw");
        await BackupJson(vol, raw);
        var restored = UniqueName("bk-probe-restored");
        await JobJson("vdi", "restore", raw, restored);
        await Identical(daemon.NbdUri(restored), daemon.NbdUri(vol), "raw");
    }

    private async Task Identical(string image, string snapshotUri, string format = "qcow2")
    {
        var compare = await RunOk("qemu-img", ["compare", "-f", format, "-F", "raw", image, snapshotUri], TimeSpan.FromSeconds(120));
        Assert.Contains("identical", compare.Stdout, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The data bytes a qcow2 file holds itself (depth 0), not through its backing file.</summary>
    private async Task<long> BytesInTopLayer(string path)
    {
        using var map = JsonDocument.Parse((await RunOk("qemu-img", ["map", "--output=json", "-f", "qcow2", path])).Stdout);
        return map.RootElement.EnumerateArray()
            .Where(e => e.GetProperty("depth").GetInt32() == 0 && e.GetProperty("data").GetBoolean())
            .Sum(e => e.GetProperty("length").GetInt64());
    }
}
