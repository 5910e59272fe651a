using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// Persistent dirty bitmaps (docs/backup.md). Each live volume holds its bitmaps in its state;
/// writes mark them inside the volume's gate before the store sees the write, and the local
/// store's checkpoints save them before the journal forgets the records they cover, so a bitmap
/// costs no sync on the data path and after any crash marks at least every block changed since it
/// was created (replay marks what the journal held). Only a node with its own data directory has
/// them; a cluster node refuses (docs/backup.md says why).
/// </summary>
public sealed partial class VolumeManager
{
    public const long DefaultBitmapGranularity = 64L << 10;
    private string? _bitmapDirectory;
    // Bitmaps whose frozen bits a running backup is copying. Guarded by _control.
    private readonly HashSet<DirtyBitmap> _runningBackups = [];

    private string BitmapDirectory => _bitmapDirectory
        ?? throw new VolumeException(VolumeErrorCode.InvalidArgument, "dirty bitmaps need a node with its own data directory: a cluster node does not keep them yet");

    private string BitmapPath(string volume, string bitmap) => Path.Combine(BitmapDirectory, volume, bitmap);

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
        _ = BitmapDirectory;
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(volume);
            if (v.Bitmaps.Any(b => b.Name == name))
            {
                throw new VolumeException(VolumeErrorCode.AlreadyExists, $"bitmap '{name}' already exists on volume '{volume}'");
            }
            var bitmap = new DirtyBitmap(BitmapPath(volume, name), name, volume, g, v.Record.Size, DateTimeOffset.UtcNow);
            bitmap.Save(force: true);
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
        _ = BitmapDirectory;
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
            File.Delete(bitmap.Path);
            DirectorySync.Sync(Path.GetDirectoryName(bitmap.Path)!);
        }
        finally
        {
            _control.Release();
        }
    }

    public IReadOnlyList<BitmapInfo> ListBitmaps(string volume)
    {
        _ = BitmapDirectory;
        return [.. FindLive(volume).Bitmaps.Select(b => b.Describe())];
    }

    public BitmapInfo GetBitmap(string volume, string name) => FindBitmap(FindLive(volume), name).Describe();

    /// <summary>Forgets what the bitmap marked: from now on it tracks changes from this instant.</summary>
    public async Task<BitmapInfo> ClearBitmapAsync(string volume, string name)
    {
        _ = BitmapDirectory;
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
            bitmap.Save(force: true);
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

    private static void SaveBitmapsOf(VolumeState v)
    {
        foreach (DirtyBitmap bitmap in v.Bitmaps)
        {
            bitmap.Save(force: false);
        }
    }

    /// <summary>A volume is deleted: its bitmaps go with it.</summary>
    private void DeleteBitmapsOf(string volume)
    {
        if (_bitmapDirectory is not null && Directory.Exists(Path.Combine(_bitmapDirectory, volume)))
        {
            Directory.Delete(Path.Combine(_bitmapDirectory, volume), recursive: true);
            DirectorySync.Sync(_bitmapDirectory);
        }
    }
}
