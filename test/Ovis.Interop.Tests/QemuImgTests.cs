using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>qemu-img against an export: info, convert in and out, compare.</summary>
public sealed class QemuImgTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Theory]
    [InlineData("1G", 1L << 30)]
    [InlineData("1536K", 1536L * 1024)]
    [InlineData("10485760", 10485760L)]
    public async Task Info_reports_the_virtual_size(string size, long expected)
    {
        var vol = await CreateVolume(UniqueName("img-info"), size);

        var r = await RunOk("qemu-img", ["info", "--output=json", "-f", "raw", Daemon.NbdUri(vol)]);

        using var doc = JsonDocument.Parse(r.Stdout);
        Assert.Equal(expected, doc.RootElement.GetProperty("virtual-size").GetInt64());
    }

    [Fact]
    public async Task Convert_in_and_out_round_trips_and_compare_sees_equality_and_differences()
    {
        const long size = 64L * MiB;
        var dir = ScratchDirectory();
        var source = Path.Combine(dir, "source.raw");
        // Random data with zero areas: one inside an object, one spanning a whole 4 MiB object
        // and its neighbours' edges, and the tail of the image.
        WriteImage(source, size, seed: 4242,
            (3 * MiB + 512, 200 * KiB),
            (7 * MiB, 9 * MiB),
            (60 * MiB, 4 * MiB - 4096));
        var vol = await CreateVolume(UniqueName("img-convert"), "64M");
        var uri = Daemon.NbdUri(vol);

        await RunOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, uri], TimeSpan.FromSeconds(180));

        var back = Path.Combine(dir, "back.raw");
        await RunOk("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, back], TimeSpan.FromSeconds(180));
        Assert.Null(FirstDifference(source, back));

        var same = await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, uri], TimeSpan.FromSeconds(180));
        Assert.Contains("Images are identical", same.Stdout, StringComparison.Ordinal);

        // One flipped byte in the middle of a random area, not on any alignment boundary.
        var modified = Path.Combine(dir, "modified.raw");
        File.Copy(source, modified);
        const long flipAt = 41L * MiB + 12345;
        using (var f = new FileStream(modified, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = flipAt;
            var b = f.ReadByte();
            f.Position = flipAt;
            f.WriteByte((byte)(b ^ 0x5a));
        }
        var differs = await Run("qemu-img", ["compare", "-f", "raw", "-F", "raw", modified, uri], TimeSpan.FromSeconds(180));
        Assert.True(differs.ExitCode == 1, $"qemu-img compare should exit 1 (images differ):\n{differs.Describe()}");
        Assert.Contains("mismatch", differs.Stdout, StringComparison.OrdinalIgnoreCase);
        // qemu-img reports the 512-byte sector where the first difference is.
        Assert.Contains($"offset {flipAt / 512 * 512}", differs.Stdout, StringComparison.Ordinal);
    }
}
