using System.Buffers.Binary;
using System.Globalization;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>
/// Checkpoints and recovery. A meta file holds, per object index, a fixed-size slot:
///
///   slot = index × SlotSize
///   +-----------------------------+------------------+
///   | u32 crc32c × MaxBlocks (LE) | u8 state × MaxBlocks |
///   +-----------------------------+------------------+
///
/// Slots are written at checkpoints only, after the object files are synced; a crash between
/// checkpoints is repaired by replaying the journal from the last checkpoint's tail.
/// </summary>
public sealed partial class LocalStore
{
    private const int SlotSize = MaxBlocks * 5;
    private readonly Dictionary<uint, SafeFileHandle> _metaFiles = [];
    private readonly byte[] _slotScratch = new byte[SlotSize];

    private async Task CheckpointLoopAsync()
    {
        long last = Environment.TickCount64;
        long capacity = _journal.Capacity;
        while (!_stop.IsCancellationRequested)
        {
            bool signaled = await _checkpointWake.WaitAsync(TimeSpan.FromMilliseconds(200)).ConfigureAwait(false);
            if (_stop.IsCancellationRequested)
            {
                break;
            }
            RefreshSpace();
            long used = _journal.UsedBytes;
            bool due = used >= capacity / 4
                || (signaled && used >= capacity / 8)
                || (used > 0 && Environment.TickCount64 - last >= (long)_options.CheckpointInterval.TotalMilliseconds);
            if (due && !_journal.IsFailed)
            {
                try
                {
                    Checkpoint();
                    last = Environment.TickCount64;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    LogCheckpointFailed(_logger, e);
                }
            }
        }
    }

    /// <summary>
    /// Makes everything applied so far durable in the object files and meta files, then moves
    /// the journal's tail past it.
    /// </summary>
    private void Checkpoint()
    {
        _checkpointGate.Wait();
        HashSet<ObjectMeta> dirty;
        HashSet<string> dirs;
        // Read the applied position first: every record before it has been applied, so the
        // objects it touched are in the dirty set swapped out below.
        (long lsn, long seq) = _journal.AppliedPosition;
        lock (_dirtyLock)
        {
            dirty = _dirty;
            dirs = _dirtyDirectories;
            _dirty = [];
            _dirtyDirectories = [];
        }
        try
        {
            var metaFilesTouched = new HashSet<SafeFileHandle>();
            foreach (ObjectMeta meta in dirty)
            {
                SyncObjectFile(meta);
            }
            foreach (ObjectMeta meta in dirty)
            {
                metaFilesTouched.Add(WriteSlot(meta));
            }
            foreach (SafeFileHandle f in metaFilesTouched)
            {
                NativeIo.DataSync(f);
            }
            foreach (string dir in dirs)
            {
                if (Directory.Exists(dir))
                {
                    NativeDirectory.Sync(dir);
                }
            }
            // State derived from the records before lsn (dirty bitmaps) is made durable before
            // the journal forgets them.
            RunCheckpointParticipants();
            _journal.Checkpoint(lsn, seq);
        }
        catch
        {
            lock (_dirtyLock)
            {
                _dirty.UnionWith(dirty);
                _dirtyDirectories.UnionWith(dirs);
            }
            throw;
        }
        finally
        {
            _checkpointGate.Release();
        }
    }

    private void SyncObjectFile(ObjectMeta meta)
    {
        // Reopens a file that eviction closed: its dirty pages are still the inode's to sync.
        SafeFileHandle? file = AcquireFile(meta, create: false);
        if (file is null)
        {
            return; // deleted meanwhile: nothing to sync
        }
        try
        {
            NativeIo.DataSync(file);
        }
        finally
        {
            file.DangerousRelease();
        }
    }

    private SafeFileHandle WriteSlot(ObjectMeta meta)
    {
        Span<byte> slot = _slotScratch;
        slot.Clear();
        lock (meta.Lock)
        {
            for (int b = 0; b < meta.Blocks; b++)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(slot[(b * 4)..], meta.Crcs[b]);
                slot[MaxBlocks * 4 + b] = (byte)meta.States[b];
            }
        }
        SafeFileHandle file = MetaFile(meta.Id.Volume);
        RandomAccess.Write(file, slot, (long)meta.Id.Index * SlotSize);
        return file;
    }

    // The checkpoint and the applier (which allocates slots) both open meta files.
    private SafeFileHandle MetaFile(uint volume)
    {
        lock (_metaFiles)
        {
            if (!_metaFiles.TryGetValue(volume, out SafeFileHandle? file))
            {
                file = File.OpenHandle(MetaPath(volume), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite);
                _metaFiles[volume] = file;
                MarkDirectoryDirty(Path.Combine(_directory, "meta"));
            }
            return file;
        }
    }

    /// <summary>
    /// Allocates an object's meta slot when the object first appears, on the applier's side of a
    /// record whose reservation (<see cref="SlotCharge"/>) covers it: the checkpoint that fills the
    /// slot then needs no new block, and the free-space figure read after the batch counts it.
    /// </summary>
    private void AllocateSlot(ObjectMeta meta)
    {
        if (meta.SlotAllocated)
        {
            return;
        }
        meta.SlotAllocated = true;
        // Best effort: a file system without fallocate gets the blocks at the checkpoint, from the margin.
        NativeIo.Allocate(MetaFile(meta.Id.Volume), (long)meta.Id.Index * SlotSize, SlotSize);
    }

    /// <summary>Loads every object's metadata, replays the journal over it, and checkpoints.</summary>
    private void Recover()
    {
        int objects = 0;
        foreach (string volumeDir in Directory.EnumerateDirectories(Path.Combine(_directory, "objects")))
        {
            if (!uint.TryParse(Path.GetFileName(volumeDir), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out uint volume))
            {
                continue;
            }
            _knownDirectories.TryAdd(volume, 0);
            SafeFileHandle? metaFile = File.Exists(MetaPath(volume)) ? MetaFile(volume) : null;
            foreach (string path in Directory.EnumerateFiles(volumeDir))
            {
                if (!uint.TryParse(Path.GetFileName(path), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out uint index))
                {
                    continue;
                }
                LoadObject(new ObjectId(volume, index), metaFile);
                objects++;
            }
        }
        // Replay needs no space the store did not have before the crash, except for data that a
        // later record of the journal deleted or zeroed (a deleted volume, a trim, whose space the
        // writes after it took): replaying those writes would allocate their blocks once more
        // before the later record frees them. So a first pass finds each object's last delete and
        // its zeroed ranges, and the second skips what they undo.
        // Direct records (LocalStore.Direct.cs) have their data in the object file only, so no
        // earlier record may touch their blocks before they are checked: the first pass also notes
        // each object's direct ranges and every record after its first one, and the second keeps
        // earlier records off blocks a later direct record covers.
        var lastDelete = new Dictionary<ulong, long>();
        var zeroed = new Dictionary<ulong, List<RecordRange>>();
        var direct = new Dictionary<ulong, List<RecordRange>>();
        var afterDirect = new Dictionary<ulong, List<RecordRange>>();
        var changes = new List<StoreChange>();
        long ordinal = 0;
        _journal.Scan((in JournalRecord r) =>
        {
            // A delete's block count is not the object's size: it changes every block.
            changes.Add(r.Type == RecordType.Delete ? new StoreChange(r.Id, 0, MaxBlocks) : new StoreChange(r.Id, r.FirstBlock, r.BlockCount));
            var range = new RecordRange(ordinal, r.Type == RecordType.Delete ? 0 : r.FirstBlock, r.Type == RecordType.Delete ? MaxBlocks : r.BlockCount);
            if (direct.ContainsKey(r.Id.Packed))
            {
                AddRange(afterDirect, r.Id, range);
            }
            if (r.Type == RecordType.Delete)
            {
                lastDelete[r.Id.Packed] = ordinal;
            }
            else if (r.Type is RecordType.ZeroHole or RecordType.ZeroAllocated)
            {
                AddRange(zeroed, r.Id, range);
            }
            else if (r.Type == RecordType.Direct)
            {
                AddRange(direct, r.Id, range);
            }
            ordinal++;
        });
        ordinal = 0;
        int batches = _journal.Replay((in JournalRecord r) =>
        {
            long at = ordinal++;
            if (r.Type != RecordType.Delete && lastDelete.TryGetValue(r.Id.Packed, out long deleted) && deleted > at)
            {
                return;
            }
            direct.TryGetValue(r.Id.Packed, out List<RecordRange>? directRanges);
            zeroed.TryGetValue(r.Id.Packed, out List<RecordRange>? zeroRanges);
            if (directRanges is null && (r.Type != RecordType.Write || zeroRanges is null))
            {
                ApplyRecord(in r, 0); // nothing later can cover its blocks
                return;
            }
            afterDirect.TryGetValue(r.Id.Packed, out List<RecordRange>? laterRanges);
            int count = r.Type == RecordType.Delete ? MaxBlocks : r.BlockCount;
            Span<bool> covered = count <= 256 ? stackalloc bool[count] : new bool[count];
            int first = r.Type == RecordType.Delete ? 0 : r.FirstBlock;
            bool any = MarkCoveredLater(covered, first, at, directRanges);
            switch (r.Type)
            {
                case RecordType.Direct:
                    MarkCoveredLater(covered, first, at, laterRanges);
                    ReplayDirect(in r, covered);
                    return;
                case RecordType.Write:
                    if (MarkCoveredLater(covered, first, at, zeroRanges) || any)
                    {
                        ReplayUncovered(in r, covered);
                        return;
                    }
                    break;
                case RecordType.ZeroHole or RecordType.ZeroAllocated when any:
                    ReplayUncovered(in r, covered);
                    return;
                case RecordType.Delete when any:
                    // The object is rebuilt after this delete with direct data in its file: empty
                    // it block by block instead of removing the file.
                    ReplayUncovered(new JournalRecord(RecordType.ZeroHole, r.Id, 0, MaxBlocks, default, default, r.Offset), covered);
                    return;
            }
            ApplyRecord(in r, 0);
        });
        // Before the checkpoint below forgets the records. On a disk too full for the list (the
        // store must always start there), the records stay in the journal instead: no start-up
        // checkpoint, so a crash replays them again, and the list is kept in memory for the bitmaps.
        if (TrySaveReplayedChanges(changes))
        {
            Checkpoint();
        }
        _space.Refresh();
        LogRecovered(_logger, objects, batches);
    }

    /// <summary>A record's blocks [First, First + Count) and its place in the journal.</summary>
    private readonly record struct RecordRange(long Ordinal, int First, int Count);

    private static void AddRange(Dictionary<ulong, List<RecordRange>> map, ObjectId id, RecordRange range)
    {
        if (!map.TryGetValue(id.Packed, out List<RecordRange>? ranges))
        {
            map[id.Packed] = ranges = [];
        }
        ranges.Add(range);
    }

    /// <summary>Marks in <paramref name="covered"/> (blocks from <paramref name="first"/>) those a
    /// range after <paramref name="ordinal"/> covers; true if it marked any.</summary>
    private static bool MarkCoveredLater(Span<bool> covered, int first, long ordinal, List<RecordRange>? ranges)
    {
        bool any = false;
        foreach (RecordRange later in ranges ?? [])
        {
            if (later.Ordinal <= ordinal)
            {
                continue;
            }
            int from = Math.Max(later.First, first) - first;
            int to = Math.Min(later.First + later.Count, first + covered.Length) - first;
            if (from < to)
            {
                covered[from..to].Fill(true);
                any = true;
            }
        }
        return any;
    }

    /// <summary>Replays the runs of a write or zeroing record's blocks that no later record
    /// covers (a later zeroing of a write's blocks, a later direct record of either's).</summary>
    private void ReplayUncovered(in JournalRecord r, ReadOnlySpan<bool> covered)
    {
        for (int i = 0; i < covered.Length;)
        {
            if (covered[i])
            {
                i++;
                continue;
            }
            int end = i + 1;
            while (end < covered.Length && !covered[end])
            {
                end++;
            }
            int n = end - i;
            var part = r.Type == RecordType.Write
                ? new JournalRecord(RecordType.Write, r.Id, r.FirstBlock + i, n, r.Crcs.Slice(i * 4, n * 4), r.Data.Slice(i * StoreBlockSize, n * StoreBlockSize), r.Offset)
                : new JournalRecord(r.Type, r.Id, r.FirstBlock + i, n, default, default, r.Offset);
            ApplyRecord(in part, 0);
            i = end;
        }
    }

    /// <summary>Loads an object's block metadata; its file is opened when first needed (a large
    /// store has more objects than the process may have files open).</summary>
    private void LoadObject(ObjectId id, SafeFileHandle? metaFile)
    {
        ObjectMeta meta = GetOrAdd(id);
        meta.SlotCharged = meta.SlotAllocated = metaFile is not null;
        Span<byte> slot = _slotScratch;
        slot.Clear();
        if (metaFile is not null)
        {
            RandomAccess.Read(metaFile, slot, (long)id.Index * SlotSize);
        }
        int blocks = 0;
        for (int b = 0; b < MaxBlocks; b++)
        {
            if (slot[MaxBlocks * 4 + b] != (byte)BlockState.Hole)
            {
                blocks = b + 1;
            }
        }
        meta.EnsureBlocks(blocks);
        for (int b = 0; b < blocks; b++)
        {
            meta.Crcs[b] = BinaryPrimitives.ReadUInt32LittleEndian(slot[(b * 4)..]);
            byte state = slot[MaxBlocks * 4 + b];
            meta.States[b] = state <= (byte)BlockState.Zero ? (BlockState)state : BlockState.Data;
        }
    }
}
