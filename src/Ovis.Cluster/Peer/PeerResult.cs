namespace Ovis.Cluster.Peer;

/// <summary>The answer to one peer request.</summary>
/// <param name="Status">What the server (or, for <see cref="PeerStatus.Unreachable"/>, the client) decided.</param>
/// <param name="Epoch">The server's epoch when it replied; -1 when no reply arrived.</param>
public readonly record struct PeerResult(PeerStatus Status, long Epoch)
{
    /// <summary>The result of a request that got no reply.</summary>
    public static PeerResult Unreachable => new(PeerStatus.Unreachable, -1);

    public bool IsOk => Status == PeerStatus.Ok;
}

/// <summary>A node's store as <c>ovis node list</c> shows it.</summary>
/// <param name="UsedBytes">Bytes of object data held.</param>
/// <param name="ObjectCount">Objects that hold data.</param>
/// <param name="JournalSyncs">Journal syncs since the store opened (0 for a store without a journal).</param>
public readonly record struct PeerStats(long UsedBytes, long ObjectCount, long JournalSyncs)
{
    /// <summary>The store's file system, with the node's near-full and full ratios; null when the
    /// node did not say (an older version, or a store without a file system of its own).</summary>
    public Ovis.Store.StoreSpace? Space { get; init; }
}

/// <summary>The answer to a STATS request; <see cref="Stats"/> is meaningful only when the status is OK.</summary>
public readonly record struct PeerStatsResult(PeerStatus Status, long Epoch, PeerStats Stats)
{
    public bool IsOk => Status == PeerStatus.Ok;
}
