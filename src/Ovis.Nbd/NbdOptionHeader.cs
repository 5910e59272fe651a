using System.Buffers.Binary;

namespace Ovis.Nbd;

/* doc/proto.md, "Newstyle negotiation": every option the client sends.

        0                   1                   2                   3
        0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
       +---------------------------------------------------------------+
     0 |                     magic 'IHAVEOPT' (64)                     |
       +                                                               +
     4 |                                                               |
       +---------------------------------------------------------------+
     8 |                          option (32)                          |
       +---------------------------------------------------------------+
    12 |                       data length (32)                        |
       +===============================================================+
    16 |  data: data length bytes                                   ...
       +---------------------------------------------------------------+
*/

/// <summary>The fixed part of a client option request.</summary>
internal readonly record struct NbdOptionHeader(ulong Magic, NbdOption Option, uint Length)
{
    public const int Size = 16;

    public static NbdOptionHeader Read(ReadOnlySpan<byte> source)
    {
        source = source[..Size];
        return new NbdOptionHeader(
            BinaryPrimitives.ReadUInt64BigEndian(source),
            (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(source[8..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[12..]));
    }
}
