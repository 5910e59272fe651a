using Microsoft.Extensions.Logging;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// A node's data directory, opened: its lock (one Ovis process per directory) and its local
/// store, recovered. Disposing closes the store, then releases the lock.
/// </summary>
public sealed class DataDirectory : IAsyncDisposable
{
    private readonly FileStream _lock;

    private DataDirectory(string path, FileStream @lock, LocalStore store)
    {
        Path = path;
        _lock = @lock;
        Store = store;
    }

    public string Path { get; }

    public LocalStore Store { get; }

    /// <summary>Creates the directory if needed, takes its lock and recovers the store (replaying its journal).</summary>
    /// <exception cref="VolumeException">Another process has the directory.</exception>
    public static async Task<DataDirectory> OpenAsync(string path, LocalStoreOptions storeOptions, ILogger logger, CancellationToken cancellationToken = default)
    {
        Directory.CreateDirectory(path);
        FileStream dirLock;
        try
        {
            // FileShare.None takes an exclusive flock on Unix: one daemon per data directory.
            dirLock = new FileStream(System.IO.Path.Combine(path, "lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            throw new VolumeException(VolumeErrorCode.InUse, $"data directory {path} is in use by another Ovis process");
        }
        try
        {
            LocalStore store = await Task.Run(() => LocalStore.Open(System.IO.Path.Combine(path, "store"), storeOptions, logger), cancellationToken).ConfigureAwait(false);
            return new DataDirectory(path, dirLock, store);
        }
        catch
        {
            await dirLock.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Store.DisposeAsync().ConfigureAwait(false);
        await _lock.DisposeAsync().ConfigureAwait(false);
    }
}
