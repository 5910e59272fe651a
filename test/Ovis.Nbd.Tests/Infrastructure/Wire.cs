using System.Buffers.Binary;
using System.Text;

namespace Ovis.Nbd.Tests.Infrastructure;

/// <summary>
/// Client-side encoders written from doc/proto.md independently of the server's own writers,
/// so a test never checks the server against itself.
/// </summary>
internal static class Wire
{
    public const ulong IHaveOpt = 0x49484156454F5054;
    public const ulong OptionReplyMagic = 0x3e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    public const uint OptExportName = 1;
    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptStartTls = 5;
    public const uint OptInfo = 6;
    public const uint OptGo = 7;
    public const uint OptStructuredReply = 8;
    public const uint OptListMetaContext = 9;
    public const uint OptSetMetaContext = 10;
    public const uint OptExtendedHeaders = 11;

    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepMetaContext = 4;
    public const uint RepErrUnsup = 0x80000001;
    public const uint RepErrInvalid = 0x80000003;
    public const uint RepErrUnknown = 0x80000006;
    public const uint RepErrTooBig = 0x80000009;

    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisc = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;
    public const ushort CmdCache = 5;
    public const ushort CmdWriteZeroes = 6;
    public const ushort CmdBlockStatus = 7;

    public const ushort FlagFua = 1;
    public const ushort FlagNoHole = 2;
    public const ushort FlagDf = 4;
    public const ushort FlagReqOne = 8;
    public const ushort FlagFastZero = 16;

    public const ushort ReplyFlagDone = 1;
    public const ushort ReplyTypeNone = 0;
    public const ushort ReplyTypeOffsetData = 1;
    public const ushort ReplyTypeOffsetHole = 2;
    public const ushort ReplyTypeBlockStatus = 5;
    public const ushort ReplyTypeError = 0x8001;

    public const ushort TxHasFlags = 1 << 0;
    public const ushort TxReadOnly = 1 << 1;
    public const ushort TxSendFlush = 1 << 2;
    public const ushort TxSendFua = 1 << 3;
    public const ushort TxSendTrim = 1 << 5;
    public const ushort TxSendWriteZeroes = 1 << 6;
    public const ushort TxSendDf = 1 << 7;
    public const ushort TxCanMultiConn = 1 << 8;
    public const ushort TxSendCache = 1 << 10;
    public const ushort TxSendFastZero = 1 << 11;

    public const uint EPERM = 1;
    public const uint EIO = 5;
    public const uint EINVAL = 22;
    public const uint ENOSPC = 28;

    public static byte[] Option(uint option, ReadOnlySpan<byte> data)
    {
        var bytes = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(12), (uint)data.Length);
        data.CopyTo(bytes.AsSpan(16));
        return bytes;
    }

    /// <summary>NBD_OPT_INFO / NBD_OPT_GO data: name length, name, request count, requests.</summary>
    public static byte[] InfoData(string name, params ushort[] infoRequests)
    {
        byte[] nameBytes = Encoding.UTF8.GetBytes(name);
        var data = new byte[4 + nameBytes.Length + 2 + (2 * infoRequests.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)nameBytes.Length);
        nameBytes.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + nameBytes.Length), (ushort)infoRequests.Length);
        for (int i = 0; i < infoRequests.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + nameBytes.Length + (2 * i)), infoRequests[i]);
        }

        return data;
    }

    /// <summary>NBD_OPT_{LIST,SET}_META_CONTEXT data: name length, name, query count, queries.</summary>
    public static byte[] MetaContextData(string name, params string[] queries)
    {
        var data = new List<byte>();
        AddString(data, name);
        AddUInt32(data, (uint)queries.Length);
        foreach (string query in queries)
        {
            AddString(data, query);
        }

        return [.. data];
    }

    public static byte[] Request(ushort flags, ushort type, ulong cookie, ulong offset, uint length, ReadOnlySpan<byte> payload = default)
    {
        var bytes = new byte[28 + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(24), length);
        payload.CopyTo(bytes.AsSpan(28));
        return bytes;
    }

    public static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));

    public static byte[] Concat(params byte[][] parts)
    {
        var all = new List<byte>();
        foreach (byte[] part in parts)
        {
            all.AddRange(part);
        }

        return [.. all];
    }

    private static void AddString(List<byte> data, string value)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        AddUInt32(data, (uint)bytes.Length);
        data.AddRange(bytes);
    }

    private static void AddUInt32(List<byte> data, uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        data.AddRange(bytes);
    }
}
