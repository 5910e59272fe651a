using System.Buffers.Binary;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Malformed and hostile input over raw TCP. After each, the daemon must still serve another
/// client and the volume's other data must be intact.
/// </summary>
public sealed class BadInputTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    private static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Garbage_instead_of_the_client_flags()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectGreetedAsync(Daemon.NbdPort))
        {
            // The first four bytes become client flags with unknown bits: the server MUST drop the connection.
            await c.SendAsync(RandomBytes(4096, seed: 1).Select(b => (byte)(b | 0x80)).ToArray());
            await c.ExpectCloseAsync(CloseTimeout, "garbage client flags");
        }

        await AssertStillServing(vol);
    }

    [Fact]
    public async Task Garbage_sent_before_reading_the_greeting()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectRawAsync(Daemon.NbdPort))
        {
            await c.SendAsync(RandomBytes(64 * KiB, seed: 2));
            await c.ExpectCloseAsync(CloseTimeout, "garbage before the handshake");
        }

        await AssertStillServing(vol);
    }

    [Fact]
    public async Task Garbage_instead_of_an_option()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectGreetedAsync(Daemon.NbdPort))
        {
            await c.SendClientFlagsAsync();
            await c.SendAsync("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"u8.ToArray());
            await c.ExpectCloseAsync(CloseTimeout, "an option without the IHAVEOPT magic");
        }

        await AssertStillServing(vol);
    }

    [Fact]
    public async Task Option_with_a_huge_length_is_not_buffered()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectGreetedAsync(Daemon.NbdPort))
        {
            await c.SendClientFlagsAsync();
            // NBD_OPT_GO claiming 4 GiB - 1 of option data, then nothing: the server must neither
            // allocate it nor wait for it forever; an error reply or a disconnect are both fine.
            var header = new byte[16];
            BinaryPrimitives.WriteUInt64BigEndian(header, RawNbdClient.IHaveOpt);
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), RawNbdClient.OptGo);
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), uint.MaxValue);
            await c.SendAsync(header);
            await c.SendAsync(new byte[4096]);
            var drained = await c.ExpectCloseOrOptionErrorAsync(CloseTimeout);
            Log($"server answered a 4 GiB option with {drained}");
        }

        await AssertStillServing(vol);
    }

    [Fact]
    public async Task Unknown_export_is_refused_and_the_connection_may_try_again()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectGreetedAsync(Daemon.NbdPort))
        {
            await c.SendClientFlagsAsync();
            var reply = await c.GoAsync("no-such-volume");
            Assert.True((reply & 0x80000000) != 0, $"NBD_OPT_GO on an unknown export answered 0x{reply:x8}, expected an error");
            // Option haggling continues after an error reply: the same connection can pick a real export.
            Assert.Equal(RawNbdClient.RepAck, await c.GoAsync(vol));
            Assert.Equal(Enumerable.Repeat((byte)0x11, 4096), await c.ReadOkAsync(0, 4096));
        }
        var r = await Run("qemu-io", QemuIoArgs(Daemon.NbdUri("no-such-volume"), ["read 0 4k"]));
        Assert.NotEqual(0, r.ExitCode);

        await AssertStillServing(vol);
    }

    [Fact]
    public async Task Bad_request_magic_ends_the_connection()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol))
        {
            await c.SendAsync(RawNbdClient.EncodeRequest(RawNbdClient.CmdWrite, 1, 0, 4096, magic: 0xdeadbeef));
            await c.SendAsync(new byte[4096]);
            var drained = await c.ExpectCloseAsync(CloseTimeout, "a request with a bad magic");
            AssertNoSuccessReply(drained, "bad magic");
        }

        await AssertStillServing(vol);
    }

    /// <summary>
    /// doc/proto.md, "Error values": a read or trim beyond the end SHOULD get EINVAL, a write
    /// (and write-zeroes) beyond the end SHOULD get ENOSPC. The request is well-formed, so the
    /// connection stays usable (for a write the server must consume the payload).
    /// </summary>
    [Theory]
    [InlineData(RawNbdClient.CmdRead)]
    [InlineData(RawNbdClient.CmdWrite)]
    [InlineData(RawNbdClient.CmdTrim)]
    [InlineData(RawNbdClient.CmdWriteZeroes)]
    public async Task Requests_past_the_end_get_the_spec_error_and_the_connection_goes_on(ushort command)
    {
        var vol = await PreparedVolume();
        var isWrite = command is RawNbdClient.CmdWrite or RawNbdClient.CmdWriteZeroes;

        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol))
        {
            var size = c.ExportSize;
            (ulong Offset, uint Length, bool Wraps)[] cases =
            [
                ((ulong)size - 4096, 8192, false),              // straddles the end
                ((ulong)size, 4096, false),                      // starts at the end
                ((ulong)size + 1024 * 1024, 512, false),         // wholly past it
                (ulong.MaxValue - 4095, 8192, true),             // offset + length wraps around 2^64
            ];
            foreach (var (offset, length, wraps) in cases)
            {
                uint[] allowed = (isWrite, wraps) switch
                {
                    (false, _) => [RawNbdClient.EINVAL],
                    (true, false) => [RawNbdClient.ENOSPC],
                    // An offset no export can have: ENOSPC as a write past the end, or EINVAL/EOVERFLOW as nonsense.
                    (true, true) => [RawNbdClient.ENOSPC, RawNbdClient.EINVAL, RawNbdClient.EOVERFLOW],
                };
                var payload = command == RawNbdClient.CmdWrite ? new byte[length] : default(ReadOnlyMemory<byte>);
                var h = await c.SendRequestAsync(command, offset, length, payload);
                var reply = await c.ReadReplyAsync(0);
                Assert.True(reply is not null, $"command {command} at {offset}+{length}: the server closed the connection instead of replying with an error");
                Assert.Equal(h, reply.Handle);
                Assert.True(allowed.Contains(reply.Error), $"command {command} at {offset}+{length}: error {reply.Error}, expected {string.Join(" or ", allowed)}");
                // The connection is still in sync: a valid read on it works.
                Assert.Equal(Enumerable.Repeat((byte)0x33, 4096), await c.ReadOkAsync(size - 4096, 4096));
            }
        }

        await AssertStillServing(vol);
    }

    [Fact]
    public async Task Oversize_read_gets_an_error_or_a_clean_disconnect()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol))
        {
            var tooBig = checked((uint)Math.Max(64L * MiB, 2L * c.MaximumPayload));
            Log($"maximum payload {c.MaximumPayload}, asking for {tooBig}");
            var h = await c.SendRequestAsync(RawNbdClient.CmdRead, 0, tooBig);
            var reply = await c.ReadReplyAsync(0);
            if (reply is not null)
            {
                Assert.Equal(h, reply.Handle);
                Assert.True(reply.Error != 0, $"a {tooBig}-byte read (maximum payload {c.MaximumPayload}) was answered with success");
                // The spec lets the server keep the connection after an error reply; if it did, it must still be usable.
                var next = await c.ReadAsync(0, 4096);
                Assert.Equal(0u, next.Error);
                Assert.Equal(Enumerable.Repeat((byte)0x11, 4096), next.Data);
            }
        }

        await AssertStillServing(vol);
    }

    [Fact]
    public async Task Oversize_write_gets_an_error_or_a_clean_disconnect_and_writes_nothing()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol))
        {
            // A 1 GiB write into the 64 MiB volume's first byte; only 64 KiB of "payload" follows.
            await c.SendRequestAsync(RawNbdClient.CmdWrite, 0, 1u << 30, Enumerable.Repeat((byte)0xee, 64 * KiB).ToArray());
            var drained = await c.ExpectCloseOrReplyAsync(CloseTimeout);
            Log($"server answered a 1 GiB write with {drained}");
            Assert.DoesNotContain("error 0 ", drained, StringComparison.Ordinal);
        }

        await AssertStillServing(vol);
    }

    /// <summary>
    /// A write above the maximum payload but within four times it is EINVAL and the connection
    /// stays in sync: the server reads and drops the payload first, and only then replies.
    /// </summary>
    [Fact]
    public async Task Oversize_write_inside_the_export_is_einval_after_its_payload()
    {
        var vol = await PreparedVolume();

        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol))
        {
            // Within the 64 MiB export but above the maximum payload (32 MiB unless advertised otherwise).
            var tooBig = checked((uint)Math.Min(64L * MiB, 2L * c.MaximumPayload));
            var h = await c.SendRequestAsync(RawNbdClient.CmdWrite, 0, tooBig, Enumerable.Repeat((byte)0xee, (int)tooBig).ToArray());
            var reply = await c.ReadReplyAsync(0);
            Assert.True(reply is not null, $"a {tooBig}-byte write (maximum payload {c.MaximumPayload}) ended the connection");
            Assert.Equal(h, reply.Handle);
            Assert.Equal(RawNbdClient.EINVAL, reply.Error);
            Assert.Equal(Enumerable.Repeat((byte)0x11, 4096), await c.ReadOkAsync(0, 4096));
        }

        await AssertStillServing(vol);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Client_vanishing_mid_payload_leaves_the_target_untouched(bool reset)
    {
        var vol = await PreparedVolume();

        var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol);
        // 1 MiB write over the 0x22 region; only 100 KiB of its payload arrives.
        await c.SendAsync(RawNbdClient.EncodeRequest(RawNbdClient.CmdWrite, 7, 32L * MiB, MiB));
        await c.SendAsync(Enumerable.Repeat((byte)0xee, 100 * KiB).ToArray());
        if (reset)
        {
            c.Abort();
        }
        else
        {
            c.Socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            // A half-closed client: the server sees EOF mid-payload and must close its side too.
            await c.ExpectCloseAsync(CloseTimeout, "EOF in the middle of a write payload");
            await c.DisposeAsync();
        }

        // A write whose payload never fully arrived must not have been applied, not even in part.
        await AssertStillServing(vol);
    }

    [Fact]
    public async Task Many_connections_dropped_at_every_stage()
    {
        var vol = await PreparedVolume();

        for (var i = 0; i < 10; i++)
        {
            (await RawNbdClient.ConnectRawAsync(Daemon.NbdPort)).Abort();
            (await RawNbdClient.ConnectGreetedAsync(Daemon.NbdPort)).Abort();
            var c = await RawNbdClient.ConnectGreetedAsync(Daemon.NbdPort);
            await c.SendClientFlagsAsync();
            await c.SendAsync(new byte[7]); // half an option header
            c.Abort();
            var t = await RawNbdClient.ConnectAsync(Daemon.NbdPort, vol);
            await t.SendRequestAsync(RawNbdClient.CmdRead, 0, MiB); // read in flight
            t.Abort();
        }

        await AssertStillServing(vol);
        // Every aborted connection is released; then the volume is no longer in use and can be deleted.
        await Eventually(async () => (await VolumeInfo(vol)).Connections == 0, TimeSpan.FromSeconds(15),
            "connections of the volume drop to 0 after the clients went away");
        var deleted = await Cli("vdi", "delete", vol);
        Assert.True(deleted.Succeeded, deleted.Describe());
    }

    /// <summary>
    /// A 64 MiB volume holding 0x11 in its first MiB, 0x22 in the MiB at 32 MiB, 0x33 in its last
    /// MiB, and zeroes elsewhere.
    /// </summary>
    private async Task<string> PreparedVolume()
    {
        var vol = await CreateVolume(UniqueName("bad"), "64M");
        await QemuIo(Daemon.NbdUri(vol), "write -P 0x11 0 1M", "write -P 0x22 32M 1M", "write -P 0x33 63M 1M", "flush");
        return vol;
    }

    private async Task AssertStillServing(string vol)
    {
        Daemon.AssertAlive("after the bad input");
        await QemuIo(Daemon.NbdUri(vol),
            "read -P 0x11 0 1M",
            "read -P 0 1M 31M",
            "read -P 0x22 32M 1M",
            "read -P 0 33M 30M",
            "read -P 0x33 63M 1M");
    }

    private static void AssertNoSuccessReply(byte[] drained, string what)
    {
        for (var i = 0; i + 16 <= drained.Length; i += 16)
        {
            if (BinaryPrimitives.ReadUInt32BigEndian(drained.AsSpan(i)) == RawNbdClient.SimpleReplyMagic)
            {
                Assert.True(BinaryPrimitives.ReadUInt32BigEndian(drained.AsSpan(i + 4)) != 0, $"{what}: the server answered with success");
            }
        }
    }
}
