using System.Buffers.Binary;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

/// <summary>Commands and their error paths, with simple and structured replies.</summary>
public class TransmissionTests
{
    private const int Size = 1 << 20;

    [Fact]
    public async Task WriteThenRead_SimpleReplies_RoundTrip()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);
        byte[] data = Pattern(4096, 1);

        await client.SendRequestAsync(Wire.CmdWrite, 0x11, 8192, 4096, payload: data);
        Assert.Equal(Wire.Hex("67446698 00000000 0000000000000011"), await client.ReadExactAsync(16));

        await client.SendRequestAsync(Wire.CmdRead, 0x22, 8192, 4096);
        Assert.Equal(Wire.Hex("67446698 00000000 0000000000000022"), await client.ReadExactAsync(16));
        Assert.Equal(data, await client.ReadExactAsync(4096));
        Assert.Equal(data, device.Snapshot(8192, 4096));
    }

    [Fact]
    public async Task Read_SimpleReplies_ReturnsZeroesForUnwrittenRange()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdRead, 1, 0, 8192);

        // The pool hands out 0xEE-filled arrays: zeroes prove the range was really read.
        Assert.Equal(new byte[8192], (await client.ReadSimpleReplyAsync(8192)).Data);
    }

    [Fact]
    public async Task Read_Structured_SendsDataAndHoleChunks_LastOneDone()
    {
        var device = new MemoryBlockDevice(Size);
        byte[] data = Pattern(4096, 7);
        device.Fill(4096, data);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();

        await client.SendRequestAsync(Wire.CmdRead, 0x99, 0, 3 * 4096);
        List<Chunk> chunks = await client.ReadStructuredReplyAsync();

        Assert.Equal(3, chunks.Count);
        Assert.Equal(
            Wire.Hex("668e33ef 0000 0002 0000000000000099 0000000c 0000000000000000 00001000"),
            ChunkBytes(chunks[0]));
        Assert.Equal((ushort)0, chunks[1].Flags);
        Assert.Equal(Wire.ReplyTypeOffsetData, chunks[1].Type);
        Assert.Equal(4096ul, chunks[1].Offset);
        Assert.Equal(data, chunks[1].Payload[8..]);
        Assert.Equal(Wire.ReplyFlagDone, chunks[2].Flags);
        Assert.Equal(Wire.ReplyTypeOffsetHole, chunks[2].Type);
        Assert.Equal(Wire.Hex("0000000000002000 00001000"), chunks[2].Payload);

        // Holes are never read from the device: one read, for the data block only.
        Assert.Equal(1, device.ReadCalls);
    }

    [Fact]
    public async Task Read_Structured_AllHoles_NeitherReadsNorBuffers()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();
        int rentedBefore = client.Pool.Rented;

        await client.SendRequestAsync(Wire.CmdRead, 1, 0, 1 << 16);

        Chunk hole = Assert.Single(await client.ReadStructuredReplyAsync());
        Assert.Equal(Wire.Hex("0000000000000000 00010000"), hole.Payload);
        Assert.Equal((0, rentedBefore), (device.ReadCalls, client.Pool.Rented));
    }

    [Fact]
    public async Task Read_DontFragment_SendsOneDataChunkWithZeroesInline()
    {
        var device = new MemoryBlockDevice(Size);
        byte[] data = Pattern(4096, 3);
        device.Fill(4096, data);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();

        await client.SendRequestAsync(Wire.CmdRead, 5, 0, 3 * 4096, Wire.FlagDf);
        List<Chunk> chunks = await client.ReadStructuredReplyAsync();

        Chunk only = Assert.Single(chunks);
        Assert.Equal(Wire.ReplyTypeOffsetData, only.Type);
        Assert.Equal(0ul, only.Offset);
        Assert.Equal(Wire.Concat(new byte[4096], data, new byte[4096]), only.Payload[8..]);
    }

    [Fact]
    public async Task Read_PastEnd_IsEinval_Simple()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdRead, 3, Size - 512, 1024);
        Assert.Equal(Wire.Hex("67446698 00000016 0000000000000003"), await client.ReadExactAsync(16));

        // The connection is still usable, and no payload followed the error.
        await client.SendRequestAsync(Wire.CmdFlush, 4, 0, 0);
        Assert.Equal(new SimpleReply(0, 4, []), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task Read_PastEnd_IsEinval_StructuredWithMessage()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync();

        await client.SendRequestAsync(Wire.CmdRead, 3, ulong.MaxValue - 10, 512);
        Chunk error = await client.ReadChunkAsync();

        Assert.Equal(Wire.ReplyFlagDone, error.Flags);
        Assert.Equal(Wire.ReplyTypeError, error.Type);
        Assert.Equal(3ul, error.Cookie);
        Assert.Equal(Wire.EINVAL, error.Error);
        Assert.Equal("offset and length exceed the export size", error.Message);
    }

    [Fact]
    public async Task Read_LargerThanMaxPayload_IsEinval()
    {
        await using var client = new NbdTestClient(
            NbdTestClient.Exports(new MemoryBlockDevice(Size)),
            new NbdServerOptions { MaxPayloadSize = 64 << 10 });
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdRead, 1, 0, (64 << 10) + 1);
        Assert.Equal(new SimpleReply(Wire.EINVAL, 1, []), await client.ReadSimpleReplyAsync());

        await client.SendRequestAsync(Wire.CmdRead, 2, 0, 64 << 10);
        Assert.Equal(64 << 10, (await client.ReadSimpleReplyAsync(64 << 10)).Data.Length);
    }

    [Fact]
    public async Task Write_PastEnd_IsEnospc_AndPayloadIsSkipped()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdWrite, 1, Size - 512, 1024, payload: Pattern(1024, 9));
        await client.SendRequestAsync(Wire.CmdWrite, 2, 0, 512, payload: Pattern(512, 4));

        Assert.Equal(new SimpleReply(Wire.ENOSPC, 1, []), await client.ReadSimpleReplyAsync());
        Assert.Equal(new SimpleReply(0, 2, []), await client.ReadSimpleReplyAsync());
        Assert.Equal(Pattern(512, 4), device.Snapshot(0, 512));
    }

    [Fact]
    public async Task Write_LargerThanMaxPayload_IsEinval_AndPayloadIsSkipped()
    {
        await using var client = new NbdTestClient(
            NbdTestClient.Exports(new MemoryBlockDevice(Size)),
            new NbdServerOptions { MaxPayloadSize = 4096 });
        await client.NegotiateAsync();

        await client.SendRequestAsync(Wire.CmdWrite, 1, 0, 8192, payload: Pattern(8192, 1));
        await client.SendRequestAsync(Wire.CmdFlush, 2, 0, 0);

        Chunk error = await client.ReadChunkAsync();
        Assert.Equal((Wire.EINVAL, 1ul), (error.Error, error.Cookie));
        Assert.Equal(new SimpleReply(0, 2, []), await client.ReadSimpleReplyAsync());
        Assert.True(client.Pool.Rented < 3, "a rejected payload must not be buffered");
    }

    public enum Rejection
    {
        PastTheEnd,
        ReadOnly,
        TooLarge,
    }

    /// <summary>
    /// A rejected WRITE is answered only after its last payload byte has arrived: libnbd counts a
    /// request as in flight once it has sent all of it, and drops the session on a reply that
    /// overtakes the payload ("no matching cookie found for server reply").
    /// </summary>
    [Theory]
    [InlineData(Rejection.PastTheEnd, Wire.ENOSPC)]
    [InlineData(Rejection.ReadOnly, Wire.EPERM)]
    [InlineData(Rejection.TooLarge, Wire.EINVAL)]
    public async Task RejectedWrite_IsAnsweredOnlyAfterItsWholePayload(Rejection rejection, uint expected)
    {
        var device = new MemoryBlockDevice(Size, readOnly: rejection == Rejection.ReadOnly);
        device.Fill(0, Pattern(4096, 3));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device), new NbdServerOptions { MaxPayloadSize = 8192 });
        await client.NegotiateAsync(structured: false);
        (ulong offset, uint length) = rejection switch
        {
            Rejection.PastTheEnd => ((ulong)Size - 4096, 8192u),
            Rejection.ReadOnly => (0ul, 8192u),
            _ => (0ul, 4 * 8192u), // four times the maximum: still read and dropped
        };
        byte[] request = Wire.Request(0, Wire.CmdWrite, 1, offset, length, Pattern((int)length, 5));

        await client.SendAsync(request.AsMemory(0, request.Length - 1));
        await client.AssertSilentAsync(TimeSpan.FromMilliseconds(300));
        await client.SendAsync(request.AsMemory(request.Length - 1));
        await client.SendRequestAsync(Wire.CmdRead, 2, 0, 4096);

        Assert.Equal(new SimpleReply(expected, 1, []), await client.ReadSimpleReplyAsync());
        Assert.Equal(Pattern(4096, 3), (await client.ReadSimpleReplyAsync(4096)).Data);
        Assert.Equal(Pattern(4096, 3), device.Snapshot(0, 4096));
        Assert.True(client.Pool.Rented < 3, "a rejected payload must not be buffered");
    }

    [Fact]
    public async Task Write_TwiceTheDefaultMaxPayload_IsEinval_AndTheConnectionIsKept()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);
        uint length = (2u * (32u << 20)) + 1;

        await client.SendRequestAsync(Wire.CmdWrite, 1, 0, length);
        byte[] piece = new byte[1 << 20];
        for (long sent = 0; sent < length; sent += piece.Length)
        {
            await client.SendAsync(piece.AsMemory(0, (int)Math.Min(piece.Length, length - sent)));
        }

        await client.SendRequestAsync(Wire.CmdFlush, 2, 0, 0);
        Assert.Equal(new SimpleReply(Wire.EINVAL, 1, []), await client.ReadSimpleReplyAsync());
        Assert.Equal(new SimpleReply(0, 2, []), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task Write_MoreThanFourTimesMaxPayload_RepliesThenDisconnects()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdWrite, 1, 0, (4u * (32u << 20)) + 1);

        Assert.Equal(new SimpleReply(Wire.EINVAL, 1, []), await client.ReadSimpleReplyAsync());
        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task Write_WithPayloadBeyondAnySaneBound_RepliesThenDisconnects()
    {
        await using var client = new NbdTestClient(
            NbdTestClient.Exports(new MemoryBlockDevice(Size)),
            new NbdServerOptions { MaxPayloadSize = 4096 });
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdWrite, 1, 0, 0xF000_0000);

        Assert.Equal(new SimpleReply(Wire.EINVAL, 1, []), await client.ReadSimpleReplyAsync());
        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task UnknownCommand_IsEinval()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(8, 1, 0, 512); // NBD_CMD_RESIZE, not offered
        await client.SendRequestAsync(0x4242, 2, 0, 0);

        Assert.Equal(new SimpleReply(Wire.EINVAL, 1, []), await client.ReadSimpleReplyAsync());
        Assert.Equal(new SimpleReply(Wire.EINVAL, 2, []), await client.ReadSimpleReplyAsync());
    }

    [Theory]
    [InlineData(Wire.CmdRead, Wire.FlagReqOne)]
    [InlineData(Wire.CmdWrite, Wire.FlagDf)]
    [InlineData(Wire.CmdTrim, Wire.FlagNoHole)]
    [InlineData(Wire.CmdFlush, Wire.FlagFastZero)]
    [InlineData(Wire.CmdWriteZeroes, Wire.FlagDf)]
    [InlineData(Wire.CmdCache, (ushort)0x8000)]
    [InlineData(Wire.CmdBlockStatus, (ushort)0x20)] // NBD_CMD_FLAG_PAYLOAD_LEN: extended headers only
    public async Task FlagNotValidForCommand_IsEinval(ushort command, ushort flags)
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(baseAllocation: true);

        await client.SendRequestAsync(command, 1, 0, command == Wire.CmdFlush ? 0u : 512u, flags, command == Wire.CmdWrite ? new byte[512] : null);

        Chunk error = await client.ReadChunkAsync();
        Assert.Equal(Wire.EINVAL, error.Error);
        Assert.Equal("command flags not valid for this command", error.Message);
    }

    [Fact]
    public async Task DontFragment_WithoutStructuredReplies_IsEinval()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdRead, 1, 0, 512, Wire.FlagDf);

        Assert.Equal(new SimpleReply(Wire.EINVAL, 1, []), await client.ReadSimpleReplyAsync());
    }

    [Theory]
    [InlineData(Wire.CmdWrite)]
    [InlineData(Wire.CmdTrim)]
    [InlineData(Wire.CmdWriteZeroes)]
    public async Task WriteCommandsOnReadOnlyExport_AreEperm(ushort command)
    {
        var device = new MemoryBlockDevice(Size, readOnly: true);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(command, 1, 0, 4096, payload: command == Wire.CmdWrite ? Pattern(4096, 1) : null);
        await client.SendRequestAsync(Wire.CmdRead, 2, 0, 4096);

        Assert.Equal(new SimpleReply(Wire.EPERM, 1, []), await client.ReadSimpleReplyAsync());
        Assert.Equal(new byte[4096], (await client.ReadSimpleReplyAsync(4096)).Data);
    }

    [Fact]
    public async Task Flush_WithOffsetOrLength_IsEinval()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdFlush, 1, 0, 512);

        Assert.Equal(new SimpleReply(Wire.EINVAL, 1, []), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task TrimAndWriteZeroes_ZeroTheRange_AndPassTheirFlags()
    {
        var device = new MemoryBlockDevice(Size);
        device.Fill(0, Pattern(4 * 4096, 5));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdTrim, 1, 0, 4096, Wire.FlagFua);
        Assert.Equal(new SimpleReply(0, 1, []), await client.ReadSimpleReplyAsync());
        Assert.True(device.LastFua);

        await client.SendRequestAsync(Wire.CmdWriteZeroes, 2, 4096, 4096, Wire.FlagNoHole | Wire.FlagFastZero);
        Assert.Equal(new SimpleReply(0, 2, []), await client.ReadSimpleReplyAsync());
        Assert.Equal((true, true), device.LastZeroFlags);
        Assert.False(device.LastFua);

        Assert.Equal(new byte[8192], device.Snapshot(0, 8192));
        Assert.Equal(Pattern(4 * 4096, 5)[8192..], device.Snapshot(8192, 8192));
    }

    [Fact]
    public async Task WriteZeroes_PastEnd_IsEnospc_TrimPastEnd_IsEinval()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdWriteZeroes, 1, Size, 1);
        await client.SendRequestAsync(Wire.CmdTrim, 2, Size, 1);

        Assert.Equal(new SimpleReply(Wire.ENOSPC, 1, []), await client.ReadSimpleReplyAsync());
        Assert.Equal(new SimpleReply(Wire.EINVAL, 2, []), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task WriteWithFua_ReachesTheDeviceWithFua()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();

        await client.SendRequestAsync(Wire.CmdWrite, 1, 0, 512, Wire.FlagFua, new byte[512]);

        Assert.Equal(new SimpleReply(0, 1, []), await client.ReadSimpleReplyAsync());
        Assert.True(device.LastFua);
    }

    [Fact]
    public async Task CacheAndZeroLengthRequests_Succeed()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdCache, 1, 0, 65536);
        await client.SendRequestAsync(Wire.CmdRead, 2, 0, 0);
        await client.SendRequestAsync(Wire.CmdWrite, 3, 0, 0);
        await client.SendRequestAsync(Wire.CmdTrim, 4, Size, 0);

        for (ulong cookie = 1; cookie <= 4; cookie++)
        {
            Assert.Equal(new SimpleReply(0, cookie, []), await client.ReadSimpleReplyAsync());
        }
    }

    [Fact]
    public async Task ZeroLengthRead_Structured_IsOneNoneChunk()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync();

        await client.SendRequestAsync(Wire.CmdRead, 6, 0, 0);

        Assert.Equal(Wire.Hex("668e33ef 0001 0000 0000000000000006 00000000"), await client.ReadExactAsync(20));
    }

    [Fact]
    public async Task BlockStatus_ReportsExtents()
    {
        var device = new MemoryBlockDevice(Size);
        device.Fill(8192, Pattern(8192, 1));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(baseAllocation: true);

        await client.SendRequestAsync(Wire.CmdBlockStatus, 0x77, 4096, 5 * 4096);

        // One chunk: context 1, then (4096, HOLE|ZERO), (8192, 0), (8192, HOLE|ZERO).
        byte[] expected = Wire.Hex(
            "668e33ef 0001 0005 0000000000000077 0000001c 00000001"
            + "00001000 00000003 00002000 00000000 00002000 00000003");
        Assert.Equal(expected, await client.ReadExactAsync(expected.Length));
    }

    [Fact]
    public async Task BlockStatus_ReqOne_ReportsOneExtent()
    {
        var device = new MemoryBlockDevice(Size);
        device.Fill(8192, Pattern(8192, 1));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(baseAllocation: true);

        await client.SendRequestAsync(Wire.CmdBlockStatus, 1, 0, 5 * 4096, Wire.FlagReqOne);

        Chunk chunk = await client.ReadChunkAsync();
        Assert.Equal(Wire.Hex("00000001 00002000 00000003"), chunk.Payload);
    }

    [Fact]
    public async Task BlockStatus_WithoutMetaContext_IsEinval()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(baseAllocation: false);

        await client.SendRequestAsync(Wire.CmdBlockStatus, 1, 0, 4096);

        Chunk error = await client.ReadChunkAsync();
        Assert.Equal((Wire.ReplyTypeError, Wire.EINVAL), (error.Type, error.Error));
        Assert.Equal("no metadata context was negotiated", error.Message);
    }

    [Fact]
    public async Task BlockStatus_WithoutStructuredReplies_IsEinvalSimpleReply()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdBlockStatus, 1, 0, 4096);

        Assert.Equal(new SimpleReply(Wire.EINVAL, 1, []), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task BlockStatus_PastEnd_IsEinval()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync(baseAllocation: true);

        await client.SendRequestAsync(Wire.CmdBlockStatus, 1, Size - 4096, 8192);

        Assert.Equal(Wire.EINVAL, (await client.ReadChunkAsync()).Error);
    }

    [Fact]
    public async Task DeviceError_IsReported_WithoutMessage()
    {
        var device = new MemoryBlockDevice(Size) { InjectedError = NbdError.EIO };
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();

        await client.SendRequestAsync(Wire.CmdRead, 1, 0, 4096, Wire.FlagDf);
        await client.SendRequestAsync(Wire.CmdWrite, 2, 0, 512, payload: new byte[512]);

        Assert.Equal(Wire.Hex("668e33ef 0001 8001 0000000000000001 00000006 00000005 0000"), await client.ReadExactAsync(26));
        Assert.Equal((Wire.EIO, 2ul), await client.ReadPayloadlessReplyAsync());
    }

    [Fact]
    public async Task DeviceThrowing_BecomesEio_AndConnectionSurvives()
    {
        var device = new MemoryBlockDevice(Size) { ThrowOnCall = true, ThrowOnAllocation = true };
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(baseAllocation: true);

        await client.SendRequestAsync(Wire.CmdWrite, 1, 0, 512, payload: new byte[512]);
        await client.SendRequestAsync(Wire.CmdBlockStatus, 2, 0, 512);
        await client.SendRequestAsync(Wire.CmdRead, 3, 0, 512);

        Assert.Equal((Wire.EIO, 1ul), await client.ReadPayloadlessReplyAsync());
        Assert.Equal((Wire.EIO, 2ul), await client.ReadPayloadlessReplyAsync());
        Assert.Equal((Wire.EIO, 3ul), await client.ReadPayloadlessReplyAsync());

        await client.SendRequestAsync(Wire.CmdDisc, 0, 0, 0);
        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task AllocationFailingAsynchronously_BlockStatusIsEio_ReadIsStillServed()
    {
        var device = new MemoryBlockDevice(Size) { CompleteAsynchronously = true, ThrowOnAllocation = true };
        device.Fill(0, Pattern(4096, 3));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(baseAllocation: true);

        await client.SendRequestAsync(Wire.CmdBlockStatus, 1, 0, 4096);
        Assert.Equal((Wire.EIO, 1ul), await client.ReadPayloadlessReplyAsync());

        // The allocation is unknown, so the whole range is read and sent as data.
        await client.SendRequestAsync(Wire.CmdRead, 2, 0, 8192);
        Chunk data = Assert.Single(await client.ReadStructuredReplyAsync());
        Assert.Equal((Wire.ReplyTypeOffsetData, 2ul), (data.Type, data.Cookie));
        Assert.Equal(device.Snapshot(0, 8192), data.Payload[8..]);
        Assert.Equal(2, client.Logger.Entries.Count(e => e.Message.Contains("block device threw", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task BadRequestMagic_Closes()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync();

        byte[] request = Wire.Request(0, Wire.CmdRead, 1, 0, 512);
        request[0] ^= 0xff;
        await client.SendAsync(request);

        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task ClientVanishingMidPayload_EndsRunCleanly_AndReturnsEveryBuffer()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();

        await client.SendAsync(Wire.Request(0, Wire.CmdWrite, 1, 0, 65536, new byte[1000]));
        await client.CloseSendAsync();

        await client.AssertClosedAsync();
        Assert.True(device.Disposed);
        // The half-received write never reached the device.
        Assert.Equal(new byte[1000], device.Snapshot(0, 1000));
    }

    [Fact]
    public async Task ClientVanishingMidHeader_EndsRunCleanly()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(Size)));
        await client.NegotiateAsync();

        await client.SendAsync(Wire.Request(0, Wire.CmdRead, 1, 0, 512).AsMemory(0, 13));
        await client.CloseSendAsync();

        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task RequestSplitAcrossWrites_IsReassembled()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);
        byte[] request = Wire.Request(Wire.FlagFua, Wire.CmdWrite, 9, 512, 3000, Pattern(3000, 2));

        for (int i = 0; i < request.Length; i += 7)
        {
            await client.SendAsync(request.AsMemory(i, Math.Min(7, request.Length - i)));
        }

        Assert.Equal(new SimpleReply(0, 9, []), await client.ReadSimpleReplyAsync());
        Assert.Equal(Pattern(3000, 2), device.Snapshot(512, 3000));
    }

    internal static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static byte[] ChunkBytes(Chunk chunk)
    {
        var bytes = new byte[20 + chunk.Payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, Wire.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(4), chunk.Flags);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(6), chunk.Type);
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(8), chunk.Cookie);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(16), (uint)chunk.Payload.Length);
        chunk.Payload.CopyTo(bytes, 20);
        return bytes;
    }
}
