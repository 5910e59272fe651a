namespace Ovis.Volumes;

/// <summary>What the catalog and the store know of one volume or snapshot.</summary>
/// <param name="Name">The volume's name; a snapshot's is <c>VOLUME@TAG</c>.</param>
/// <param name="UsedBytes">Bytes of data this layer holds itself: for a snapshot, the space only it uses.</param>
/// <param name="Connections">NBD connections that have it open now.</param>
public sealed record VolumeInfo(
    uint Id,
    string Name,
    long Size,
    long ObjectSize,
    DateTimeOffset Created,
    long UsedBytes,
    int Connections)
{
    /// <summary>The layer this one inherits unwritten data from (a snapshot's name, <c>VOLUME@TAG</c>), or null.</summary>
    public string? Parent { get; init; }

    /// <summary>A snapshot: read-only, exported as <c>VOLUME@TAG</c>.</summary>
    public bool IsSnapshot { get; init; }

    /// <summary>A snapshot whose delete (a merge into the layer over it) has begun and not finished.</summary>
    public bool Deleting { get; init; }

    /// <summary>How gateways acknowledge the volume's writes (<c>vdi set NAME cache=...</c>).</summary>
    public CacheMode Cache { get; init; }

    /// <summary>What the writeback cache of the node asked holds of the volume; null where none runs.</summary>
    public VolumeCacheStats? CacheStats { get; init; }
}

/// <summary>One node's writeback cache for one volume (docs/writeback-cache.md).</summary>
/// <param name="DirtyBytes">Acknowledged bytes not yet on every copy.</param>
/// <param name="PushLagSeconds">Age of the oldest of them: how far the copies are behind.</param>
/// <param name="ReadHits">Blocks read from the cache since the node started.</param>
/// <param name="ReadBlocks">Blocks read in all since the node started.</param>
/// <param name="AroundWrites">Writes sent around the cache, straight to the copies, because they
/// answered faster than the cache log syncs, since the node started.</param>
/// <param name="Around">Whether writes go around the cache now.</param>
public sealed record VolumeCacheStats(long DirtyBytes, double PushLagSeconds, long ReadHits, long ReadBlocks, long AroundWrites = 0, bool Around = false)
{
    public double HitRatio => ReadBlocks == 0 ? 0 : (double)ReadHits / ReadBlocks;
}
