using System.Buffers.Binary;
using System.Text;
using Microsoft.Extensions.Logging;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

public class HandshakeTests
{
    private const ushort WritableFlags = Wire.TxHasFlags | Wire.TxSendFlush | Wire.TxSendFua | Wire.TxSendTrim
        | Wire.TxSendWriteZeroes | Wire.TxCanMultiConn | Wire.TxSendCache | Wire.TxSendFastZero;

    [Fact]
    public async Task Greeting_IsFixedNewstyleWithNoZeroes()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)));

        Assert.Equal(Wire.Hex("4e42444d41474943 49484156454f5054 0003"), await client.ReadExactAsync(18));
    }

    [Fact]
    public async Task UnknownClientFlags_CloseTheConnection()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)));
        await client.GreetAsync(clientFlags: 0x7);

        await client.AssertClosedAsync();
        Assert.Contains(client.Logger.Entries, e => e.Level == LogLevel.Warning && e.Message.Contains("client flags", StringComparison.Ordinal));
    }

    [Fact]
    public async Task BadOptionMagic_ClosesCleanly()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)));
        await client.GreetAsync();
        await client.SendAsync(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));

        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task ClientLeavingMidHandshake_EndsRunWithoutException()
    {
        var device = new MemoryBlockDevice(1 << 20);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.GreetAsync();
        await client.SendAsync(Wire.Option(Wire.OptGo, Wire.InfoData("disk")).AsMemory(0, 20));
        await client.CloseSendAsync();

        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task ExportName_WithNoZeroes_RepliesSizeAndFlagsOnly()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)));
        await client.GreetAsync(clientFlags: 3);
        await client.SendOptionAsync(Wire.OptExportName, Encoding.UTF8.GetBytes("disk"));

        // Size 1 MiB; no structured replies negotiated, so no SEND_DF.
        Assert.Equal(Wire.Hex("0000000000100000 0d6d"), await client.ReadExactAsync(10));
        Assert.Equal(0x0d6d, WritableFlags);

        await client.SendRequestAsync(Wire.CmdDisc, 0, 0, 0);
        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task ExportName_WithoutNoZeroes_Adds124Zeroes()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync(clientFlags: 1);
        await client.SendOptionAsync(Wire.OptExportName, Encoding.UTF8.GetBytes("disk"));

        byte[] reply = await client.ReadExactAsync(134);
        Assert.Equal(Wire.Concat(Wire.Hex("0000000000001000 0d6d"), new byte[124]), reply);
    }

    [Fact]
    public async Task ExportName_UnknownExport_Disconnects()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptExportName, Encoding.UTF8.GetBytes("nope"));

        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task Abort_IsAcknowledgedThenClosed()
    {
        var device = new MemoryBlockDevice(4096);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptAbort);

        Assert.Equal(Wire.Hex("0003e889045565a9 00000002 00000001 00000000"), await client.ReadExactAsync(20));
        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task List_SendsOneServerReplyPerExportThenAck()
    {
        var exports = new MemoryExportProvider()
            .Add("a", new MemoryBlockDevice(4096), "first")
            .Add("bc", new MemoryBlockDevice(4096));
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptList);

        byte[] expected = Wire.Hex(
            "0003e889045565a9 00000003 00000002 0000000a 00000001 61 6669727374" // "a", "first"
            + "0003e889045565a9 00000003 00000002 00000006 00000002 6263" //           "bc", no description
            + "0003e889045565a9 00000003 00000001 00000000");
        Assert.Equal(expected, await client.ReadExactAsync(expected.Length));
    }

    [Fact]
    public async Task List_WithData_IsInvalid()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptList, [1]);

        Assert.Equal(new OptionReply(Wire.OptList, Wire.RepErrInvalid, []), await client.ReadOptionReplyAsync());
    }

    [Theory]
    [InlineData(Wire.OptStartTls)]
    [InlineData(Wire.OptExtendedHeaders)]
    [InlineData(4u)] // NBD_OPT_PEEK_EXPORT, withdrawn
    [InlineData(0x12345u)]
    public async Task UnsupportedOption_GetsErrUnsup_AndNegotiationContinues(uint option)
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();
        await client.SendOptionAsync(option, [1, 2, 3]);

        byte[] expected = Wire.Hex("0003e889045565a9 00000000 80000001 00000000");
        BinaryPrimitives.WriteUInt32BigEndian(expected.AsSpan(8), option);
        Assert.Equal(expected, await client.ReadExactAsync(20));

        // "MUST NOT fail to parse the next message received".
        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("disk"));
        Assert.Equal(Wire.RepInfo, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public async Task StructuredReply_IsAcknowledged_ButNotWithData()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();

        await client.SendOptionAsync(Wire.OptStructuredReply, [0]);
        Assert.Equal(new OptionReply(Wire.OptStructuredReply, Wire.RepErrInvalid, []), await client.ReadOptionReplyAsync());

        await client.SendOptionAsync(Wire.OptStructuredReply);
        Assert.Equal(new OptionReply(Wire.OptStructuredReply, Wire.RepAck, []), await client.ReadOptionReplyAsync());
    }

    [Fact]
    public async Task Info_DescribesExportAndBlockSizes_ThenGoEntersTransmission()
    {
        await using var client = new NbdTestClient(
            NbdTestClient.Exports(new MemoryBlockDevice(1 << 20, preferredBlockSize: 65536)),
            new NbdServerOptions { MaxPayloadSize = 1 << 20 });
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptStructuredReply);
        await client.ReadOptionReplyAsync();
        await client.SendOptionAsync(Wire.OptInfo, Wire.InfoData("disk", 3));

        byte[] expected = Wire.Hex(
            "0003e889045565a9 00000006 00000003 0000000c 0000 0000000000100000 0ded" // INFO_EXPORT, SEND_DF now set
            + "0003e889045565a9 00000006 00000003 0000000e 0003 00000001 00010000 00100000" // INFO_BLOCK_SIZE
            + "0003e889045565a9 00000006 00000001 00000000");
        Assert.Equal(expected, await client.ReadExactAsync(expected.Length));

        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("disk", 3));
        byte[] go = await client.ReadExactAsync(expected.Length);
        Assert.Equal(Wire.Hex("00000007"), go[8..12]);
        Assert.Equal(expected[20..40], go[20..40]);

        // Structured replies are on: an unwritten range comes back as a hole.
        await client.SendRequestAsync(Wire.CmdRead, 1, 0, 512);
        Assert.Equal(Wire.ReplyTypeOffsetHole, (await client.ReadChunkAsync()).Type);
    }

    [Fact]
    public async Task Info_NameAndDescription_AreSentWhenAsked()
    {
        var exports = new MemoryExportProvider().Add("disk", new MemoryBlockDevice(4096), "Test disk");
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptInfo, Wire.InfoData("disk", 1, 2, 0x7777));

        var infos = new Dictionary<ushort, byte[]>();
        OptionReply reply;
        while ((reply = await client.ReadOptionReplyAsync()).Type == Wire.RepInfo)
        {
            infos.Add(BinaryPrimitives.ReadUInt16BigEndian(reply.Data), reply.Data[2..]);
        }

        Assert.Equal(Wire.RepAck, reply.Type);
        Assert.Equal("disk"u8.ToArray(), infos[1]);
        Assert.Equal("Test disk"u8.ToArray(), infos[2]);
        Assert.Equal(new ushort[] { 0, 1, 2, 3 }, infos.Keys.Order());
    }

    [Fact]
    public async Task Go_OnMissingExport_IsErrUnknown_AndNegotiationContinues()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("missing"));

        Assert.Equal(Wire.Hex("0003e889045565a9 00000007 80000006 00000000"), await client.ReadExactAsync(20));

        await client.SendOptionAsync(Wire.OptAbort);
        Assert.Equal(Wire.RepAck, (await client.ReadOptionReplyAsync()).Type);
        await client.AssertClosedAsync();
    }

    [Theory]
    [InlineData("00000004 6469736b 0000 00")] //       a stray byte after the requests
    [InlineData("00000005 6469736b 0000")] //          name length runs past the data
    [InlineData("00000004 6469736b 0001")] //          one request announced, none sent
    [InlineData("00000000 00")] //                     shorter than the fixed fields
    [InlineData("00000002 6100 0000")] //              NUL inside the name
    [InlineData("00000002 c328 0000")] //              not UTF-8
    public async Task Go_WithMalformedData_IsErrInvalid(string data)
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptGo, Wire.Hex(data));

        Assert.Equal(new OptionReply(Wire.OptGo, Wire.RepErrInvalid, []), await client.ReadOptionReplyAsync());
    }

    [Fact]
    public async Task ReadOnlyExport_AdvertisesReadOnly_AndNoWriteFeatures()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096, readOnly: true)));

        (ulong size, ushort flags) = await client.NegotiateAsync();

        Assert.Equal(4096ul, size);
        Assert.Equal(
            Wire.TxHasFlags | Wire.TxReadOnly | Wire.TxSendFlush | Wire.TxSendFua | Wire.TxSendDf | Wire.TxCanMultiConn | Wire.TxSendCache,
            flags);
    }

    [Fact]
    public async Task OversizedOption_IsSkippedWithErrTooBig()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptInfo, new byte[100_000]);

        Assert.Equal(new OptionReply(Wire.OptInfo, Wire.RepErrTooBig, []), await client.ReadOptionReplyAsync());

        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("disk"));
        Assert.Equal(Wire.RepInfo, (await client.ReadOptionReplyAsync()).Type);
    }

    [Theory]
    [InlineData(Wire.OptInfo, 0xffffffffu)]
    [InlineData(Wire.OptExportName, 100_000u)]
    public async Task AbsurdOptionLength_Closes(uint option, uint length)
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();
        byte[] header = Wire.Option(option, []);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), length);
        await client.SendAsync(header);

        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task Go_DisposesNothing_AndDisconnectDisposesTheDevice()
    {
        var device = new MemoryBlockDevice(4096);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();
        Assert.False(device.Disposed);

        await client.SendRequestAsync(Wire.CmdDisc, 0, 0, 0);
        await client.AssertClosedAsync();
        Assert.True(device.Disposed);
    }
}
