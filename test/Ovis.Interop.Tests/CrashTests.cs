using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// The durability contract (ARCHITECTURE.md) under kill -9: every flushed write reads back
/// exactly; a FUA write is durable when acknowledged; an unflushed write is all there or all gone
/// per 4 KiB block. Each test has a daemon of its own, killed and restarted on one data directory.
/// </summary>
public sealed class CrashTests(ITestOutputHelper output) : InteropTest(null, output)
{
    private const int Block = 4096;
    private const int VolumeSize = 32 * MiB;

    [Theory]
    [InlineData(null)]
    [InlineData("64K")]     // many small objects: 512 of them, most created between two crashes
    public async Task Flushed_data_survives_kill_9_and_unflushed_blocks_are_all_or_nothing(string? objectSize)
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("crash", "32M", objectSize);
        var dir = ScratchDirectory();
        var expected = new byte[VolumeSize];     // the volume as every flushed write left it
        var expectedPath = Path.Combine(dir, "expected.raw");

        for (var cycle = 0; cycle < 5; cycle++)
        {
            var rng = new Random(9000 + cycle);
            Log($"=== cycle {cycle} ===");

            // 1. Flushed writes with real clients.
            if (cycle < 4)
            {
                await WriteFlushedWithQemuIo(daemon.NbdUri(vol), expected, rng, dir, cycle);
            }
            else
            {
                // nbdcopy --flush of a whole image: the expected content with a new 4 MiB region.
                var off = rng.Next(0, (VolumeSize - 4 * MiB) / Block) * Block + 1000;
                rng.NextBytes(expected.AsSpan(off, 4 * MiB));
                await File.WriteAllBytesAsync(expectedPath, expected);
                await RunOk("nbdcopy", ["--flush", expectedPath, daemon.NbdUri(vol)], TimeSpan.FromSeconds(120));
            }
            await File.WriteAllBytesAsync(expectedPath, expected);

            // 2. Writes after the last flush, on a connection that is still open at the crash.
            var newer = (byte[])expected.Clone();
            var touched = new bool[VolumeSize / Block];
            var durable = new bool[VolumeSize / Block];
            RawNbdClient? open = null;
            if (cycle is >= 1 and <= 3)
            {
                open = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol);
                await WriteUnflushed(open, newer, touched, durable, rng,
                    fuaHalf: cycle == 2, pipelinedWithoutReplies: cycle == 3);
            }

            // 3. Crash and restart on the same data directory.
            await daemon.KillAsync();
            open?.Abort();
            await daemon.StartAsync();

            // 4. Check.
            var actualPath = Path.Combine(dir, $"actual-{cycle}.raw");
            await RunOk("nbdcopy", [daemon.NbdUri(vol), actualPath], TimeSpan.FromSeconds(120));
            var actual = await File.ReadAllBytesAsync(actualPath);
            Assert.Equal(VolumeSize, actual.Length);
            if (open is null)
            {
                var cmp = await Run("qemu-img", ["compare", "-f", "raw", "-F", "raw", expectedPath, daemon.NbdUri(vol)], TimeSpan.FromSeconds(120));
                Assert.True(cmp.ExitCode == 0, $"cycle {cycle}: flushed data lost after kill -9:\n{cmp.Describe()}\n{DescribeBlocks(expected, newer, actual, touched)}\n{daemon.Log}");
            }
            var problems = CheckBlocks(expected, newer, actual, touched, durable);
            Assert.True(problems.Count == 0, $"cycle {cycle}: {problems.Count} bad blocks after kill -9:\n{string.Join('\n', problems.Take(20))}\n{daemon.Log}");
            Log($"cycle {cycle}: {touched.Count(t => t)} unflushed blocks, {CountNew(newer, actual, touched)} survived");

            // What survived is the baseline of the next cycle.
            actual.CopyTo(expected, 0);
        }
    }

    [Fact]
    public async Task An_import_into_a_fresh_volume_killed_midway_leaves_each_block_copied_or_empty_and_a_flushed_one_whole()
    {
        // nbdcopy's 256 KiB writes into holes go straight into the object files with checksum-only
        // records (docs/store.md, "Direct writes"): a kill -9 in the middle of them may lose what was
        // not flushed, block by block, but never tears a block or turns it into an error.
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        const int size = 128 * MiB;
        var vol = await CreateVolume("import", "128M");
        var dir = ScratchDirectory();
        var image = RandomBytes(size, seed: 404);
        var imagePath = Path.Combine(dir, "image.raw");
        await File.WriteAllBytesAsync(imagePath, image);

        var copy = Run("nbdcopy", [imagePath, daemon.NbdUri(vol)], TimeSpan.FromSeconds(120));
        await Task.Delay(Random.Shared.Next(50, 250));
        await daemon.KillAsync();
        await copy;
        await daemon.StartAsync();

        var actualPath = Path.Combine(dir, "after-kill.raw");
        await RunOk("nbdcopy", [daemon.NbdUri(vol), actualPath], TimeSpan.FromSeconds(120));
        var actual = await File.ReadAllBytesAsync(actualPath);
        Assert.Equal(size, actual.Length);
        var zero = new byte[Block];
        int copied = 0, empty = 0;
        var bad = new List<int>();
        for (var b = 0; b < size / Block; b++)
        {
            var got = actual.AsSpan(b * Block, Block);
            if (got.SequenceEqual(image.AsSpan(b * Block, Block)))
            {
                copied++;
            }
            else if (got.SequenceEqual(zero))
            {
                empty++;
            }
            else
            {
                bad.Add(b);
            }
        }
        Log($"after kill -9 mid-import: {copied} blocks copied, {empty} empty");
        Assert.True(bad.Count == 0, $"{bad.Count} blocks neither copied nor empty, first {string.Join(", ", bad.Take(10))}\n{daemon.Log}");

        // The import again, whole, with a flush at its end: all of it survives the next kill -9.
        await RunOk("nbdcopy", ["--flush", imagePath, daemon.NbdUri(vol)], TimeSpan.FromSeconds(120));
        await daemon.KillAsync();
        await daemon.StartAsync();
        var cmp = await Run("qemu-img", ["compare", "-f", "raw", "-F", "raw", imagePath, daemon.NbdUri(vol)], TimeSpan.FromSeconds(120));
        Assert.True(cmp.ExitCode == 0, $"a flushed import lost data after kill -9:\n{cmp.Describe()}\n{daemon.Log}");
    }

    [Fact]
    public async Task Volume_changes_acknowledged_before_kill_9_survive()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        await CreateVolume("keep", "16M");
        await CreateVolume("grow", "16M");
        await CreateVolume("gone", "16M");
        await QemuIo(daemon.NbdUri("keep"), "write -P 0x42 0 1M", "flush");

        var resized = await Cli("vdi", "resize", "grow", "48M");
        Assert.True(resized.Succeeded, resized.Describe());
        var deleted = await Cli("vdi", "delete", "gone");
        Assert.True(deleted.Succeeded, deleted.Describe());
        await CreateVolume("late", "8M");

        await daemon.RestartAfterKillAsync();

        var names = VolumeJson.ListFrom(await CliJson("vdi", "list")).ToDictionary(v => v.Name);
        Assert.True(names.ContainsKey("keep") && names.ContainsKey("grow") && names.ContainsKey("late"),
            $"volumes after restart: {string.Join(", ", names.Keys)}");
        Assert.False(names.ContainsKey("gone"), "a deleted volume came back after kill -9");
        Assert.Equal(48L * MiB, names["grow"].Size);
        Assert.Equal(8L * MiB, names["late"].Size);
        await QemuIo(daemon.NbdUri("keep"), "read -P 0x42 0 1M", "read -P 0 1M 15M");
        var size = await RunOk("nbdinfo", ["--size", daemon.NbdUri("grow")]);
        Assert.Equal((48L * MiB).ToString(System.Globalization.CultureInfo.InvariantCulture), size.Stdout.Trim());
    }

    [Fact]
    public async Task Sigterm_stops_cleanly_and_keeps_acknowledged_writes()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("term", "16M");
        var data = RandomBytes(256 * KiB, seed: 15);

        await using (var c = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol))
        {
            // Acknowledged but never flushed, and the client is still connected at the SIGTERM.
            await c.WriteOkAsync(3 * MiB, data);
            var code = await daemon.StopAsync(TimeSpan.FromSeconds(30));
            Assert.True(code == 0, $"ovis serve exited with {code} on SIGTERM\n{daemon.Log}");
        }

        await daemon.StartAsync();
        await using var again = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol);
        Assert.Equal(data, await again.ReadOkAsync(3 * MiB, data.Length));
    }

    [Fact]
    public async Task A_flush_on_one_connection_persists_writes_acknowledged_on_another()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("crossflush", "16M");
        var a = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol);
        var b = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol);
        var data = RandomBytes(512 * KiB, seed: 77);

        // Acknowledged on a, never flushed on a; b's flush arrives after the acknowledgement.
        await a.WriteOkAsync(2 * MiB, data);
        Assert.Equal(0u, await b.FlushAsync());
        await daemon.KillAsync();
        a.Abort();
        b.Abort();
        await daemon.StartAsync();

        await using var c = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol);
        var after = await c.ReadOkAsync(2 * MiB, data.Length);
        Assert.True(data.AsSpan().SequenceEqual(after),
            "a write acknowledged on one connection was lost although a flush on another connection completed after it");
    }

    [Fact]
    public async Task Kill_9_under_pipelined_load_keeps_every_flushed_write()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        const int regionStart = 16 * MiB;
        const int writeSize = 64 * KiB;
        const int writes = 16 * MiB / writeSize;       // 256 disjoint writes over [16 MiB, 32 MiB)
        var vol = await CreateVolume("load", "32M");
        await QemuIo(daemon.NbdUri(vol), "write -P 0x6b 0 16M", "flush");

        var payloads = new byte[writes][];
        var order = Enumerable.Range(0, writes).ToArray();
        new Random(31).Shuffle(order);
        var acked = new bool[writes];
        var durable = new bool[writes];
        var ackCount = 0;
        var flushesDone = 0;
        var killNow = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var flushSnapshots = new System.Collections.Concurrent.ConcurrentDictionary<ulong, int[]>();
        var writeOf = new System.Collections.Concurrent.ConcurrentDictionary<ulong, int>();
        var c = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol);
        using var window = new SemaphoreSlim(32);
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(120));

        // Sender: keeps 32 writes in flight, in random order; after every 40 writes a flush that
        // covers the writes already acknowledged when it is sent.
        var sender = Task.Run(async () =>
        {
            for (var i = 0; i < writes; i++)
            {
                await window.WaitAsync(stop.Token);
                var w = order[i];
                payloads[w] = RandomBytes(writeSize, seed: 1000 + w);
                var h = c.NextHandle();
                writeOf[h] = w;
                await c.SendAsync(RawNbdClient.EncodeRequest(RawNbdClient.CmdWrite, h, (ulong)(regionStart + w * writeSize), writeSize));
                await c.SendAsync(payloads[w]);
                if (i % 40 == 39)
                {
                    int[] covered;
                    lock (acked)
                    {
                        covered = [.. Enumerable.Range(0, writes).Where(x => acked[x])];
                    }
                    var fh = c.NextHandle();
                    flushSnapshots[fh] = covered;
                    await c.SendAsync(RawNbdClient.EncodeRequest(RawNbdClient.CmdFlush, fh, 0, 0));
                }
            }
        });
        // Receiver: records acknowledgements; asks for the kill after 3 completed flushes and
        // 150 acknowledged writes, with writes still in flight.
        var receiver = Task.Run(async () =>
        {
            while (true)
            {
                var r = await c.ReadReplyAsync(0, TimeSpan.FromSeconds(30));
                if (r is null)
                {
                    return;
                }
                Assert.Equal(0u, r.Error);
                if (writeOf.TryRemove(r.Handle, out var w))
                {
                    lock (acked)
                    {
                        acked[w] = true;
                    }
                    window.Release();
                    Interlocked.Increment(ref ackCount);
                }
                else if (flushSnapshots.TryRemove(r.Handle, out var covered))
                {
                    lock (acked)
                    {
                        foreach (var x in covered)
                        {
                            durable[x] = true;
                        }
                    }
                    Interlocked.Increment(ref flushesDone);
                }
                if (Volatile.Read(ref flushesDone) >= 3 && Volatile.Read(ref ackCount) >= 150)
                {
                    killNow.TrySetResult();
                }
            }
        });

        var first = await Task.WhenAny(killNow.Task, sender, receiver).WaitAsync(TimeSpan.FromSeconds(120));
        if (first == sender && sender.IsCompletedSuccessfully)
        {
            // Everything is sent; the replies that reach the kill point may still be on their way.
            first = await Task.WhenAny(killNow.Task, receiver).WaitAsync(TimeSpan.FromSeconds(120));
        }
        if (first != killNow.Task)
        {
            await first; // surfaces the sender's or receiver's failure
            Assert.Fail($"the load ended before the kill point ({ackCount} writes acknowledged, {flushesDone} flushes)");
        }
        await daemon.KillAsync();
        c.Abort();
        await stop.CancelAsync();
        // Both loops end on the dead connection; their errors are expected now.
        await Task.WhenAll(sender, receiver).ContinueWith(_ => { }, TaskScheduler.Default).WaitAsync(TimeSpan.FromSeconds(30));
        await daemon.StartAsync();

        await QemuIo(daemon.NbdUri(vol), "read -P 0x6b 0 16M");
        await using var check = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol);
        var problems = new List<string>();
        int survived = 0, durableCount = 0;
        for (var w = 0; w < writes; w++)
        {
            var actual = await check.ReadOkAsync(regionStart + w * writeSize, writeSize);
            for (var blk = 0; blk < writeSize / Block; blk++)
            {
                var a = actual.AsSpan(blk * Block, Block);
                var isNew = payloads[w] is { } p && a.SequenceEqual(p.AsSpan(blk * Block, Block));
                var isOld = !a.ContainsAnyExcept((byte)0);
                if (durable[w] && !isNew)
                {
                    problems.Add($"write {w} (offset {regionStart + w * writeSize}) block {blk}: covered by a completed flush but {(isOld ? "gone" : "torn")}");
                }
                else if (!isNew && !isOld)
                {
                    problems.Add($"write {w} (offset {regionStart + w * writeSize}) block {blk}: torn, neither old nor new");
                }
                survived += isNew ? 1 : 0;
            }
            durableCount += durable[w] ? 1 : 0;
        }
        Log($"{ackCount} writes acknowledged, {durableCount} covered by {flushesDone} flushes, {survived} blocks of new data after the crash");
        Assert.True(problems.Count == 0, $"{problems.Count} bad blocks:\n{string.Join('\n', problems.Take(20))}\n{daemon.Log}");
        Assert.True(durableCount > 0, "no write was covered by a completed flush: the test proved nothing");
    }

    /// <summary>24 random writes of 1 B–256 KiB at any offset, a discard and a write-zeroes (4 KiB aligned), then flush.</summary>
    private async Task WriteFlushedWithQemuIo(string uri, byte[] expected, Random rng, string dir, int cycle)
    {
        var cmds = new List<string>();
        for (var i = 0; i < 24; i++)
        {
            var len = rng.Next(1, 256 * KiB);
            var off = rng.Next(0, VolumeSize - len);
            var chunk = new byte[len];
            rng.NextBytes(chunk);
            var path = Path.Combine(dir, $"chunk-{cycle}-{i}.bin");
            await File.WriteAllBytesAsync(path, chunk);
            cmds.Add($"write -s {path} {off} {len}");
            chunk.CopyTo(expected, off);
        }
        var d = rng.Next(0, VolumeSize / Block - 64) * Block;
        var dl = rng.Next(1, 64) * Block;
        cmds.Add($"discard {d} {dl}");
        expected.AsSpan(d, dl).Clear();
        var z = rng.Next(0, VolumeSize / Block - 64) * Block;
        var zl = rng.Next(1, 64) * Block;
        cmds.Add($"write -z {z} {zl}");
        expected.AsSpan(z, zl).Clear();
        cmds.Add("flush");
        await QemuIo(uri, [.. cmds]);
    }

    /// <summary>
    /// 16 random-data writes of 4–128 KiB on 4 KiB boundaries, no two touching the same block,
    /// so every block has exactly one old and one new value.
    /// </summary>
    private static async Task WriteUnflushed(RawNbdClient c, byte[] newer, bool[] touched, bool[] durable, Random rng,
        bool fuaHalf, bool pipelinedWithoutReplies)
    {
        var handles = new List<ulong>();
        for (var i = 0; i < 16; i++)
        {
            var blocks = rng.Next(1, 33);
            var first = rng.Next(0, touched.Length - blocks);
            if (touched.AsSpan(first, blocks).Contains(true))
            {
                continue;
            }
            touched.AsSpan(first, blocks).Fill(true);
            var data = new byte[blocks * Block];
            rng.NextBytes(data);
            data.CopyTo(newer, first * Block);
            var fua = fuaHalf && i % 2 == 0;
            if (fua)
            {
                durable.AsSpan(first, blocks).Fill(true);
            }
            if (pipelinedWithoutReplies)
            {
                handles.Add(await c.SendRequestAsync(RawNbdClient.CmdWrite, (ulong)first * Block, (uint)data.Length, data));
            }
            else
            {
                await c.WriteOkAsync((long)first * Block, data, fua);
            }
        }
    }

    private static List<string> CheckBlocks(byte[] old, byte[] newer, byte[] actual, bool[] touched, bool[] durable)
    {
        var problems = new List<string>();
        for (var b = 0; b < touched.Length; b++)
        {
            var a = actual.AsSpan(b * Block, Block);
            var o = old.AsSpan(b * Block, Block);
            var n = newer.AsSpan(b * Block, Block);
            if (durable[b])
            {
                if (!a.SequenceEqual(n))
                {
                    problems.Add($"block {b} (offset {(long)b * Block}): a FUA write was acknowledged but is not there ({What(a, o, n)})");
                }
            }
            else if (touched[b])
            {
                if (!a.SequenceEqual(o) && !a.SequenceEqual(n))
                {
                    problems.Add($"block {b} (offset {(long)b * Block}): torn, neither the flushed nor the unflushed content ({What(a, o, n)})");
                }
            }
            else if (!a.SequenceEqual(o))
            {
                problems.Add($"block {b} (offset {(long)b * Block}): flushed data changed ({What(a, o, n)})");
            }
        }
        return problems;
    }

    private static string What(ReadOnlySpan<byte> a, ReadOnlySpan<byte> o, ReadOnlySpan<byte> n)
    {
        var i = a.CommonPrefixLength(o);
        var zero = !a.ContainsAnyExcept((byte)0);
        return $"{(zero ? "reads as zeroes; " : "")}first byte differing from flushed at +{i}, matches unflushed for {a.CommonPrefixLength(n)} bytes";
    }

    private static string DescribeBlocks(byte[] old, byte[] newer, byte[] actual, bool[] touched) =>
        string.Join('\n', CheckBlocks(old, newer, actual, touched, new bool[touched.Length]).Take(20));

    private static int CountNew(byte[] newer, byte[] actual, bool[] touched)
    {
        var n = 0;
        for (var b = 0; b < touched.Length; b++)
        {
            if (touched[b] && actual.AsSpan(b * Block, Block).SequenceEqual(newer.AsSpan(b * Block, Block)))
            {
                n++;
            }
        }
        return n;
    }
}
