namespace Ovis.Store;

/// <summary>Space reservations of writes (docs/store.md, "Full disks").</summary>
public sealed partial class LocalStore
{
    /// <summary>What a new object costs beyond its data blocks: its meta slot, and a block each
    /// for its inode's extents and its directory entry.</summary>
    private const long SlotCharge = SlotSize + 2L * StoreBlockSize;

    /// <summary>
    /// Bytes a write of blocks [first, first + count) will allocate when applied: every block that
    /// is not data now, counting the overlay (a block with a newer write in the journal has its
    /// block reserved by that write already; one with a pending trim will be punched first), and
    /// the object's slot the first time. Caller holds the object's lock.
    /// </summary>
    private static long SpaceNeeded(ObjectMeta meta, int first, int count)
    {
        long blocks = 0;
        for (int b = first; b < first + count; b++)
        {
            if (meta.EffectiveState(b) != BlockState.Data)
            {
                blocks++;
            }
        }
        return blocks * StoreBlockSize + (blocks > 0 && !meta.SlotCharged ? SlotCharge : 0);
    }

    private void RefreshSpace()
    {
        try
        {
            _space.Refresh();
        }
        catch (IOException e)
        {
            // The last figure stands; statvfs of a directory we hold open does not fail in practice.
            LogSpaceProbeFailed(_logger, e);
        }
    }
}
