using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>nbdinfo: export list, size, flags and the base:allocation map.</summary>
public sealed class NbdInfoTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Fact]
    public async Task List_shows_every_volume()
    {
        string[] names = [UniqueName("list-a"), UniqueName("list-b"), UniqueName("list-c")];
        foreach (var n in names)
        {
            await CreateVolume(n, "8M");
        }

        var r = await RunOk("nbdinfo", ["--list", "--json", $"nbd://127.0.0.1:{Daemon.NbdPort}"]);

        using var doc = JsonDocument.Parse(r.Stdout);
        var listed = doc.RootElement.GetProperty("exports").EnumerateArray()
            .Select(e => e.GetProperty("export-name").GetString()).ToHashSet();
        foreach (var n in names)
        {
            Assert.Contains(n, listed);
        }
    }

    [Fact]
    public async Task Size_is_exact()
    {
        var vol = await CreateVolume(UniqueName("size"), "3G");

        var r = await RunOk("nbdinfo", ["--size", Daemon.NbdUri(vol)]);

        Assert.Equal((3L << 30).ToString(System.Globalization.CultureInfo.InvariantCulture), r.Stdout.Trim());
    }

    [Fact]
    public async Task Export_advertises_the_features_the_architecture_promises()
    {
        var vol = await CreateVolume(UniqueName("flags"), "8M");

        var r = await RunOk("nbdinfo", ["--json", Daemon.NbdUri(vol)]);

        using var doc = JsonDocument.Parse(r.Stdout);
        var root = doc.RootElement;
        Assert.True(root.GetProperty("structured").GetBoolean(), "structured replies not negotiated");
        var e = root.GetProperty("exports")[0];
        Assert.Equal(vol, e.GetProperty("export-name").GetString());
        Assert.Equal(8L * MiB, e.GetProperty("export-size").GetInt64());
        foreach (var flag in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn" })
        {
            Assert.True(e.TryGetProperty(flag, out var v) && v.GetBoolean(), $"{flag} is not true:\n{r.Stdout}");
        }
        Assert.False(e.GetProperty("is_read_only").GetBoolean());
        Assert.Contains("base:allocation", e.GetProperty("contexts").EnumerateArray().Select(c => c.GetString()));
    }

    [Fact]
    public async Task Map_shows_exactly_the_written_ranges_as_data()
    {
        const long size = 16L * MiB;
        var vol = await CreateVolume(UniqueName("map"), "16M");
        var uri = Daemon.NbdUri(vol);

        await QemuIo(uri,
            "write -P 0x11 0 64k",
            "write -P 0x22 1M 4k",
            "write -P 0x33 4161536 64k",        // 4 MiB - 32 KiB: crosses the object boundary
            "write -P 0x55 8M 128k",
            "discard 8224k 64k",                // punches [8M+32K, 8M+96K) out of the last write
            "write -P 0x44 16773120 4k");       // the last block of the volume

        var map = await NbdMap(uri);

        (long Offset, long Length, int Type)[] expected =
        [
            (0, 64 * KiB, 0),
            (64 * KiB, MiB - 64 * KiB, 3),
            (MiB, 4 * KiB, 0),
            (MiB + 4 * KiB, 4 * MiB - 32 * KiB - MiB - 4 * KiB, 3),
            (4 * MiB - 32 * KiB, 64 * KiB, 0),
            (4 * MiB + 32 * KiB, 4 * MiB - 32 * KiB, 3),
            (8 * MiB, 32 * KiB, 0),
            (8 * MiB + 32 * KiB, 64 * KiB, 3),
            (8 * MiB + 96 * KiB, 32 * KiB, 0),
            (8 * MiB + 128 * KiB, size - 4 * KiB - 8 * MiB - 128 * KiB, 3),
            (size - 4 * KiB, 4 * KiB, 0),
        ];
        Assert.Equal(Format(expected), Format(map));
    }

    [Fact]
    public async Task Map_tells_zeroed_but_allocated_blocks_from_holes()
    {
        var vol = await CreateVolume(UniqueName("map-zero"), "4M");
        var uri = Daemon.NbdUri(vol);

        await QemuIo(uri,
            "write -P 0x01 0 1M",
            "write -z 64k 64k",                 // WRITE_ZEROES with NO_HOLE: stays allocated
            "write -z -u 256k 64k");            // may unmap: becomes a hole

        // IObjectStore: keepAllocated blocks are reported allocated and zero (NBD_STATE_ZERO, type 2).
        (long Offset, long Length, int Type)[] expected =
        [
            (0, 64 * KiB, 0),
            (64 * KiB, 64 * KiB, 2),
            (128 * KiB, 128 * KiB, 0),
            (256 * KiB, 64 * KiB, 3),
            (320 * KiB, MiB - 320 * KiB, 0),
            (MiB, 3 * MiB, 3),
        ];
        Assert.Equal(Format(expected), Format(await NbdMap(uri)));
        await QemuIo(uri, "read -P 0x01 0 64k", "read -P 0 64k 64k", "read -P 0x01 128k 128k", "read -P 0 256k 64k", "read -P 0x01 320k 704k");
    }

    [Fact]
    public async Task Map_of_an_untouched_volume_is_one_hole()
    {
        var vol = await CreateVolume(UniqueName("map-empty"), "1G");

        var map = await NbdMap(Daemon.NbdUri(vol));

        Assert.Equal(Format([(0, 1L << 30, 3)]), Format(map));
    }

    private static string Format(IEnumerable<(long Offset, long Length, int Type)> extents) =>
        string.Join('\n', extents.Select(e => $"{e.Offset,12} {e.Length,12} {e.Type}"));
}
