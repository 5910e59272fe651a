using System.Runtime.CompilerServices;

namespace Ovis.Volumes;

/// <summary>
/// The embedded registry of a single node: the volume registry in one JSON file, replaced
/// atomically (write a temporary file, fsync it, rename it over the old one, fsync the
/// directory), so after a crash it is either the old or the new registry, never a mix.
/// One instance per data directory (the volume manager's directory lock sees to that): nothing
/// else changes the file, so the version is a count of this instance's saves, and its watch
/// yields only what was saved through it.
/// </summary>
public sealed class EmbeddedRegistry : IVolumeRegistry
{
    public const string FileName = "catalog.json";

    private readonly string _path;
    // Saves are compared and made under this lock: one at a time, each against the latest.
    private readonly Lock _lock = new();
    private VersionedCatalog _current;
    // Completed (and replaced) by every save: wakes the watches.
    private TaskCompletionSource _saved = NewSignal();

    private EmbeddedRegistry(string path, CatalogState state)
    {
        _path = path;
        _current = new VersionedCatalog(state, 0);
    }

    /// <summary>Reads the registry of <paramref name="dataDirectory"/>; empty when it has none yet.</summary>
    public static EmbeddedRegistry Open(string dataDirectory)
    {
        string path = Path.Combine(dataDirectory, FileName);
        CatalogState state = File.Exists(path) ? Read(path) : CatalogState.Empty;
        return new EmbeddedRegistry(path, state);
    }

    private static CatalogState Read(string path)
    {
        try
        {
            return CatalogState.FromUtf8Json(File.ReadAllBytes(path));
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    public Task<VersionedCatalog> LoadAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            return Task.FromResult(_current);
        }
    }

    public Task<RegistrySaveResult> TrySaveAsync(CatalogState state, long expectedVersion, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(state);
        lock (_lock)
        {
            if (expectedVersion != _current.Version)
            {
                return Task.FromResult(new RegistrySaveResult(false, _current));
            }
            state.ValidateAfter(_current.State);
            Save(state);
            _current = new VersionedCatalog(state, _current.Version + 1);
            _saved.SetResult();
            _saved = NewSignal();
            return Task.FromResult(new RegistrySaveResult(true, _current));
        }
    }

    /// <summary>Durably replaces the registry.</summary>
    private void Save(CatalogState state)
    {
        string tmp = _path + ".tmp";
        using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            f.Write(state.ToUtf8Json());
            f.Flush(flushToDisk: true);
        }
        File.Move(tmp, _path, overwrite: true);
        Ovis.Store.DirectorySync.Sync(Path.GetDirectoryName(_path)!);
    }

    public async IAsyncEnumerable<VersionedCatalog> WatchAsync(long afterVersion, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (true)
        {
            VersionedCatalog current;
            Task saved;
            lock (_lock)
            {
                current = _current;
                saved = _saved.Task;
            }
            if (current.Version > afterVersion)
            {
                afterVersion = current.Version;
                yield return current;
            }
            await saved.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
