using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>qemu-io: patterned writes and verified reads, unaligned I/O, discard, write-zeroes, flush, FUA.</summary>
public sealed class QemuIoTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Fact]
    public async Task Write_then_read_verifies_the_pattern()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("io-pattern"), "16M"));

        await QemuIo(uri, "write -P 0xab 0 64k");
        // A new connection: the data is in the volume, not in the client.
        await QemuIo(uri, "read -P 0xab 0 64k", "read -P 0 64k 64k");
    }

    [Fact]
    public async Task A_wrong_pattern_is_detected()
    {
        // Guards the test harness: a mismatch must fail qemu-io, or the other tests prove nothing.
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("io-neg"), "1M"));
        await QemuIo(uri, "write -P 0xab 0 4k");

        var r = await Run("qemu-io", QemuIoArgs(uri, ["read -P 0xac 0 4k"]));

        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("Pattern verification failed", r.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Unaligned_writes_read_back_exactly()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("io-unaligned"), "16M"));

        await QemuIo(uri,
            "write -P 0x11 0 16k",
            "write -P 0xcd 1000 512",          // inside one 4 KiB block
            "write -P 0xee 4095 2",             // straddles a 4 KiB boundary
            "write -P 0x77 4194000 1000");      // straddles the 4 MiB object boundary

        await QemuIo(uri,
            "read -P 0x11 0 1000",
            "read -P 0xcd 1000 512",
            "read -P 0x11 1512 2583",
            "read -P 0xee 4095 2",
            "read -P 0x11 4097 12287",
            "read -P 0 16k 4177616",
            "read -P 0x77 4194000 1000",
            "read -P 0 4195000 4096");
    }

    [Fact]
    public async Task Discard_reads_back_as_zeroes()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("io-discard"), "16M"));
        await QemuIo(uri, "write -P 0x5a 0 1M");

        await QemuIo(uri,
            "discard 64k 128k",
            "read -P 0 64k 128k",
            "read -P 0x5a 0 64k",
            "read -P 0x5a 192k 832k");
        await QemuIo(uri, "read -P 0 64k 128k", "read -P 0x5a 192k 64k");
    }

    [Fact]
    public async Task Write_zeroes_with_and_without_unmap()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("io-zero"), "16M"));
        await QemuIo(uri, "write -P 0x66 0 1M");

        await QemuIo(uri,
            "write -z 4k 60k",
            "write -z -u 512k 256k",
            "write -z 1000 100",                // unaligned zeroing inside a block
            "read -P 0x66 0 1000",
            "read -P 0 1000 100",
            "read -P 0x66 1100 2996",
            "read -P 0 4k 60k",
            "read -P 0x66 64k 448k",
            "read -P 0 512k 256k",
            "read -P 0x66 768k 256k");
    }

    [Fact]
    public async Task Flush_and_fua_writes_succeed_and_read_back()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("io-flush"), "16M"));
        var help = await Run("qemu-io", ["-c", "help write"]);
        var hasFua = help.Stdout.Contains("-f, -- use Force Unit Access", StringComparison.Ordinal);
        Log($"qemu-io write supports -f (FUA): {hasFua}");

        var commands = new List<string> { "write -P 0x31 0 64k", "flush", "aio_write -P 0x32 64k 64k", "aio_flush", "flush" };
        if (hasFua)
        {
            commands.Add("write -f -P 0x33 128k 64k");
            commands.Add("writev -f -P 0x34 192k 4k 8k");
        }
        await QemuIo(uri, [.. commands]);

        var checks = new List<string> { "read -P 0x31 0 64k", "read -P 0x32 64k 64k" };
        if (hasFua)
        {
            checks.Add("read -P 0x33 128k 64k");
            checks.Add("read -P 0x34 192k 12k");
        }
        await QemuIo(uri, [.. checks]);
    }

    [Fact]
    public async Task Many_commands_in_one_session_including_reads_past_written_data()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("io-mix"), "32M"));
        var cmds = new List<string>();
        for (var i = 0; i < 32; i++)
        {
            cmds.Add($"aio_write -P 0x{i + 1:x2} {i}M 256k");
        }
        cmds.Add("aio_flush");
        await QemuIo(uri, [.. cmds]);

        var reads = new List<string>();
        for (var i = 0; i < 32; i++)
        {
            reads.Add($"read -P 0x{i + 1:x2} {i}M 256k");
            reads.Add($"read -P 0 {i * 1024 + 256}k 768k");
        }
        await QemuIo(uri, [.. reads]);
    }

    [Fact]
    public async Task Length_matches_the_volume_size()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("io-len"), "40M"));

        var r = await QemuIo(uri, "length");

        Assert.Contains("40 MiB", r.Stdout, StringComparison.Ordinal);
    }
}
