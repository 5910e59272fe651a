using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// `ovis vdi backup`, `restore` and `backup verify` against real clients and targets: a backup
/// taken under fio equals the snapshot of its instant, an incremental chain restores every point
/// and holds only the changed blocks, and a backup whose NBD target (nbdkit) is killed resumes
/// without copying again what the target confirmed.
/// </summary>
public sealed class BackupTests(ITestOutputHelper output) : InteropTest(null, output)
{
    [Fact]
    public async Task A_backup_taken_while_fio_verify_writes_equals_the_snapshot_of_its_instant_and_restores_to_it()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-fio", "64M", "1M");
        await QemuIo(daemon.NbdUri(vol), "write -P 0x5a 0 64M");

        // Rounds of random writes, each verified by reading it back, go on through the backup.
        var fio = Run("fio", ["--ioengine=nbd", $"--uri={daemon.NbdUri(vol)}", "--name=guest", "--rw=randwrite", "--bs=4k", "--iodepth=8",
            "--size=64M", "--loops=6", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json"], TimeSpan.FromSeconds(300));
        await Eventually(async () => (await CliJson("vdi", "info", vol)).GetProperty("connections").GetInt32() > 0, TimeSpan.FromSeconds(60), "fio connected");

        var dest = Path.Combine(ScratchDirectory(), "full.raw");
        var job = await BackupJson(vol, dest, "--keep-snapshot");
        var snapshot = job.GetProperty("backup").GetProperty("snapshot").GetString()!;
        Log(fio.IsCompleted ? "fio had ended before the backup did" : "fio was still writing when the backup ended");

        var compare = await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", dest, daemon.NbdUri(snapshot)], TimeSpan.FromSeconds(120));
        Assert.Contains("identical", compare.Stdout, StringComparison.OrdinalIgnoreCase);
        await JobJson("vdi", "backup", "verify", snapshot, dest);

        var restored = UniqueName("bk-fio-restored");
        await JobJson("vdi", "restore", dest, restored);
        compare = await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", daemon.NbdUri(restored), daemon.NbdUri(snapshot)], TimeSpan.FromSeconds(120));
        Assert.Contains("identical", compare.Stdout, StringComparison.OrdinalIgnoreCase);

        var r = await fio;
        Assert.True(r.Succeeded && !r.Stderr.Contains("verify", StringComparison.OrdinalIgnoreCase), $"fio failed during the backup:\n{r.Describe()}");
    }

    [Fact]
    public async Task A_full_and_three_incrementals_restore_each_point_exactly_and_hold_only_the_changed_blocks()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-chain", "32M", "1M");
        var uri = daemon.NbdUri(vol);
        var dir = ScratchDirectory();
        await QemuIo(uri, "write -P 1 0 12M", "write -P 2 30M 2M");

        var files = new List<string>();
        var snapshots = new List<string>();
        var full = Path.Combine(dir, "full.raw");
        var job = await BackupJson(vol, full, "--bitmap", "chain", "--keep-snapshot");
        files.Add(full);
        snapshots.Add(job.GetProperty("backup").GetProperty("snapshot").GetString()!);
        Assert.Equal(14L * MiB, job.GetProperty("backup").GetProperty("totalBytes").GetInt64());

        // Changes between the links, at block, granule (64 KiB) and object (1 MiB) edges.
        string[][] changes =
        [
            ["write -P 3 0 64k", "write -P 4 5242980 512"],            // one granule, and 512 bytes inside another
            ["write -z 8M 128k", "write -P 5 1044480 8192"],           // zeroes; 8 KiB across an object edge (2 granules)
            ["write -P 6 20M 1M", "write -P 7 31M 4k"],
        ];
        long[] changed = [128 * KiB, 256 * KiB, 1 * MiB + 64 * KiB];
        for (var i = 0; i < changes.Length; i++)
        {
            await QemuIo(uri, changes[i]);
            var inc = Path.Combine(dir, $"inc{i + 1}.raw");
            job = await BackupJson(vol, inc, "--incremental", "--bitmap", "chain", "--keep-snapshot");
            files.Add(inc);
            snapshots.Add(job.GetProperty("backup").GetProperty("snapshot").GetString()!);
            Assert.Equal(changed[i], job.GetProperty("backup").GetProperty("totalBytes").GetInt64());
            // The file holds exactly those bytes (it is sparse; its size is the volume's).
            Assert.Equal(changed[i], await AllocatedBytes(inc));
        }

        for (var point = 0; point < files.Count; point++)
        {
            var restored = UniqueName($"bk-chain-{point}");
            await JobJson(["vdi", "restore", .. files.Take(point + 1), restored]);
            var compare = await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", daemon.NbdUri(restored), daemon.NbdUri(snapshots[point])], TimeSpan.FromSeconds(120));
            Assert.Contains("identical", compare.Stdout, StringComparison.OrdinalIgnoreCase);
            await JobJson(["vdi", "backup", "verify", snapshots[point], .. files.Take(point + 1)]);
        }

        // A chain that skips a link does not verify: the check can fail.
        var wrong = await Cli(["vdi", "backup", "verify", snapshots[3], files[0], files[1], files[3]]);
        Assert.Equal(1, wrong.ExitCode);
        Assert.Contains("differs from the backup", wrong.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_backup_whose_nbd_target_is_killed_leaves_the_guest_writing_and_resumes_without_copying_confirmed_bytes_again()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-resume", "32M");
        await QemuIo(daemon.NbdUri(vol), "write -P 0x33 0 32M");
        var target = Path.Combine(ScratchDirectory(), "target.raw");
        await using (var f = File.Create(target))
        {
            f.SetLength(32L * MiB);
        }

        int port = FreePort();
        var dest = $"nbd://127.0.0.1:{port}/";
        // 24 Mbit/s: about 10 s for the volume, so the kill comes mid-copy.
        var nbdkit = await StartNbdkitAsync(port, target, "24M");
        var backup = Cli("vdi", "backup", vol, dest, "--keep-snapshot", "--rate", "100M");
        await Eventually(async () => ConfirmedBytes(await CliJson("vdi", "jobs")) > 0, TimeSpan.FromSeconds(60), "the target confirmed part of the backup");
        nbdkit.Kill(entireProcessTree: true);
        await nbdkit.WaitForExitAsync();

        // The guest is not held up by the dead target.
        await QemuIo(daemon.NbdUri(vol), "write -P 0x44 1M 1M", "flush", "read -P 0x44 1M 1M");

        var failed = await backup;
        Assert.Equal(1, failed.ExitCode);
        Assert.Contains("--resume", failed.Stderr, StringComparison.Ordinal);

        nbdkit = await StartNbdkitAsync(port, target, "400M");
        try
        {
            var r = await Cli("vdi", "backup", vol, dest, "--resume", "--keep-snapshot", "--json");
            Assert.True(r.Succeeded, r.Describe());
            using var doc = JsonDocument.Parse(r.Stdout.Trim().Split('\n')[^1]);
            var manifest = doc.RootElement.GetProperty("backup");
            Assert.True(manifest.GetProperty("complete").GetBoolean());
            var resumedFrom = manifest.GetProperty("resumedFrom").GetInt64();
            Assert.True(resumedFrom > 0 && resumedFrom < 32L * MiB, $"resumed from {resumedFrom}");
            Log($"resumed after {resumedFrom} confirmed bytes");
            var snapshot = manifest.GetProperty("snapshot").GetString()!;

            await JobJson("vdi", "backup", "verify", snapshot, dest);
        }
        finally
        {
            nbdkit.Kill(entireProcessTree: true);
            await nbdkit.WaitForExitAsync();
        }

        // The snapshot holds the volume of the backup's instant, not the write made after it.
        var compare = await Run("qemu-img", ["compare", "-f", "raw", "-F", "raw", target, daemon.NbdUri(vol)]);
        Assert.True(compare.ExitCode == 1 && compare.Stdout.Contains("mismatch", StringComparison.OrdinalIgnoreCase), compare.Describe());
    }

    /// <summary>The node stopped mid-backup: the backup stops resumable and, after the restart, resumes and verifies.</summary>
    [Fact]
    public async Task A_backup_interrupted_by_a_node_restart_resumes_after_it()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-restart", "32M");
        // A bitmap with changes: the backup freezes them, and they must stay frozen across the restart.
        await CliJson("vdi", "bitmap", "add", vol, "nightly");
        await QemuIo(daemon.NbdUri(vol), "write -P 0x77 0 32M");
        var dest = Path.Combine(ScratchDirectory(), "backup.raw");
        var backup = Cli("vdi", "backup", vol, dest, "--bitmap", "nightly", "--keep-snapshot", "--rate", "3M");
        await Eventually(async () => ConfirmedBytes(await CliJson("vdi", "jobs")) > 0, TimeSpan.FromSeconds(60), "part of the backup confirmed");
        Assert.Equal(0, await daemon.StopAsync());
        Assert.NotEqual(0, (await backup).ExitCode);

        await daemon.StartAsync();
        using (var doc = JsonDocument.Parse(await File.ReadAllTextAsync(dest + ".json")))
        {
            Assert.False(doc.RootElement.GetProperty("complete").GetBoolean());
        }
        var bitmaps = await CliJson("vdi", "bitmap", "list", vol);
        Assert.True(bitmaps[0].GetProperty("backupPending").GetBoolean(), bitmaps.ToString());

        var done = await JobJson("vdi", "backup", vol, dest, "--resume", "--keep-snapshot");
        Assert.True(done.GetProperty("backup").GetProperty("resumedFrom").GetInt64() > 0);
        await JobJson("vdi", "backup", "verify", done.GetProperty("backup").GetProperty("snapshot").GetString()!, dest);
        bitmaps = await CliJson("vdi", "bitmap", "list", vol);
        Assert.False(bitmaps[0].GetProperty("backupPending").GetBoolean(), bitmaps.ToString());
    }

    /// <summary>A target that stops reading (SIGSTOP): the guest goes on, a cancel stops the backup resumable, and it completes once the target is back.</summary>
    [Fact]
    public async Task A_backup_whose_target_hangs_can_be_cancelled_and_resumed_while_the_guest_goes_on()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        await BackUpToAHangingTarget(await CreateVolume("bk-hang", "32M"), ["--keep-snapshot"], async backup =>
        {
            var jobs = await CliJson("vdi", "jobs");
            var id = jobs.EnumerateArray().First(j => j.GetProperty("kind").GetString() == "backup" && j.GetProperty("state").GetString() == "running").GetProperty("id").GetString()!;
            await CliJson("vdi", "jobs", "--cancel", id);
            var cancelled = await backup;
            Assert.Contains("cancelled", cancelled.Stderr, StringComparison.Ordinal);
        });
    }

    /// <summary>A target that stops answering stops the backup by itself after --target-timeout, resumable, and the guest never waits.</summary>
    [Fact]
    public async Task A_backup_whose_target_hangs_stops_by_itself_after_the_target_timeout_and_resumes()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-timeout", "32M");
        var done = await BackUpToAHangingTarget(vol, ["--keep-snapshot", "--target-timeout", "3"], async backup =>
        {
            var stopped = await backup;
            Assert.Contains("did not answer", stopped.Stderr, StringComparison.Ordinal);
            Assert.Contains("within 3 s", stopped.Stderr, StringComparison.Ordinal);
            Assert.Single(stopped.Stderr.Trim().Split('\n'));
        });
        Assert.True(done.GetProperty("backup").GetProperty("resumedFrom").GetInt64() > 0, done.ToString());

        var r = await Cli("vdi", "backup", vol, "nbd://127.0.0.1:1/", "--target-timeout", "-1");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("ovis: --target-timeout: -1 is out of range: use 0 (wait for ever) to 86400 seconds", r.Stderr.Trim());
    }

    /// <summary>
    /// Writes volume <paramref name="vol"/> of the test's daemon whole and backs it up to nbdkit (24 MB/s) with <paramref name="options"/>, SIGSTOPs nbdkit
    /// once part is confirmed, and checks the guest still writes, flushes and reads. <paramref name="stop"/>
    /// ends the running CLI (it awaits it); the backup must have failed resumable. Then nbdkit goes
    /// on, the backup is resumed and verified; returns the resumed job.
    /// </summary>
    private async Task<JsonElement> BackUpToAHangingTarget(string vol, string[] options, Func<Task<ProcessResult>, Task> stop)
    {
        await QemuIo(Daemon.NbdUri(vol), "write -P 0x55 0 32M");
        var target = Path.Combine(ScratchDirectory(), "target.raw");
        await using (var f = File.Create(target))
        {
            f.SetLength(32L * MiB);
        }

        int port = FreePort();
        var dest = $"nbd://127.0.0.1:{port}/";
        var nbdkit = await StartNbdkitAsync(port, target, "24M");
        try
        {
            var backup = Cli(["vdi", "backup", vol, dest, .. options]);
            await Eventually(async () => ConfirmedBytes(await CliJson("vdi", "jobs")) > 0, TimeSpan.FromSeconds(60), "the target confirmed part of the backup");
            await RunOk("kill", ["-STOP", nbdkit.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);

            await QemuIo(Daemon.NbdUri(vol), "write -P 0x66 2M 1M", "flush", "read -P 0x66 2M 1M");

            await stop(backup);
            var stopped = await backup;
            Assert.Equal(1, stopped.ExitCode);
            Assert.Contains("--resume", stopped.Stderr, StringComparison.Ordinal);

            await RunOk("kill", ["-CONT", nbdkit.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
            var done = await JobJson(["vdi", "backup", vol, dest, "--resume", "--keep-snapshot"]);
            await JobJson("vdi", "backup", "verify", done.GetProperty("backup").GetProperty("snapshot").GetString()!, dest);
            return done;
        }
        finally
        {
            nbdkit.Kill(entireProcessTree: true);
            await nbdkit.WaitForExitAsync();
        }
    }

    /// <summary>
    /// Overwrites at block, granule and object edges once the backup's instant has passed (its
    /// manifest exists) and while it copies at 4 MB/s, as QEMU's image-fleecing iotest does: the
    /// backup holds the old data, the guest reads the new.
    /// </summary>
    [Fact]
    public async Task Overwrites_at_block_and_object_edges_during_a_backup_leave_the_old_data_in_the_backup()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-edges", "32M", "1M");
        var uri = daemon.NbdUri(vol);
        await QemuIo(uri, "write -P 0x11 0 32M");
        var dir = ScratchDirectory();
        var before = Path.Combine(dir, "before.raw");
        await RunOk("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, before]);

        var dest = Path.Combine(dir, "backup.raw");
        var backup = Cli("vdi", "backup", vol, dest, "--rate", "4M");
        await Eventually(() => Task.FromResult(File.Exists(dest + ".json")), TimeSpan.FromSeconds(60), "the backup's manifest (its snapshot is taken)");
        string[] overwrites =
        [
            "write -P 0x22 0 512",                 // part of the first block
            "write -P 0x23 1048064 1024",          // across the first object edge, partial blocks
            "write -P 0x24 4190208 8192",          // across an object edge, whole blocks
            "write -P 0x25 31M 1M",                // the last object, whole
            "write -z 12M 64k",
            "discard 16M 1M",
        ];
        await QemuIo(uri, overwrites);
        var r = await backup;
        Assert.True(r.Succeeded, r.Describe());

        var compare = await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", dest, before]);
        Assert.Contains("identical", compare.Stdout, StringComparison.OrdinalIgnoreCase);
        await QemuIo(uri, "read -P 0x22 0 512", "read -P 0x11 512 1047552", "read -P 0x23 1048064 1024",
            "read -P 0x24 4190208 8192", "read -P 0x25 31M 1M", "read -P 0 12M 64k", "read -P 0 16M 1M", "read -P 0x11 17M 1M");
    }

    [Fact]
    public async Task Bad_backup_requests_get_one_line_and_a_non_zero_exit()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("bk-bad", "8M");
        var dest = Path.Combine(ScratchDirectory(), "x.raw");
        var r = await Cli("vdi", "backup", vol, dest, "--rate", "fast");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("ovis: invalid rate 'fast': use bytes per second with an optional K, M or G suffix, e.g. 20M", r.Stderr.Trim());
        r = await Cli("vdi", "backup", vol, dest, "--incremental", "--bitmap", "nope");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"ovis: bitmap 'nope' not found on volume '{vol}': an incremental backup needs a full one with --bitmap first", r.Stderr.Trim());
        r = await Cli("vdi", "backup", vol, dest, "--resume");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"ovis: there is no interrupted backup to '{dest}' to resume", r.Stderr.Trim());
        r = await Cli("vdi", "restore", dest, "r");
        Assert.Equal(1, r.ExitCode);
        Assert.Single(r.Stderr.Trim().Split('\n'));
    }


    private static long ConfirmedBytes(JsonElement jobs)
        => jobs.EnumerateArray()
            .Where(j => j.GetProperty("kind").GetString() == "backup" && j.GetProperty("state").GetString() == "running" && j.TryGetProperty("backup", out _))
            .Select(j => j.GetProperty("backup").GetProperty("confirmedBytes").GetInt64())
            .DefaultIfEmpty(0)
            .Max();

    private async Task<long> AllocatedBytes(string path)
        => long.Parse((await RunOk("stat", ["-c", "%b", path])).Stdout.Trim(), System.Globalization.CultureInfo.InvariantCulture) * 512;

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    private async Task<Process> StartNbdkitAsync(int port, string file, string rateBits)
    {
        var psi = new ProcessStartInfo("nbdkit", ["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--filter=rate", "file", file, $"rate={rateBits}"])
        { UseShellExecute = false, RedirectStandardError = true };
        var p = Process.Start(psi)!;
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) Log("[nbdkit] " + e.Data); };
        p.BeginErrorReadLine();
        await Eventually(async () =>
        {
            using var c = new TcpClient();
            try
            {
                await c.ConnectAsync(IPAddress.Loopback, port);
                return true;
            }
            catch (SocketException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(30), $"nbdkit listening on {port}");
        return p;
    }
}
