using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>Called for each valid record during replay, in journal order.</summary>
internal delegate void ReplayHandler(in JournalRecord record);

internal sealed partial class Journal
{
    /// <summary>
    /// Opens the journal file, creating and zero-filling it if needed (so that later O_DIRECT
    /// writes land on allocated, written extents and fdatasync has no metadata to commit).
    /// </summary>
    public static Journal Open(string path, long capacity, int batchSize, int batchCount, TimeSpan commitInterval, ILogger logger)
    {
        if (!File.Exists(path) || new FileInfo(path).Length < JournalFormat.DataStart)
        {
            Create(path, capacity, batchSize, commitInterval, logger);
        }
        SafeFileHandle file = NativeIo.OpenDirect(path);
        var journal = new Journal(file, capacity, batchSize, batchCount, commitInterval, logger);
        try
        {
            journal.ReadSuperblock();
        }
        catch
        {
            journal.Dispose();
            throw;
        }
        return journal;
    }

    /// <summary>
    /// Writes a formatted journal under a temporary name and renames it into place, so that a file
    /// system too full for the whole journal leaves no half-made one behind (which would read as a
    /// journal without a superblock at the next start): the store then fails to open, saying why.
    /// </summary>
    private static void Create(string path, long capacity, int batchSize, TimeSpan commitInterval, ILogger logger)
    {
        string temp = path + ".new";
        try
        {
            using (var journal = new Journal(NativeIo.OpenDirect(temp), capacity, batchSize, batchCount: 1, commitInterval, logger))
            {
                journal.Format();
            }
            File.Move(temp, path, overwrite: true);
            NativeDirectory.Sync(Path.GetDirectoryName(Path.GetFullPath(path))!);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            File.Delete(temp);
            throw new IOException($"cannot create the journal ({JournalFormat.DataStart + capacity} bytes) in {Path.GetDirectoryName(path)}: {e.Message}", e);
        }
    }

    private void Format()
    {
        // Zero-fill through one aligned buffer.
        BatchBuffer zero = _buffers[0];
        zero.Span.Clear();
        long total = JournalFormat.DataStart + _capacity;
        for (long off = 0; off < total; off += zero.Capacity)
        {
            RandomAccess.Write(_file, zero.Span[..(int)Math.Min(zero.Capacity, total - off)], off);
        }
        _generation = 0;
        _tailLsn = 0;
        _tailSeq = 1;
        WriteSuperblock(_tailLsn, _tailSeq);
        WriteSuperblock(_tailLsn, _tailSeq); // both copies valid from the start
        NativeIo.DataSync(_file);
        ResetPositions();
    }

    private void ResetPositions()
    {
        _headLsn = _appliedLsn = _tailLsn;
        _nextSeq = _appliedSeq = _tailSeq;
    }

    private void ReadSuperblock()
    {
        BatchBuffer buf = _buffers[0];
        RandomAccess.Read(_file, buf.Span[..(int)JournalFormat.DataStart], 0);
        bool found = false;
        for (int copy = 0; copy < 2; copy++)
        {
            ReadOnlySpan<byte> sb = buf.Span.Slice(copy * JournalFormat.SuperblockSize, 48);
            if (BinaryPrimitives.ReadUInt32LittleEndian(sb) != JournalFormat.SuperblockMagic
                || BinaryPrimitives.ReadUInt32LittleEndian(sb[40..]) != Crc32C.Compute(sb[..40]))
            {
                continue;
            }
            long generation = BinaryPrimitives.ReadInt64LittleEndian(sb[8..]);
            if (found && generation <= _generation)
            {
                continue;
            }
            long capacity = BinaryPrimitives.ReadInt64LittleEndian(sb[16..]);
            if (capacity != _capacity)
            {
                throw new InvalidDataException($"journal capacity is {capacity} bytes on disk but {_capacity} was asked for");
            }
            _generation = generation;
            _tailLsn = BinaryPrimitives.ReadInt64LittleEndian(sb[24..]);
            _tailSeq = BinaryPrimitives.ReadInt64LittleEndian(sb[32..]);
            found = true;
        }
        if (!found)
        {
            throw new InvalidDataException("journal has no valid superblock");
        }
        ResetPositions();
    }

    /// <summary>
    /// Moves the tail: everything before (lsn, seq) is in the object files and their metadata,
    /// durably (the caller synced them). Frees that part of the ring for reuse.
    /// </summary>
    public void Checkpoint(long lsn, long seq)
    {
        lock (_lock)
        {
            // Nothing applied since the last checkpoint: no superblock write, and no wake-up for
            // writers waiting for space (they would only find none and wake us again).
            if (lsn <= _tailLsn)
            {
                return;
            }
        }
        // The new tail must be durable before its space is reused: until then a crash replays
        // from the old tail, through batches that must still be there.
        WriteSuperblock(lsn, seq);
        NativeIo.DataSync(_file);
        TaskCompletionSource space;
        lock (_lock)
        {
            _tailLsn = lsn;
            _tailSeq = seq;
            space = _space;
            _space = NewTcs();
        }
        space.SetResult();
    }

    /// <summary>Writes the superblock copy of the next generation; the other copy stays valid
    /// until this one is durable, so a torn superblock write loses nothing.</summary>
    private void WriteSuperblock(long tailLsn, long tailSeq)
    {
        long generation = Interlocked.Increment(ref _generation);
        var buf = new BatchBuffer(JournalFormat.SuperblockSize);
        Span<byte> sb = buf.Span;
        sb.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(sb, JournalFormat.SuperblockMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(sb[4..], JournalFormat.Version);
        BinaryPrimitives.WriteInt64LittleEndian(sb[8..], generation);
        BinaryPrimitives.WriteInt64LittleEndian(sb[16..], _capacity);
        BinaryPrimitives.WriteInt64LittleEndian(sb[24..], tailLsn);
        BinaryPrimitives.WriteInt64LittleEndian(sb[32..], tailSeq);
        BinaryPrimitives.WriteUInt32LittleEndian(sb[40..], Crc32C.Compute(sb[..40]));
        RandomAccess.Write(_file, sb, (generation % 2) * JournalFormat.SuperblockSize);
    }

    /// <summary>
    /// Reads every valid record from the tail on, in order, and hands it to
    /// <paramref name="handler"/>; leaves the head just past the last valid batch.
    /// Returns the number of batches replayed.
    /// </summary>
    public int Replay(ReplayHandler handler)
    {
        (long lsn, long seq, int batches) = Read(handler);
        _headLsn = _appliedLsn = lsn;
        _nextSeq = _appliedSeq = seq;
        return batches;
    }

    /// <summary>Hands every record <see cref="Replay"/> would replay to <paramref name="handler"/>, in
    /// the same order and up to the same end, and changes nothing.</summary>
    public void Scan(ReplayHandler handler) => Read(handler);

    private (long Lsn, long Seq, int Batches) Read(ReplayHandler handler)
    {
        BatchBuffer buf = _buffers[0];
        long lsn = _tailLsn, seq = _tailSeq;
        int batches = 0;
        while (true)
        {
            if (!TryReadBatch(buf, lsn, seq, out int length, out int count)
                && (lsn % _capacity == 0 || !TryReadBatch(buf, lsn = (lsn / _capacity + 1) * _capacity, seq, out length, out count)))
            {
                break;
            }
            var reader = new JournalRecordReader(buf.Span, seq, length, count, verifyData: true);
            while (reader.TryRead(out JournalRecord record))
            {
                handler(in record);
            }
            batches++;
            lsn += JournalFormat.Align4K(length);
            seq++;
            if (reader.Corrupt)
            {
                // A torn batch: what it held after the tear was never acknowledged as durable.
                break;
            }
        }
        return (lsn, seq, batches);
    }

    private bool TryReadBatch(BatchBuffer buf, long lsn, long seq, out int length, out int count)
    {
        length = count = 0;
        long physical = JournalFormat.DataStart + lsn % _capacity;
        int maxLength = (int)Math.Min(buf.Capacity, _capacity - lsn % _capacity);
        if (maxLength < JournalFormat.BlockSize)
        {
            return false;
        }
        RandomAccess.Read(_file, buf.Span[..JournalFormat.BlockSize], physical);
        if (!JournalFormat.TryReadBatchHeader(buf.Span, lsn, seq, maxLength, out length, out count))
        {
            return false;
        }
        int padded = (int)JournalFormat.Align4K(length);
        if (padded > JournalFormat.BlockSize)
        {
            RandomAccess.Read(_file, buf.Span[JournalFormat.BlockSize..padded], physical + JournalFormat.BlockSize);
        }
        return true;
    }
}
