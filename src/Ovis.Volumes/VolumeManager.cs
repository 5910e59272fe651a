using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// The volumes of one node: creates, lists, resizes, snapshots, clones and deletes them in the
/// catalog, and opens them for I/O. Control-plane calls throw <see cref="VolumeException"/> when
/// refused. They are serialised by one async lock (they are rare); the data path never takes it.
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
    private readonly SemaphoreSlim _control = new(1, 1);
    // Guards the maps and the states' records and chains, briefly.
    private readonly Lock _lock = new();
    private readonly Dictionary<uint, VolumeState> _byId = [];
    private readonly Dictionary<string, VolumeState> _byName = new(StringComparer.Ordinal);
    private long _copyOnWriteBytes;

    private VolumeManager(LocalStore store, Catalog catalog, FileStream dirLock)
    {
        _store = store;
        _catalog = catalog;
        _dirLock = dirLock;
        foreach (VolumeRecord r in catalog.State.Volumes)
        {
            var state = new VolumeState(r);
            _byId[r.Id] = state;
            _byName[r.DisplayName] = state;
        }
        RebuildChains();
    }

    /// <summary>The object store under the volumes (for statistics).</summary>
    public IObjectStore Store => _store;

    /// <summary>Bytes copied from parent layers to complete partially written inherited blocks (copy-on-write).</summary>
    public long CopyOnWriteBytes => Interlocked.Read(ref _copyOnWriteBytes);

    internal void CountCopyOnWrite(long bytes) => Interlocked.Add(ref _copyOnWriteBytes, bytes);

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

    /// <summary>Objects of layers the catalog no longer has: left by a crash in the middle of a
    /// delete, a rollback or a merge, after the catalog changed and before the data was gone.</summary>
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

    private static void CheckName(string? name, string what)
    {
        if (!NamePattern().IsMatch(name ?? ""))
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid {what} '{name}': use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit");
        }
    }

    public VolumeInfo Create(string name, long size, long? objectSize = null)
    {
        long osize = objectSize ?? DefaultObjectSize;
        CheckName(name, "volume name");
        if (osize < MinObjectSize || osize > LocalStore.MaxObjectBytes || (osize & (osize - 1)) != 0)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid object size {osize}: use a power of two from 4 KiB to {LocalStore.MaxObjectBytes >> 20} MiB");
        }
        CheckSize(size, osize);
        _control.Wait();
        try
        {
            CheckFree(name);
            return Describe(AddRecord(new VolumeRecord(_catalog.State.NextId, name, size, osize, DateTimeOffset.UtcNow)));
        }
        finally
        {
            _control.Release();
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

    private void CheckFree(string name)
    {
        lock (_lock)
        {
            if (_byName.ContainsKey(name))
            {
                throw new VolumeException(VolumeErrorCode.AlreadyExists, $"volume '{name}' already exists");
            }
        }
    }

    /// <summary>Every volume and snapshot, by name.</summary>
    public IReadOnlyList<VolumeInfo> List()
    {
        VolumeState[] states;
        lock (_lock)
        {
            states = [.. _byName.Values];
        }
        return [.. states.OrderBy(v => v.Record.DisplayName, StringComparer.Ordinal).Select(Describe)];
    }

    /// <summary>A volume, or a snapshot by <c>NAME@TAG</c>; throws NotFound when there is none.</summary>
    public VolumeInfo Get(string name) => Describe(Find(name));

    private VolumeState Find(string name)
    {
        lock (_lock)
        {
            return _byName.TryGetValue(name, out VolumeState? v) ? v
                : throw new VolumeException(VolumeErrorCode.NotFound, name.Contains('@', StringComparison.Ordinal) ? $"snapshot '{name}' not found" : $"volume '{name}' not found");
        }
    }

    private VolumeState FindLive(string name)
    {
        VolumeState v = Find(name);
        return v.Record.IsSnapshot
            ? throw new VolumeException(VolumeErrorCode.InvalidArgument, $"'{name}' is a snapshot, which is read-only")
            : v;
    }

    private VolumeInfo Describe(VolumeState v)
    {
        VolumeRecord r;
        int connections;
        string? parent;
        lock (_lock)
        {
            r = v.Record;
            connections = v.Connections;
            parent = r.ParentId is uint p && _byId.TryGetValue(p, out VolumeState? ps) ? ps.Record.DisplayName : null;
        }
        return new VolumeInfo(r.Id, r.DisplayName, r.Size, r.ObjectSize, r.Created, _store.GetUsedBytes(r.Id), connections)
        {
            Parent = parent,
            IsSnapshot = r.IsSnapshot,
        };
    }

    /// <summary>Growing is always allowed; shrinking discards the data past the new end and needs <paramref name="allowShrink"/>.</summary>
    public async Task<VolumeInfo> ResizeAsync(string name, long newSize, bool allowShrink)
    {
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(name);
            VolumeRecord old = v.Record;
            CheckNotPinned(old, name);
            CheckSize(newSize, old.ObjectSize);
            if (newSize < old.Size)
            {
                if (!allowShrink)
                {
                    throw new VolumeException(VolumeErrorCode.InvalidArgument, $"shrinking '{name}' from {old.Size} to {newSize} bytes discards data: pass --allow-shrink");
                }
                if (v.Connections > 0)
                {
                    throw new VolumeException(VolumeErrorCode.InUse, $"volume '{name}' is exported to {v.Connections} connection(s): disconnect them before shrinking");
                }
            }
            SaveRecord(old with { Size = newSize });
            if (newSize < old.Size)
            {
                await DiscardBeyondAsync(v.Chain, old, newSize).ConfigureAwait(false);
            }
            return Describe(v);
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>Zeroes [from, old size) so that growing again later reads zeroes there, not old data
    /// nor, in a layered volume, the parent's.</summary>
    private async Task DiscardBeyondAsync(uint[] chain, VolumeRecord r, long from)
    {
        bool layered = chain.Length > 1;
        for (long index = from / r.ObjectSize; index * r.ObjectSize < r.Size; index++)
        {
            var id = new ObjectId(r.Id, (uint)index);
            long start = Math.Max(from - index * r.ObjectSize, 0);
            StoreStatus s = start == 0 && !layered
                ? await _store.DeleteAsync(id).ConfigureAwait(false)
                : await _store.ZeroAsync(id, start, r.ObjectSize - start, keepAllocated: layered, fua: false).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                throw new IOException($"discarding object {id} failed: {s}");
            }
        }
        await FlushOrThrowAsync().ConfigureAwait(false);
    }

    private async Task FlushOrThrowAsync()
    {
        StoreStatus s = await _store.FlushAsync().ConfigureAwait(false);
        if (s != StoreStatus.Ok)
        {
            throw new IOException($"flushing the store failed: {s}");
        }
    }

    /// <summary>Opens a volume (or a snapshot, read-only) for I/O; null when it does not exist. Dispose the handle to close it.</summary>
    public Volume? Open(string name)
    {
        lock (_lock)
        {
            if (!_byName.TryGetValue(name, out VolumeState? v))
            {
                return null;
            }
            v.Connections++;
            return new Volume(v, _store, this);
        }
    }

    internal void Close(VolumeState v)
    {
        lock (_lock)
        {
            v.Connections--;
        }
    }

    /// <summary>Bytes of data held by all volumes.</summary>
    public long UsedBytes => _store.UsedBytes;

    // ---- catalog changes: always the durable catalog first, then the in-memory maps ----

    private VolumeState AddRecord(VolumeRecord record)
    {
        Apply([.. _catalog.State.Volumes, record]);
        lock (_lock)
        {
            return _byId[record.Id];
        }
    }

    /// <summary>Replaces one record, matched by id.</summary>
    private void SaveRecord(VolumeRecord changed)
        => Apply([.. _catalog.State.Volumes.Select(r => r.Id == changed.Id ? changed : r)]);

    /// <summary>
    /// Makes <paramref name="records"/> the catalog, durably, then the in-memory view.
    /// <paramref name="moved"/> names a live volume that continues under a new id (a snapshot or
    /// a rollback gives it a new top layer): its state, with its open handles, moves along.
    /// </summary>
    private void Apply(List<VolumeRecord> records, (uint From, uint To)? moved = null)
    {
        uint next = Math.Max(_catalog.State.NextId, records.Count == 0 ? 0 : records.Max(r => r.Id) + 1);
        _catalog.Save(new CatalogState(next, records));
        lock (_lock)
        {
            if (moved is (uint from, uint to) && _byId.Remove(from, out VolumeState? live))
            {
                _byId[to] = live;
            }
            var keep = new HashSet<uint>();
            foreach (VolumeRecord r in records)
            {
                keep.Add(r.Id);
                if (_byId.TryGetValue(r.Id, out VolumeState? state))
                {
                    state.Record = r;
                }
                else
                {
                    _byId[r.Id] = new VolumeState(r);
                }
            }
            foreach (uint id in _byId.Keys.Where(id => !keep.Contains(id)).ToList())
            {
                _byId.Remove(id);
            }
            _byName.Clear();
            foreach (VolumeState v in _byId.Values)
            {
                _byName[v.Record.DisplayName] = v;
            }
            RebuildChains();
        }
    }

    private void RebuildChains()
    {
        foreach (VolumeState v in _byId.Values)
        {
            var chain = new List<uint>();
            for (VolumeRecord? r = v.Record; r is not null; r = r.ParentId is uint p && _byId.TryGetValue(p, out VolumeState? ps) ? ps.Record : null)
            {
                chain.Add(r.Id);
            }
            v.Chain = [.. chain];
        }
    }

    /// <summary>Removes a layer's objects (after the catalog no longer names it).</summary>
    private async Task DeleteObjectsAsync(uint layer)
    {
        foreach (ObjectId id in _store.ListObjects())
        {
            if (id.Volume == layer)
            {
                StoreStatus s = await _store.DeleteAsync(id).ConfigureAwait(false);
                if (s != StoreStatus.Ok)
                {
                    throw new IOException($"deleting object {id} failed: {s}");
                }
            }
        }
        await FlushOrThrowAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync().ConfigureAwait(false);
        await _dirLock.DisposeAsync().ConfigureAwait(false);
        _control.Dispose();
    }
}
