using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Snapshots, clones, rollback, flatten and snapshot delete, through the CLI and the admin API,
/// checked with real NBD clients: qemu-io patterns, qemu-img convert and compare, nbdinfo, and the
/// raw client where the question is what the server itself answers.
/// </summary>
public sealed class SnapshotTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    private const ushort TransReadOnly = 1 << 1;
    private static readonly TimeSpan JobTimeout = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task A_snapshot_keeps_the_content_it_was_taken_with()
    {
        var name = await CreateVolume(UniqueName("snap-keep"), "16M");
        await QemuIo(Uri(name), "write -P 0xaa 0 8M");

        var snapshot = await CliJson("vdi", "snapshot", name, "v1");
        Assert.Equal($"{name}@v1", Str(snapshot, "name"));
        Assert.True(Bool(snapshot, "isSnapshot"), $"vdi snapshot --json: isSnapshot is not true: {snapshot}");
        Assert.Equal(16L * MiB, Long(snapshot, "size"));

        // The content at snapshot time, as a file, before anything else is written.
        var saved = Path.Combine(ScratchDirectory(), "at-v1.raw");
        await RunOk("qemu-img", ["convert", "-f", "raw", "-O", "raw", Uri(name), saved]);

        await QemuIo(Uri(name), "write -P 0xbb 1M 2M", "write -P 0xbc 5000 100");

        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 8M", "read -P 0 8M 8M");
        await QemuIo(Uri(name),
            "read -P 0xaa 0 5000",
            "read -P 0xbc 5000 100",
            "read -P 0xaa 5100 1043476",
            "read -P 0xbb 1M 2M",
            "read -P 0xaa 3M 5M",
            "read -P 0 8M 8M");
        var compare = await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", Uri($"{name}@v1"), saved]);
        Assert.Contains("identical", compare.Stdout, StringComparison.OrdinalIgnoreCase);

        // The snapshot is an export of its own, of the volume's size, read-only.
        Assert.Equal("16777216", (await RunOk("nbdinfo", ["--size", Uri($"{name}@v1")])).Stdout.Trim());
        Assert.Contains($"{name}@v1", (await RunOk("nbdinfo", ["--list", "--json", $"nbd://127.0.0.1:{Daemon.NbdPort}"])).Stdout, StringComparison.Ordinal);

        // The list has both, and the volume now inherits from the snapshot.
        var layers = await List();
        Assert.True(Bool(layers[$"{name}@v1"], "isSnapshot"));
        Assert.False(Bool(layers[name], "isSnapshot"));
        Assert.Equal($"{name}@v1", Str(layers[name], "parent"));
    }

    [Fact]
    public async Task A_snapshot_taken_under_an_open_connection_holds_what_was_acknowledged_before_it()
    {
        var name = await CreateVolume(UniqueName("snap-live"), "8M");
        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, name))
        {
            await c.WriteOkAsync(0, Enumerable.Repeat((byte)0xaa, 64 * KiB).ToArray());

            await CliJson("vdi", "snapshot", name, "v1");

            // The same connection goes on writing: into the volume, not into the snapshot.
            await c.WriteOkAsync(0, Enumerable.Repeat((byte)0xbb, 4096).ToArray());
            await c.WriteOkAsync(1L * MiB, Enumerable.Repeat((byte)0xbc, 4096).ToArray());
            await c.WriteOkAsync(10_000, Enumerable.Repeat((byte)0xbd, 512).ToArray());
            Assert.Equal(Enumerable.Repeat((byte)0xbb, 4096), await c.ReadOkAsync(0, 4096));
            Assert.Equal(Enumerable.Repeat((byte)0xaa, 4096), await c.ReadOkAsync(4096, 4096));
            await c.DisconnectAsync();
        }

        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 64k", "read -P 0 64k 8128k");
        await QemuIo(Uri(name),
            "read -P 0xbb 0 4k",
            "read -P 0xaa 4k 5904",
            "read -P 0xbd 10000 512",
            "read -P 0xaa 10512 55024",
            "read -P 0 64k 960k",
            "read -P 0xbc 1M 4k",
            "read -P 0 1028k 7164k");
    }

    [Fact]
    public async Task Writes_during_a_flatten_are_not_overwritten_by_it()
    {
        const long size = 256L * MiB;
        var name = await CreateVolume(UniqueName("flatten-race"), "256M", "1M");
        var clone = UniqueName("flatten-race-clone");
        await QemuIo(Uri(name), "write -P 0xaa 0 256M");
        await CliJson("vdi", "snapshot", name, "v1");
        await CliJson("vdi", "clone", $"{name}@v1", clone);
        using var http = Http();

        // What the clone must read afterwards: the snapshot's data with the client's writes on top.
        var expected = Path.Combine(ScratchDirectory(), "expected.raw");
        await using (var f = new FileStream(expected, FileMode.Create, FileAccess.ReadWrite))
        {
            var fill = Enumerable.Repeat((byte)0xaa, MiB).ToArray();
            for (long pos = 0; pos < size; pos += MiB)
            {
                await f.WriteAsync(fill);
            }

            await using var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, clone);
            string job;
            using (var r = await Post(http, $"api/v1/volumes/{clone}/flatten", ""))
            {
                Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
                job = Str(await Json(r), "job")!;
            }

            // Whole blocks and partial ones, spread over the volume, until the flatten is done
            // (and a few after, so that some land on a finished flatten too).
            var random = new Random(1234);
            var writes = 0;
            var after = 0;
            var writesWhileRunning = 0;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var runningFor = TimeSpan.Zero;
            using var deadline = new CancellationTokenSource(JobTimeout);
            while (after < 20)
            {
                Assert.False(deadline.IsCancellationRequested, $"flatten job {job} still running after {JobTimeout.TotalSeconds:F0}s\n{DaemonState()}");
                var partial = writes % 3 == 2;
                var length = partial ? 512 : 4096;
                var offset = partial ? random.NextInt64(size / 512 - 1) * 512 : random.NextInt64(size / 4096) * 4096;
                var data = Enumerable.Repeat((byte)(writes % 250 + 1), length).ToArray();
                await c.WriteOkAsync(offset, data);
                f.Seek(offset, SeekOrigin.Begin);
                await f.WriteAsync(data);
                writes++;
                if (writes % 16 == 0 || after > 0)
                {
                    using var r = await http.GetAsync(Relative($"api/v1/jobs/{job}"), deadline.Token);
                    var state = Str(await Json(r), "state");
                    Assert.NotEqual("failed", state);
                    if (state == "done")
                    {
                        if (after++ == 0)
                        {
                            writesWhileRunning = writes;
                            runningFor = clock.Elapsed;
                        }
                    }
                }
            }
            Log($"{writesWhileRunning} writes while the flatten ran ({runningFor.TotalSeconds:F2} s), {writes - writesWhileRunning} after it ({(clock.Elapsed - runningFor).TotalSeconds:F2} s)");
            await c.DisconnectAsync();
        }

        await WaitUntilClosed(clone);
        Assert.Equal(JsonValueKind.Null, Get(await CliJson("vdi", "info", clone), "parent").ValueKind);
        var compare = await Run("qemu-img", ["compare", "-f", "raw", "-F", "raw", Uri(clone), expected], TimeSpan.FromSeconds(120));
        Assert.True(compare.Succeeded, $"the clone lost writes made during its flatten:\n{compare.Describe()}\n{DaemonState()}");
        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 256M");
    }

    [Fact]
    public async Task Writes_to_a_snapshot_export_are_refused()
    {
        var name = await CreateVolume(UniqueName("snap-ro"), "8M");
        await QemuIo(Uri(name), "write -P 0xaa 0 1M");
        await CliJson("vdi", "snapshot", name, "v1");
        var snapshot = $"{name}@v1";

        // qemu sees the read-only flag and refuses to open the export for writing at all.
        var write = await Run("qemu-io", QemuIoArgs(Uri(snapshot), ["write -P 0xbb 0 4k"]), TimeSpan.FromSeconds(60));
        Assert.True(!write.Succeeded || write.Stdout.Contains("failed", StringComparison.OrdinalIgnoreCase),
            $"qemu-io wrote to the snapshot export:\n{write.Describe()}");
        Assert.True(
            (write.Stdout + write.Stderr) is var said
            && (said.Contains("Operation not permitted", StringComparison.Ordinal)
                || said.Contains("Permission denied", StringComparison.Ordinal)
                || said.Contains("read-only", StringComparison.OrdinalIgnoreCase)),
            $"qemu-io's refusal does not say why:\n{write.Describe()}");

        // A client that ignores the flag gets EPERM from the server for every kind of write.
        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, snapshot))
        {
            Assert.True((c.TransmissionFlags & TransReadOnly) != 0, $"snapshot export without NBD_FLAG_READ_ONLY (flags 0x{c.TransmissionFlags:x})");
            Assert.Equal(RawNbdClient.EPERM, await c.WriteAsync(0, new byte[4096]));
            Assert.Equal(RawNbdClient.EPERM, await c.WriteZeroesAsync(0, 4096));
            Assert.Equal(RawNbdClient.EPERM, await c.TrimAsync(0, 4096));
            // The connection survives the refusals.
            Assert.Equal(Enumerable.Repeat((byte)0xaa, 4096), await c.ReadOkAsync(0, 4096));
        }

        await QemuIoReadOnly(Uri(snapshot), "read -P 0xaa 0 1M", "read -P 0 1M 7M");
        await QemuIo(Uri(name), "read -P 0xaa 0 1M");
    }

    [Fact]
    public async Task A_clone_is_written_independently_of_its_snapshot_and_origin()
    {
        var origin = await CreateVolume(UniqueName("clone-origin"), "16M");
        var clone = UniqueName("clone");
        await QemuIo(Uri(origin), "write -P 0xaa 0 4M", "write -P 0xab 4M 4M");
        await CliJson("vdi", "snapshot", origin, "v1");
        var snapshot = $"{origin}@v1";

        var created = await CliJson("vdi", "clone", snapshot, clone);
        Assert.Equal(clone, Str(created, "name"));
        Assert.Equal(snapshot, Str(created, "parent"));
        Assert.False(Bool(created, "isSnapshot"));
        Assert.Equal(16L * MiB, Long(created, "size"));

        // Before any write the clone reads as the snapshot.
        await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", Uri(clone), Uri(snapshot)]);

        await QemuIo(Uri(clone), "write -P 0xcc 0 1M", "write -P 0xcd 4198404 300", "write -P 0xce 12M 1M");
        await QemuIo(Uri(origin), "write -P 0xdd 2M 1M");

        await QemuIo(Uri(clone),
            "read -P 0xcc 0 1M",
            "read -P 0xaa 1M 3M",
            "read -P 0xab 4M 4100",
            "read -P 0xcd 4198404 300",
            "read -P 0xab 4198704 4189904",
            "read -P 0 8M 4M",
            "read -P 0xce 12M 1M",
            "read -P 0 13M 3M");
        await QemuIoReadOnly(Uri(snapshot), "read -P 0xaa 0 4M", "read -P 0xab 4M 4M", "read -P 0 8M 8M");
        await QemuIo(Uri(origin), "read -P 0xaa 0 2M", "read -P 0xdd 2M 1M", "read -P 0xaa 3M 1M", "read -P 0xab 4M 4M", "read -P 0 8M 8M");

        var list = await Cli("vdi", "list");
        Assert.True(list.Succeeded, list.Describe());
        AssertRow(list.Stdout, clone, "clone", snapshot);
        AssertRow(list.Stdout, snapshot, "snapshot");
        AssertRow(list.Stdout, origin, "volume", snapshot);

        // Flatten with --json prints the volume as the job left it: no parent, same data.
        var flattened = await CliJson("vdi", "flatten", clone);
        Assert.Equal(clone, Str(flattened, "name"));
        Assert.Equal(JsonValueKind.Null, Get(flattened, "parent").ValueKind);
        await QemuIo(Uri(clone), "read -P 0xcc 0 1M", "read -P 0xaa 1M 3M", "read -P 0xcd 4198404 300", "read -P 0xce 12M 1M");
    }

    [Fact]
    public async Task Rollback_restores_the_snapshot_and_is_refused_while_a_client_has_the_volume_open()
    {
        var name = await CreateVolume(UniqueName("rollback"), "8M");
        await QemuIo(Uri(name), "write -P 0xaa 0 2M");
        await CliJson("vdi", "snapshot", name, "v1");
        await QemuIo(Uri(name), "write -P 0xbb 1M 2M", "write -P 0xbc 6M 4k");

        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, name))
        {
            AssertRefused(await Cli("vdi", "rollback", name, "v1"), 1);
            // Nothing changed under the client, which still works.
            Assert.Equal(Enumerable.Repeat((byte)0xbb, 4096), await c.ReadOkAsync(1L * MiB, 4096));
            await c.WriteOkAsync(7L * MiB, Enumerable.Repeat((byte)0xbd, 4096).ToArray());
            await c.DisconnectAsync();
        }

        await WaitUntilClosed(name);
        await QemuIo(Uri(name), "read -P 0xaa 0 1M", "read -P 0xbb 1M 2M", "read -P 0xbc 6M 4k", "read -P 0xbd 7M 4k");

        var rolledBack = await CliJson("vdi", "rollback", name, "v1");
        Assert.Equal(name, Str(rolledBack, "name"));
        await QemuIo(Uri(name), "read -P 0xaa 0 2M", "read -P 0 2M 6M");
        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 2M", "read -P 0 2M 6M");

        // The volume goes on from the snapshot; the snapshot stays as it was.
        await QemuIo(Uri(name), "write -P 0xbe 0 4k");
        await QemuIo(Uri(name), "read -P 0xbe 0 4k", "read -P 0xaa 4k 2044k");
        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 2M");
    }

    [Fact]
    public async Task Deleting_a_snapshot_the_volume_depends_on_merges_or_is_refused_naming_the_dependent()
    {
        var name = await CreateVolume(UniqueName("snapdel"), "8M");
        await QemuIo(Uri(name), "write -P 0xaa 0 4M");
        await CliJson("vdi", "snapshot", name, "v1");
        await QemuIo(Uri(name), "write -P 0xbb 1M 1M", "write -P 0xbc 3000 100");

        var delete = await Cli("vdi", "delete", $"{name}@v1");
        if (delete.Succeeded)
        {
            // Merged into the volume: the snapshot is gone, the volume reads as before.
            var layers = await List();
            Assert.False(layers.ContainsKey($"{name}@v1"), $"{name}@v1 still listed after its delete succeeded");
            Assert.Equal(JsonValueKind.Null, Get(layers[name], "parent").ValueKind);
            Assert.NotEqual(0, (await Run("nbdinfo", ["--size", Uri($"{name}@v1")])).ExitCode);
        }
        else
        {
            AssertRefused(delete, 1);
            Assert.Contains(name, delete.Stderr.Replace($"{name}@v1", "", StringComparison.Ordinal), StringComparison.Ordinal);
            await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 4M");
        }

        await QemuIo(Uri(name),
            "read -P 0xaa 0 3000",
            "read -P 0xbc 3000 100",
            "read -P 0xaa 3100 1045476",
            "read -P 0xbb 1M 1M",
            "read -P 0xaa 2M 2M",
            "read -P 0 4M 4M");
    }

    [Fact]
    public async Task Deleting_a_snapshot_two_layers_depend_on_is_refused_naming_them()
    {
        var name = await CreateVolume(UniqueName("snapdel2"), "8M");
        var clone = UniqueName("snapdel2-clone");
        await QemuIo(Uri(name), "write -P 0xaa 0 4M");
        await CliJson("vdi", "snapshot", name, "v1");
        await CliJson("vdi", "clone", $"{name}@v1", clone);
        await QemuIo(Uri(clone), "write -P 0xcc 0 1M");

        var delete = await Cli("vdi", "delete", $"{name}@v1");

        AssertRefused(delete, 1);
        Assert.Contains(clone, delete.Stderr, StringComparison.Ordinal);
        Assert.Contains(name, delete.Stderr.Replace($"{name}@v1", "", StringComparison.Ordinal).Replace(clone, "", StringComparison.Ordinal), StringComparison.Ordinal);
        Assert.True((await List()).ContainsKey($"{name}@v1"));
        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 4M", "read -P 0 4M 4M");
        await QemuIo(Uri(clone), "read -P 0xcc 0 1M", "read -P 0xaa 1M 3M");
        await QemuIo(Uri(name), "read -P 0xaa 0 4M");
    }

    [Fact]
    public async Task After_a_flatten_the_snapshot_can_go_and_the_clone_still_reads_back()
    {
        var name = await CreateVolume(UniqueName("flatten"), "16M", "1M");
        var clone = UniqueName("flatten-clone");
        await QemuIo(Uri(name), "write -P 0xaa 0 6M", "write -P 0xab 10M 1M");
        await CliJson("vdi", "snapshot", name, "v1");
        await CliJson("vdi", "clone", $"{name}@v1", clone);
        await QemuIo(Uri(clone), "write -P 0xcc 2M 1M", "write -P 0xcd 5000 1000");

        var flatten = await Cli("vdi", "flatten", clone);
        Assert.True(flatten.Succeeded, $"{flatten.Describe()}\n{DaemonState()}");
        Assert.Contains($"flattened volume '{clone}'", flatten.Stdout, StringComparison.Ordinal);
        var info = await CliJson("vdi", "info", clone);
        Assert.Equal(JsonValueKind.Null, Get(info, "parent").ValueKind);
        Assert.True(Long(info, "usedBytes") >= 7L * MiB, $"a flattened clone holds its data itself: {info}");

        // Only the volume depends on the snapshot now: its delete goes through (merged).
        var delete = await Cli("vdi", "delete", $"{name}@v1");
        Assert.True(delete.Succeeded, $"{delete.Describe()}\n{DaemonState()}");
        Assert.False((await List()).ContainsKey($"{name}@v1"));

        await QemuIo(Uri(clone),
            "read -P 0xaa 0 5000",
            "read -P 0xcd 5000 1000",
            "read -P 0xaa 6000 2091152",
            "read -P 0xcc 2M 1M",
            "read -P 0xaa 3M 3M",
            "read -P 0 6M 4M",
            "read -P 0xab 10M 1M",
            "read -P 0 11M 5M");
        await QemuIo(Uri(name), "read -P 0xaa 0 6M", "read -P 0 6M 4M", "read -P 0xab 10M 1M");
    }

    // A flatten copies outside the control lock: other volumes' control operations go on meanwhile.
    [Fact]
    public async Task The_control_plane_answers_while_a_flatten_runs()
    {
        var name = await CreateVolume(UniqueName("flatten-busy"), "1G");
        var clone = UniqueName("flatten-busy-clone");
        await QemuIo(Uri(name), "write -P 0xaa 0 1G");
        await CliJson("vdi", "snapshot", name, "v1");
        await CliJson("vdi", "clone", $"{name}@v1", clone);
        using var http = Http();
        string job;
        using (var r = await Post(http, $"api/v1/volumes/{clone}/flatten", ""))
        {
            Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
            job = Str(await Json(r), "job")!;
        }

        var create = await Cli("vdi", "create", UniqueName("flatten-busy-new"), "1M");
        using (var r = await http.GetAsync(Relative($"api/v1/jobs/{job}")))
        {
            var state = Str(await Json(r), "state");
            Log($"create took {create.Elapsed.TotalSeconds:F1} s; the flatten is then {state}");
            Assert.True(create.Succeeded, create.Describe());
            // Either the create came back while the flatten still ran, or quickly anyway (a fast disk).
            Assert.True(state == "running" || create.Elapsed < TimeSpan.FromSeconds(2),
                $"vdi create took {create.Elapsed.TotalSeconds:F1} s: it waited for the flatten\n{DaemonState()}");
        }

        Assert.Equal("done", Str(await WaitForJob(http, job), "state"));
    }

    [Fact]
    public async Task Tree_draws_each_layer_under_its_parent()
    {
        var name = await CreateVolume(UniqueName("tree"), "32M");
        var clone = UniqueName("tree-clone");
        var other = await CreateVolume(UniqueName("tree-other"), "1M");
        await QemuIo(Uri(name), "write -P 0xaa 0 1M");
        await CliJson("vdi", "snapshot", name, "v1");
        await QemuIo(Uri(name), "write -P 0xbb 1M 1M");
        await CliJson("vdi", "snapshot", name, "v2");
        await CliJson("vdi", "clone", $"{name}@v1", clone);

        var tree = await Cli("vdi", "tree", name);
        Assert.True(tree.Succeeded, tree.Describe());
        var lines = tree.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.DoesNotContain(lines, l => l.Contains(other, StringComparison.Ordinal));
        Assert.Equal(0, Depth(lines, $"{name}@v1"));
        Assert.Equal(1, Depth(lines, $"{name}@v2"));
        Assert.Equal(1, Depth(lines, clone));
        Assert.Equal(2, Depth(lines, name));
        var volumeLine = Line(lines, name);
        Assert.Contains("32.0 MiB", volumeLine, StringComparison.Ordinal);
        Assert.Contains("connection", volumeLine, StringComparison.Ordinal);
        Assert.Contains("snapshot", Line(lines, $"{name}@v2"), StringComparison.Ordinal);
        Assert.DoesNotContain("connection", Line(lines, $"{name}@v2"), StringComparison.Ordinal);
        Assert.Contains("clone", Line(lines, clone), StringComparison.Ordinal);
        // v1 holds the first MiB exclusively, v2 the second.
        Assert.Contains("used 1.0 MiB", Line(lines, $"{name}@v1"), StringComparison.Ordinal);
        Assert.Contains("used 1.0 MiB", Line(lines, $"{name}@v2"), StringComparison.Ordinal);
        Assert.DoesNotContain('\u001b', tree.Stdout);

        // Asked by a snapshot's or the clone's name, the same tree.
        Assert.Equal(tree.Stdout, (await Cli("vdi", "tree", clone)).Stdout);
        Assert.Equal(tree.Stdout, (await Cli("vdi", "tree", $"{name}@v2")).Stdout);

        // Without a name every tree, the unrelated volume as a tree of its own.
        var all = await Cli("vdi", "tree");
        Assert.True(all.Succeeded, all.Describe());
        Assert.Equal(0, Depth(all.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries), other));

        var json = await CliJson("vdi", "tree", name);
        Assert.Equal(
            new[] { $"{name}@v1", $"{name}@v2", clone, name }.Order(StringComparer.Ordinal),
            json.EnumerateArray().Select(e => Str(e, "name")).Order(StringComparer.Ordinal));

        AssertRefused(await Cli("vdi", "tree", "no-such-volume"), 1);
    }

    [Fact]
    public async Task Bad_input_is_one_line_and_changes_nothing()
    {
        var name = await CreateVolume(UniqueName("snapbad"), "8M");
        var existing = await CreateVolume(UniqueName("snapbad-existing"), "8M");
        await QemuIo(Uri(name), "write -P 0xaa 0 1M");
        await QemuIo(Uri(existing), "write -P 0xee 0 1M");
        await CliJson("vdi", "snapshot", name, "v1");
        await QemuIo(Uri(name), "write -P 0xbb 0 512k");
        var before = await List();

        // Snapshot of a missing volume.
        AssertRefused(await Cli("vdi", "snapshot", "no-such-volume", "v1"), 1);
        // A tag that is taken: the snapshot keeps its content, not the volume's new one.
        AssertRefused(await Cli("vdi", "snapshot", name, "v1"), 1);
        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 1M");
        // Tags that cannot be part of an export name.
        AssertRefused(await Cli("vdi", "snapshot", name, "a/b"), 1, 2);
        AssertRefused(await Cli("vdi", "snapshot", name, "x@y"), 1, 2);
        AssertRefused(await Cli("vdi", "snapshot", name, ""), 1, 2);
        // Clone onto an existing name, of a missing snapshot, of something that is not a snapshot.
        AssertRefused(await Cli("vdi", "clone", $"{name}@v1", existing), 1);
        AssertRefused(await Cli("vdi", "clone", $"{name}@nope", UniqueName("snapbad-c")), 1);
        AssertRefused(await Cli("vdi", "clone", name, UniqueName("snapbad-c")), 1, 2);
        // Rollback to a tag that does not exist, of a missing volume.
        AssertRefused(await Cli("vdi", "rollback", name, "nope"), 1);
        AssertRefused(await Cli("vdi", "rollback", "no-such-volume", "v1"), 1);
        // Snapshots have no snapshots, and are not rolled back or flattened.
        AssertRefused(await Cli("vdi", "snapshot", $"{name}@v1", "v2"), 1);
        AssertRefused(await Cli("vdi", "rollback", $"{name}@v1", "v1"), 1);
        AssertRefused(await Cli("vdi", "flatten", "no-such-volume"), 1);
        AssertRefused(await Cli("vdi", "delete", $"{name}@nope"), 1);
        // A name starting with '@' is a name, not a response file for the CLI's parser.
        var atName = await Cli("vdi", "delete", "@v1");
        AssertRefused(atName, 1);
        Assert.DoesNotContain("response file", atName.Stderr, StringComparison.Ordinal);

        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, name))
        {
            AssertRefused(await Cli("vdi", "rollback", name, "v1"), 1);
            await c.DisconnectAsync();
        }

        await WaitUntilClosed(name);
        var after = await List();
        Assert.Equal(before.Keys.Order(StringComparer.Ordinal), after.Keys.Order(StringComparer.Ordinal));
        foreach (var (layer, info) in before)
        {
            Assert.Equal(Str(info, "parent"), Str(after[layer], "parent"));
            Assert.Equal(Long(info, "size"), Long(after[layer], "size"));
        }

        await QemuIo(Uri(name), "read -P 0xbb 0 512k", "read -P 0xaa 512k 512k", "read -P 0 1M 7M");
        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 1M", "read -P 0 1M 7M");
        await QemuIo(Uri(existing), "read -P 0xee 0 1M", "read -P 0 1M 7M");
    }

    [Fact]
    public async Task Copy_on_write_copies_nothing_for_aligned_blocks_and_one_block_for_a_partial_write()
    {
        var name = await CreateVolume(UniqueName("cow"), "16M");
        await QemuIo(Uri(name), "write -P 0xaa 0 4M");
        await CliJson("vdi", "snapshot", name, "v1");
        using var http = Http();

        var start = await CopyOnWriteBytes(http);
        await QemuIo(Uri(name), "write -P 0xbb 64k 4k", "write -P 0xbc 1M 64k");
        Assert.Equal(start, await CopyOnWriteBytes(http));

        // 512 bytes at an offset that is not 4 KiB-aligned: the rest of that one block comes from the snapshot.
        await QemuIo(Uri(name), "write -P 0xbd 132608 512");
        Assert.Equal(start + 4096, await CopyOnWriteBytes(http));

        await QemuIo(Uri(name),
            "read -P 0xaa 0 64k",
            "read -P 0xbb 64k 4k",
            "read -P 0xaa 68k 62976",
            "read -P 0xbd 132608 512",
            "read -P 0xaa 133120 915456",
            "read -P 0xbc 1M 64k",
            "read -P 0xaa 1088k 3008k",
            "read -P 0 4M 12M");
        await QemuIoReadOnly(Uri($"{name}@v1"), "read -P 0xaa 0 4M", "read -P 0 4M 12M");
    }

    [Fact]
    public async Task Admin_api_routes_for_snapshots_clones_rollback_and_flatten_jobs()
    {
        var name = await CreateVolume(UniqueName("api-snap"), "8M");
        await QemuIo(Uri(name), "write -P 0xaa 0 2M");
        using var http = Http();

        using (var r = await Post(http, $"api/v1/volumes/{name}/snapshots", """{"tag": "t1"}"""))
        {
            Assert.Equal(HttpStatusCode.Created, r.StatusCode);
            var body = await Json(r);
            Assert.Equal($"{name}@t1", Str(body, "name"));
            Assert.True(Bool(body, "isSnapshot"));
            Assert.EndsWith($"/api/v1/volumes/{name}@t1", r.Headers.Location?.OriginalString ?? "", StringComparison.Ordinal);
        }

        await QemuIo(Uri(name), "write -P 0xbb 0 1M");

        // NAME@TAG in a path, with '@' raw or percent-encoded.
        var rawClone = UniqueName("api-clone-raw");
        var encodedClone = UniqueName("api-clone-enc");
        using (var r = await Post(http, $"api/v1/volumes/{name}@t1/clone", $$"""{"name": "{{rawClone}}"}"""))
        {
            Assert.Equal(HttpStatusCode.Created, r.StatusCode);
            Assert.Equal($"{name}@t1", Str(await Json(r), "parent"));
        }
        using (var r = await Post(http, $"api/v1/volumes/{name}%40t1/clone", $$"""{"name": "{{encodedClone}}"}"""))
        {
            Log($"POST {r.RequestMessage?.RequestUri?.AbsoluteUri} -> {(int)r.StatusCode}");
            Assert.Equal(HttpStatusCode.Created, r.StatusCode);
            Assert.Equal(encodedClone, Str(await Json(r), "name"));
        }
        using (var r = await http.GetAsync(Relative($"api/v1/volumes/{name}%40t1")))
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Equal($"{name}@t1", Str(await Json(r), "name"));
        }

        // Refusals: a 4xx with one line, never a 500.
        await AssertError(await Post(http, $"api/v1/volumes/{name}/snapshots", """{"tga": "t2"}"""), HttpStatusCode.BadRequest);
        await AssertError(await Post(http, $"api/v1/volumes/{name}/snapshots", """{"tag": 2}"""), HttpStatusCode.BadRequest);
        await AssertError(await Post(http, $"api/v1/volumes/{name}/snapshots", """{"tag": "t1"}"""), HttpStatusCode.Conflict);
        await AssertError(await Post(http, "api/v1/volumes/no-such-volume/snapshots", """{"tag": "t1"}"""), HttpStatusCode.NotFound);
        await AssertError(await Post(http, $"api/v1/volumes/{name}@t1/clone", $$"""{"name": "{{rawClone}}"}"""), HttpStatusCode.Conflict);
        await AssertError(await Post(http, $"api/v1/volumes/{name}@nope/clone", """{"name": "x1"}"""), HttpStatusCode.NotFound);
        await AssertError(await Post(http, $"api/v1/volumes/{name}/rollback", """{"tag": "nope"}"""), HttpStatusCode.NotFound);
        await AssertError(await Post(http, "api/v1/volumes/no-such-volume/flatten", ""), HttpStatusCode.NotFound);
        await AssertError(await http.GetAsync(Relative("api/v1/jobs/no-such-job")), HttpStatusCode.NotFound);

        using (var r = await Post(http, $"api/v1/volumes/{name}/rollback", """{"tag": "t1"}"""))
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Equal(name, Str(await Json(r), "name"));
        }
        await QemuIo(Uri(name), "read -P 0xaa 0 2M");

        // Flatten is a job: 202 with its id, then polled until it is done.
        await QemuIo(Uri(rawClone), "write -P 0xcc 1M 4k");
        string job;
        using (var r = await Post(http, $"api/v1/volumes/{rawClone}/flatten", ""))
        {
            Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
            job = Str(await Json(r), "job") ?? throw new InvalidDataException("202 without a job id");
            Assert.EndsWith($"/api/v1/jobs/{job}", r.Headers.Location?.OriginalString ?? "", StringComparison.Ordinal);
        }
        var finished = await WaitForJob(http, job);
        Assert.Equal("done", Str(finished, "state"));
        Assert.Equal(1.0, Get(finished, "progress").GetDouble());
        Assert.Equal(rawClone, Str(Get(finished, "result"), "name"));
        Assert.Equal(JsonValueKind.Null, Get(Get(finished, "result"), "parent").ValueKind);
        await QemuIo(Uri(rawClone), "read -P 0xaa 0 1M", "read -P 0xcc 1M 4k", "read -P 0xaa 1028k 1020k", "read -P 0 2M 6M");

        // Delete of a snapshot others depend on (the volume and the other clone) is refused.
        using (var r = await http.DeleteAsync(Relative($"api/v1/volumes/{name}%40t1")))
        {
            Assert.True(r.StatusCode == HttpStatusCode.Conflict, $"DELETE of a snapshot two layers depend on: {(int)r.StatusCode} {await r.Content.ReadAsStringAsync()}");
        }

        // The node counts copy-on-write.
        using (var r = await http.GetAsync(Relative("api/v1/node")))
        {
            var node = await Json(r);
            Assert.Equal(JsonValueKind.Number, Get(node, "copyOnWriteBytes").ValueKind);
        }
    }

    // --- helpers -----------------------------------------------------------------------------

    private string Uri(string export) => Daemon.NbdUri(export);

    /// <summary>`vdi list --json` by name.</summary>
    private async Task<Dictionary<string, JsonElement>> List()
    {
        var list = await CliJson("vdi", "list");
        return list.EnumerateArray().ToDictionary(e => Str(e, "name")!, StringComparer.Ordinal);
    }

    private Task WaitUntilClosed(string name)
        => Eventually(async () => Long(await CliJson("vdi", "info", name), "connections") == 0, TimeSpan.FromSeconds(15),
            $"the connection count of {name} returns to 0 after NBD_CMD_DISC");

    private HttpClient Http() => Daemon.AdminHttp();

    private static System.Uri Relative(string path) => new(path, UriKind.Relative);

    private static Task<HttpResponseMessage> Post(HttpClient http, string path, string body)
        => http.PostAsync(Relative(path), new StringContent(body));

    private static async Task<JsonElement> Json(HttpResponseMessage r)
    {
        using var doc = JsonDocument.Parse(await r.Content.ReadAsStringAsync());
        return doc.RootElement.Clone();
    }

    private async Task<long> CopyOnWriteBytes(HttpClient http)
    {
        var node = await http.GetFromJsonAsync<JsonElement>(Relative("api/v1/node"));
        Log($"GET /api/v1/node: {node}");
        return Long(node, "copyOnWriteBytes");
    }

    private async Task<JsonElement> WaitForJob(HttpClient http, string id)
    {
        using var cts = new CancellationTokenSource(JobTimeout);
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        var lastProgress = 0.0;
        while (true)
        {
            using var r = await http.GetAsync(Relative($"api/v1/jobs/{id}"), cts.Token);
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            var job = await Json(r);
            var progress = Get(job, "progress").GetDouble();
            Assert.InRange(progress, lastProgress, 1.0);
            lastProgress = progress;
            if (Str(job, "state") != "running")
            {
                Log($"job {id}: {job}");
                return job;
            }
            try
            {
                await timer.WaitForNextTickAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                Assert.Fail($"job {id} still running after {JobTimeout.TotalSeconds:F0}s: {job}\n{DaemonState()}");
            }
        }
    }

    private async Task AssertError(HttpResponseMessage r, HttpStatusCode expected)
    {
        using (r)
        {
            var text = await r.Content.ReadAsStringAsync();
            Log($"{r.RequestMessage?.Method} {r.RequestMessage?.RequestUri?.PathAndQuery} -> {(int)r.StatusCode} {text}");
            Assert.True(r.StatusCode == expected, $"{r.RequestMessage?.Method} {r.RequestMessage?.RequestUri?.PathAndQuery}: expected {(int)expected}, got {(int)r.StatusCode} {text}");
            using var doc = JsonDocument.Parse(text);
            var error = Str(doc.RootElement, "error");
            Assert.False(string.IsNullOrWhiteSpace(error), $"no error message: {text}");
            Assert.DoesNotContain('\n', error);
        }
        Daemon.AssertAlive("after a refused request");
    }

    /// <summary>Non-zero exit (one of <paramref name="codes"/>) and exactly one non-empty line on stderr, no stack trace.</summary>
    private void AssertRefused(ProcessResult r, params int[] codes)
    {
        Assert.True(codes.Contains(r.ExitCode), $"expected exit code {string.Join(" or ", codes)}:\n{r.Describe()}");
        var err = r.Stderr.TrimEnd('\n', '\r');
        Assert.True(err.Length > 0 && !err.Contains('\n', StringComparison.Ordinal), $"expected exactly one line on stderr:\n{r.Describe()}");
        Assert.False(err.Contains("   at ", StringComparison.Ordinal), $"a stack trace leaked to stderr:\n{r.Describe()}");
        Daemon.AssertAlive($"after `{r.CommandLine}`");
    }

    /// <summary>The `vdi list` row of <paramref name="name"/> has these values in its columns.</summary>
    private static void AssertRow(string table, string name, params string[] values)
    {
        var row = table.Split('\n').Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).FirstOrDefault(cells => cells.Length > 0 && cells[0] == name);
        Assert.True(row is not null, $"no row for {name} in:\n{table}");
        foreach (var value in values)
        {
            Assert.True(row.Contains(value), $"the row of {name} lacks '{value}':\n{table}");
        }
    }

    private static string Line(string[] lines, string name)
        => lines.FirstOrDefault(l => NameOf(l) == name) ?? throw new Xunit.Sdk.XunitException($"no line for {name} in:\n{string.Join('\n', lines)}");

    /// <summary>How deep in the drawn tree a layer is: tree guides take four columns per level.</summary>
    private static int Depth(string[] lines, string name)
    {
        var line = Line(lines, name);
        var start = line.Length - line.TrimStart(' ', '│', '├', '└', '─').Length;
        Assert.True(start % 4 == 0, $"unexpected indentation of {name}: '{line}'");
        return start / 4;
    }

    private static string NameOf(string line)
        => line.TrimStart(' ', '│', '├', '└', '─').Split(' ', 2)[0];

    private static JsonElement Get(JsonElement e, string name)
        => e.TryGetProperty(name, out var v) ? v : throw new Xunit.Sdk.XunitException($"no '{name}' in {e}");

    private static string? Str(JsonElement e, string name)
        => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static long Long(JsonElement e, string name) => Get(e, name).GetInt64();

    private static bool Bool(JsonElement e, string name) => Get(e, name).GetBoolean();
}
