using System.Buffers.Binary;

namespace Ovis.Store;

/// <summary>A range of one object that a journal record changed: blocks [FirstBlock, FirstBlock + BlockCount).</summary>
public readonly record struct StoreChange(ObjectId Id, int FirstBlock, int BlockCount);

/// <summary>
/// What the layers above need to keep state derived from writes (dirty bitmaps) as durable as the
/// writes themselves without a sync of their own: the journal is their write-ahead log.
///
/// - Before a checkpoint moves the journal's tail — after which no replay will show the records
///   before it again — every <see cref="AddCheckpointParticipant"/> callback runs; one that throws
///   fails the checkpoint, so the tail stays and the records stay replayable.
/// - Records replayed at start are listed in <see cref="ReplayedChanges"/>. Start-up checkpoints
///   (and so forgets them) before anyone above could look, so they are first saved in the file
///   <c>replayed</c> and synced; they stay there, across further crashes, until
///   <see cref="ConsumeReplayedChanges"/> says the layers above have made what they derive durable.
///
///   replayed = entries of 16 bytes, little-endian:
///   +-------------------------+-----------------+-----------------+
///   | u64 packed object id    | u32 first block | u32 block count |
///   +-------------------------+-----------------+-----------------+
/// </summary>
public sealed partial class LocalStore
{
    private const int ChangeEntrySize = 16;
    private readonly List<Action> _checkpointParticipants = [];
    private List<StoreChange> _replayed = [];

    private string ReplayedPath => Path.Combine(_directory, "replayed");

    /// <summary>Runs <paramref name="persist"/> in every checkpoint before the journal's tail moves.</summary>
    public void AddCheckpointParticipant(Action persist)
    {
        lock (_checkpointParticipants)
        {
            _checkpointParticipants.Add(persist);
        }
    }

    private void RunCheckpointParticipants()
    {
        Action[] participants;
        lock (_checkpointParticipants)
        {
            participants = [.. _checkpointParticipants];
        }
        foreach (Action persist in participants)
        {
            persist();
        }
    }

    /// <summary>The ranges changed by records replayed at this start and at earlier ones not consumed yet.</summary>
    public IReadOnlyList<StoreChange> ReplayedChanges => _replayed;

    /// <summary>The layers above have made durable what they derive from <see cref="ReplayedChanges"/>.</summary>
    public void ConsumeReplayedChanges()
    {
        _replayed = [];
        if (File.Exists(ReplayedPath))
        {
            File.Delete(ReplayedPath);
            NativeDirectory.Sync(_directory);
        }
    }

    /// <summary>As <see cref="SaveReplayedChanges"/>; false (the changes kept in memory only) when
    /// the file system has no room for them.</summary>
    private bool TrySaveReplayedChanges(List<StoreChange> changes)
    {
        try
        {
            SaveReplayedChanges(changes);
            return true;
        }
        catch (IOException e) when (e.HResult == 28 || e.Message.Contains("No space", StringComparison.Ordinal))
        {
            LogReplayedNotSaved(_logger, changes.Count, e);
            _replayed = [.. LoadReplayedChanges(), .. changes];
            return false;
        }
    }

    /// <summary>Appends this start's replayed changes to the file and syncs it, then loads the whole file.</summary>
    private void SaveReplayedChanges(List<StoreChange> changes)
    {
        if (changes.Count > 0)
        {
            bool existed = File.Exists(ReplayedPath);
            byte[] entries = new byte[changes.Count * ChangeEntrySize];
            for (int i = 0; i < changes.Count; i++)
            {
                Span<byte> e = entries.AsSpan(i * ChangeEntrySize);
                BinaryPrimitives.WriteUInt64LittleEndian(e, changes[i].Id.Packed);
                BinaryPrimitives.WriteInt32LittleEndian(e[8..], changes[i].FirstBlock);
                BinaryPrimitives.WriteInt32LittleEndian(e[12..], changes[i].BlockCount);
            }
            using (var file = new FileStream(ReplayedPath, FileMode.Append, FileAccess.Write))
            {
                // A torn tail from a crash before an earlier sync is cut off first: the journal
                // still held those records, and they are in this start's list again.
                long whole = file.Length / ChangeEntrySize * ChangeEntrySize;
                if (whole != file.Length)
                {
                    file.SetLength(whole);
                }
                file.Write(entries);
                file.Flush(flushToDisk: true);
            }
            if (!existed)
            {
                NativeDirectory.Sync(_directory);
            }
        }
        _replayed = LoadReplayedChanges();
    }

    private List<StoreChange> LoadReplayedChanges()
    {
        if (!File.Exists(ReplayedPath))
        {
            return [];
        }
        byte[] all = File.ReadAllBytes(ReplayedPath);
        var list = new List<StoreChange>(all.Length / ChangeEntrySize);
        for (int at = 0; at + ChangeEntrySize <= all.Length; at += ChangeEntrySize)
        {
            ReadOnlySpan<byte> e = all.AsSpan(at);
            int count = BinaryPrimitives.ReadInt32LittleEndian(e[12..]);
            if (count > 0)
            {
                list.Add(new StoreChange(ObjectId.FromPacked(BinaryPrimitives.ReadUInt64LittleEndian(e)), BinaryPrimitives.ReadInt32LittleEndian(e[8..]), count));
            }
        }
        return list;
    }
}
