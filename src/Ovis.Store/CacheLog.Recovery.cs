using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

public sealed partial class CacheLog
{
    private const string FileName = "cache.log";

    /// <summary>
    /// Opens <paramref name="directory"/>/cache.log, or creates it: preallocated to
    /// <paramref name="capacity"/> bytes of records and zero-filled once, so that later writes are
    /// not unwritten-extent conversions (which would need a journal commit per sync).
    /// <paramref name="recovered"/> is every record appended and not released (or released but not
    /// checkpointed) before the last close or crash, in LSN order, each with its own copy of the data.
    /// A file made with another capacity keeps it (see <see cref="Capacity"/>) unless it holds no
    /// record, in which case it is made again with the new one.
    /// </summary>
    /// <exception cref="IOException">The file cannot be made (no space, say) or read, or both its headers are unreadable.</exception>
    public static CacheLog Open(string directory, long capacity, ILogger logger, out IReadOnlyList<CacheRecord> recovered)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, CacheLogFormat.SlotSize);
        capacity &= ~7L;
        Directory.CreateDirectory(directory);
        string path = Path.Combine(directory, FileName);
        if (!File.Exists(path) || new FileInfo(path).Length == 0)
        {
            Create(path, capacity);
            LogCreated(logger, path, capacity);
        }
        CacheLog log = Recover(path, logger, out List<CacheRecord> records);
        if (log.Capacity != capacity)
        {
            if (records.Count == 0)
            {
                // Nothing to keep: the new size wins.
                log._file.Dispose();
                log._wake.Dispose();
                Create(path, capacity);
                LogRecreated(logger, path, capacity);
                log = Recover(path, logger, out records);
            }
            else
            {
                LogCapacityKept(logger, path, log.Capacity, capacity, records.Count);
            }
        }
        log.StartCommitter();
        LogOpened(logger, path, records.Count, log.LiveBytes, log.Capacity);
        recovered = records;
        return log;
    }

    /// <summary>Makes the file under a temporary name and renames it into place, so that a file
    /// system too small for it leaves no half-made log (which would read as one without headers).</summary>
    private static void Create(string path, long capacity)
    {
        string temp = path + ".new";
        long total = CacheLogFormat.DataStart + capacity;
        try
        {
            using (SafeFileHandle file = File.OpenHandle(temp, FileMode.Create, FileAccess.ReadWrite))
            {
                // Best effort: it fails fast where the blocks are not there; the zeroes below say ENOSPC otherwise.
                NativeIo.Allocate(file, 0, total);
                byte[] zeroes = new byte[1 << 20];
                for (long off = 0; off < total; off += zeroes.Length)
                {
                    RandomAccess.Write(file, zeroes.AsSpan(0, (int)Math.Min(zeroes.Length, total - off)), off);
                }
                Span<byte> header = stackalloc byte[CacheLogFormat.HeaderBytes];
                for (int slot = 0; slot < 2; slot++)
                {
                    CacheLogFormat.WriteHeader(header, new CacheLogFormat.Header(capacity, Sequence: slot, Tail: 0, Generation: 0));
                    RandomAccess.Write(file, header, slot * CacheLogFormat.SlotSize);
                }
                NativeIo.DataSync(file);
            }
            File.Move(temp, path, overwrite: true);
            NativeDirectory.Sync(Path.GetDirectoryName(path)!);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            File.Delete(temp);
            throw new IOException($"cannot create cache log {path} ({total} bytes): {e.Message}", e);
        }
    }

    private static CacheLog Recover(string path, ILogger logger, out List<CacheRecord> records)
    {
        SafeFileHandle file;
        try
        {
            file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"cannot open cache log {path}: {e.Message}", e);
        }
        try
        {
            (CacheLogFormat.Header header, uint generation) = ReadHeaders(file, path, logger);
            if (RandomAccess.GetLength(file) < CacheLogFormat.DataStart + header.Capacity)
            {
                throw new IOException($"cache log {path}: the file is shorter than its capacity of {header.Capacity} bytes");
            }
            records = Scan(file, header.Capacity, header.Tail, ref generation, out long end);
            var log = new CacheLog(path, file, header.Capacity, generation + 1, logger);
            log.Resume(header, records, end);
            return log;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>The valid header with the higher sequence, and the highest generation either holds.</summary>
    private static (CacheLogFormat.Header Header, uint Generation) ReadHeaders(SafeFileHandle file, string path, ILogger logger)
    {
        Span<byte> buffer = stackalloc byte[CacheLogFormat.HeaderBytes];
        CacheLogFormat.Header? best = null;
        uint generation = 0;
        for (int slot = 0; slot < 2; slot++)
        {
            buffer.Clear();
            RandomAccess.Read(file, buffer, slot * CacheLogFormat.SlotSize);
            if (!CacheLogFormat.TryReadHeader(buffer, out CacheLogFormat.Header h))
            {
                LogHeaderUnreadable(logger, path, slot);
                continue;
            }
            generation = Math.Max(generation, h.Generation);
            if (best is null || h.Sequence > best.Value.Sequence)
            {
                best = h;
            }
        }
        return best is { } b ? (b, generation) : throw new IOException($"cache log {path}: both headers unreadable");
    }

    /// <summary>Reads the valid records from <paramref name="tail"/> on (see the format for the
    /// rules); <paramref name="end"/> is where the next append goes.</summary>
    private static List<CacheRecord> Scan(SafeFileHandle file, long capacity, long tail, ref uint generation, out long end)
    {
        var records = new List<CacheRecord>();
        uint last = 0;
        long lsn = tail;
        while (true)
        {
            if (TryRead(file, capacity, lsn, tail, ref last, out CacheRecord r, out long size))
            {
                records.Add(r);
                lsn += size;
                continue;
            }
            long next = CacheLogFormat.NextLap(lsn, capacity);
            // Only where a batch may have skipped the end of the file (not at a lap's start).
            if (lsn % capacity != 0 && TryRead(file, capacity, next, tail, ref last, out r, out size))
            {
                records.Add(r);
                lsn = next + size;
                continue;
            }
            break;
        }
        generation = Math.Max(generation, last);
        end = lsn;
        return records;
    }

    private static bool TryRead(SafeFileHandle file, long capacity, long lsn, long tail, ref uint generation, out CacheRecord record, out long size)
    {
        record = default;
        size = 0;
        // A record lies before the end of the file, and within one lap of the tail: nothing
        // further on can be newer than the tail's lap.
        long room = Math.Min(capacity - lsn % capacity, tail + capacity - lsn);
        if (room < CacheLogFormat.RecordHeaderSize)
        {
            return false;
        }
        Span<byte> header = stackalloc byte[CacheLogFormat.RecordHeaderSize];
        long position = CacheLogFormat.PositionOf(lsn, capacity);
        RandomAccess.Read(file, header, position);
        int length = CacheLogFormat.ClaimedLength(header, lsn, room);
        uint recordGeneration = CacheLogFormat.GenerationOf(header);
        if (length < 0 || recordGeneration < generation)
        {
            return false;
        }
        // Header and data in one array: the record's data is a slice of it, a copy of its own.
        byte[] bytes = GC.AllocateUninitializedArray<byte>(CacheLogFormat.RecordHeaderSize + length);
        if (RandomAccess.Read(file, bytes, position) != bytes.Length || !CacheLogFormat.ChecksumMatches(bytes))
        {
            return false;
        }
        generation = recordGeneration;
        record = CacheLogFormat.Parse(bytes);
        size = CacheLogFormat.RecordSize(length);
        return true;
    }

    /// <summary>Takes up where the scan ended and writes a header of the new generation before
    /// any record of it, so a later Open knows the generation even when no record of it survives.</summary>
    private void Resume(CacheLogFormat.Header header, List<CacheRecord> records, long end)
    {
        foreach (CacheRecord r in records)
        {
            _live.Enqueue(r.Lsn);
        }
        _head = end;
        _tail = records.Count > 0 ? records[0].Lsn : end;
        _sequence = header.Sequence;
        _slotTail[0] = _slotTail[1] = header.Tail;
        WriteHeader(_tail);
    }
}
