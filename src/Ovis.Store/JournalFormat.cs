using System.Buffers.Binary;

namespace Ovis.Store;

/// <summary>
/// On-disk layout of the journal (little-endian; it never leaves this node).
///
/// The journal file: two superblock copies, then a ring of batches addressed by a
/// monotonic log sequence number (LSN); physical offset = DataStart + LSN mod capacity.
/// A batch never wraps: one that would is placed at the start of the next lap.
///
///   0      4096     8192                                       8192 + capacity
///   +------+------+-------------------------------------------+
///   | sb A | sb B | batch | batch | ...                        |
///   +------+------+-------------------------------------------+
///
/// Superblock (one 4 KiB copy; the valid copy with the higher generation wins):
///   0 u32 magic 'OVSB' | 4 u32 version | 8 u64 generation | 16 u64 capacity
///  24 u64 tail LSN (first batch still needed) | 32 u64 tail seq | 40 u32 crc32c(0..40)
///
/// Batch (written whole with one O_DIRECT write, padded to 4 KiB):
///   0 u32 magic 'OVBT' | 4 u32 crc32c(8..64) | 8 u64 LSN | 16 u64 seq (batches are numbered 1, 2, 3 …)
///  24 u32 length (header + records, before padding) | 28 u32 record count | 32..64 reserved
///  64 records, each 8-byte aligned
///
/// Record:
///   0 u32 magic 'OVRC' | 4 u8 type | 8 u64 batch seq | 16 u64 object id
///  24 u32 first block | 28 u32 block count | 32 u32 crc32c(0..32 + block crcs) | 36 reserved
///  40 u32 block crcs[count] (Write and Direct), then count × 4096 bytes of data (Write only)
///
/// A Direct record holds no data: its blocks were written straight into holes of the object
/// file (LocalStore.Direct.cs), and replay keeps a block only where the file's content matches
/// the record's checksum.
///
/// Replay walks batches from the tail while each has the expected LSN and seq and each
/// record names its batch's seq and passes its checksums; the first failure is the end of
/// the log. A torn or stale batch or record therefore ends replay; nothing after it applies.
/// </summary>
internal static class JournalFormat
{
    public const int BlockSize = 4096;
    public const int SuperblockSize = 4096;
    public const long DataStart = 2 * SuperblockSize;
    public const int BatchHeaderSize = 64;
    public const int RecordHeaderSize = 40;

    public const uint SuperblockMagic = 0x4253564F; // "OVSB"
    public const uint BatchMagic = 0x5442564F;      // "OVBT"
    public const uint RecordMagic = 0x4352564F;     // "OVRC"
    public const uint Version = 1;

    public static int RecordSize(RecordType type, int blockCount) => type switch
    {
        RecordType.Write => Align8(RecordHeaderSize + blockCount * 4 + blockCount * BlockSize),
        RecordType.Direct => Align8(RecordHeaderSize + blockCount * 4),
        _ => RecordHeaderSize,
    };

    /// <summary>Bytes of block checksums a record of this type carries.</summary>
    public static int CrcBytes(RecordType type, int blockCount)
        => type is RecordType.Write or RecordType.Direct ? blockCount * 4 : 0;

    public static int Align8(int n) => (n + 7) & ~7;

    public static long Align4K(long n) => (n + BlockSize - 1) & ~(long)(BlockSize - 1);

    public static void WriteRecordHeader(Span<byte> dest, RecordType type, long batchSeq, ObjectId id, int firstBlock, int blockCount)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(dest, RecordMagic);
        dest[4] = (byte)type;
        dest[5] = dest[6] = dest[7] = 0;
        BinaryPrimitives.WriteInt64LittleEndian(dest[8..], batchSeq);
        BinaryPrimitives.WriteUInt64LittleEndian(dest[16..], id.Packed);
        BinaryPrimitives.WriteInt32LittleEndian(dest[24..], firstBlock);
        BinaryPrimitives.WriteInt32LittleEndian(dest[28..], blockCount);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[36..], 0);
    }

    /// <summary>Seals a record header once its block crcs (if any) are in place.</summary>
    public static void SealRecordHeader(Span<byte> record, int crcBytes)
        => BinaryPrimitives.WriteUInt32LittleEndian(record[32..], RecordHeaderCrc(record, crcBytes));

    /// <summary>The checksum of a record's header (bytes 0..32) and its block checksums.</summary>
    public static uint RecordHeaderCrc(ReadOnlySpan<byte> record, int crcBytes)
    {
        uint crc = Crc32C.Compute(record[..32]);
        return Crc32C.Compute(record.Slice(RecordHeaderSize, crcBytes)) ^ (crc * 31);
    }

    public static void WriteBatchHeader(Span<byte> dest, long lsn, long seq, int length, int recordCount)
    {
        dest[..BatchHeaderSize].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(dest, BatchMagic);
        BinaryPrimitives.WriteInt64LittleEndian(dest[8..], lsn);
        BinaryPrimitives.WriteInt64LittleEndian(dest[16..], seq);
        BinaryPrimitives.WriteInt32LittleEndian(dest[24..], length);
        BinaryPrimitives.WriteInt32LittleEndian(dest[28..], recordCount);
        BinaryPrimitives.WriteUInt32LittleEndian(dest[4..], Crc32C.Compute(dest[8..BatchHeaderSize]));
    }

    /// <summary>Checks a batch header; returns its length and record count when it is the batch expected at (lsn, seq).</summary>
    public static bool TryReadBatchHeader(ReadOnlySpan<byte> src, long lsn, long seq, int maxLength, out int length, out int recordCount)
    {
        length = BinaryPrimitives.ReadInt32LittleEndian(src[24..]);
        recordCount = BinaryPrimitives.ReadInt32LittleEndian(src[28..]);
        return BinaryPrimitives.ReadUInt32LittleEndian(src) == BatchMagic
            && BinaryPrimitives.ReadUInt32LittleEndian(src[4..]) == Crc32C.Compute(src[8..BatchHeaderSize])
            && BinaryPrimitives.ReadInt64LittleEndian(src[8..]) == lsn
            && BinaryPrimitives.ReadInt64LittleEndian(src[16..]) == seq
            && length >= BatchHeaderSize && length <= maxLength && recordCount >= 0;
    }
}

internal enum RecordType : byte
{
    /// <summary>Whole blocks of data.</summary>
    Write = 1,
    /// <summary>Blocks become holes.</summary>
    ZeroHole = 2,
    /// <summary>Blocks read as zeroes but stay reported as allocated.</summary>
    ZeroAllocated = 3,
    /// <summary>The whole object is removed.</summary>
    Delete = 4,
    /// <summary>Whole blocks written into holes of the object file itself; the record has their checksums only.</summary>
    Direct = 5,
}

/// <summary>A parsed record, pointing into the batch that holds it.</summary>
internal readonly ref struct JournalRecord(RecordType type, ObjectId id, int firstBlock, int blockCount, ReadOnlySpan<byte> crcs, ReadOnlySpan<byte> data, int offset)
{
    public RecordType Type { get; } = type;
    public ObjectId Id { get; } = id;
    public int FirstBlock { get; } = firstBlock;
    public int BlockCount { get; } = blockCount;
    public ReadOnlySpan<byte> Crcs { get; } = crcs;
    public ReadOnlySpan<byte> Data { get; } = data;
    /// <summary>Offset of the record within its batch.</summary>
    public int Offset { get; } = offset;

    public uint BlockCrc(int i) => BinaryPrimitives.ReadUInt32LittleEndian(Crcs[(i * 4)..]);
}

/// <summary>Walks the records of one batch, stopping at the first that fails its checks.</summary>
internal ref struct JournalRecordReader(ReadOnlySpan<byte> batch, long seq, int length, int recordCount, bool verifyData)
{
    private readonly ReadOnlySpan<byte> _batch = batch[..length];
    private int _offset = JournalFormat.BatchHeaderSize;
    private int _left = recordCount;

    /// <summary>False at the end of the batch or at a record that fails its checks (see <see cref="Corrupt"/>).</summary>
    public bool Corrupt { get; private set; }

    public bool TryRead(out JournalRecord record)
    {
        record = default;
        if (_left == 0)
        {
            return false;
        }
        ReadOnlySpan<byte> rest = _batch[_offset..];
        if (rest.Length < JournalFormat.RecordHeaderSize
            || BinaryPrimitives.ReadUInt32LittleEndian(rest) != JournalFormat.RecordMagic
            || BinaryPrimitives.ReadInt64LittleEndian(rest[8..]) != seq)
        {
            Corrupt = true;
            return false;
        }
        var type = (RecordType)rest[4];
        var id = ObjectId.FromPacked(BinaryPrimitives.ReadUInt64LittleEndian(rest[16..]));
        int first = BinaryPrimitives.ReadInt32LittleEndian(rest[24..]);
        int count = BinaryPrimitives.ReadInt32LittleEndian(rest[28..]);
        if (first < 0 || count <= 0 || count > (1 << 20) || type is < RecordType.Write or > RecordType.Direct)
        {
            Corrupt = true;
            return false;
        }
        int size = JournalFormat.RecordSize(type, count);
        int crcBytes = JournalFormat.CrcBytes(type, count);
        if (size > rest.Length
            || BinaryPrimitives.ReadUInt32LittleEndian(rest[32..]) != JournalFormat.RecordHeaderCrc(rest, crcBytes))
        {
            Corrupt = true;
            return false;
        }
        ReadOnlySpan<byte> crcs = rest.Slice(JournalFormat.RecordHeaderSize, crcBytes);
        ReadOnlySpan<byte> data = type == RecordType.Write ? rest.Slice(JournalFormat.RecordHeaderSize + crcBytes, count * JournalFormat.BlockSize) : default;
        if (verifyData)
        {
            for (int i = 0; i < (type == RecordType.Write ? count : 0); i++)
            {
                if (Crc32C.Compute(data.Slice(i * JournalFormat.BlockSize, JournalFormat.BlockSize)) != BinaryPrimitives.ReadUInt32LittleEndian(crcs[(i * 4)..]))
                {
                    Corrupt = true;
                    return false;
                }
            }
        }
        record = new JournalRecord(type, id, first, count, crcs, data, _offset);
        _offset += size;
        _left--;
        return true;
    }
}
