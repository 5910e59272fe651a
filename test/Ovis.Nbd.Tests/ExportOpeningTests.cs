using System.Buffers.Binary;
using System.Text;
using Microsoft.Extensions.Logging;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

/// <summary>
/// Exports that open asynchronously (a cluster lock in etcd) and may be refused with a reason,
/// which NBD_OPT_INFO, NBD_OPT_GO and the meta-context options pass on with NBD_REP_ERR_UNKNOWN.
/// </summary>
public class ExportOpeningTests
{
    private const string Refusal = "volume vol is being served by node n-a (lease held until 12:00:05Z); connect there";

    [Fact]
    public async Task AsynchronousOpen_Go_EntersTransmission()
    {
        var device = new MemoryBlockDevice(1 << 20);
        device.Fill(4096, [1, 2, 3]);
        MemoryExportProvider exports = NbdTestClient.Exports(device);
        exports.OpenAsynchronously = true;
        await using var client = new NbdTestClient(exports);

        (ulong size, _) = await client.NegotiateAsync(baseAllocation: true);

        Assert.Equal(1ul << 20, size);
        await client.SendRequestAsync(Wire.CmdRead, 7, 4096, 3);
        List<Chunk> chunks = await client.ReadStructuredReplyAsync();
        Assert.Equal(Wire.ReplyTypeOffsetData, chunks[0].Type);
        Assert.Equal(Wire.Hex("0000000000001000 010203"), chunks[0].Payload);
        // SET_META_CONTEXT opened the device and GO kept it: one open for the whole handshake.
        Assert.Equal(1, exports.OpenCalls);
    }

    [Fact]
    public async Task AsynchronousOpen_Info_DescribesTheExport()
    {
        MemoryExportProvider exports = NbdTestClient.Exports(new MemoryBlockDevice(1 << 20));
        exports.OpenAsynchronously = true;
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptInfo, Wire.InfoData("disk", 1));

        byte[] expected = Wire.Hex(
            "0003e889045565a9 00000006 00000003 0000000c 0000 0000000000100000 0d6d" // INFO_EXPORT
            + "0003e889045565a9 00000006 00000003 0000000e 0003 00000001 00001000 02000000" // INFO_BLOCK_SIZE
            + "0003e889045565a9 00000006 00000003 00000006 0001 6469736b" // INFO_NAME "disk"
            + "0003e889045565a9 00000006 00000001 00000000");
        Assert.Equal(expected, await client.ReadExactAsync(expected.Length));
    }

    [Fact]
    public async Task AsynchronousOpen_ExportName_EntersTransmission()
    {
        MemoryExportProvider exports = NbdTestClient.Exports(new MemoryBlockDevice(1 << 20));
        exports.OpenAsynchronously = true;
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync(clientFlags: 3);
        await client.SendOptionAsync(Wire.OptExportName, Encoding.UTF8.GetBytes("disk"));

        Assert.Equal(Wire.Hex("0000000000100000 0d6d"), await client.ReadExactAsync(10));
        await client.SendRequestAsync(Wire.CmdFlush, 9, 0, 0);
        Assert.Equal(new SimpleReply(0, 9, []), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task AsynchronousOpen_ListMetaContext_ListsBaseAllocation()
    {
        MemoryExportProvider exports = NbdTestClient.Exports(new MemoryBlockDevice(4096));
        exports.OpenAsynchronously = true;
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptStructuredReply);
        Assert.Equal(Wire.RepAck, (await client.ReadOptionReplyAsync()).Type);
        await client.SendOptionAsync(Wire.OptListMetaContext, Wire.MetaContextData("disk", "base:allocation"));

        byte[] expected = Wire.Hex(
            "0003e889045565a9 00000009 00000004 00000013 00000000" + Convert.ToHexString("base:allocation"u8)
            + "0003e889045565a9 00000009 00000001 00000000");
        Assert.Equal(expected, await client.ReadExactAsync(expected.Length));
    }

    [Theory]
    [InlineData(Wire.OptGo, false)]
    [InlineData(Wire.OptGo, true)]
    [InlineData(Wire.OptInfo, false)]
    [InlineData(Wire.OptInfo, true)]
    [InlineData(Wire.OptListMetaContext, true)]
    [InlineData(Wire.OptSetMetaContext, true)]
    public async Task Refused_IsErrUnknownWithTheReason_AndGoOnAnotherExportSucceeds(uint option, bool asynchronous)
    {
        var device = new MemoryBlockDevice(4096);
        MemoryExportProvider exports = RefusingExports(device);
        exports.OpenAsynchronously = asynchronous;
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptStructuredReply);
        Assert.Equal(Wire.RepAck, (await client.ReadOptionReplyAsync()).Type);

        bool metaContext = option is Wire.OptListMetaContext or Wire.OptSetMetaContext;
        await client.SendOptionAsync(option, metaContext ? Wire.MetaContextData("vol", "base:allocation") : Wire.InfoData("vol"));

        byte[] message = Encoding.UTF8.GetBytes(Refusal);
        byte[] expected = Wire.Concat(Wire.Hex("0003e889045565a9 00000000 80000006 00000000"), message);
        BinaryPrimitives.WriteUInt32BigEndian(expected.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(expected.AsSpan(16), (uint)message.Length);
        Assert.Equal(expected, await client.ReadExactAsync(expected.Length));

        // The session goes on: "disk" is served.
        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("disk"));
        OptionReply reply;
        while ((reply = await client.ReadOptionReplyAsync()).Type == Wire.RepInfo)
        {
        }

        Assert.Equal(new OptionReply(Wire.OptGo, Wire.RepAck, []), reply);
        await client.SendRequestAsync(Wire.CmdFlush, 1, 0, 0);
        Assert.Equal((0u, 1ul), await client.ReadPayloadlessReplyAsync());

        Assert.Contains(client.Logger.Entries, e => e.Level == LogLevel.Information && e.Message.Contains(Refusal, StringComparison.Ordinal));
        Assert.DoesNotContain(client.Logger.Entries, e => e.Level >= LogLevel.Warning);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Refused_ExportName_Closes(bool asynchronous)
    {
        MemoryExportProvider exports = RefusingExports(new MemoryBlockDevice(4096));
        exports.OpenAsynchronously = asynchronous;
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptExportName, Encoding.UTF8.GetBytes("vol"));

        await client.AssertClosedAsync();
        Assert.Contains(client.Logger.Entries, e => e.Level == LogLevel.Information && e.Message.Contains(Refusal, StringComparison.Ordinal));
    }

    [Fact]
    public async Task Refused_ThenReleased_GoOpensAgainAndSucceeds()
    {
        var volume = new MemoryBlockDevice(8192);
        MemoryExportProvider exports = RefusingExports(new MemoryBlockDevice(4096)).Add("vol", volume);
        exports.OpenAsynchronously = true;
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("vol"));
        Assert.Equal(Wire.RepErrUnknown, (await client.ReadOptionReplyAsync()).Type);

        // The other node let go; a refusal is not remembered, so the next GO asks again.
        exports.Recover("vol");
        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("vol"));
        OptionReply export = await client.ReadOptionReplyAsync();
        Assert.Equal(Wire.RepInfo, export.Type);
        Assert.Equal(8192ul, BinaryPrimitives.ReadUInt64BigEndian(export.Data.AsSpan(2)));
        Assert.Equal(2, exports.OpenCalls);
    }

    [Theory]
    [InlineData(Wire.OptGo)]
    [InlineData(Wire.OptListMetaContext)]
    public async Task ProviderFault_IsErrUnknownWithAGenericReason_LoggedAsAnError(uint option)
    {
        MemoryExportProvider exports = NbdTestClient.Exports(new MemoryBlockDevice(4096))
            .Fail("vol", new InvalidOperationException("etcd at /var/lib/secret: connection refused"));
        exports.OpenAsynchronously = true;
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(option, option == Wire.OptGo ? Wire.InfoData("vol") : Wire.MetaContextData("vol"));

        OptionReply reply = await client.ReadOptionReplyAsync();
        Assert.Equal(option, reply.Option);
        Assert.Equal(Wire.RepErrUnknown, reply.Type);
        // The operator is sent to the log; the exception's text stays on the server.
        string text = Encoding.UTF8.GetString(reply.Data);
        Assert.Contains("server log", text, StringComparison.Ordinal);
        Assert.DoesNotContain("etcd", text, StringComparison.Ordinal);
        Assert.Contains(client.Logger.Entries, e => e.Level == LogLevel.Error && e.Message.Contains("'vol'", StringComparison.Ordinal));

        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("disk"));
        Assert.Equal(Wire.RepInfo, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public async Task ProviderFault_ExportName_ClosesWithoutThrowing()
    {
        MemoryExportProvider exports = NbdTestClient.Exports(new MemoryBlockDevice(4096)).Fail("vol", new IOException("disk gone"));
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptExportName, Encoding.UTF8.GetBytes("vol"));

        await client.AssertClosedAsync();
        Assert.Contains(client.Logger.Entries, e => e.Level == LogLevel.Error);
    }

    [Fact]
    public async Task Refusal_IsCutToItsFirstLine()
    {
        MemoryExportProvider exports = NbdTestClient.Exports(new MemoryBlockDevice(4096))
            .Fail("vol", new ExportUnavailableException("volume vol is being served by node n-a\r\n   at Ovis.Cluster.Lock..."));
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptInfo, Wire.InfoData("vol"));

        OptionReply reply = await client.ReadOptionReplyAsync();
        Assert.Equal((Wire.OptInfo, Wire.RepErrUnknown), (reply.Option, reply.Type));
        Assert.Equal("volume vol is being served by node n-a"u8.ToArray(), reply.Data);
    }

    [Fact]
    public async Task Refusal_IsCutToTheStringLimit_OnACharacterBoundary()
    {
        // 2000 three-byte characters: 6000 bytes, of which 1365 whole characters (4095 bytes) fit in 4096.
        MemoryExportProvider exports = NbdTestClient.Exports(new MemoryBlockDevice(4096))
            .Fail("vol", new ExportUnavailableException(new string('€', 2000)));
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("vol"));

        OptionReply reply = await client.ReadOptionReplyAsync();
        Assert.Equal(Wire.RepErrUnknown, reply.Type);
        Assert.Equal(Encoding.UTF8.GetBytes(new string('€', 1365)), reply.Data);
    }

    private static MemoryExportProvider RefusingExports(MemoryBlockDevice disk)
        => NbdTestClient.Exports(disk).Fail("vol", new ExportUnavailableException(Refusal));
}
