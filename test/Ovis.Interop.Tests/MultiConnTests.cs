using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// CAN_MULTI_CONN: a write's reply means every later read on any connection to the volume sees it
/// (ARCHITECTURE.md, durability contract) — without a flush in between.
/// </summary>
public sealed class MultiConnTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Fact]
    public async Task Export_advertises_multi_conn()
    {
        var vol = await CreateVolume(UniqueName("mc-flag"), "8M");

        await using var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol);

        Assert.True(c.CanMultiConn, $"transmission flags 0x{c.TransmissionFlags:x4} lack NBD_FLAG_CAN_MULTI_CONN");
        Assert.Equal(8L * MiB, c.ExportSize);
        foreach (var (flag, name) in new[] { (RawNbdClient.TransSendFlush, "SEND_FLUSH"), (RawNbdClient.TransSendFua, "SEND_FUA"), (RawNbdClient.TransSendTrim, "SEND_TRIM"), (RawNbdClient.TransSendWriteZeroes, "SEND_WRITE_ZEROES") })
        {
            Assert.True((c.TransmissionFlags & flag) != 0, $"transmission flags 0x{c.TransmissionFlags:x4} lack {name}");
        }
    }

    [Fact]
    public async Task A_write_on_one_connection_is_seen_by_a_read_on_another_already_open_one()
    {
        var vol = await CreateVolume(UniqueName("mc-vis"), "16M");
        await using var a = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol);
        await using var b = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol);
        // b reads first, so anything it might cache is the old content.
        Assert.Equal(new byte[64 * KiB], await b.ReadOkAsync(MiB, 64 * KiB));

        for (var i = 0; i < 20; i++)
        {
            var data = RandomBytes(64 * KiB, seed: i);
            var writer = i % 2 == 0 ? a : b;
            var reader = i % 2 == 0 ? b : a;
            await writer.WriteOkAsync(MiB + (i % 4) * 16 * KiB, data);
            var seen = await reader.ReadOkAsync(MiB + (i % 4) * 16 * KiB, data.Length);
            Assert.True(data.AsSpan().SequenceEqual(seen), $"round {i}: the other connection did not see the acknowledged write");
        }

        // A trim and a write-zeroes are writes too.
        Assert.Equal(0u, await a.TrimAsync(MiB, 16 * KiB));
        Assert.Equal(new byte[16 * KiB], await b.ReadOkAsync(MiB, 16 * KiB));
        await b.WriteOkAsync(2 * MiB, RandomBytes(8 * KiB, seed: 99));
        Assert.Equal(0u, await b.WriteZeroesAsync(2 * MiB, 8 * KiB));
        Assert.Equal(new byte[8 * KiB], await a.ReadOkAsync(2 * MiB, 8 * KiB));
    }

    [Fact]
    public async Task Qemu_io_writes_are_seen_by_a_connection_opened_before_them()
    {
        var vol = await CreateVolume(UniqueName("mc-qemu"), "16M");
        var uri = Daemon.NbdUri(vol);
        await using var held = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol);
        Assert.Equal(new byte[4 * KiB], await held.ReadOkAsync(5 * MiB, 4 * KiB));

        await QemuIo(uri, "write -P 0xa5 5M 1M");

        var seen = await held.ReadOkAsync(5 * MiB, MiB);
        Assert.True(seen.AsSpan().IndexOfAnyExcept((byte)0xa5) < 0, "the open connection does not see qemu-io's write");

        // And the other way round: a write on the held connection, read by a new qemu-io.
        await held.WriteOkAsync(7 * MiB, Enumerable.Repeat((byte)0x5c, 128 * KiB).ToArray());
        await QemuIo(uri, "read -P 0x5c 7M 128k", "read -P 0xa5 5M 1M");
    }

    [Fact]
    public async Task Many_concurrent_connections_each_see_the_others_writes()
    {
        const int n = 8;
        var vol = await CreateVolume(UniqueName("mc-many"), "16M");
        var clients = new List<RawNbdClient>();
        try
        {
            for (var i = 0; i < n; i++)
            {
                clients.Add(await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol));
            }
            // Everyone writes its own 256 KiB at once…
            await Task.WhenAll(clients.Select((c, i) => c.WriteOkAsync(i * 256L * KiB, RandomBytes(256 * KiB, seed: 500 + i))));
            // …and then everyone reads everybody's.
            await Task.WhenAll(clients.Select(async (c, reader) =>
            {
                for (var i = 0; i < n; i++)
                {
                    var seen = await c.ReadOkAsync(i * 256L * KiB, 256 * KiB);
                    Assert.True(RandomBytes(256 * KiB, seed: 500 + i).AsSpan().SequenceEqual(seen),
                        $"connection {reader} does not see connection {i}'s write");
                }
            }));
        }
        finally
        {
            foreach (var c in clients)
            {
                await c.DisposeAsync();
            }
        }
    }
}
