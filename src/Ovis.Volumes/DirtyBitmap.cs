using System.Buffers.Binary;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>What a client sees of a dirty bitmap.</summary>
public sealed record BitmapInfo(string Name, string Volume, long Granularity, DateTimeOffset Created, long DirtyBytes, bool BackupPending);

/// <summary>
/// A persistent dirty bitmap of one volume: one bit per granule, set inside the volume's I/O gate
/// before a write, trim or zeroing reaches the store — so before its journal record exists, and a
/// checkpoint that forgets the record has saved the bit (see docs/backup.md). A backup in
/// progress moves the bits into <see cref="Frozen"/> at its snapshot and the bitmap goes on empty;
/// the frozen bits are dropped only when the backup has them on its target, and merged back
/// otherwise, so no change is ever lost between two backups of a chain.
///
/// Saved whole, in file <c>bitmaps/VOLUME/NAME</c> (under a temporary name, then renamed) or, on
/// a cluster node, in the catalog (<see cref="IBitmapStore"/>):
///   +--------------------------------------------------------------+
///   | magic "OVISBMP1" (8) | flags u32 (1 = frozen part follows)   |
///   | granularity i64 | bit count i64 | created, unix ms i64       |
///   +--------------------------------------------------------------+  48 bytes, little-endian
///   | active bits, ⌈bit count / 64⌉ little-endian u64 words         |
///   | frozen bits, the same size (when flag 1)                      |
///   +--------------------------------------------------------------+
/// </summary>
internal sealed class DirtyBitmap
{
    private const int HeaderSize = 48;
    private static ReadOnlySpan<byte> Magic => "OVISBMP1"u8;
    private readonly Lock _saveLock = new();
    private volatile DirtyBits _active;
    private int _shift;
    private long _bitCount;

    public DirtyBitmap(string? path, string name, string volume, long granularity, long volumeSize, DateTimeOffset created)
    {
        Path = path;
        Name = name;
        Volume = volume;
        Granularity = granularity;
        Created = created;
        _shift = System.Numerics.BitOperations.Log2((ulong)granularity);
        _bitCount = BitsFor(volumeSize);
        _active = new DirtyBits(_bitCount);
    }

    /// <summary>Its file on a node with its own data directory; null when the cluster catalog keeps it.</summary>
    public string? Path { get; }
    public string Name { get; }
    public string Volume { get; }
    public long Granularity { get; }
    public DateTimeOffset Created { get; }

    /// <summary>Set when a catalog-kept bitmap is removed: a save that comes later writes nothing.</summary>
    public bool Removed { get; set; }

    /// <summary>Bits a backup has taken at its snapshot and not yet confirmed on its target.</summary>
    public DirtyBits? Frozen { get; private set; }

    public DirtyBits Active => _active;

    private long BitsFor(long size) => (size + Granularity - 1) >> _shift;

    /// <summary>Marks every granule that [offset, offset + length) touches (rounded outward).</summary>
    public void Mark(long offset, long length)
    {
        if (length > 0)
        {
            _active.Set(offset >> _shift, (offset + length - 1) >> _shift);
        }
    }

    /// <summary>Call before the volume's size grows, so that writes past the old end find their bits.</summary>
    public void Grow(long volumeSize)
    {
        long bits = BitsFor(volumeSize);
        _active.Grow(bits);
        if (bits > Interlocked.Read(ref _bitCount))
        {
            Interlocked.Exchange(ref _bitCount, bits);
        }
    }

    /// <summary>Starts a backup's period: the bits so far (and any a failed backup left frozen) become
    /// <see cref="Frozen"/>, and tracking goes on empty. Call while the volume's gate is frozen.</summary>
    // Under the save lock, like the three below: a save must never see the new, empty bits
    // without the frozen ones they were taken from.
    public DirtyBits Freeze()
    {
        lock (_saveLock)
        {
            DirtyBits taken = _active;
            _active = new DirtyBits(Interlocked.Read(ref _bitCount));
            if (Frozen is { } earlier)
            {
                taken.Or(earlier);
            }
            Frozen = taken;
            return taken;
        }
    }

    /// <summary>The backup has the frozen bits on its target: they go.</summary>
    public void DropFrozen()
    {
        lock (_saveLock)
        {
            Frozen = null;
        }
    }

    /// <summary>The backup failed for good: its bits go back into tracking.</summary>
    public void Unfreeze()
    {
        lock (_saveLock)
        {
            if (Frozen is { } frozen)
            {
                _active.Or(frozen);
                Frozen = null;
            }
        }
    }

    public void Clear()
    {
        lock (_saveLock)
        {
            _active = new DirtyBits(Interlocked.Read(ref _bitCount));
            Frozen = null;
        }
    }

    public BitmapInfo Describe()
    {
        long bits = _active.Count();
        return new BitmapInfo(Name, Volume, Granularity, Created, bits * Granularity, Frozen is not null);
    }

    /// <summary>Writes the file if a bit changed since it was last written (or <paramref name="force"/>), and syncs it.</summary>
    public void Save(bool force)
    {
        lock (_saveLock)
        {
            if (Encode(force) is not { } content)
            {
                return;
            }
            string path = Path ?? throw new InvalidOperationException("a bitmap kept in the cluster catalog has no file");
            string dir = System.IO.Path.GetDirectoryName(path)!;
            Directory.CreateDirectory(dir);
            string temp = path + ".tmp";
            try
            {
                using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write))
                {
                    file.Write(content);
                    file.Flush(flushToDisk: true);
                }
                File.Move(temp, path, overwrite: true);
                DirectorySync.Sync(dir);
            }
            catch
            {
                // Not saved: the next checkpoint (which fails meanwhile, keeping the journal) tries again.
                Unsaved();
                throw;
            }
        }
    }

    /// <summary>
    /// The saved form (the layout above) if a bit changed since the last one was taken (or
    /// <paramref name="force"/>); null otherwise. A caller that fails to store it calls
    /// <see cref="Unsaved"/>. Callers serialise their saves, so an older form never lands after a newer one.
    /// </summary>
    public byte[]? Encode(bool force)
    {
        lock (_saveLock)
        {
            DirtyBits active = _active;
            // Taken before the bits are read: a bit set while they are copied marks it changed again.
            if (!active.TakeChanged() && !force)
            {
                return null;
            }
            DirtyBits? frozen = Frozen;
            long bitCount = Interlocked.Read(ref _bitCount);
            byte[] a = active.ToBytes(bitCount);
            byte[]? f = frozen?.ToBytes(bitCount);
            byte[] content = new byte[HeaderSize + a.Length + (f?.Length ?? 0)];
            Magic.CopyTo(content);
            BinaryPrimitives.WriteUInt32LittleEndian(content.AsSpan(8), f is null ? 0u : 1u);
            BinaryPrimitives.WriteInt64LittleEndian(content.AsSpan(16), Granularity);
            BinaryPrimitives.WriteInt64LittleEndian(content.AsSpan(24), bitCount);
            BinaryPrimitives.WriteInt64LittleEndian(content.AsSpan(32), Created.ToUnixTimeMilliseconds());
            a.CopyTo(content.AsSpan(HeaderSize));
            f?.CopyTo(content.AsSpan(HeaderSize + a.Length));
            return content;
        }
    }

    /// <summary>The last <see cref="Encode"/> was not stored: the next save must write again.</summary>
    public void Unsaved() => Volatile.Write(ref _active.ChangedFlag, 1);

    /// <summary>How many bytes the saved form of a bitmap with these bits takes, at most (with a frozen part).</summary>
    public static long EncodedSize(long volumeSize, long granularity) => HeaderSize + (2 * (((volumeSize + granularity - 1) / granularity) + 63) / 64 * 8);

    public static DirtyBitmap Load(string path, string volume, long volumeSize)
        => Decode(File.ReadAllBytes(path), path, System.IO.Path.GetFileName(path), volume, volumeSize);

    /// <summary>A bitmap from its saved form; <paramref name="path"/> is its file, null for one kept in the catalog.</summary>
    public static DirtyBitmap Decode(byte[] all, string? path, string name, string volume, long volumeSize)
    {
        string where = path ?? $"of volume {volume}, bitmap {name},";
        if (all.Length < HeaderSize || !all.AsSpan(0, 8).SequenceEqual(Magic))
        {
            throw new InvalidDataException($"dirty bitmap {where} is not one");
        }
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(all.AsSpan(8));
        long granularity = BinaryPrimitives.ReadInt64LittleEndian(all.AsSpan(16));
        long bitCount = BinaryPrimitives.ReadInt64LittleEndian(all.AsSpan(24));
        long created = BinaryPrimitives.ReadInt64LittleEndian(all.AsSpan(32));
        if (granularity < LocalStore.StoreBlockSize || granularity > (64L << 20) || (granularity & (granularity - 1)) != 0
            || bitCount < 0 || bitCount > (all.Length - HeaderSize) * 8L || created < 0 || created > DateTimeOffset.MaxValue.ToUnixTimeMilliseconds())
        {
            throw new InvalidDataException($"dirty bitmap {where} has a header that makes no sense");
        }
        int words = (int)((bitCount + 63) / 64) * 8;
        if (all.Length < HeaderSize + words * ((flags & 1) + 1))
        {
            throw new InvalidDataException($"dirty bitmap {where} is cut short");
        }
        var bitmap = new DirtyBitmap(path, name, volume, granularity, Math.Max(volumeSize, bitCount * granularity), DateTimeOffset.FromUnixTimeMilliseconds(created));
        bitmap._active = DirtyBits.FromBytes(all.AsSpan(HeaderSize, words), bitmap._bitCount);
        if ((flags & 1) != 0)
        {
            bitmap.Frozen = DirtyBits.FromBytes(all.AsSpan(HeaderSize + words, words), bitmap._bitCount);
        }
        return bitmap;
    }
}
