using System.Buffers;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

public sealed partial class LocalStore
{
    public ValueTask<StoreStatus> ReadAsync(ObjectId id, long offset, Memory<byte> buffer)
    {
        CheckRange(id, offset, buffer.Length);
        try
        {
            StoreStatus s = Read(id, offset, buffer.Span);
            EvictFilesIfNeeded();
            return new(s);
        }
        catch (ObjectDisposedException)
        {
            // The store closed under the read (its files are closed first thing).
            return new(StoreStatus.Closed);
        }
    }

    private StoreStatus Read(ObjectId id, long offset, Span<byte> dest)
    {
        if (!_objects.TryGetValue(id.Packed, out ObjectMeta? meta))
        {
            dest.Clear();
            return StoreStatus.Ok;
        }
        int headSkip = (int)(offset % StoreBlockSize);
        int firstBlock = (int)(offset / StoreBlockSize);
        if (headSkip == 0 && dest.Length % StoreBlockSize == 0)
        {
            return ReadBlocks(meta, firstBlock, dest);
        }
        // Unaligned: read the covering blocks, then copy the part asked for.
        int blocks = (headSkip + dest.Length + StoreBlockSize - 1) / StoreBlockSize;
        byte[] scratch = ArrayPool<byte>.Shared.Rent(blocks * StoreBlockSize);
        try
        {
            StoreStatus s = ReadBlocks(meta, firstBlock, scratch.AsSpan(0, blocks * StoreBlockSize));
            scratch.AsSpan(headSkip, dest.Length).CopyTo(dest);
            return s;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    /// <summary>
    /// Reads whole blocks. The object lock is held throughout: the applier writes an object
    /// file only at blocks that have a pending (overlay) version, which readers take from the
    /// overlay, so a block read from the file under the lock always matches its checksum
    /// unless the disk corrupted it.
    /// </summary>
    private StoreStatus ReadBlocks(ObjectMeta meta, int firstBlock, Span<byte> dest)
    {
        int count = dest.Length / StoreBlockSize;
        lock (meta.Lock)
        {
            int b = 0;
            while (b < count)
            {
                // A run of blocks that come from the object file: read it with one pread.
                int runStart = b;
                while (b < count && IsFileBlock(meta, firstBlock + b))
                {
                    b++;
                }
                if (b > runStart && !ReadFileRun(meta, firstBlock + runStart, dest[(runStart * StoreBlockSize)..(b * StoreBlockSize)]))
                {
                    return StoreStatus.IoError;
                }
                if (b < count)
                {
                    CopyNonFileBlock(meta, firstBlock + b, dest.Slice(b * StoreBlockSize, StoreBlockSize));
                    b++;
                }
            }
        }
        return StoreStatus.Ok;
    }

    /// <summary>Reads one block's current content (for read-modify-write); caller holds the lock.
    /// A hole comes from the underlay when there is one.</summary>
    private bool ReadBlockLocked(ObjectMeta meta, int block, Span<byte> dest, IBlockSource? underlay)
    {
        if (IsFileBlock(meta, block))
        {
            return ReadFileRun(meta, block, dest);
        }
        if (underlay is not null && meta.EffectiveState(block) == BlockState.Hole)
        {
            return underlay.ReadBlock(block, dest);
        }
        CopyNonFileBlock(meta, block, dest);
        return true;
    }

    private static bool IsFileBlock(ObjectMeta meta, int block)
        => block < meta.Blocks && (meta.Pending[block] == ObjectMeta.NotPending ? meta.States[block] == BlockState.Data : ObjectMeta.IsDirect(meta.Pending[block]));

    private void CopyNonFileBlock(ObjectMeta meta, int block, Span<byte> dest)
    {
        long p = block < meta.Blocks ? meta.Pending[block] : ObjectMeta.NotPending;
        uint offset = (uint)p;
        if (p == ObjectMeta.NotPending || (offset & ObjectMeta.ZeroBit) != 0)
        {
            dest.Clear();
            return;
        }
        // Safe: the batch cannot be freed while this block's pending value names it, and the
        // applier clears that value only under the lock we hold.
        _journal.BufferOf(p >> 32).Span.Slice((int)offset, StoreBlockSize).CopyTo(dest);
    }

    private const int VerifyChunkBlocks = 64;

    private bool ReadFileRun(ObjectMeta meta, int firstBlock, Span<byte> dest)
    {
        // Under the object lock, so the handle cannot be closed by eviction meanwhile.
        SafeFileHandle? file = meta.File ?? OpenFileLocked(meta, create: false);
        if (file is null)
        {
            LogMissingObjectFile(_logger, meta.Id.ToString());
            return false;
        }
        int n = RandomAccess.Read(file, dest, (long)firstBlock * StoreBlockSize);
        dest[n..].Clear();
        // Verified a few blocks at a time (Crc32C.ComputeBlocks runs four chains at once).
        Span<uint> crcs = stackalloc uint[VerifyChunkBlocks];
        int blocks = dest.Length / StoreBlockSize;
        for (int start = 0; start < blocks; start += VerifyChunkBlocks)
        {
            int chunk = Math.Min(VerifyChunkBlocks, blocks - start);
            Crc32C.ComputeBlocks(dest.Slice(start * StoreBlockSize, chunk * StoreBlockSize), StoreBlockSize, crcs);
            for (int i = 0; i < chunk; i++)
            {
                if (crcs[i] != meta.Crcs[firstBlock + start + i])
                {
                    LogChecksumMismatch(_logger, meta.Id.ToString(), firstBlock + start + i);
                    return false;
                }
            }
        }
        return true;
    }

    // The block table is in memory: the answer is ready at once.
    public ValueTask<StoreStatus> GetAllocationAsync(ObjectId id, long offset, Memory<BlockState> states)
    {
        CheckRange(id, offset, (long)states.Length * StoreBlockSize);
        Span<BlockState> dest = states.Span;
        if (!_objects.TryGetValue(id.Packed, out ObjectMeta? meta))
        {
            dest.Clear(); // BlockState.Hole is 0
            return new(StoreStatus.Ok);
        }
        int first = (int)(offset / StoreBlockSize);
        lock (meta.Lock)
        {
            for (int i = 0; i < dest.Length; i++)
            {
                dest[i] = meta.EffectiveState(first + i);
            }
        }
        return new(StoreStatus.Ok);
    }
}
