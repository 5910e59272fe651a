using System.Buffers;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// The copy of a snapshot delete: the snapshot's blocks move into the holes of the one layer over
/// it, a batch at a time, and each batch is trimmed from the snapshot once its copy is durable. A
/// merge therefore never needs more free space than one batch, which it may take past the full
/// ratio (<c>fromReserve</c>): it is how a full disk gets space back from a snapshot. The
/// snapshot is marked <see cref="VolumeRecord.Deleting"/> before the first trim, so nothing reads
/// it but its child, whose reads never change (docs/snapshots.md).
/// </summary>
public sealed partial class VolumeManager
{
    // Copied bytes between two trims when the disk has room: few flushes on a big snapshot.
    private const long MergeBatchBytes = 16L << 20;

    // The most one copy takes before it can be trimmed: what a full disk must have past its full ratio.
    private const int MergeRunBytes = 1 << 20;

    private async Task MoveIntoHolesAsync(VolumeRecord snapshot, VolumeRecord child)
    {
        long os = snapshot.ObjectSize;
        int bs = _store.BlockSize;
        int blocks = (int)(os / bs);
        long objects = (Math.Min(snapshot.Size, child.Size) + os - 1) / os;
        HashSet<uint>? present = SlotsHeldBy([snapshot.Id]);
        byte[] data = ArrayPool<byte>.Shared.Rent((int)os);
        BlockState[] states = ArrayPool<BlockState>.Shared.Rent(blocks);
        var copied = new List<(ObjectId Source, long Offset, long Length)>();
        long batched = 0;
        try
        {
            for (uint index = 0; index < objects; index++)
            {
                if (present is not null && !present.Contains(index))
                {
                    continue;
                }
                var source = new ObjectId(snapshot.Id, index);
                StoreStatus s = await _store.GetAllocationAsync(source, 0, states.AsMemory(0, blocks)).ConfigureAwait(false);
                if (s == StoreStatus.Ok)
                {
                    s = await _store.ReadAsync(source, 0, data.AsMemory(0, (int)os)).ConfigureAwait(false);
                }
                if (s != StoreStatus.Ok)
                {
                    throw new IOException($"reading object {source} of snapshot '{snapshot.DisplayName}' failed: {s}");
                }
                var target = new ObjectId(child.Id, index);
                for (int b = 0; b < blocks;)
                {
                    BlockState state = states[b];
                    int e = b + 1;
                    while (e < blocks && states[e] == state && (e - b) * bs < MergeRunBytes)
                    {
                        e++;
                    }
                    if (state != BlockState.Hole)
                    {
                        long offset = (long)b * bs;
                        int length = (e - b) * bs;
                        while ((s = await _store.FillHolesAsync(target, offset, data.AsMemory((int)offset, length), zeroes: state == BlockState.Zero, fromReserve: true)
                            .ConfigureAwait(false)) == StoreStatus.NoSpace && copied.Count > 0)
                        {
                            // What was copied so far goes from the snapshot: its space serves this copy.
                            await TrimCopiedAsync(copied).ConfigureAwait(false);
                            batched = 0;
                        }
                        if (s == StoreStatus.NoSpace)
                        {
                            throw new VolumeException(VolumeErrorCode.NoSpace,
                                $"no space to move a block of snapshot '{snapshot.DisplayName}' into '{child.DisplayName}', even past the full ratio: free space first (delete a volume or a snapshot nothing depends on), then run the delete again");
                        }
                        if (s != StoreStatus.Ok)
                        {
                            throw new IOException($"copying into object {target} failed: {s}");
                        }
                        copied.Add((source, offset, length));
                        batched += state == BlockState.Data ? length : 0;
                        if (batched >= MergeBatchBytes)
                        {
                            await TrimCopiedAsync(copied).ConfigureAwait(false);
                            batched = 0;
                        }
                    }
                    b = e;
                }
            }
            await TrimCopiedAsync(copied).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(data);
            ArrayPool<BlockState>.Shared.Return(states);
        }
    }

    /// <summary>The object slots the <paramref name="layers"/> have objects in, or null (ask every
    /// slot) when the store does not list every object — a cluster node lists only its own copies.</summary>
    private HashSet<uint>? SlotsHeldBy(uint[] layers)
        => _store.ListsEveryObject ? [.. _store.ListObjects().Where(o => layers.Contains(o.Volume)).Select(o => o.Index)] : null;

    /// <summary>
    /// Trims from the snapshot the runs whose copies are in the child: once those copies are
    /// durable (a crash must not leave the child with neither), and once no read that looked the
    /// blocks up in the snapshot before they were copied is still going (<see cref="ReadGrace"/>).
    /// The trims themselves need not be durable: a block the child no longer reads may come back.
    /// </summary>
    private async Task TrimCopiedAsync(List<(ObjectId Source, long Offset, long Length)> copied)
    {
        if (copied.Count == 0)
        {
            return;
        }
        await FlushOrThrowAsync().ConfigureAwait(false);
        await Grace.WaitAsync().ConfigureAwait(false);
        foreach ((ObjectId source, long offset, long length) in copied)
        {
            StoreStatus s = await _store.ZeroAsync(source, offset, length, keepAllocated: false, fua: false).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                throw new IOException($"trimming object {source} after its blocks moved failed: {s}");
            }
        }
        copied.Clear();
    }
}
