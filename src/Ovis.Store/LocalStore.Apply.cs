using System.Collections.Concurrent;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

public sealed partial class LocalStore
{
    private readonly ConcurrentDictionary<uint, byte> _knownDirectories = new();

    /// <summary>Applies a batch that is durable in the journal to the object files (applier thread).</summary>
    void IJournalSink.Apply(BatchBuffer batch)
    {
        var reader = new JournalRecordReader(batch.Span, batch.Seq, batch.Length, batch.RecordCount, verifyData: false);
        while (reader.TryRead(out JournalRecord record))
        {
            ApplyRecord(in record, batch.Seq);
        }
        if (reader.Corrupt)
        {
            throw new InvalidDataException($"batch {batch.Seq} failed its own checks in memory");
        }
    }

    void IJournalSink.Applied(BatchBuffer batch)
    {
        // In this order: the file system's figure counts the batch's blocks before its reservation goes.
        // A batch that reserved nothing (overwrites of data blocks, trims, zeroing) allocated
        // nothing: no statvfs for it (a QD1 write+flush load made one per flush). What its trims
        // freed shows at the next periodic read, or at once when a write would be refused.
        long charged = Interlocked.Exchange(ref batch.SpaceCharged, 0);
        if (charged > 0)
        {
            RefreshSpace();
            _space.Release(charged);
        }
    }

    /// <summary>
    /// Applies one record to an object file and its block metadata, and clears the overlay
    /// entries that still point at this record. <paramref name="seq"/> is 0 during replay,
    /// when there is no overlay. Idempotent: replaying a record already applied changes nothing.
    /// </summary>
    // The kernel sizes a page-cache folio after the write that creates it, and ext4 walks every
    // block of a folio on each later write into it: one 4 MiB write leaves folios that make every
    // later 4 KiB write into them walk hundreds of blocks (ext4_block_write_begin was 30-45 % of
    // a node's CPU under random 4 KiB writes, docs/benchmarks.md). Pieces of 16 KiB keep folios
    // small for a syscall per 16 KiB (64 KiB pieces left the walk at 9 %, 16 KiB at 3 %).
    private const int ApplyPiece = 16 << 10;

    private static void WriteInPieces(SafeFileHandle file, ReadOnlySpan<byte> data, long offset)
    {
        while (data.Length > ApplyPiece)
        {
            RandomAccess.Write(file, data[..ApplyPiece], offset);
            data = data[ApplyPiece..];
            offset += ApplyPiece;
        }
        RandomAccess.Write(file, data, offset);
    }

    private void ApplyRecord(in JournalRecord r, long seq)
    {
        if (r.FirstBlock + r.BlockCount > MaxBlocks)
        {
            return;
        }
        ObjectMeta meta = GetOrAdd(r.Id);
        if (r.Type != RecordType.Delete)
        {
            AllocateSlot(meta);
        }
        switch (r.Type)
        {
            case RecordType.Write:
                {
                    // Outside the lock: readers never read these blocks from the file while their
                    // overlay entries are set, and they stay set until the lock section below.
                    SafeFileHandle file = AcquireFile(meta, create: true)!;
                    try
                    {
                        WriteInPieces(file, r.Data, (long)r.FirstBlock * StoreBlockSize);
                    }
                    finally
                    {
                        file.DangerousRelease();
                    }
                    int dataOffset = r.Offset + JournalFormat.RecordHeaderSize + r.BlockCount * 4;
                    lock (meta.Lock)
                    {
                        meta.EnsureBlocks(r.FirstBlock + r.BlockCount);
                        for (int i = 0; i < r.BlockCount; i++)
                        {
                            int b = r.FirstBlock + i;
                            meta.Crcs[b] = r.BlockCrc(i);
                            meta.States[b] = BlockState.Data;
                            if (seq != 0 && meta.Pending[b] == ObjectMeta.PendingValue(seq, (uint)(dataOffset + i * StoreBlockSize)))
                            {
                                meta.Pending[b] = ObjectMeta.NotPending;
                            }
                        }
                    }
                    break;
                }
            case RecordType.Direct:
                ApplyDirect(meta, in r, seq);
                break;
            case RecordType.ZeroHole:
            case RecordType.ZeroAllocated:
            case RecordType.Delete:
                {
                    SafeFileHandle? file = r.Type == RecordType.Delete ? null : AcquireFile(meta, create: false);
                    if (file is not null)
                    {
                        try
                        {
                            NativeIo.PunchHole(file, (long)r.FirstBlock * StoreBlockSize, (long)r.BlockCount * StoreBlockSize);
                        }
                        finally
                        {
                            file.DangerousRelease();
                        }
                    }
                    BlockState state = r.Type == RecordType.ZeroAllocated ? BlockState.Zero : BlockState.Hole;
                    long marker = ObjectMeta.PendingZeroValue(seq, r.Offset, r.Type == RecordType.ZeroAllocated);
                    lock (meta.Lock)
                    {
                        meta.EnsureBlocks(r.FirstBlock + r.BlockCount);
                        int end = r.Type == RecordType.Delete ? meta.Blocks : r.FirstBlock + r.BlockCount;
                        for (int b = r.FirstBlock; b < end; b++)
                        {
                            meta.Crcs[b] = 0;
                            meta.States[b] = state;
                            if (seq != 0 && meta.Pending[b] == marker)
                            {
                                meta.Pending[b] = ObjectMeta.NotPending;
                            }
                        }
                        if (r.Type == RecordType.Delete)
                        {
                            // Under the lock: no reader is using the file (no block is Data now).
                            CloseFileLocked(meta);
                            string path = ObjectPath(meta.Id);
                            if (File.Exists(path))
                            {
                                File.Delete(path);
                                MarkDirectoryDirty(ObjectDirectory(meta.Id.Volume));
                            }
                        }
                    }
                    break;
                }
        }
        lock (_dirtyLock)
        {
            _dirty.Add(meta);
        }
    }

    private void MarkDirectoryDirty(string dir)
    {
        lock (_dirtyLock)
        {
            _dirtyDirectories.Add(dir);
        }
    }
}
