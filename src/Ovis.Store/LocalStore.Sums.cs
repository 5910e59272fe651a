using System.Buffers;

namespace Ovis.Store;

public sealed partial class LocalStore
{
    // A verifying pass reads the object file under the object's lock, which holds up writers to
    // that object: it lets go between pieces of this many blocks (256 KiB).
    private const int VerifyPieceBlocks = 64;

    /// <summary>
    /// Fills one <see cref="BlockSum"/> per block of the block-aligned range from
    /// <paramref name="offset"/>, as reads see the object (the overlay first); past the object's
    /// end, and for an object never written, holes. Without <paramref name="verify"/> the answer
    /// comes from the block table alone. With it the data blocks in the object file are read and
    /// checked against their checksums (a scrub): a mismatch is <see cref="StoreStatus.IoError"/>,
    /// as for a read. A verifying pass is consistent per piece of 256 KiB, not over the whole range.
    /// </summary>
    public ValueTask<StoreStatus> GetBlockSumsAsync(ObjectId id, long offset, Memory<BlockSum> sums, bool verify)
    {
        CheckRange(id, offset, (long)sums.Length * StoreBlockSize);
        if (offset % StoreBlockSize != 0)
        {
            throw new ArgumentException("GetBlockSumsAsync takes whole blocks", nameof(offset));
        }
        Span<BlockSum> dest = sums.Span;
        if (!_objects.TryGetValue(id.Packed, out ObjectMeta? meta))
        {
            dest.Clear(); // (Hole, 0)
            return new(StoreStatus.Ok);
        }
        try
        {
            StoreStatus s = Sum(meta, (int)(offset / StoreBlockSize), dest, verify);
            EvictFilesIfNeeded();
            return new(s);
        }
        catch (ObjectDisposedException)
        {
            // The store closed under a verifying read (its files are closed first thing).
            return new(StoreStatus.Closed);
        }
    }

    private StoreStatus Sum(ObjectMeta meta, int firstBlock, Span<BlockSum> dest, bool verify)
    {
        int piece = verify ? VerifyPieceBlocks : dest.Length;
        byte[]? scratch = verify ? ArrayPool<byte>.Shared.Rent(VerifyPieceBlocks * StoreBlockSize) : null;
        try
        {
            for (int done = 0; done < dest.Length; done += piece)
            {
                int count = Math.Min(piece, dest.Length - done);
                lock (meta.Lock)
                {
                    for (int i = 0; i < count; i++)
                    {
                        dest[done + i] = SumLocked(meta, firstBlock + done + i);
                    }
                    if (scratch is not null && !VerifyFileBlocksLocked(meta, firstBlock + done, count, scratch))
                    {
                        return StoreStatus.IoError;
                    }
                }
            }
        }
        finally
        {
            if (scratch is not null)
            {
                ArrayPool<byte>.Shared.Return(scratch);
            }
        }
        return StoreStatus.Ok;
    }

    private BlockSum SumLocked(ObjectMeta meta, int block)
    {
        BlockState state = meta.EffectiveState(block);
        if (state != BlockState.Data)
        {
            return new(state, 0);
        }
        long p = meta.Pending[block];
        if (p == ObjectMeta.NotPending || ObjectMeta.IsDirect(p))
        {
            return new(state, meta.Crcs[block]);
        }
        // A block in the overlay: the overlay points at its data, not at the checksum its record
        // keeps ahead of the data, and hashing 4 KiB in memory is cheaper than remembering where
        // that is. The batch stays put while the pending value names it (see CopyNonFileBlock).
        return new(state, Crc32C.Compute(_journal.BufferOf(p >> 32).Span.Slice((int)(uint)p, StoreBlockSize)));
    }

    /// <summary>Reads the blocks of the range that come from the object file, one pread per run,
    /// checking each against its checksum; caller holds the lock. Overlay blocks are in memory, with
    /// nothing on disk to check yet.</summary>
    private bool VerifyFileBlocksLocked(ObjectMeta meta, int firstBlock, int count, byte[] scratch)
    {
        int b = 0;
        while (b < count)
        {
            if (!IsFileBlock(meta, firstBlock + b))
            {
                b++;
                continue;
            }
            int runStart = b;
            while (b < count && IsFileBlock(meta, firstBlock + b))
            {
                b++;
            }
            if (!ReadFileRun(meta, firstBlock + runStart, scratch.AsSpan(0, (b - runStart) * StoreBlockSize)))
            {
                return false;
            }
        }
        return true;
    }
}
