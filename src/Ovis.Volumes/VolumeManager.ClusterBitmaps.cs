namespace Ovis.Volumes;

/// <summary>
/// Dirty bitmaps on a cluster node (docs/backup.md, "In a cluster"). The catalog keeps them
/// (<see cref="IBitmapStore"/>); a node holds a volume's bitmaps in memory only while it holds
/// the volume's lock. Writes mark them as on a single node, and they are saved at the points
/// where the dirty-region log is about to forget objects — so every change since the last save
/// is in an object the log still names — and when the lock goes. A node that takes the lock
/// marks every object the log still names as wholly changed: what a gateway that died wrote
/// after its last save is over-reported at object granularity, never missed.
/// </summary>
public sealed partial class VolumeManager
{
    private IBitmapStore? _bitmapStore;
    // One catalog save of a bitmap at a time (SaveBitmapAsync).
    private readonly SemaphoreSlim _bitmapSaves = new(1, 1);
    // The volumes whose bitmaps this node holds now (it holds their lock), each with the handle of
    // the load that brought them, so that letting go of an ended tenure never drops a newer one's.
    // Guarded by _lock.
    private readonly Dictionary<string, object> _bitmapsHeld = new(StringComparer.Ordinal);

    // On a cluster node, only the node holding the volume's lock has its bitmaps.
    private void CheckBitmapsHeld(string volume)
    {
        CheckBitmaps();
        // A snapshot has none: the caller's lookup says so.
        if (_bitmapStore is null || volume.Contains('@', StringComparison.Ordinal))
        {
            return;
        }
        lock (_lock)
        {
            if (!_bitmapsHeld.ContainsKey(volume))
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"the bitmaps of volume '{volume}' are kept by the node that holds its lock: ask that node");
            }
        }
    }

    // The catalog takes values of a bounded size; a bitmap with its frozen part must fit.
    private void CheckBitmapFits(long volumeSize, long granularity)
    {
        if (_bitmapStore is { } store && DirtyBitmap.EncodedSize(volumeSize, granularity) > store.MaxBytes)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument,
                $"a bitmap of {volumeSize} bytes at granularity {granularity} takes {DirtyBitmap.EncodedSize(volumeSize, granularity)} bytes, more than the cluster catalog keeps ({store.MaxBytes}): use a coarser --granularity");
        }
    }

    /// <summary>
    /// This node just took <paramref name="volume"/>'s lock: loads its bitmaps from the catalog,
    /// marks in each every object that the dirty-region log of the volume's layers names
    /// (<paramref name="readLog"/>: as the lock's previous holder left it), and saves them — before
    /// the first write or recovery under the lock, so the log may forget those objects afterwards.
    /// Returns the handle to let go of them with; null when there is nothing to hold.
    /// </summary>
    public async Task<object?> LoadBitmapsAsync(string volume,
        Func<IReadOnlyCollection<uint>, CancellationToken, Task<IReadOnlyDictionary<uint, uint[]>>> readLog, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(readLog);
        if (_bitmapStore is not { } store)
        {
            return null;
        }
        await _control.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            VolumeState? v;
            uint[] layers;
            lock (_lock)
            {
                v = _byName.TryGetValue(volume, out VolumeState? found) && !found.Record.IsSnapshot ? found : null;
                // The chain, and the volume's snapshots off it: a merge writes into either.
                layers = v is null ? [] : [.. v.Chain.Union(_byId.Values.Where(s => s.Record.Name == volume).Select(s => s.Record.Id))];
            }
            if (v is null)
            {
                return null;
            }
            (IReadOnlyDictionary<string, byte[]> saved, bool released) = await store.LoadAsync(volume, cancellationToken).ConfigureAwait(false);
            long size = v.Record.Size;
            DirtyBitmap[] loaded = [.. saved.OrderBy(s => s.Key, StringComparer.Ordinal)
                .Select(s => DirtyBitmap.Decode(s.Value, null, s.Key, volume, size))];
            if (released)
            {
                // The last holder saved every bit after its last write, and what the log names
                // now it had marked already (when it took the lock). Withdrawn before this
                // holder's first write: should it die, the next one must mark from the log again.
                await store.SetReleasedAsync(volume, released: false, cancellationToken).ConfigureAwait(false);
            }
            else if (loaded.Length > 0)
            {
                IReadOnlyDictionary<uint, uint[]> logged = await readLog(layers, cancellationToken).ConfigureAwait(false);
                foreach ((uint layer, uint[] indexes) in logged)
                {
                    long objectSize;
                    lock (_lock)
                    {
                        objectSize = _byId.TryGetValue(layer, out VolumeState? l) ? l.Record.ObjectSize : v.Record.ObjectSize;
                    }
                    foreach (long offset in indexes.Select(i => i * objectSize).Where(o => o < size))
                    {
                        foreach (DirtyBitmap bitmap in loaded)
                        {
                            bitmap.Mark(offset, Math.Min(objectSize, size - offset));
                        }
                    }
                }
                foreach (DirtyBitmap bitmap in loaded)
                {
                    await SaveBitmapAsync(bitmap, force: false).ConfigureAwait(false);
                }
            }
            object handle = new();
            lock (_lock)
            {
                v.Bitmaps = loaded;
                _bitmapsHeld[volume] = handle;
            }
            return handle;
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>
    /// This node lets go of the lock it loaded <paramref name="volume"/>'s bitmaps under
    /// (<paramref name="handle"/>): they are saved, if the lock still allows, and dropped. A save
    /// refused here loses nothing: every bit not saved is in an object the dirty-region log still
    /// names. Once saved, the release is recorded, so the next holder need not mark those objects.
    /// </summary>
    public async Task UnloadBitmapsAsync(string volume, object handle)
    {
        if (_bitmapStore is null)
        {
            return;
        }
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState? v;
            lock (_lock)
            {
                if (!_bitmapsHeld.TryGetValue(volume, out object? current) || !ReferenceEquals(current, handle))
                {
                    return;
                }
                _bitmapsHeld.Remove(volume);
                v = _byName.TryGetValue(volume, out VolumeState? found) && !found.Record.IsSnapshot ? found : null;
            }
            if (v is null)
            {
                return;
            }
            try
            {
                await SaveBitmapsOfAsync(v).ConfigureAwait(false);
                // No write is left under this lock: what the log still names is in the saved bits.
                if (v.Bitmaps.Length > 0)
                {
                    await _bitmapStore.SetReleasedAsync(volume, released: true, CancellationToken.None).ConfigureAwait(false);
                }
            }
            finally
            {
                lock (_lock)
                {
                    v.Bitmaps = [];
                }
            }
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>
    /// The dirty-region log is about to forget objects of <paramref name="layers"/>: the bitmaps of
    /// the volumes they belong to are saved first, with every bit set so far — every write to
    /// those objects set its bits before it began. Throws when a save fails; then nothing may be
    /// forgotten.
    /// </summary>
    public async Task SaveBitmapsOfLayersAsync(IReadOnlyCollection<uint> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (_bitmapStore is null)
        {
            return;
        }
        var volumes = new HashSet<VolumeState>();
        foreach (uint layer in layers)
        {
            if (LiveStateOfLayer(layer, out _) is { Bitmaps.Length: > 0 } v)
            {
                volumes.Add(v);
            }
        }
        foreach (VolumeState v in volumes)
        {
            await SaveBitmapsOfAsync(v).ConfigureAwait(false);
        }
    }
}
