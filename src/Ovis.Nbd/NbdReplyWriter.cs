using System.Buffers.Binary;

namespace Ovis.Nbd;

/// <summary>Encoders for transmission-phase replies. Each writes at fixed offsets into a span the caller sized.</summary>
internal static class NbdReplyWriter
{
    /* Simple reply (doc/proto.md, "Simple reply message"), 16 bytes.

            0                   1                   2                   3
            0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
           +---------------------------------------------------------------+
         0 |                    magic (0x67446698)                         |
           +---------------------------------------------------------------+
         4 |                          error (32)                           |
           +---------------------------------------------------------------+
         8 |                          cookie (64)                          |
           +                                                               +
        12 |                                                               |
           +===============================================================+
        16 |  data: request length bytes, NBD_CMD_READ without error only ...
           +---------------------------------------------------------------+
    */
    public const int SimpleReplySize = 16;

    public static void WriteSimpleReply(Span<byte> destination, NbdError error, ulong cookie)
    {
        destination = destination[..SimpleReplySize];
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
    }

    /* Structured reply chunk (doc/proto.md, "Structured reply chunk message"), 20-byte header.

            0                   1                   2                   3
            0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
           +---------------------------------------------------------------+
         0 |                    magic (0x668e33ef)                         |
           +-------------------------------+-------------------------------+
         4 |          flags (DONE)         |             type              |
           +-------------------------------+-------------------------------+
         8 |                          cookie (64)                          |
           +                                                               +
        12 |                                                               |
           +---------------------------------------------------------------+
        16 |                      payload length (32)                      |
           +===============================================================+
        20 |  payload: payload length bytes, layout given by type       ...
           +---------------------------------------------------------------+
    */
    public const int ChunkHeaderSize = 20;

    public static void WriteChunkHeader(Span<byte> destination, NbdReplyFlags flags, NbdReplyType type, ulong cookie, uint payloadLength)
    {
        destination = destination[..ChunkHeaderSize];
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], payloadLength);
    }

    /* NBD_REPLY_TYPE_OFFSET_DATA payload: the absolute export offset, then the data.

           +---------------------------------------------------------------+
        20 |                          offset (64)                          |
           +                                                               +
        24 |                                                               |
           +===============================================================+
        28 |  data: payload length - 8 bytes                            ...
           +---------------------------------------------------------------+
    */
    public const int OffsetDataHeaderSize = ChunkHeaderSize + 8;

    /// <summary>Writes the chunk header and offset; the caller appends <paramref name="dataLength"/> bytes.</summary>
    public static void WriteOffsetDataHeader(Span<byte> destination, NbdReplyFlags flags, ulong cookie, ulong offset, int dataLength)
    {
        WriteChunkHeader(destination, flags, NbdReplyType.OffsetData, cookie, 8 + (uint)dataLength);
        BinaryPrimitives.WriteUInt64BigEndian(destination[ChunkHeaderSize..], offset);
    }

    /* NBD_REPLY_TYPE_OFFSET_HOLE payload, exactly 12 bytes: a range that reads as zeroes.

           +---------------------------------------------------------------+
        20 |                          offset (64)                          |
           +                                                               +
        24 |                                                               |
           +---------------------------------------------------------------+
        28 |                     hole size (32, nonzero)                   |
           +---------------------------------------------------------------+
    */
    public const int OffsetHoleSize = ChunkHeaderSize + 12;

    public static void WriteOffsetHole(Span<byte> destination, NbdReplyFlags flags, ulong cookie, ulong offset, uint holeSize)
    {
        WriteChunkHeader(destination, flags, NbdReplyType.OffsetHole, cookie, 12);
        BinaryPrimitives.WriteUInt64BigEndian(destination[ChunkHeaderSize..], offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[(ChunkHeaderSize + 8)..], holeSize);
    }

    /* NBD_REPLY_TYPE_ERROR payload: error, message length, message (UTF-8, for humans).

           +---------------------------------------------------------------+
        20 |                       error (32, nonzero)                     |
           +-------------------------------+-------------------------------+
        24 |     message length (16)       |  message                   ...
           +-------------------------------+-------------------------------+
    */
    public const int ErrorChunkHeaderSize = ChunkHeaderSize + 6;

    public static int GetErrorChunkSize(ReadOnlySpan<byte> message) => ErrorChunkHeaderSize + message.Length;

    public static int WriteErrorChunk(Span<byte> destination, ulong cookie, NbdError error, ReadOnlySpan<byte> message)
    {
        WriteChunkHeader(destination, NbdReplyFlags.Done, NbdReplyType.Error, cookie, 6 + (uint)message.Length);
        BinaryPrimitives.WriteUInt32BigEndian(destination[ChunkHeaderSize..], (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(destination[(ChunkHeaderSize + 4)..], (ushort)message.Length);
        message.CopyTo(destination[ErrorChunkHeaderSize..]);
        return ErrorChunkHeaderSize + message.Length;
    }

    /* NBD_REPLY_TYPE_BLOCK_STATUS payload: the context id, then one descriptor per extent.

           +---------------------------------------------------------------+
        20 |                     metadata context id (32)                  |
           +===============================================================+
        24 |                  extent length (32, nonzero)                  |  descriptor,
           +---------------------------------------------------------------+  repeated
        28 |                      status flags (32)                        |
           +---------------------------------------------------------------+
    */
    public const int BlockStatusHeaderSize = ChunkHeaderSize + 4;
    public const int BlockDescriptorSize = 8;

    public static void WriteBlockStatusHeader(Span<byte> destination, NbdReplyFlags flags, ulong cookie, uint contextId, int descriptorCount)
    {
        WriteChunkHeader(destination, flags, NbdReplyType.BlockStatus, cookie, 4 + (uint)(descriptorCount * BlockDescriptorSize));
        BinaryPrimitives.WriteUInt32BigEndian(destination[ChunkHeaderSize..], contextId);
    }

    public static void WriteBlockDescriptor(Span<byte> destination, uint length, uint statusFlags)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, length);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], statusFlags);
    }
}
