using System.Buffers.Binary;

namespace Ovis.Nbd;

/// <summary>Encoders for what the server sends during the handshake.</summary>
internal static class NbdHandshakeWriter
{
    /* Greeting (doc/proto.md, "Newstyle negotiation"), 18 bytes; the client answers with
       32 bits of client flags.

            0                   1                   2                   3
            0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
           +---------------------------------------------------------------+
         0 |                     magic 'NBDMAGIC' (64)                     |
           +                                                               +
         4 |                                                               |
           +---------------------------------------------------------------+
         8 |                     magic 'IHAVEOPT' (64)                     |
           +                                                               +
        12 |                                                               |
           +-------------------------------+-------------------------------+
        16 |     handshake flags (16)      |
           +-------------------------------+
    */
    public const int GreetingSize = 18;

    public static void WriteGreeting(Span<byte> destination, NbdHandshakeFlags flags)
    {
        destination = destination[..GreetingSize];
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdMagic.Init);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], NbdMagic.Option);
        BinaryPrimitives.WriteUInt16BigEndian(destination[16..], (ushort)flags);
    }

    /* Option reply (doc/proto.md, "Fixed newstyle negotiation"), 20-byte header.

            0                   1                   2                   3
            0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
           +---------------------------------------------------------------+
         0 |                  magic (0x0003e889045565a9)                   |
           +                                                               +
         4 |                                                               |
           +---------------------------------------------------------------+
         8 |                  option being answered (32)                   |
           +---------------------------------------------------------------+
        12 |                        reply type (32)                        |
           +---------------------------------------------------------------+
        16 |                       data length (32)                        |
           +===============================================================+
        20 |  data: data length bytes                                   ...
           +---------------------------------------------------------------+
    */
    public const int OptionReplyHeaderSize = 20;

    public static void WriteOptionReplyHeader(Span<byte> destination, NbdOption option, NbdOptionReplyType type, uint dataLength)
    {
        destination = destination[..OptionReplyHeaderSize];
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdMagic.OptionReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..], (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], dataLength);
    }

    /* Answer to NBD_OPT_EXPORT_NAME: no option reply header, and 124 zero bytes unless the
       client set NBD_FLAG_C_NO_ZEROES.

           +---------------------------------------------------------------+
         0 |                     export size (64)                          |
           +                                                               +
         4 |                                                               |
           +-------------------------------+-------------------------------+
         8 |   transmission flags (16)     |  124 zero bytes (optional) ...
           +-------------------------------+-------------------------------+
    */
    public const int ExportNameReplySize = 10;
    public const int ExportNameReplyPadding = 124;

    public static int WriteExportNameReply(Span<byte> destination, ulong exportSize, NbdTransmissionFlags flags, bool noZeroes)
    {
        int size = noZeroes ? ExportNameReplySize : ExportNameReplySize + ExportNameReplyPadding;
        destination = destination[..size];
        BinaryPrimitives.WriteUInt64BigEndian(destination, exportSize);
        BinaryPrimitives.WriteUInt16BigEndian(destination[8..], (ushort)flags);
        destination[ExportNameReplySize..].Clear();
        return size;
    }

    /* NBD_REP_INFO data for NBD_INFO_EXPORT, 12 bytes.

           +-------------------------------+-------------------------------+
         0 |   NBD_INFO_EXPORT (16) = 0    |       export size (64)        |
           +-------------------------------+                               +
         4 |                                                               |
           +                               +-------------------------------+
         8 |                               |   transmission flags (16)     |
           +-------------------------------+-------------------------------+
    */
    public const int InfoExportSize = 12;

    public static void WriteInfoExport(Span<byte> destination, ulong exportSize, NbdTransmissionFlags flags)
    {
        destination = destination[..InfoExportSize];
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)NbdInfoType.Export);
        BinaryPrimitives.WriteUInt64BigEndian(destination[2..], exportSize);
        BinaryPrimitives.WriteUInt16BigEndian(destination[10..], (ushort)flags);
    }

    /* NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE, 14 bytes.

           +-------------------------------+-------------------------------+
         0 | NBD_INFO_BLOCK_SIZE (16) = 3  |     minimum block size (32)   |
           +-------------------------------+-------------------------------+
         4 |                               |    preferred block size (32)  |
           +-------------------------------+-------------------------------+
         8 |                               |    maximum payload size (32)  |
           +-------------------------------+-------------------------------+
        12 |                               |
           +-------------------------------+
    */
    public const int InfoBlockSizeSize = 14;

    public static void WriteInfoBlockSize(Span<byte> destination, uint minimum, uint preferred, uint maximum)
    {
        destination = destination[..InfoBlockSizeSize];
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)NbdInfoType.BlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(destination[2..], minimum);
        BinaryPrimitives.WriteUInt32BigEndian(destination[6..], preferred);
        BinaryPrimitives.WriteUInt32BigEndian(destination[10..], maximum);
    }
}
