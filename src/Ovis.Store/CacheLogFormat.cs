using System.Buffers.Binary;

namespace Ovis.Store;

/// <summary>Byte layout of cache.log; the diagram and the rules are at the top of CacheLog.cs.</summary>
internal static class CacheLogFormat
{
    public const int SlotSize = 4096;
    public const long DataStart = 2 * SlotSize;
    public const int HeaderBytes = 40;
    public const int RecordHeaderSize = 48;

    public const uint HeaderMagic = 0x4843564F; // "OVCH"
    public const uint RecordMagic = 0x5243564F; // "OVCR"
    public const uint Version = 1;

    public static long Align8(long n) => (n + 7) & ~7L;

    public static long RecordSize(int dataLength) => Align8(RecordHeaderSize + (long)dataLength);

    /// <summary>Where a batch of <paramref name="size"/> bytes goes when the head is at <paramref name="head"/>:
    /// there, or at the start of the next lap when it would run past the end of the file.</summary>
    public static long Place(long head, long size, long capacity)
        => head % capacity + size <= capacity ? head : NextLap(head, capacity);

    public static long NextLap(long lsn, long capacity) => (lsn / capacity + 1) * capacity;

    public static long PositionOf(long lsn, long capacity) => DataStart + lsn % capacity;

    public readonly record struct Header(long Capacity, long Sequence, long Tail, uint Generation);

    public static void WriteHeader(Span<byte> dest, in Header h)
    {
        dest[..HeaderBytes].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(dest, HeaderMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[4..], Version);
        BinaryPrimitives.WriteInt64LittleEndian(dest[8..], h.Capacity);
        BinaryPrimitives.WriteInt64LittleEndian(dest[16..], h.Sequence);
        BinaryPrimitives.WriteInt64LittleEndian(dest[24..], h.Tail);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[32..], h.Generation);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[36..], Crc32C.Compute(dest[..36]));
    }

    public static bool TryReadHeader(ReadOnlySpan<byte> src, out Header h)
    {
        h = new Header(
            BinaryPrimitives.ReadInt64LittleEndian(src[8..]),
            BinaryPrimitives.ReadInt64LittleEndian(src[16..]),
            BinaryPrimitives.ReadInt64LittleEndian(src[24..]),
            BinaryPrimitives.ReadUInt32LittleEndian(src[32..]));
        return BinaryPrimitives.ReadUInt32LittleEndian(src) == HeaderMagic
            && BinaryPrimitives.ReadUInt32LittleEndian(src[4..]) == Version
            && BinaryPrimitives.ReadUInt32LittleEndian(src[36..]) == Crc32C.Compute(src[..36])
            && h.Capacity > 0 && h.Capacity % 8 == 0 && h.Tail >= 0 && h.Sequence >= 0;
    }

    /// <summary>Writes a whole record (header, data, zero padding) into <paramref name="dest"/>.</summary>
    public static void WriteRecord(Span<byte> dest, long lsn, uint generation, uint layer, uint index, long offset, long epoch, ReadOnlySpan<byte> data)
    {
        int size = (int)RecordSize(data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(dest, RecordMagic);
        BinaryPrimitives.WriteInt64LittleEndian(dest[8..], lsn);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[16..], layer);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[20..], index);
        BinaryPrimitives.WriteInt64LittleEndian(dest[24..], offset);
        BinaryPrimitives.WriteInt32LittleEndian(dest[32..], data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[36..], generation);
        BinaryPrimitives.WriteInt64LittleEndian(dest[40..], epoch);
        data.CopyTo(dest[RecordHeaderSize..]);
        dest[(RecordHeaderSize + data.Length)..size].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(dest[4..], Crc32C.Compute(dest[8..(RecordHeaderSize + data.Length)]));
    }

    /// <summary>The data length a record header claims, when its magic and LSN are the ones expected
    /// at <paramref name="lsn"/> and the record would end before <paramref name="room"/> bytes; -1 otherwise.</summary>
    public static int ClaimedLength(ReadOnlySpan<byte> header, long lsn, long room)
    {
        if (BinaryPrimitives.ReadUInt32LittleEndian(header) != RecordMagic
            || BinaryPrimitives.ReadInt64LittleEndian(header[8..]) != lsn)
        {
            return -1;
        }
        int length = BinaryPrimitives.ReadInt32LittleEndian(header[32..]);
        return length >= 0 && RecordSize(length) <= room ? length : -1;
    }

    /// <summary>Whether a whole record (header and data, as read) passes its checksum.</summary>
    public static bool ChecksumMatches(ReadOnlySpan<byte> record)
        => BinaryPrimitives.ReadUInt32LittleEndian(record[4..]) == Crc32C.Compute(record[8..]);

    public static uint GenerationOf(ReadOnlySpan<byte> header) => BinaryPrimitives.ReadUInt32LittleEndian(header[36..]);

    public static CacheRecord Parse(ReadOnlyMemory<byte> record)
    {
        ReadOnlySpan<byte> h = record.Span;
        return new CacheRecord(
            BinaryPrimitives.ReadInt64LittleEndian(h[8..]),
            BinaryPrimitives.ReadUInt32LittleEndian(h[16..]),
            BinaryPrimitives.ReadUInt32LittleEndian(h[20..]),
            BinaryPrimitives.ReadInt64LittleEndian(h[24..]),
            BinaryPrimitives.ReadInt64LittleEndian(h[40..]),
            record[RecordHeaderSize..]);
    }
}
