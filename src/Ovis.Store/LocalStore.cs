using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>
/// A node's local object store: a write-ahead journal with group commit in front of sparse
/// object files, with a CRC32C per 4 KiB block.
///
/// A write is copied into the journal's open batch and is visible to reads from there at once
/// (the overlay). A flush writes the sealed batches with O_DIRECT and makes them durable with a
/// single fdatasync of the journal, however many objects were touched. Only then are the
/// batches applied to the object files (buffered writes), so an object file never holds data
/// that the journal could not replay. A checkpoint syncs the object files and their block
/// metadata and moves the journal's tail, in the background.
///
/// Directory layout:
///   journal                    the journal ring (O_DIRECT)
///   objects/VVVVVVVV/IIIIIIII  one sparse file per object (volume id, object index in hex)
///   meta/VVVVVVVV              per-volume file of fixed-size slots: block crcs and states
/// </summary>
public sealed partial class LocalStore : IObjectStore, IJournalSink
{
    public const int StoreBlockSize = JournalFormat.BlockSize;
    public const long MaxObjectBytes = 16L << 20;

    /// <summary>
    /// Largest object index the store holds. An object's checkpoint slot sits at index × slot size in
    /// its layer's meta file, and the file must stay within what every file system Ovis runs on
    /// allows (16 TiB less a block on ext4 with 4 KiB blocks; 15 TiB leaves a margin); past it a
    /// checkpoint would fail for good and the journal could never be freed. Volumes are sized so
    /// their objects stay below it.
    /// </summary>
    public const uint MaxObjectIndexValue = (uint)((15L << 40) / (MaxObjectBytes / StoreBlockSize * 5)) - 1;
    private const int MaxBlocks = (int)(MaxObjectBytes / StoreBlockSize);
    // Large writes are split into records of at most 1 MiB, and small enough that a batch holds one.
    private readonly int _maxBlocksPerRecord;

    // A record covers at most 1 MiB of blocks.
    private const int MaxBlocksPerRecord = 256;

    private readonly string _directory;
    private readonly LocalStoreOptions _options;
    private readonly ILogger _logger;
    private readonly Journal _journal;
    private readonly ConcurrentDictionary<ulong, ObjectMeta> _objects = new();
    private readonly Lock _dirtyLock = new();
    private HashSet<ObjectMeta> _dirty = [];
    private HashSet<string> _dirtyDirectories = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _checkpointWake = new(0);
    private readonly SemaphoreSlim _checkpointGate = new(1);
    private Task? _checkpointLoop;
    private readonly SpaceAccount _space;

    private LocalStore(string directory, LocalStoreOptions options, ILogger logger, Journal journal)
    {
        _directory = directory;
        _space = new SpaceAccount(options.SpaceProbe ?? (() => NativeIo.FileSystemSpace(directory)), options.NearFullRatio, options.FullRatio);
        _options = options;
        _logger = logger;
        _journal = journal;
        _maxBlocksPerRecord = Math.Min(MaxBlocksPerRecord, (options.BatchSize - JournalFormat.BatchHeaderSize - JournalFormat.RecordHeaderSize) / (StoreBlockSize + 4));
    }

    public int BlockSize => StoreBlockSize;

    public long MaxObjectSize => MaxObjectBytes;

    /// <inheritdoc/>
    public uint MaxObjectIndex => MaxObjectIndexValue;

    /// <summary>Opens the store in <paramref name="directory"/> (creating it), replays the journal
    /// and checkpoints, so the store starts clean.</summary>
    public static LocalStore Open(string directory, LocalStoreOptions options, ILogger logger)
    {
        if (options.JournalSize % JournalFormat.BlockSize != 0 || options.JournalSize < 4L * options.BatchSize)
        {
            throw new ArgumentException($"journal size must be a multiple of 4 KiB and at least 4 batches ({4L * options.BatchSize} bytes)", nameof(options));
        }
        Directory.CreateDirectory(Path.Combine(directory, "objects"));
        Directory.CreateDirectory(Path.Combine(directory, "meta"));
        var journal = Journal.Open(Path.Combine(directory, "journal"), options.JournalSize, options.BatchSize, options.BatchCount, options.CommitInterval, logger);
        LocalStore store;
        try
        {
            store = new LocalStore(directory, options, logger, journal);
        }
        catch
        {
            journal.Dispose();
            throw;
        }
        try
        {
            store.Recover();
        }
        catch
        {
            journal.Dispose();
            throw;
        }
        journal.Start(store);
        store._checkpointLoop = Task.Run(store.CheckpointLoopAsync);
        return store;
    }

    private ObjectMeta GetOrAdd(ObjectId id) => _objects.GetOrAdd(id.Packed, static (key) => new ObjectMeta(ObjectId.FromPacked(key)));

    public IReadOnlyCollection<ObjectId> ListObjects()
    {
        var ids = new List<ObjectId>();
        foreach (ObjectMeta meta in _objects.Values)
        {
            if (CountUsedBlocks(meta) > 0)
            {
                ids.Add(meta.Id);
            }
        }
        return ids;
    }

    public long UsedBytes => GetUsedBytes(null);

    /// <summary>The file system's size and free space as the store counts them (reservations of
    /// writes not yet applied included), with the near-full and full thresholds.</summary>
    public StoreSpace Space => _space.Snapshot;

    /// <summary>Bytes of data held by one volume's objects, or by all when <paramref name="volume"/> is null.</summary>
    public long GetUsedBytes(uint? volume)
    {
        long blocks = 0;
        foreach (ObjectMeta meta in _objects.Values)
        {
            if (volume is null || meta.Id.Volume == volume)
            {
                blocks += CountUsedBlocks(meta);
            }
        }
        return blocks * StoreBlockSize;
    }

    private static int CountUsedBlocks(ObjectMeta meta)
    {
        int used = 0;
        lock (meta.Lock)
        {
            for (int b = 0; b < meta.Blocks; b++)
            {
                if (meta.EffectiveState(b) == BlockState.Data)
                {
                    used++;
                }
            }
        }
        return used;
    }

    private string ObjectsDirectory => Path.Combine(_directory, "objects");

    private string ObjectDirectory(uint volume) => Path.Combine(_directory, "objects", volume.ToString("x8", System.Globalization.CultureInfo.InvariantCulture));

    private string ObjectPath(ObjectId id) => Path.Combine(ObjectDirectory(id.Volume), id.Index.ToString("x8", System.Globalization.CultureInfo.InvariantCulture));

    private string MetaPath(uint volume) => Path.Combine(_directory, "meta", volume.ToString("x8", System.Globalization.CultureInfo.InvariantCulture));

    /// <summary>fdatasync calls on the journal so far: a flush costs one, however many objects it covers.</summary>
    public long JournalSyncCount => _journal.SyncCount;

    /// <summary>Journal bytes not yet freed by a checkpoint, of <see cref="JournalCapacity"/>.</summary>
    public long JournalUsedBytes => _journal.UsedBytes;

    public long JournalCapacity => _journal.Capacity;

    /// <summary>Flushes asked of the store (FUA writes included); a journal with nothing new to
    /// sync answers one without a sync, so this tells who was asked, <see cref="JournalSyncCount"/> what it cost.</summary>
    public long FlushRequestCount => Interlocked.Read(ref _flushRequests);

    private long _flushRequests;

    /// <summary>For tests: completes when everything flushed before the call has been applied to
    /// the object files, after which the applier opens no file until the next write.</summary>
    internal Task WhenAppliedAsync() => _journal.WhenAppliedAsync();

    /// <summary>For crash tests: stops as a killed process would, leaving the files as they are.</summary>
    internal async Task CrashAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _checkpointWake.Release();
        if (_checkpointLoop is not null)
        {
            await _checkpointLoop.ConfigureAwait(false);
        }
        await _journal.AbortAsync().ConfigureAwait(false);
        _journal.Dispose();
        foreach (ObjectMeta meta in _objects.Values)
        {
            meta.File?.Dispose();
        }
        foreach (SafeFileHandle f in _metaFiles.Values)
        {
            f.Dispose();
        }
    }

    private int _disposed;

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }
        await _stop.CancelAsync().ConfigureAwait(false);
        _checkpointWake.Release();
        if (_checkpointLoop is not null)
        {
            await _checkpointLoop.ConfigureAwait(false);
        }
        // Drains the open batch: everything acknowledged is written, synced and applied.
        await _journal.StopAsync().ConfigureAwait(false);
        if (!_journal.IsFailed)
        {
            Checkpoint();
        }
        _journal.Dispose();
        foreach (ObjectMeta meta in _objects.Values)
        {
            meta.File?.Dispose();
        }
        foreach (SafeFileHandle f in _metaFiles.Values)
        {
            f.Dispose();
        }
        _stop.Dispose();
        _checkpointWake.Dispose();
        _checkpointGate.Dispose();
    }
}
