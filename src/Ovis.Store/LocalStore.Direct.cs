using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>
/// Large writes into holes (docs/store.md, "Direct writes"): a write of whole blocks, at least
/// <see cref="DirectMinBytes"/>, none of which holds data or has a newer version in the journal,
/// goes straight into the object file (buffered) and journals only its checksums. There is no old
/// content to protect: if the data is lost or torn in a crash, replay finds the file's content
/// disagreeing with the record and the block stays a hole — the state before the write. So every
/// byte of a disk image copied into a fresh volume is written once, not twice.
///
/// A FLUSH must still cover that data: the first flush round after a direct write syncs the file
/// system (<c>syncfs</c>, one call whatever the number of files) before the journal's own sync,
/// so a flush costs two syncs when it covers direct writes and one otherwise.
/// </summary>
public sealed partial class LocalStore
{
    private const int DirectMinBytes = 64 << 10;

    /// <summary>1 while a direct write's data may not be durable yet; the next flush round clears it and syncs.</summary>
    private int _directUnsynced;
    private long _directWrites;
    private long _dataSyncs;

    /// <summary>Writes that went straight into object files (for tests and metrics).</summary>
    public long DirectWriteCount => Interlocked.Read(ref _directWrites);

    /// <summary>File-system syncs made by flushes that covered direct writes.</summary>
    public long DataSyncCount => Interlocked.Read(ref _dataSyncs);

    private static bool MayWriteDirect(long offset, int length, bool fua)
        => !fua && length >= DirectMinBytes && offset % StoreBlockSize == 0 && length % StoreBlockSize == 0;

    /// <summary>
    /// Writes <paramref name="data"/> into the object file when every block it covers is a hole with
    /// nothing pending; false (nothing changed) when it is not, or when the file write failed, and the
    /// journal path must take the write. <paramref name="status"/> says how a write taken here ended.
    /// </summary>
    private bool TryWriteDirect(ObjectMeta meta, long offset, ReadOnlySpan<byte> data, out StoreStatus status, out bool wait)
    {
        status = StoreStatus.Ok;
        wait = false;
        int first = (int)(offset / StoreBlockSize);
        int blocks = data.Length / StoreBlockSize;
        int size = JournalFormat.RecordSize(RecordType.Direct, blocks);
        if (size > _journal.BatchSize - JournalFormat.BatchHeaderSize)
        {
            return false; // batches configured smaller than the checksums of a whole object
        }
        // Checksums outside the lock: they depend on the caller's data only.
        uint[] crcs = new uint[blocks];
        Crc32C.ComputeBlocks(data, StoreBlockSize, crcs);
        lock (meta.Lock)
        {
            for (int b = first; b < Math.Min(meta.Blocks, first + blocks); b++)
            {
                // A block with data (or a pending version) has old content a torn write would lose;
                // a pending trim would punch the new data when applied.
                if (meta.States[b] != BlockState.Hole || meta.Pending[b] != ObjectMeta.NotPending)
                {
                    return false;
                }
            }
            long charge = SpaceNeeded(meta, first, blocks);
            if (!_space.TryCharge(charge, fromReserve: false))
            {
                return false; // the journal path refuses it, or frees space first
            }
            try
            {
                SafeFileHandle file = meta.File ?? OpenFileLocked(meta, create: true)!;
                WriteInPieces(file, data, offset);
            }
            catch (ObjectDisposedException)
            {
                _space.Release(charge);
                status = StoreStatus.Closed;
                return true;
            }
            catch (IOException)
            {
                // Space taken from outside, say: the blocks stay holes (what the file holds there
                // is never read), and the journal path takes the write and retries its apply.
                _space.Release(charge);
                return false;
            }
            Volatile.Write(ref _directUnsynced, 1);
            ReserveResult r = _journal.TryReserve(size, out BatchBuffer batch, out int recordOffset);
            if (r != ReserveResult.Ok)
            {
                // The data stays in the file, unrecorded, over blocks that stay holes: harmless.
                _space.Release(charge);
                wait = r == ReserveResult.Wait;
                status = _journal.IsFailed ? StoreStatus.IoError : StoreStatus.Closed;
                return true;
            }
            Interlocked.Add(ref batch.SpaceCharged, charge);
            meta.SlotCharged = true;
            Span<byte> record = batch.Span.Slice(recordOffset, size);
            JournalFormat.WriteRecordHeader(record, RecordType.Direct, batch.Seq, meta.Id, first, blocks);
            meta.EnsureBlocks(first + blocks);
            long marker = ObjectMeta.PendingDirectValue(batch.Seq, recordOffset);
            for (int i = 0; i < blocks; i++)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(record[(JournalFormat.RecordHeaderSize + i * 4)..], crcs[i]);
                // Reads verify against this; the state stays Hole until the record is applied.
                meta.Crcs[first + i] = crcs[i];
                meta.Pending[first + i] = marker;
            }
            JournalFormat.SealRecordHeader(record, blocks * 4);
            Journal.Commit(batch);
        }
        Interlocked.Increment(ref _directWrites);
        // This write may have opened the file (an import opens one per object): keep to the budget.
        EvictFilesIfNeeded();
        return true;
    }

    /// <summary>Before a flush round's journal sync: makes the data of direct writes durable, once for all files.</summary>
    void IJournalSink.BeforeFlush()
    {
        if (Interlocked.Exchange(ref _directUnsynced, 0) == 1)
        {
            NativeDirectory.SyncFileSystem(ObjectsDirectory);
            Interlocked.Increment(ref _dataSyncs);
        }
    }

    /// <summary>Applies a durable direct record: its blocks become data (the applier or replay's verified part).</summary>
    private static void ApplyDirect(ObjectMeta meta, in JournalRecord r, long seq)
    {
        long marker = ObjectMeta.PendingDirectValue(seq, r.Offset);
        lock (meta.Lock)
        {
            meta.EnsureBlocks(r.FirstBlock + r.BlockCount);
            for (int i = 0; i < r.BlockCount; i++)
            {
                int b = r.FirstBlock + i;
                meta.Crcs[b] = r.BlockCrc(i);
                meta.States[b] = BlockState.Data;
                if (seq != 0 && meta.Pending[b] == marker)
                {
                    meta.Pending[b] = ObjectMeta.NotPending;
                }
            }
        }
    }

    /// <summary>
    /// Replays the blocks of a direct record that no later record covers (a later one wins, and
    /// earlier ones were kept off these blocks, so the file holds what the crash left): a block whose
    /// content matches the record's checksum is data, any other stays a hole, its bytes punched.
    /// </summary>
    private void ReplayDirect(in JournalRecord r, ReadOnlySpan<bool> coveredLater)
    {
        ObjectMeta meta = GetOrAdd(r.Id);
        AllocateSlot(meta);
        SafeFileHandle? file = AcquireFile(meta, create: false);
        byte[] block = new byte[StoreBlockSize];
        try
        {
            for (int i = 0; i < r.BlockCount; i++)
            {
                if (coveredLater[i])
                {
                    continue;
                }
                long at = (long)(r.FirstBlock + i) * StoreBlockSize;
                bool intact = file is not null && RandomAccess.Read(file, block, at) == StoreBlockSize && Crc32C.Compute(block) == r.BlockCrc(i);
                var one = new JournalRecord(RecordType.Direct, r.Id, r.FirstBlock + i, 1, r.Crcs.Slice(i * 4, 4), default, r.Offset);
                if (intact)
                {
                    ApplyDirect(meta, in one, 0);
                    continue;
                }
                if (file is not null)
                {
                    NativeIo.PunchHole(file, at, StoreBlockSize);
                }
                lock (meta.Lock)
                {
                    meta.EnsureBlocks(r.FirstBlock + i + 1);
                    meta.Crcs[r.FirstBlock + i] = 0;
                    meta.States[r.FirstBlock + i] = BlockState.Hole;
                }
            }
        }
        finally
        {
            file?.DangerousRelease();
        }
        lock (_dirtyLock)
        {
            _dirty.Add(meta);
        }
    }
}
