namespace Ovis.Volumes;

/// <summary>
/// The volumes of one node: creates, lists, resizes and deletes them in the catalog, and opens
/// them for I/O. Control-plane calls throw <see cref="VolumeException"/> when refused.
/// </summary>
public sealed partial class VolumeManager : IAsyncDisposable
{
    public const long DefaultObjectSize = 4L << 20;

    /// <summary>Opens (creating if needed) the node's data directory and recovers its store.</summary>
    public static Task<VolumeManager> OpenAsync(string dataDirectory, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();

    public VolumeInfo Create(string name, long size, long? objectSize = null) => throw new NotImplementedException();

    public IReadOnlyList<VolumeInfo> List() => throw new NotImplementedException();

    /// <summary>Throws NotFound when there is no such volume.</summary>
    public VolumeInfo Get(string name) => throw new NotImplementedException();

    /// <summary>Growing is always allowed; shrinking discards the data past the new end and needs <paramref name="allowShrink"/>.</summary>
    public Task<VolumeInfo> ResizeAsync(string name, long newSize, bool allowShrink) => throw new NotImplementedException();

    /// <summary>Refused with InUse while the volume is open.</summary>
    public Task DeleteAsync(string name) => throw new NotImplementedException();

    /// <summary>Opens a volume for I/O; null when it does not exist. Dispose the handle to close it.</summary>
    public Volume? Open(string name) => throw new NotImplementedException();

    /// <summary>Bytes of data held by all volumes.</summary>
    public long UsedBytes => throw new NotImplementedException();

    public ValueTask DisposeAsync() => throw new NotImplementedException();
}
