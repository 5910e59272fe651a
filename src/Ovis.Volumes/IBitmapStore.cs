namespace Ovis.Volumes;

/// <summary>
/// Where a cluster node keeps its volumes' dirty bitmaps: in the catalog, so that whichever node
/// takes a volume over finds them (docs/backup.md, "In a cluster"). A bitmap is saved whole, in
/// <see cref="DirtyBitmap"/>'s form, and only by the node holding the volume's lock.
/// </summary>
public interface IBitmapStore
{
    /// <summary>Every bitmap of <paramref name="volume"/>, by name.</summary>
    Task<IReadOnlyDictionary<string, byte[]>> LoadAsync(string volume, CancellationToken cancellationToken);

    /// <summary>Replaces one bitmap; fails when this node no longer holds the volume's lock.</summary>
    Task SaveAsync(string volume, string bitmap, byte[] content, CancellationToken cancellationToken);

    /// <summary>Deletes one bitmap, or every bitmap of the volume when <paramref name="bitmap"/> is null.</summary>
    Task DeleteAsync(string volume, string? bitmap, CancellationToken cancellationToken);

    /// <summary>The largest saved form the store takes, in bytes.</summary>
    long MaxBytes { get; }
}
