using System.Buffers.Binary;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

public class MetaContextTests
{
    [Theory]
    [InlineData("base:")]
    [InlineData("base:allocation")]
    public async Task List_BaseQuery_ReturnsBaseAllocationWithIdZero(string query)
    {
        await using var client = await StructuredClientAsync();
        await client.SendOptionAsync(Wire.OptListMetaContext, Wire.MetaContextData("disk", query));

        byte[] expected = Wire.Hex(
            "0003e889045565a9 00000009 00000004 00000013 00000000" + Convert.ToHexString("base:allocation"u8)
            + "0003e889045565a9 00000009 00000001 00000000");
        Assert.Equal(expected, await client.ReadExactAsync(expected.Length));
    }

    [Fact]
    public async Task List_NoQueries_ReturnsEverything()
    {
        await using var client = await StructuredClientAsync();
        await client.SendOptionAsync(Wire.OptListMetaContext, Wire.MetaContextData("disk"));

        OptionReply context = await client.ReadOptionReplyAsync();
        Assert.Equal(Wire.RepMetaContext, context.Type);
        Assert.Equal("base:allocation"u8.ToArray(), context.Data[4..]);
        Assert.Equal(Wire.RepAck, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public async Task List_UnknownNamespace_IsIgnored()
    {
        await using var client = await StructuredClientAsync();
        await client.SendOptionAsync(Wire.OptListMetaContext, Wire.MetaContextData("disk", "qemu:dirty-bitmap:x", "base:nothing"));

        Assert.Equal(new OptionReply(Wire.OptListMetaContext, Wire.RepAck, []), await client.ReadOptionReplyAsync());
    }

    [Fact]
    public async Task Set_SelectsBaseAllocationWithNonZeroId_IgnoringOthers()
    {
        await using var client = await StructuredClientAsync();
        await client.SendOptionAsync(Wire.OptSetMetaContext, Wire.MetaContextData("disk", "qemu:allocation-depth", "base:allocation", "base:"));

        OptionReply context = await client.ReadOptionReplyAsync();
        Assert.Equal(Wire.RepMetaContext, context.Type);
        Assert.NotEqual(0u, BinaryPrimitives.ReadUInt32BigEndian(context.Data));
        Assert.Equal("base:allocation"u8.ToArray(), context.Data[4..]);
        Assert.Equal(Wire.RepAck, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public async Task Set_WithoutStructuredReplies_IsInvalid()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(4096)));
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptSetMetaContext, Wire.MetaContextData("disk", "base:allocation"));

        Assert.Equal(new OptionReply(Wire.OptSetMetaContext, Wire.RepErrInvalid, []), await client.ReadOptionReplyAsync());
    }

    [Fact]
    public async Task Set_OnUnknownExport_IsErrUnknown()
    {
        await using var client = await StructuredClientAsync();
        await client.SendOptionAsync(Wire.OptSetMetaContext, Wire.MetaContextData("other", "base:allocation"));

        Assert.Equal(new OptionReply(Wire.OptSetMetaContext, Wire.RepErrUnknown, []), await client.ReadOptionReplyAsync());
    }

    [Theory]
    [InlineData("00000004 6469736b 00000001 00000010 6261")] // query length runs past the data
    [InlineData("00000004 6469736b 00000002 00000000")] //      two queries announced, one sent
    [InlineData("00000004 6469736b 00000000 ff")] //            trailing byte
    [InlineData("00000009 6469736b")] //                        name length runs past the data
    public async Task Set_Malformed_IsInvalid(string data)
    {
        await using var client = await StructuredClientAsync();
        await client.SendOptionAsync(Wire.OptSetMetaContext, Wire.Hex(data));

        Assert.Equal(new OptionReply(Wire.OptSetMetaContext, Wire.RepErrInvalid, []), await client.ReadOptionReplyAsync());
    }

    [Fact]
    public async Task Set_ForAnotherExportThanGo_LeavesBlockStatusDisabled()
    {
        var exports = new MemoryExportProvider().Add("disk", new MemoryBlockDevice(8192)).Add("other", new MemoryBlockDevice(8192));
        await using var client = new NbdTestClient(exports);
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptStructuredReply);
        await client.ReadOptionReplyAsync();
        await client.SendOptionAsync(Wire.OptSetMetaContext, Wire.MetaContextData("other", "base:allocation"));
        await client.ReadOptionReplyAsync();
        await client.ReadOptionReplyAsync();
        await client.SendOptionAsync(Wire.OptGo, Wire.InfoData("disk"));
        while ((await client.ReadOptionReplyAsync()).Type != Wire.RepAck)
        {
        }

        await client.SendRequestAsync(Wire.CmdBlockStatus, 1, 0, 4096);
        Chunk error = await client.ReadChunkAsync();
        Assert.Equal(Wire.ReplyTypeError, error.Type);
        Assert.Equal(Wire.EINVAL, error.Error);
    }

    private static async Task<NbdTestClient> StructuredClientAsync()
    {
        var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)));
        await client.GreetAsync();
        await client.SendOptionAsync(Wire.OptStructuredReply);
        Assert.Equal(Wire.RepAck, (await client.ReadOptionReplyAsync()).Type);
        return client;
    }
}
