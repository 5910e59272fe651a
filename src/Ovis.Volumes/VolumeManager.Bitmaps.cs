using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// Persistent dirty bitmaps (docs/backup.md). Each live volume holds its bitmaps in its state;
/// writes mark them inside the volume's gate before the store sees the write, and the local
/// store's checkpoints save them before the journal forgets the records they cover, so a bitmap
/// costs no sync on the data path and after any crash marks at least every block changed since it
/// was created (replay marks what the journal held). A cluster node keeps them in the catalog
/// instead (VolumeManager.ClusterBitmaps.cs).
/// </summary>
public sealed partial class VolumeManager
{
    public const long DefaultBitmapGranularity = 64L << 10;
    private string? _bitmapDirectory;
    // Bitmaps whose frozen bits a running backup is copying. Guarded by _control.
    private readonly HashSet<DirtyBitmap> _runningBackups = [];

    private void CheckBitmaps()
    {
        if (_bitmapDirectory is null && _bitmapStore is null)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, "dirty bitmaps need a node with its own data directory, or a cluster node with the dirty-region log on (--dirty-log on)");
        }
    }

    // The file of a new bitmap; none on a cluster node, whose catalog keeps it.
    private string? NewBitmapPath(string volume, string bitmap) => _bitmapDirectory is null ? null : Path.Combine(_bitmapDirectory, volume, bitmap);

    /// <summary>Saves a bitmap where this node keeps it: its file, or the catalog.</summary>
    private async Task SaveBitmapAsync(DirtyBitmap bitmap, bool force)
    {
        if (_bitmapStore is not { } store)
        {
            bitmap.Save(force);
            return;
        }
        // One save at a time: an older form must never land in the catalog after a newer one.
        await _bitmapSaves.WaitAsync().ConfigureAwait(false);
        try
        {
            if (bitmap.Removed || bitmap.Encode(force) is not { } content)
            {
                return;
            }
            try
            {
                await store.SaveAsync(bitmap.Volume, bitmap.Name, content, CancellationToken.None).ConfigureAwait(false);
            }
            catch
            {
                bitmap.Unsaved();
                throw;
            }
        }
        finally
        {
            _bitmapSaves.Release();
        }
    }

    private async Task SaveBitmapsOfAsync(VolumeState v)
    {
        foreach (DirtyBitmap bitmap in v.Bitmaps)
        {
            await SaveBitmapAsync(bitmap, force: false).ConfigureAwait(false);
        }
    }

    private async Task DeleteBitmapAsync(DirtyBitmap bitmap)
    {
        if (bitmap.Path is { } path)
        {
            File.Delete(path);
            DirectorySync.Sync(Path.GetDirectoryName(path)!);
        }
        else if (_bitmapStore is { } store)
        {
            // Among the saves: one that read the bitmap before it went must not bring it back.
            await _bitmapSaves.WaitAsync().ConfigureAwait(false);
            try
            {
                bitmap.Removed = true;
                await store.DeleteAsync(bitmap.Volume, bitmap.Name, CancellationToken.None).ConfigureAwait(false);
            }
            finally
            {
                _bitmapSaves.Release();
            }
        }
    }

    /// <summary>Loads the saved bitmaps, marks in them what the journal replayed at this start, saves
    /// them and lets the store forget the replayed list; then keeps them saved at every checkpoint.</summary>
    private void StartBitmaps()
    {
        if (_owned is null || _store is not LocalStore local)
        {
            return;
        }
        _bitmapDirectory = Path.Combine(_owned.Path, "bitmaps");
        Directory.CreateDirectory(_bitmapDirectory);
        foreach (string volumeDir in Directory.EnumerateDirectories(_bitmapDirectory))
        {
            string volume = Path.GetFileName(volumeDir);
            VolumeState? state;
            lock (_lock)
            {
                state = _byName.TryGetValue(volume, out VolumeState? v) && !v.Record.IsSnapshot ? v : null;
            }
            if (state is null)
            {
                // The volume was deleted and the crash came before its bitmaps went.
                Directory.Delete(volumeDir, recursive: true);
                continue;
            }
            var loaded = new List<DirtyBitmap>();
            foreach (string file in Directory.EnumerateFiles(volumeDir))
            {
                if (file.EndsWith(".tmp", StringComparison.Ordinal))
                {
                    File.Delete(file); // a save that did not finish; the file before it stands
                    continue;
                }
                loaded.Add(DirtyBitmap.Load(file, volume, state.Record.Size));
            }
            state.Bitmaps = [.. loaded.OrderBy(b => b.Name, StringComparer.Ordinal)];
        }
        foreach (StoreChange change in local.ReplayedChanges)
        {
            VolumeState? state = LiveStateOfLayer(change.Id.Volume, out long objectSize);
            foreach (DirtyBitmap bitmap in state?.Bitmaps ?? [])
            {
                bitmap.Mark((change.Id.Index * objectSize) + ((long)change.FirstBlock * local.BlockSize), (long)change.BlockCount * local.BlockSize);
            }
        }
        SaveBitmaps(force: local.ReplayedChanges.Count > 0);
        local.ConsumeReplayedChanges();
        local.AddCheckpointParticipant(() => SaveBitmaps(force: false));
    }

    // The live volume a layer's writes belonged to: its own, or the volume a snapshot was taken of.
    private VolumeState? LiveStateOfLayer(uint layer, out long objectSize)
    {
        lock (_lock)
        {
            objectSize = 0;
            if (!_byId.TryGetValue(layer, out VolumeState? v))
            {
                return null;
            }
            objectSize = v.Record.ObjectSize;
            return _byName.TryGetValue(v.Record.Name, out VolumeState? live) && !live.Record.IsSnapshot ? live : null;
        }
    }

    private void SaveBitmaps(bool force)
    {
        DirtyBitmap[] all;
        lock (_lock)
        {
            all = [.. _byId.Values.Distinct().SelectMany(v => v.Bitmaps)];
        }
        foreach (DirtyBitmap bitmap in all)
        {
            bitmap.Save(force);
        }
    }

    private static void CheckGranularity(long granularity)
    {
        if (granularity < LocalStore.StoreBlockSize || granularity > (64L << 20) || (granularity & (granularity - 1)) != 0)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid granularity {granularity}: use a power of two from 4 KiB to 64 MiB");
        }
    }

    private static DirtyBitmap FindBitmap(VolumeState v, string name)
        => v.Bitmaps.FirstOrDefault(b => b.Name == name)
            ?? throw new VolumeException(VolumeErrorCode.NotFound, $"bitmap '{name}' not found on volume '{v.Record.Name}'");

    /// <summary>Creates a bitmap that tracks every change to the volume from now on.</summary>
    public async Task<BitmapInfo> AddBitmapAsync(string volume, string name, long? granularity = null)
    {
        long g = granularity ?? DefaultBitmapGranularity;
        CheckName(name, "bitmap name");
        CheckGranularity(g);
        CheckBitmapsHeld(volume);
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(volume);
            if (v.Bitmaps.Any(b => b.Name == name))
            {
                throw new VolumeException(VolumeErrorCode.AlreadyExists, $"bitmap '{name}' already exists on volume '{volume}'");
            }
            CheckBitmapFits(v.Record.Size, g);
            var bitmap = new DirtyBitmap(NewBitmapPath(volume, name), name, volume, g, v.Record.Size, DateTimeOffset.UtcNow);
            await SaveBitmapAsync(bitmap, force: true).ConfigureAwait(false);
            // Writes in flight finish first: what a bitmap tracks starts at one instant.
            await v.Gate.FreezeAsync().ConfigureAwait(false);
            try
            {
                lock (_lock)
                {
                    v.Bitmaps = [.. v.Bitmaps, bitmap];
                }
            }
            finally
            {
                v.Gate.Thaw();
            }
            return bitmap.Describe();
        }
        finally
        {
            _control.Release();
        }
    }

    public async Task RemoveBitmapAsync(string volume, string name)
    {
        CheckBitmapsHeld(volume);
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(volume);
            DirtyBitmap bitmap = FindBitmap(v, name);
            if (_runningBackups.Contains(bitmap))
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"bitmap '{name}' is in use by a running backup of '{volume}': cancel it first");
            }
            lock (_lock)
            {
                v.Bitmaps = [.. v.Bitmaps.Where(b => b != bitmap)];
            }
            await DeleteBitmapAsync(bitmap).ConfigureAwait(false);
        }
        finally
        {
            _control.Release();
        }
    }

    public IReadOnlyList<BitmapInfo> ListBitmaps(string volume)
    {
        CheckBitmapsHeld(volume);
        return [.. FindLive(volume).Bitmaps.Select(b => b.Describe())];
    }

    public BitmapInfo GetBitmap(string volume, string name)
    {
        CheckBitmapsHeld(volume);
        return FindBitmap(FindLive(volume), name).Describe();
    }

    /// <summary>Forgets what the bitmap marked: from now on it tracks changes from this instant.</summary>
    public async Task<BitmapInfo> ClearBitmapAsync(string volume, string name)
    {
        CheckBitmapsHeld(volume);
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(volume);
            DirtyBitmap bitmap = FindBitmap(v, name);
            if (_runningBackups.Contains(bitmap))
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"bitmap '{name}' is in use by a running backup of '{volume}': cancel it first");
            }
            await v.Gate.FreezeAsync().ConfigureAwait(false);
            try
            {
                bitmap.Clear();
            }
            finally
            {
                v.Gate.Thaw();
            }
            await SaveBitmapAsync(bitmap, force: true).ConfigureAwait(false);
            return bitmap.Describe();
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>Marks a range of a live volume as changed in all its bitmaps (a rollback, a resize).</summary>
    private static void MarkAll(VolumeState v, long offset, long length)
    {
        foreach (DirtyBitmap bitmap in v.Bitmaps)
        {
            bitmap.Mark(offset, length);
        }
    }

    /// <summary>A volume is deleted: its bitmaps go with it.</summary>
    private async Task DeleteBitmapsOfAsync(string volume)
    {
        if (_bitmapDirectory is not null && Directory.Exists(Path.Combine(_bitmapDirectory, volume)))
        {
            Directory.Delete(Path.Combine(_bitmapDirectory, volume), recursive: true);
            DirectorySync.Sync(_bitmapDirectory);
        }
        else if (_bitmapStore is { } store)
        {
            // After any save in progress; none starts later, the volume being gone from the maps.
            await _bitmapSaves.WaitAsync().ConfigureAwait(false);
            try
            {
                await store.DeleteAsync(volume, null, CancellationToken.None).ConfigureAwait(false);
            }
            finally
            {
                _bitmapSaves.Release();
            }
        }
    }
}
