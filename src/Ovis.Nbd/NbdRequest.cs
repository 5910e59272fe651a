using System.Buffers;
using System.Buffers.Binary;

namespace Ovis.Nbd;

/* doc/proto.md, "Request message" (compact headers; extended headers are refused).

        0                   1                   2                   3
        0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
       +---------------------------------------------------------------+
     0 |                    magic (0x25609513)                         |
       +-------------------------------+-------------------------------+
     4 |        command flags          |             type              |
       +-------------------------------+-------------------------------+
     8 |                          cookie (64)                          |
       +                                                               +
    12 |                                                               |
       +---------------------------------------------------------------+
    16 |                          offset (64)                          |
       +                                                               +
    20 |                                                               |
       +---------------------------------------------------------------+
    24 |                          length (32)                          |
       +===============================================================+
    28 |  payload: length bytes, NBD_CMD_WRITE only                 ...
       +---------------------------------------------------------------+
*/

/// <summary>One transmission-phase request header.</summary>
internal readonly record struct NbdRequest(
    uint Magic,
    NbdCommandFlags Flags,
    NbdCommand Command,
    ulong Cookie,
    ulong Offset,
    uint Length)
{
    public const int Size = 28;

    public static NbdRequest Read(ReadOnlySpan<byte> source)
    {
        source = source[..Size];
        return new NbdRequest(
            BinaryPrimitives.ReadUInt32BigEndian(source),
            (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(source[4..]),
            (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(source[6..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[16..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[24..]));
    }

    /// <summary>Reads a header from the front of <paramref name="buffer"/>, which holds at least <see cref="Size"/> bytes.</summary>
    public static NbdRequest Read(in ReadOnlySequence<byte> buffer, Span<byte> scratch)
    {
        ReadOnlySpan<byte> first = buffer.FirstSpan;
        if (first.Length >= Size)
        {
            return Read(first);
        }

        // The header straddles two pipe segments.
        buffer.Slice(0, Size).CopyTo(scratch);
        return Read(scratch);
    }
}
