using System.Buffers;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// Reads through layers. A chain lists a layer and its ancestors; a block that is a hole in one
/// layer is read from the next. Snapshots below the top are read-only, so a block's answer can
/// only change in the top layer, and a read that races a write there sees the old or the new
/// content, as any read racing a write may.
/// </summary>
internal static class Layers
{
    public static ValueTask<StoreStatus> ReadAsync(IObjectStore store, uint[] chain, uint index, long offset, Memory<byte> buffer)
        => chain.Length == 1
            ? store.ReadAsync(new ObjectId(chain[0], index), offset, buffer)
            : ReadFromAsync(store, chain, 0, index, offset, buffer);

    private static async ValueTask<StoreStatus> ReadFromAsync(IObjectStore store, uint[] chain, int depth, uint index, long offset, Memory<byte> buffer)
    {
        var id = new ObjectId(chain[depth], index);
        if (depth == chain.Length - 1)
        {
            return await store.ReadAsync(id, offset, buffer).ConfigureAwait(false);
        }
        int bs = store.BlockSize;
        long first = offset / bs;
        int n = (int)((offset + buffer.Length + bs - 1) / bs - first);
        BlockState[] states = ArrayPool<BlockState>.Shared.Rent(n);
        try
        {
            StoreStatus allocation = await store.GetAllocationAsync(id, first * bs, states.AsMemory(0, n)).ConfigureAwait(false);
            if (allocation != StoreStatus.Ok)
            {
                return allocation;
            }
            int b = 0;
            while (b < n)
            {
                // A run of blocks that this layer holds, or a run it leaves to the ones below.
                bool hole = states[b] == BlockState.Hole;
                int e = b + 1;
                while (e < n && (states[e] == BlockState.Hole) == hole)
                {
                    e++;
                }
                long start = Math.Max(offset, (first + b) * bs);
                long end = Math.Min(offset + buffer.Length, (first + e) * bs);
                Memory<byte> part = buffer.Slice((int)(start - offset), (int)(end - start));
                StoreStatus s = hole
                    ? await ReadFromAsync(store, chain, depth + 1, index, start, part).ConfigureAwait(false)
                    : await store.ReadAsync(id, start, part).ConfigureAwait(false);
                if (s != StoreStatus.Ok)
                {
                    return s;
                }
                b = e;
            }
            return StoreStatus.Ok;
        }
        finally
        {
            ArrayPool<BlockState>.Shared.Return(states);
        }
    }

    /// <summary>The first non-hole state of each block down the chain.</summary>
    public static ValueTask<StoreStatus> GetAllocationAsync(IObjectStore store, uint[] chain, uint index, long offset, Memory<BlockState> states)
        => chain.Length == 1
            ? store.GetAllocationAsync(new ObjectId(chain[0], index), offset, states)
            : GetLayeredAllocationAsync(store, chain, index, offset, states);

    private static async ValueTask<StoreStatus> GetLayeredAllocationAsync(IObjectStore store, uint[] chain, uint index, long offset, Memory<BlockState> states)
    {
        StoreStatus s = await store.GetAllocationAsync(new ObjectId(chain[0], index), offset, states).ConfigureAwait(false);
        if (s != StoreStatus.Ok)
        {
            return s;
        }
        BlockState[] lower = ArrayPool<BlockState>.Shared.Rent(states.Length);
        try
        {
            for (int depth = 1; depth < chain.Length && states.Span.Contains(BlockState.Hole); depth++)
            {
                s = await store.GetAllocationAsync(new ObjectId(chain[depth], index), offset, lower.AsMemory(0, states.Length)).ConfigureAwait(false);
                if (s != StoreStatus.Ok)
                {
                    return s;
                }
                Span<BlockState> span = states.Span;
                for (int i = 0; i < span.Length; i++)
                {
                    if (span[i] == BlockState.Hole)
                    {
                        span[i] = lower[i];
                    }
                }
            }
            return StoreStatus.Ok;
        }
        finally
        {
            ArrayPool<BlockState>.Shared.Return(lower);
        }
    }
}

/// <summary>
/// The parents' content of one object's blocks, for completing a partial write into a block the
/// top layer has never written. The local store calls <see cref="ReadBlock"/> under the object's
/// lock; the parents are read-only snapshots, so this takes no lock of the top layer and cannot
/// deadlock.
/// </summary>
internal sealed class ParentBlocks(IObjectStore store, uint[] chain, uint index, VolumeManager owner) : IBlockSource
{
    public bool ReadBlock(int block, Span<byte> dest)
    {
        int bs = store.BlockSize;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(bs);
        try
        {
            // The local store completes reads synchronously; a store whose reads wait calls
            // ReadBlockAsync instead, outside its object lock.
            bool ok = ReadBlockAsync(block, buffer.AsMemory(0, bs)).AsTask().GetAwaiter().GetResult();
            buffer.AsSpan(0, bs).CopyTo(dest);
            return ok;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public async ValueTask<bool> ReadBlockAsync(int block, Memory<byte> dest)
    {
        int bs = store.BlockSize;
        StoreStatus s = await Layers.ReadAsync(store, chain[1..], index, (long)block * bs, dest[..bs]).ConfigureAwait(false);
        owner.CountCopyOnWrite(bs);
        return s == StoreStatus.Ok;
    }
}
