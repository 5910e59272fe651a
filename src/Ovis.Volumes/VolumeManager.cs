using System.Diagnostics;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// The volumes of one node: creates, lists, resizes, snapshots, clones and deletes them in the
/// volume registry, and opens them for I/O. Control-plane calls throw <see cref="VolumeException"/>
/// when refused. They are serialised by one async lock (they are rare); the data path never takes
/// it. Each computes the registry's next state from the one it last knew and saves it on the
/// condition that nobody changed the registry meanwhile; when another node did, it takes that
/// node's state and runs again on it. What other nodes change arrives through the registry's
/// watch and is applied to the same in-memory view, so a volume created through one node can be
/// opened on another a moment later.
/// </summary>
public sealed partial class VolumeManager : IAsyncDisposable
{
    public const long DefaultObjectSize = 4L << 20;
    public const long MinObjectSize = 4L << 10;
    /// <summary>Object indexes are 32-bit; and beyond this no file system here could hold the data anyway.</summary>
    public const long MaxVolumeSize = 1L << 50;

    /// <summary>
    /// How long an operation keeps losing its save to other nodes' before it gives up with
    /// <see cref="VolumeErrorCode.Conflict"/>. A time, not a count: each loss means another node's
    /// save went through, and the node that saved last hears of it first, so it tends to win again
    /// while it has more to save; a node under a burst of another's changes waits for the burst.
    /// </summary>
    private static readonly TimeSpan CommitPatience = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan WatchRetryDelay = TimeSpan.FromSeconds(1);

    private readonly IObjectStore _store;
    private readonly IVolumeRegistry _registry;
    private readonly ILogger _logger;
    // Set when this manager opened the data directory itself: it owns the lock and the store
    // then; a store handed in belongs to the caller.
    private readonly DataDirectory? _owned;
    private int _disposed;
    private readonly SemaphoreSlim _control = new(1, 1);
    private readonly CancellationTokenSource _stopping = new();
    // Guards the maps, _current and the states' records and chains, briefly.
    private readonly Lock _lock = new();
    private readonly Dictionary<uint, VolumeState> _byId = [];
    private readonly Dictionary<string, VolumeState> _byName = new(StringComparer.Ordinal);
    // The registry state the maps show. Changes only under _control (and _lock).
    private VersionedCatalog _current = new(CatalogState.Empty, long.MinValue);
    private Task _watch = Task.CompletedTask;
    private long _copyOnWriteBytes;

    private VolumeManager(IObjectStore store, IVolumeRegistry registry, ILogger logger, DataDirectory? owned, VersionedCatalog loaded)
    {
        _store = store;
        _registry = registry;
        _logger = logger;
        _owned = owned;
        Apply(loaded);
    }

    /// <summary>The object store under the volumes (for statistics).</summary>
    public IObjectStore Store => _store;

    /// <summary>Bytes copied from parent layers to complete partially written inherited blocks (copy-on-write).</summary>
    public long CopyOnWriteBytes => Interlocked.Read(ref _copyOnWriteBytes);

    internal void CountCopyOnWrite(long bytes) => Interlocked.Add(ref _copyOnWriteBytes, bytes);

    /// <summary>Opens (creating if needed) the node's data directory and recovers its store.</summary>
    public static Task<VolumeManager> OpenAsync(string dataDirectory, CancellationToken cancellationToken = default)
        => OpenAsync(dataDirectory, new LocalStoreOptions(), NullLogger.Instance, cancellationToken);

    /// <summary>
    /// Opens (creating if needed) the data directory of a single node: takes its lock, recovers its
    /// local store and reads its embedded registry. The manager owns all three and disposes them.
    /// </summary>
    public static async Task<VolumeManager> OpenAsync(string dataDirectory, LocalStoreOptions storeOptions, ILogger logger, CancellationToken cancellationToken = default)
    {
        DataDirectory data = await DataDirectory.OpenAsync(dataDirectory, storeOptions, logger, cancellationToken).ConfigureAwait(false);
        try
        {
            return await StartAsync(data.Store, EmbeddedRegistry.Open(dataDirectory), bitmaps: null, logger, data, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await data.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// A manager over a store and a registry that someone else owns and disposes (a cluster node:
    /// its store, the etcd registry): it follows the registry's changes until disposed, and
    /// disposing it leaves both open.
    /// </summary>
    public static Task<VolumeManager> OpenAsync(IObjectStore store, IVolumeRegistry registry, ILogger logger, CancellationToken cancellationToken = default)
        => OpenAsync(store, registry, bitmaps: null, logger, cancellationToken);

    /// <summary>As above, with the volumes' dirty bitmaps kept in <paramref name="bitmaps"/> (a
    /// cluster node's catalog); without it, such a manager has no bitmaps.</summary>
    public static Task<VolumeManager> OpenAsync(IObjectStore store, IVolumeRegistry registry, IBitmapStore? bitmaps, ILogger logger, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(registry);
        ArgumentNullException.ThrowIfNull(logger);
        return StartAsync(store, registry, bitmaps, logger, owned: null, cancellationToken);
    }

    private static async Task<VolumeManager> StartAsync(IObjectStore store, IVolumeRegistry registry, IBitmapStore? bitmaps, ILogger logger, DataDirectory? owned, CancellationToken cancellationToken)
    {
        // The objects are listed before the registry is read: an object listed then existed then,
        // so its layer was in the registry already (a layer is saved before any of its data is
        // written), unless it is gone since. Read the other way round, a layer that another node
        // created in between would look like an orphan.
        IReadOnlyCollection<ObjectId> objects = store.ListObjects();
        VersionedCatalog loaded = await registry.LoadAsync(cancellationToken).ConfigureAwait(false);
        var manager = new VolumeManager(store, registry, logger, owned, loaded) { _bitmapStore = bitmaps };
        await manager.RemoveOrphansAsync(objects, loaded.State).ConfigureAwait(false);
        manager.StartBitmaps();
        manager._watch = Task.Run(() => manager.FollowRegistryAsync(manager._stopping.Token), CancellationToken.None);
        return manager;
    }

    /// <summary>Objects of layers the registry no longer has: left by a crash in the middle of a
    /// delete, a rollback or a merge, after the registry changed and before the data was gone.</summary>
    private async Task RemoveOrphansAsync(IReadOnlyCollection<ObjectId> objects, CatalogState state)
    {
        var ids = new HashSet<uint>(state.Volumes.Select(v => v.Id));
        bool removed = false;
        foreach (ObjectId id in objects)
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

    public async Task<VolumeInfo> CreateAsync(string name, long size, long? objectSize = null)
    {
        long osize = objectSize ?? DefaultObjectSize;
        CheckName(name, "volume name");
        if (osize < MinObjectSize || osize > LocalStore.MaxObjectBytes || (osize & (osize - 1)) != 0)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid object size {osize}: use a power of two from 4 KiB to {LocalStore.MaxObjectBytes >> 20} MiB");
        }
        CheckSize(size, osize);
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            uint id = await CommitAsync<uint>(state =>
            {
                CheckFree(name);
                var created = new VolumeRecord(state.NextId, name, size, osize, DateTimeOffset.UtcNow);
                return ([.. state.Volumes, created], created.Id);
            }).ConfigureAwait(false);
            return Describe(ById(id));
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
        if (size > MaxVolumeSize)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid size {size}: the largest volume is {MaxVolumeSize >> 40} TiB");
        }

        // Every object index must be one the store can hold (LocalStore.MaxObjectIndexValue).
        long maxObjects = (long)LocalStore.MaxObjectIndexValue + 1;
        if ((size + objectSize - 1) / objectSize > maxObjects)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument,
                $"invalid size {size}: a volume has at most {maxObjects} objects, {(maxObjects * objectSize) >> 40} TiB with {objectSize >> 10} KiB objects (use larger objects)");
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

    /// <summary>
    /// Where a volume's data lives: its layers, newest first (the volume's own, then the snapshots
    /// it reads through), its size and object size. False when there is no such volume.
    /// </summary>
    public bool TryGetLayout(string name, out uint[] chain, out long size, out long objectSize)
    {
        lock (_lock)
        {
            if (_byName.TryGetValue(name, out VolumeState? v))
            {
                (chain, size, objectSize) = ([.. v.Chain], v.Record.Size, v.Record.ObjectSize);
                return true;
            }
        }
        (chain, size, objectSize) = ([], 0, 0);
        return false;
    }

    /// <summary>The volume a layer belongs to (a snapshot's layer to the volume it was taken of);
    /// null when no layer has that id (any more).</summary>
    public string? VolumeOfLayer(uint layer)
    {
        lock (_lock)
        {
            return _byId.TryGetValue(layer, out VolumeState? v) ? v.Record.Name : null;
        }
    }

    /// <summary>The layers that belong to <paramref name="volume"/>: its own and its snapshots'.</summary>
    public IReadOnlyList<uint> LayersOf(string volume)
    {
        lock (_lock)
        {
            return [.. _byId.Values.Where(v => v.Record.Name == volume).Select(v => v.Record.Id)];
        }
    }

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
        return new VolumeInfo(r.Id, r.DisplayName, r.Size, r.ObjectSize, r.Created, UsedBytesOf(r.Id), connections)
        {
            Parent = parent,
            IsSnapshot = r.IsSnapshot,
            Deleting = r.Deleting,
            Cache = r.Cache,
        };
    }

    // Only the local store counts bytes per layer (IObjectStore has no such call yet).
    private long UsedBytesOf(uint layer) => _store is LocalStore local ? local.GetUsedBytes(layer) : 0;

    /// <summary>Growing is always allowed; shrinking discards the data past the new end and needs <paramref name="allowShrink"/>.</summary>
    public async Task<VolumeInfo> ResizeAsync(string name, long newSize, bool allowShrink)
    {
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            // Bits for the new end exist before any write can reach it; the range that appears or
            // goes is a change for every bitmap (zeroes where a backup had data), saved before the
            // resize is committed (one refused only over-reports).
            VolumeState before = FindLive(name);
            long oldSize = before.Record.Size;
            if (newSize >= oldSize || allowShrink)
            {
                foreach (DirtyBitmap bitmap in before.Bitmaps)
                {
                    CheckBitmapFits(newSize, bitmap.Granularity);
                }
                foreach (DirtyBitmap bitmap in before.Bitmaps)
                {
                    bitmap.Grow(newSize);
                }
                MarkAll(before, Math.Min(newSize, oldSize), Math.Abs(newSize - oldSize));
                await SaveBitmapsOfAsync(before).ConfigureAwait(false);
            }
            (VolumeState v, VolumeRecord old) = await CommitAsync<(VolumeState, VolumeRecord)>(state =>
            {
                VolumeState found = FindLive(name);
                VolumeRecord r = found.Record;
                CheckNotPinned(r, name);
                CheckSize(newSize, r.ObjectSize);
                if (newSize < r.Size)
                {
                    if (!allowShrink)
                    {
                        throw new VolumeException(VolumeErrorCode.InvalidArgument, $"shrinking '{name}' from {r.Size} to {newSize} bytes discards data: pass --allow-shrink");
                    }
                    if (found.Connections > 0)
                    {
                        throw new VolumeException(VolumeErrorCode.InUse, $"volume '{name}' is exported to {found.Connections} connection(s): disconnect them before shrinking");
                    }
                }
                return (Replace(state, r with { Size = newSize }), (found, r));
            }).ConfigureAwait(false);
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
            CheckNotDeleting(v.Record);
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

    // ---- registry changes: always the registry first, then the in-memory maps ----

    /// <summary>
    /// Saves the registry state that <paramref name="change"/> computes from the current one, on
    /// the condition that nobody saved another meanwhile. <paramref name="change"/> checks the
    /// request against the maps (which show the state it is given) and throws
    /// <see cref="VolumeException"/> to refuse it; returning null records saves nothing. When
    /// another node saved first, its state is applied and <paramref name="change"/> runs again on
    /// it, so the caller gets the answer that state warrants (a name taken meanwhile is
    /// AlreadyExists). Call under <see cref="_control"/>.
    /// </summary>
    private async Task<T> CommitAsync<T>(Func<CatalogState, (IReadOnlyList<VolumeRecord>? Records, T Result)> change)
    {
        long started = Stopwatch.GetTimestamp();
        for (int attempt = 1; ; attempt++)
        {
            VersionedCatalog from = _current;
            (IReadOnlyList<VolumeRecord>? records, T result) = change(from.State);
            if (records is null)
            {
                return result;
            }
            RegistrySaveResult saved = await _registry.TrySaveAsync(from.State.With(records), from.Version).ConfigureAwait(false);
            Apply(saved.Current);
            if (saved.Saved)
            {
                return result;
            }
            if (saved.Current.Version <= from.Version)
            {
                // Retrying cannot help: the registry is not where this node saw it last.
                throw new InvalidOperationException($"the volume registry went back from version {from.Version} to {saved.Current.Version}: was it deleted or restored from a backup?");
            }
            LogCommitConflict(_logger, attempt, saved.Current.Version);
            if (Stopwatch.GetElapsedTime(started) > CommitPatience)
            {
                throw new VolumeException(VolumeErrorCode.Conflict, $"other nodes changed the volume registry {attempt} times under this request in {CommitPatience.TotalSeconds:0} s: try again");
            }
        }
    }

    /// <summary><see cref="CommitAsync{T}"/> for a change without a result.</summary>
    private async Task CommitAsync(Func<CatalogState, IReadOnlyList<VolumeRecord>> change)
        => await CommitAsync<bool>(state => (change(state), true)).ConfigureAwait(false);

    /// <summary>The records of <paramref name="state"/> with one replaced, matched by id.</summary>
    private static List<VolumeRecord> Replace(CatalogState state, VolumeRecord changed)
        => [.. state.Volumes.Select(r => r.Id == changed.Id ? changed : r)];

    private VolumeState ById(uint id)
    {
        lock (_lock)
        {
            return _byId[id];
        }
    }

    /// <summary>
    /// Makes <paramref name="next"/> the in-memory view, unless the view is that version or newer
    /// already (a watch reports this node's own saves too). A live volume that continues under a
    /// new id — a snapshot or a rollback, here or on another node, gave it a new top layer over a
    /// snapshot of its own — keeps its state, with its open handles, under the new id.
    /// </summary>
    private void Apply(VersionedCatalog next)
    {
        lock (_lock)
        {
            if (next.Version <= _current.Version)
            {
                return;
            }
            IReadOnlyList<VolumeRecord> records = next.State.Volumes;
            var byId = records.ToDictionary(r => r.Id);
            foreach (VolumeRecord r in records)
            {
                // The parent test keeps a volume deleted and created again under the same name
                // from inheriting the old one's handles: a new volume cannot stand on a snapshot
                // of its name, as a volume with snapshots cannot be deleted.
                if (!r.IsSnapshot && !_byId.ContainsKey(r.Id)
                    && _byName.TryGetValue(r.Name, out VolumeState? live) && !live.Record.IsSnapshot && live.Record.Id != r.Id
                    && r.ParentId is uint p && byId.TryGetValue(p, out VolumeRecord? parent) && parent.IsSnapshot && parent.Name == r.Name)
                {
                    _byId.Remove(live.Record.Id);
                    _byId[r.Id] = live;
                }
            }
            foreach (VolumeRecord r in records)
            {
                if (_byId.TryGetValue(r.Id, out VolumeState? state))
                {
                    state.Record = r;
                }
                else
                {
                    _byId[r.Id] = new VolumeState(r);
                }
            }
            foreach (uint id in _byId.Keys.Where(id => !byId.ContainsKey(id)).ToList())
            {
                _byId.Remove(id);
            }
            _byName.Clear();
            foreach (VolumeState v in _byId.Values)
            {
                _byName[v.Record.DisplayName] = v;
            }
            RebuildChains();
            IndexCacheModes(records);
            _current = next;
        }
    }

    /// <summary>Applies what other nodes save, until the manager is disposed; a broken watch is started again.</summary>
    private async Task FollowRegistryAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                long from;
                lock (_lock)
                {
                    from = _current.Version;
                }
                await foreach (VersionedCatalog next in _registry.WatchAsync(from, cancellationToken).ConfigureAwait(false))
                {
                    // Under the control lock: an operation computes from _current and applies
                    // what it saved without a change from elsewhere slipping in between.
                    await _control.WaitAsync(cancellationToken).ConfigureAwait(false);
                    try
                    {
                        if (next.Version > _current.Version)
                        {
                            Apply(next);
                            LogRegistryChanged(_logger, next.Version, next.State.Volumes.Count);
                        }
                    }
                    finally
                    {
                        _control.Release();
                    }
                }
                return;
            }
            catch (Exception) when (cancellationToken.IsCancellationRequested)
            {
                return; // disposed: however the watch ended, nobody needs it any more
            }
            catch (Exception e)
            {
                LogWatchFailed(_logger, WatchRetryDelay.TotalSeconds, e);
                try
                {
                    await Task.Delay(WatchRetryDelay, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
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

    /// <summary>Removes a layer's objects (after the registry no longer names it).</summary>
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

    /// <summary>Stops following the registry; a manager that opened the data directory then closes its store and lock.</summary>
    // Idempotent: the node's host disposes the manager it handed out, and the node does too.
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await _stopping.CancelAsync().ConfigureAwait(false);
        await _watch.ConfigureAwait(false);
        if (_owned is not null)
        {
            await _owned.DisposeAsync().ConfigureAwait(false);
        }
        _control.Dispose();
        _stopping.Dispose();
        Grace.Dispose();
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Debug, Message = "Volume registry version {Version} applied ({Layers} layers)")]
    private static partial void LogRegistryChanged(ILogger logger, long version, int layers);

    [LoggerMessage(EventId = 2, Level = LogLevel.Warning, Message = "Watching the volume registry failed; watching again in {Seconds} s")]
    private static partial void LogWatchFailed(ILogger logger, double seconds, Exception exception);

    [LoggerMessage(EventId = 3, Level = LogLevel.Debug, Message = "Another node changed the volume registry first (attempt {Attempt}, now version {Version}); computing the change again")]
    private static partial void LogCommitConflict(ILogger logger, int attempt, long version);
}
