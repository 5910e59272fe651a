namespace Ovis.Volumes;

/// <summary>
/// Where a cluster node keeps its volumes' dirty bitmaps: in the catalog, so that whichever node
/// takes a volume over finds them (docs/backup.md, "In a cluster"). A bitmap is saved whole, in
/// <see cref="DirtyBitmap"/>'s form, and only by the node holding the volume's lock.
/// </summary>
public interface IBitmapStore
{
    /// <summary>Every bitmap of <paramref name="volume"/>, by name; and whether the lock's last
    /// holder let go of it cleanly, with every bitmap saved after its last write (<see cref="SetReleasedAsync"/>).</summary>
    Task<(IReadOnlyDictionary<string, byte[]> Bitmaps, bool Released)> LoadAsync(string volume, CancellationToken cancellationToken);

    /// <summary>Records (or, before the first write under a new lock, withdraws) that the bitmaps of
    /// <paramref name="volume"/> hold every change so far; fails when this node no longer holds the lock.</summary>
    Task SetReleasedAsync(string volume, bool released, CancellationToken cancellationToken);

    /// <summary>Replaces one bitmap; fails when this node no longer holds the volume's lock.</summary>
    Task SaveAsync(string volume, string bitmap, byte[] content, CancellationToken cancellationToken);

    /// <summary>Deletes one bitmap, or every bitmap of the volume (and its release mark) when <paramref name="bitmap"/> is null.</summary>
    Task DeleteAsync(string volume, string? bitmap, CancellationToken cancellationToken);

    /// <summary>The largest saved form the store takes, in bytes.</summary>
    long MaxBytes { get; }
}
