using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>Volumes use space for the data written to them, not for their size.</summary>
public sealed class ThinProvisioningTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Fact]
    public async Task Used_bytes_follow_writes_and_discards()
    {
        var vol = await CreateVolume(UniqueName("thin"), "1G");
        var uri = Daemon.NbdUri(vol);
        var empty = (await VolumeInfo(vol)).UsedBytes;
        Assert.True(empty is >= 0 and < 64 * KiB, $"a new 1 GiB volume reports usedBytes {empty}");

        // 1 MiB in 4 places, two of them across object boundaries.
        await QemuIo(uri,
            "write -P 0x01 0 256k",
            "write -P 0x02 4194304 256k",
            "write -P 0x03 536739840 256k",     // 512 MiB - 128 KiB: straddles an object boundary
            "write -P 0x04 1073479680 256k",    // the last 256 KiB
            "flush");

        var written = (await VolumeInfo(vol)).UsedBytes;
        Assert.True(written >= MiB && written <= MiB + 256 * KiB, $"after writing 1 MiB usedBytes is {written}");
        var listed = VolumeJson.ListFrom(await CliJson("vdi", "list")).Single(v => v.Name == vol);
        Assert.Equal(written, listed.UsedBytes);

        // Overwriting the same blocks takes no more space.
        await QemuIo(uri, "write -P 0x09 0 256k", "flush");
        Assert.Equal(written, (await VolumeInfo(vol)).UsedBytes);

        await QemuIo(uri,
            "discard 0 256k",
            "discard 4194304 256k",
            "discard 536739840 256k",
            "discard 1073479680 256k",
            "flush");

        var after = (await VolumeInfo(vol)).UsedBytes;
        Assert.True(after <= empty + 64 * KiB, $"after discarding everything usedBytes is {after} (empty volume: {empty})");
    }

    [Fact]
    public async Task Write_zeroes_with_unmap_frees_space_and_zero_data_reads_back()
    {
        var vol = await CreateVolume(UniqueName("thin-zero"), "64M");
        var uri = Daemon.NbdUri(vol);
        await QemuIo(uri, "write -P 0x7e 0 2M", "flush");
        var written = (await VolumeInfo(vol)).UsedBytes;
        Assert.True(written >= 2 * MiB, $"after writing 2 MiB usedBytes is {written}");

        await QemuIo(uri, "write -z -u 0 1M", "flush", "read -P 0 0 1M", "read -P 0x7e 1M 1M");

        var after = (await VolumeInfo(vol)).UsedBytes;
        Assert.True(after <= written - MiB + 64 * KiB, $"zeroing 1 MiB with unmap left usedBytes at {after} (was {written})");
    }
}
