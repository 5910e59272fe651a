namespace Ovis.Store;

/// <summary>How full a store's file system is, against the thresholds the node was given.</summary>
public enum SpaceState
{
    /// <summary>Below the near-full ratio.</summary>
    Ok,
    /// <summary>At or above the near-full ratio: a warning, writes go on.</summary>
    NearFull,
    /// <summary>At or above the full ratio: writes that need new blocks get ENOSPC.</summary>
    Full,
}

/// <summary>
/// The space of a store's file system as the store counts it: <see cref="UsedBytes"/> is what the
/// file system has in use plus what writes already in the journal will still take when they are
/// applied (<see cref="ReservedBytes"/>), so a write is judged against the space it would really leave.
/// </summary>
public readonly record struct StoreSpace(long TotalBytes, long AvailableBytes, long ReservedBytes, double NearFullRatio, double FullRatio)
{
    public long UsedBytes => Math.Max(0, TotalBytes - AvailableBytes + ReservedBytes);

    /// <summary><see cref="UsedBytes"/> over <see cref="TotalBytes"/>.</summary>
    public double Ratio => TotalBytes <= 0 ? 0 : (double)UsedBytes / TotalBytes;

    /// <summary>What writes that need new blocks may still take: up to the full ratio, and never
    /// the last <see cref="SpaceAccount.MinFreeBytes"/> of the file system.</summary>
    public long RoomBytes => Math.Max(0, Math.Min((long)(TotalBytes * FullRatio) - UsedBytes, AvailableBytes - ReservedBytes - SpaceAccount.MinFreeBytes));

    /// <summary>Full from the full ratio on, or once less room is left than one more MiB of writes
    /// (on a small file system the margin comes before the ratio).</summary>
    public SpaceState State => Ratio >= FullRatio || RoomBytes < SpaceAccount.MinFreeBytes ? SpaceState.Full
        : Ratio >= NearFullRatio ? SpaceState.NearFull
        : SpaceState.Ok;
}

/// <summary>
/// Space accounting of a local store (docs/store.md, "Full disks"). A write that needs new blocks
/// reserves them here before it enters the journal; the reservation lasts until its batch has been
/// applied to the object files, when the file system's own count (statvfs, read again right after
/// each batch) includes the blocks. A write that cannot reserve is refused with NoSpace before the
/// journal takes it, so applying — and replaying after a crash — never runs out of space.
/// </summary>
internal sealed class SpaceAccount
{
    /// <summary>Free space no data write may take, whatever the full ratio: room for the meta
    /// slots, directories, extent blocks and small files (catalog, fences) the node still writes
    /// when its data fills the disk.</summary>
    public const long MinFreeBytes = 1L << 20;

    private readonly Func<(long Total, long Available)> _probe;
    private readonly double _nearFullRatio;
    private readonly double _fullRatio;
    private long _total;
    private long _available;
    private long _reserved;

    public SpaceAccount(Func<(long Total, long Available)> probe, double nearFullRatio, double fullRatio)
    {
        if (!(nearFullRatio > 0 && nearFullRatio <= fullRatio && fullRatio <= 1))
        {
            throw new ArgumentException($"the near-full ratio ({nearFullRatio}) and full ratio ({fullRatio}) must satisfy 0 < nearfull <= full <= 1");
        }
        _probe = probe;
        _nearFullRatio = nearFullRatio;
        _fullRatio = fullRatio;
        Refresh();
    }

    /// <summary>Reads the file system's size and free space again. Blocks the applier allocated
    /// before the call are in the free figure; reservations it has not yet released are counted
    /// twice until it does, which errs on the safe side.</summary>
    public void Refresh()
    {
        (long total, long available) = _probe();
        Volatile.Write(ref _total, total);
        Volatile.Write(ref _available, available);
    }

    public StoreSpace Snapshot
        => new(Volatile.Read(ref _total), Volatile.Read(ref _available), Volatile.Read(ref _reserved), _nearFullRatio, _fullRatio);

    /// <summary>Reserves <paramref name="bytes"/> for a write that needs new blocks, unless that
    /// would take the file system past the full ratio or under <see cref="MinFreeBytes"/>.</summary>
    /// <param name="fromReserve">The write frees at least as much as it takes, soon (a snapshot
    /// merge, which trims what it copied): it may go past the full ratio, never under the margin.</param>
    public bool TryCharge(long bytes, bool fromReserve = false)
    {
        long reserved = Volatile.Read(ref _reserved);
        while (true)
        {
            long total = Volatile.Read(ref _total);
            long available = Volatile.Read(ref _available);
            long free = available - reserved - bytes;
            if (free < MinFreeBytes || (!fromReserve && total - free > (long)(total * _fullRatio)))
            {
                return false;
            }
            long seen = Interlocked.CompareExchange(ref _reserved, reserved + bytes, reserved);
            if (seen == reserved)
            {
                return true;
            }
            reserved = seen;
        }
    }

    /// <summary>Reserves without a check: for the little metadata a trim or delete may need, which
    /// are never refused (they are how a full disk is emptied).</summary>
    public void Charge(long bytes) => Interlocked.Add(ref _reserved, bytes);

    public void Release(long bytes) => Interlocked.Add(ref _reserved, -bytes);
}
