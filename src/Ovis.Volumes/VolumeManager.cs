using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// The volumes of one node: creates, lists, resizes and deletes them in the catalog, and opens
/// them for I/O. Control-plane calls throw <see cref="VolumeException"/> when refused; they are
/// serialised by one lock (they are rare), the data path never takes it.
/// </summary>
public sealed partial class VolumeManager : IAsyncDisposable
{
    public const long DefaultObjectSize = 4L << 20;
    public const long MinObjectSize = 4L << 10;
    /// <summary>Object indexes are 32-bit; and beyond this no file system here could hold the data anyway.</summary>
    public const long MaxVolumeSize = 1L << 50;

    private readonly LocalStore _store;
    private readonly Catalog _catalog;
    private readonly FileStream _dirLock;
    private readonly Lock _controlLock = new();
    private readonly Dictionary<string, VolumeState> _volumes = new(StringComparer.Ordinal);

    private VolumeManager(LocalStore store, Catalog catalog, FileStream dirLock)
    {
        _store = store;
        _catalog = catalog;
        _dirLock = dirLock;
        foreach (VolumeRecord r in catalog.State.Volumes)
        {
            _volumes[r.Name] = new VolumeState(r);
        }
    }

    /// <summary>The object store under the volumes (for statistics).</summary>
    public IObjectStore Store => _store;

    /// <summary>Opens (creating if needed) the node's data directory and recovers its store.</summary>
    public static Task<VolumeManager> OpenAsync(string dataDirectory, CancellationToken cancellationToken = default)
        => OpenAsync(dataDirectory, new LocalStoreOptions(), NullLogger.Instance, cancellationToken);

    public static async Task<VolumeManager> OpenAsync(string dataDirectory, LocalStoreOptions storeOptions, ILogger logger, CancellationToken cancellationToken = default)
    {
        Directory.CreateDirectory(dataDirectory);
        FileStream dirLock;
        try
        {
            // FileShare.None takes an exclusive flock on Unix: one daemon per data directory.
            dirLock = new FileStream(Path.Combine(dataDirectory, "lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            throw new VolumeException(VolumeErrorCode.InUse, $"data directory {dataDirectory} is in use by another Ovis process");
        }
        try
        {
            Catalog catalog = Catalog.Load(dataDirectory);
            LocalStore store = await Task.Run(() => LocalStore.Open(Path.Combine(dataDirectory, "store"), storeOptions, logger), cancellationToken).ConfigureAwait(false);
            var manager = new VolumeManager(store, catalog, dirLock);
            await manager.RemoveOrphansAsync().ConfigureAwait(false);
            return manager;
        }
        catch
        {
            await dirLock.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Objects of volumes the catalog no longer has: left by a crash in the middle of a delete.</summary>
    private async Task RemoveOrphansAsync()
    {
        var ids = new HashSet<uint>(_catalog.State.Volumes.Select(v => v.Id));
        bool removed = false;
        foreach (ObjectId id in _store.ListObjects())
        {
            if (!ids.Contains(id.Volume))
            {
                await _store.DeleteAsync(id).ConfigureAwait(false);
                removed = true;
            }
        }
        if (removed)
        {
            await _store.FlushAsync().ConfigureAwait(false);
        }
    }

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    private static partial Regex NamePattern();

    public VolumeInfo Create(string name, long size, long? objectSize = null)
    {
        long osize = objectSize ?? DefaultObjectSize;
        if (!NamePattern().IsMatch(name ?? ""))
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid volume name '{name}': use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit");
        }
        if (osize < MinObjectSize || osize > LocalStore.MaxObjectBytes || (osize & (osize - 1)) != 0)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid object size {osize}: use a power of two from 4 KiB to {LocalStore.MaxObjectBytes >> 20} MiB");
        }
        CheckSize(size, osize);
        lock (_controlLock)
        {
            if (_volumes.ContainsKey(name!))
            {
                throw new VolumeException(VolumeErrorCode.AlreadyExists, $"volume '{name}' already exists");
            }
            CatalogState s = _catalog.State;
            var record = new VolumeRecord(s.NextId, name!, size, osize, DateTimeOffset.UtcNow);
            _catalog.Save(new CatalogState(s.NextId + 1, [.. s.Volumes, record]));
            var state = new VolumeState(record);
            _volumes[name!] = state;
            return Describe(state);
        }
    }

    private static void CheckSize(long size, long objectSize)
    {
        if (size <= 0 || size % 512 != 0)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid size {size}: it must be a positive multiple of 512 bytes");
        }
        if (size > MaxVolumeSize || (size + objectSize - 1) / objectSize > uint.MaxValue)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid size {size}: the largest volume is {MaxVolumeSize >> 40} TiB");
        }
    }

    public IReadOnlyList<VolumeInfo> List()
    {
        lock (_controlLock)
        {
            return [.. _volumes.Values.OrderBy(v => v.Record.Name, StringComparer.Ordinal).Select(Describe)];
        }
    }

    /// <summary>Throws NotFound when there is no such volume.</summary>
    public VolumeInfo Get(string name)
    {
        lock (_controlLock)
        {
            return Describe(Find(name));
        }
    }

    private VolumeState Find(string name)
        => _volumes.TryGetValue(name, out VolumeState? v) ? v : throw new VolumeException(VolumeErrorCode.NotFound, $"volume '{name}' not found");

    private VolumeInfo Describe(VolumeState v)
        => new(v.Record.Id, v.Record.Name, v.Record.Size, v.Record.ObjectSize, v.Record.Created, _store.GetUsedBytes(v.Record.Id), v.Connections);

    /// <summary>Growing is always allowed; shrinking discards the data past the new end and needs <paramref name="allowShrink"/>.</summary>
    public async Task<VolumeInfo> ResizeAsync(string name, long newSize, bool allowShrink)
    {
        VolumeState v;
        long oldSize;
        lock (_controlLock)
        {
            v = Find(name);
            CheckSize(newSize, v.Record.ObjectSize);
            oldSize = v.Record.Size;
            if (newSize < oldSize)
            {
                if (!allowShrink)
                {
                    throw new VolumeException(VolumeErrorCode.InvalidArgument, $"shrinking '{name}' from {oldSize} to {newSize} bytes discards data: pass --allow-shrink");
                }
                if (v.Connections > 0)
                {
                    throw new VolumeException(VolumeErrorCode.InUse, $"volume '{name}' is exported to {v.Connections} connection(s): disconnect them before shrinking");
                }
            }
            SaveRecord(v, v.Record with { Size = newSize });
        }
        if (newSize < oldSize)
        {
            await DiscardBeyondAsync(v.Record, newSize, oldSize).ConfigureAwait(false);
        }
        return Get(name);
    }

    /// <summary>Zeroes [from, to) so that growing again later reads zeroes there.</summary>
    private async Task DiscardBeyondAsync(VolumeRecord r, long from, long to)
    {
        for (long index = from / r.ObjectSize; index * r.ObjectSize < to; index++)
        {
            var id = new ObjectId(r.Id, (uint)index);
            long start = Math.Max(from - index * r.ObjectSize, 0);
            StoreStatus s = start == 0
                ? await _store.DeleteAsync(id).ConfigureAwait(false)
                : await _store.ZeroAsync(id, start, r.ObjectSize - start, keepAllocated: false, fua: false).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                throw new IOException($"discarding object {id} failed: {s}");
            }
        }
        await _store.FlushAsync().ConfigureAwait(false);
    }

    private void SaveRecord(VolumeState v, VolumeRecord updated)
    {
        CatalogState s = _catalog.State;
        _catalog.Save(s with { Volumes = [.. s.Volumes.Select(r => r.Id == updated.Id ? updated : r)] });
        v.Record = updated;
    }

    /// <summary>Refused with InUse while the volume is open.</summary>
    public async Task DeleteAsync(string name)
    {
        VolumeState v;
        lock (_controlLock)
        {
            v = Find(name);
            if (v.Connections > 0)
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"volume '{name}' is exported to {v.Connections} connection(s): disconnect them first");
            }
            // The catalog entry goes first: a crash after it leaves orphan objects, which the
            // next start removes; never a volume whose data is half gone.
            CatalogState s = _catalog.State;
            _catalog.Save(s with { Volumes = [.. s.Volumes.Where(r => r.Id != v.Record.Id)] });
            _volumes.Remove(name);
            v.Deleted = true;
        }
        foreach (ObjectId id in _store.ListObjects())
        {
            if (id.Volume == v.Record.Id)
            {
                await _store.DeleteAsync(id).ConfigureAwait(false);
            }
        }
        await _store.FlushAsync().ConfigureAwait(false);
    }

    /// <summary>Opens a volume for I/O; null when it does not exist. Dispose the handle to close it.</summary>
    public Volume? Open(string name)
    {
        lock (_controlLock)
        {
            if (!_volumes.TryGetValue(name, out VolumeState? v))
            {
                return null;
            }
            v.Connections++;
            return new Volume(v, _store, this);
        }
    }

    internal void Close(VolumeState v)
    {
        lock (_controlLock)
        {
            v.Connections--;
        }
    }

    /// <summary>
    /// Freezes the volume's current content as <c>NAME@TAG</c>, read-only; the volume goes on as a
    /// new layer on top of it. Takes the same time whatever the volume's size: no data is copied.
    /// Writes in flight finish first; everything acknowledged before is in the snapshot, durably.
    /// </summary>
    public Task<VolumeInfo> SnapshotAsync(string name, string tag) => throw new NotImplementedException();

    /// <summary>A new volume <paramref name="newName"/> whose unwritten data comes from <paramref name="snapshot"/> (<c>NAME@TAG</c>).</summary>
    public Task<VolumeInfo> CloneAsync(string snapshot, string newName) => throw new NotImplementedException();

    /// <summary>Throws away what was written to the volume since snapshot <paramref name="tag"/>. Refused while the volume is open.</summary>
    public Task<VolumeInfo> RollbackAsync(string name, string tag) => throw new NotImplementedException();

    /// <summary>Copies inherited data into the volume so it no longer depends on its parent; reports progress from 0 to 1.</summary>
    public Task<VolumeInfo> FlattenAsync(string name, IProgress<double>? progress = null) => throw new NotImplementedException();

    /// <summary>Bytes copied from parent layers to complete partially written inherited blocks (copy-on-write).</summary>
    public long CopyOnWriteBytes => Interlocked.Read(ref _copyOnWriteBytes);

    private long _copyOnWriteBytes;

    internal void CountCopyOnWrite(long bytes) => Interlocked.Add(ref _copyOnWriteBytes, bytes);

    /// <summary>Bytes of data held by all volumes.</summary>
    public long UsedBytes => _store.UsedBytes;

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync().ConfigureAwait(false);
        await _dirLock.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>A volume's catalog record and its live counters, shared by all its open handles.</summary>
internal sealed class VolumeState(VolumeRecord record)
{
    public VolumeRecord Record { get; set; } = record;
    public int Connections { get; set; }
    public bool Deleted { get; set; }
}
