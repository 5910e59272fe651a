namespace Ovis.Store;

/// <summary>Tuning of a node's local store.</summary>
public sealed record LocalStoreOptions
{
    /// <summary>Size of the journal ring. A checkpoint runs when a quarter of it is in use.</summary>
    public long JournalSize { get; init; } = 256L << 20;

    /// <summary>Size of one journal batch (the unit of an O_DIRECT write).</summary>
    public int BatchSize { get; init; } = 4 << 20;

    /// <summary>Batches that may be in memory at once; bounds unapplied data (BatchSize × BatchCount).</summary>
    public int BatchCount { get; init; } = 8;

    /// <summary>Longest time an acknowledged write stays only in memory when no client flushes.</summary>
    public TimeSpan CommitInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Object files kept open at once; beyond this the least recently opened are closed
    /// (and reopened when needed), so a store of any size stays within the process's fd limit.
    /// A file is opened before others are closed, so the count may pass this for a moment.</summary>
    public int MaxOpenFiles { get; init; } = 4096;

    /// <summary>Longest time between checkpoints while there is something to checkpoint.</summary>
    public TimeSpan CheckpointInterval { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Share of the file system in use (the store's reservations included) from which the
    /// store reports <see cref="SpaceState.NearFull"/>. Ceph's <c>mon_osd_nearfull_ratio</c>.</summary>
    public double NearFullRatio { get; init; } = 0.85;

    /// <summary>Share of the file system in use from which writes that need new blocks are refused
    /// with <see cref="StoreStatus.NoSpace"/>; overwrites of allocated blocks, trims and deletes go on.
    /// Ceph's <c>mon_osd_full_ratio</c>.</summary>
    public double FullRatio { get; init; } = 0.95;

    /// <summary>For tests: the file system's (total, available) bytes, instead of statvfs of the store's directory.</summary>
    internal Func<(long Total, long Available)>? SpaceProbe { get; init; }
}
