using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>nbdcopy: bulk copies in, out and between exports (it uses multi-conn when offered).</summary>
public sealed class NbdCopyTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    private static readonly TimeSpan CopyTimeout = TimeSpan.FromSeconds(240);

    [Fact]
    public async Task A_256_MiB_random_file_copies_in_and_out_byte_equal()
    {
        const long size = 256L * MiB;
        var dir = ScratchDirectory();
        var source = Path.Combine(dir, "source.raw");
        // Random, with one zero stretch that nbdcopy will send as zeroes rather than data.
        WriteImage(source, size, seed: 256, (100L * MiB + 4096, 12L * MiB));
        var vol = await CreateVolume(UniqueName("copy"), "256M");
        var uri = Daemon.NbdUri(vol);

        await RunOk("nbdcopy", ["--flush", source, uri], CopyTimeout);
        var back = Path.Combine(dir, "back.raw");
        await RunOk("nbdcopy", [uri, back], CopyTimeout);

        Assert.Equal(size, new FileInfo(back).Length);
        Assert.Null(FirstDifference(source, back));
        Assert.Equal(Sha256(source), Sha256(back));
    }

    [Fact]
    public async Task Copy_between_two_exports()
    {
        const long size = 64L * MiB;
        var dir = ScratchDirectory();
        var source = Path.Combine(dir, "source.raw");
        WriteImage(source, size, seed: 77, (10L * MiB, 20L * MiB));
        var a = Daemon.NbdUri(await CreateVolume(UniqueName("copy-a"), "64M"));
        var b = Daemon.NbdUri(await CreateVolume(UniqueName("copy-b"), "64M"));
        // Old data in the target under the zero stretch must be overwritten with zeroes.
        await QemuIo(b, "write -P 0xee 12M 1M");

        await RunOk("nbdcopy", ["--flush", source, a], CopyTimeout);
        await RunOk("nbdcopy", ["--flush", a, b], CopyTimeout);

        await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", a, b], CopyTimeout);
        await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, b], CopyTimeout);
    }

    [Fact]
    public async Task Single_connection_copy_matches_too()
    {
        const long size = 32L * MiB;
        var dir = ScratchDirectory();
        var source = Path.Combine(dir, "source.raw");
        WriteImage(source, size, seed: 1);
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("copy-1conn"), "32M"));

        await RunOk("nbdcopy", ["--connections=1", "--requests=64", source, uri], CopyTimeout);
        var back = Path.Combine(dir, "back.raw");
        await RunOk("nbdcopy", ["--connections=1", uri, back], CopyTimeout);

        Assert.Null(FirstDifference(source, back));
    }
}
