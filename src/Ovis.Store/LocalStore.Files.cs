using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>
/// The object files kept open. A store may hold more objects than the process may have open
/// files, so at most <see cref="LocalStoreOptions.MaxOpenFiles"/> stay open; past that some are
/// closed and reopened when next needed. A handle is closed only under its object's lock, and
/// users outside the lock hold a reference (DangerousAddRef), so a close never pulls a file
/// from under a read or a write: the descriptor goes when the last reference does.
/// </summary>
public sealed partial class LocalStore
{
    private int _openFiles;
    private int _evicting;

    /// <summary>Object files open now.</summary>
    internal int OpenFileCount => Volatile.Read(ref _openFiles);

    /// <summary>The object's file with a reference taken (release it with DangerousRelease), or
    /// null when the file does not exist and <paramref name="create"/> is false.</summary>
    private SafeFileHandle? AcquireFile(ObjectMeta meta, bool create)
    {
        SafeFileHandle? file;
        lock (meta.Lock)
        {
            file = meta.File ?? OpenFileLocked(meta, create);
            if (file is null)
            {
                return null;
            }
            bool added = false;
            file.DangerousAddRef(ref added);
        }
        EvictFilesIfNeeded();
        return file;
    }

    /// <summary>Opens (or creates) the object's file; caller holds the object's lock.</summary>
    private SafeFileHandle? OpenFileLocked(ObjectMeta meta, bool create)
    {
        string path = ObjectPath(meta.Id);
        bool exists = File.Exists(path);
        if (!exists && !create)
        {
            return null;
        }
        if (!exists && _knownDirectories.TryAdd(meta.Id.Volume, 0))
        {
            Directory.CreateDirectory(ObjectDirectory(meta.Id.Volume));
            MarkDirectoryDirty(Path.Combine(_directory, "objects"));
        }
        meta.File = File.OpenHandle(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite);
        if (!exists)
        {
            // The new directory entry must be durable before the journal records that filled
            // the file are dropped: the checkpoint syncs this directory.
            MarkDirectoryDirty(ObjectDirectory(meta.Id.Volume));
        }
        Interlocked.Increment(ref _openFiles);
        return meta.File;
    }

    /// <summary>Closes the object's file if open; caller holds the object's lock.</summary>
    private void CloseFileLocked(ObjectMeta meta)
    {
        if (meta.File is not null)
        {
            meta.File.Dispose();
            meta.File = null;
            Interlocked.Decrement(ref _openFiles);
        }
    }

    /// <summary>
    /// Past the limit, closes files until a quarter of the budget is free again. Never called
    /// with an object lock held (it takes other objects' locks). One thread evicts at a time;
    /// one that finds another at it leaves the work to that one, which therefore looks at the
    /// count again after letting go: a file opened meanwhile is not left over the budget.
    /// </summary>
    private void EvictFilesIfNeeded()
    {
        // Both sides are full fences (Increment in OpenFileLocked then CompareExchange here;
        // Exchange below then the Read here): an opener that finds the flag taken has its file
        // counted before the evictor reads the count again.
        while (Volatile.Read(ref _openFiles) > _options.MaxOpenFiles
            && Interlocked.CompareExchange(ref _evicting, 1, 0) == 0)
        {
            try
            {
                EvictFiles();
            }
            finally
            {
                Interlocked.Exchange(ref _evicting, 0);
            }
        }
    }

    private void EvictFiles()
    {
        int target = _options.MaxOpenFiles * 3 / 4;
        foreach (ObjectMeta meta in _objects.Values)
        {
            if (Volatile.Read(ref _openFiles) <= target)
            {
                return;
            }
            if (meta.File is null)
            {
                continue;
            }
            lock (meta.Lock)
            {
                CloseFileLocked(meta);
            }
        }
    }
}
