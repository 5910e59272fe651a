using System.Numerics;

namespace Ovis.Volumes;

/// <summary>
/// One bit per granule of a volume, set without a lock from any number of writers. The bits live
/// in chunks allocated up front for the whole capacity: growing publishes a longer array of the
/// same chunks plus new ones, so a writer that still holds the old array sets its bit in a chunk
/// the new array shares and nothing is lost.
/// </summary>
internal sealed class DirtyBits
{
    private const int ChunkWords = 4096; // 256 Ki bits, 32 KiB per chunk
    private const int ChunkBits = ChunkWords * 64;
    private volatile long[][] _chunks;
    // Internal so that a failed save can set it again.
    internal int ChangedFlag;

    public DirtyBits(long bitCount)
    {
        _chunks = [];
        Grow(bitCount);
    }

    /// <summary>Bits the chunks hold (a multiple of the chunk size, at least what was asked for).</summary>
    public long Capacity => (long)_chunks.Length * ChunkBits;

    /// <summary>Set when a bit went from 0 to 1 since the last <see cref="TakeChanged"/>.</summary>
    public bool Changed => Volatile.Read(ref ChangedFlag) != 0;

    /// <summary>Clears <see cref="Changed"/>, returning it: call before reading the bits to save them.</summary>
    public bool TakeChanged() => Interlocked.Exchange(ref ChangedFlag, 0) != 0;

    public void Grow(long bitCount)
    {
        long[][] old = _chunks;
        long want = (bitCount + ChunkBits - 1) / ChunkBits;
        if (want <= old.Length)
        {
            return;
        }
        var next = new long[want][];
        Array.Copy(old, next, old.Length);
        for (long i = old.Length; i < want; i++)
        {
            next[i] = new long[ChunkWords];
        }
        _chunks = next;
    }

    /// <summary>Sets bits [first, last]; bits past the capacity are dropped (the caller grows first).</summary>
    public void Set(long first, long last)
    {
        long[][] chunks = _chunks;
        last = Math.Min(last, ((long)chunks.Length * ChunkBits) - 1);
        bool changed = false;
        for (long bit = first; bit <= last;)
        {
            long[] chunk = chunks[bit / ChunkBits];
            int word = (int)(bit % ChunkBits / 64);
            int from = (int)(bit % 64);
            int to = (int)Math.Min(63, from + (last - bit));
            ulong mask = (to - from == 63 ? ulong.MaxValue : ((1UL << (to - from + 1)) - 1)) << from;
            // The read first: a granule written over and over (the common case) costs no interlocked op.
            if (((ulong)Volatile.Read(ref chunk[word]) & mask) != mask)
            {
                Interlocked.Or(ref chunk[word], (long)mask);
                changed = true;
            }
            bit += to - from + 1;
        }
        if (changed && Volatile.Read(ref ChangedFlag) == 0)
        {
            Volatile.Write(ref ChangedFlag, 1);
        }
    }

    public bool Get(long bit)
    {
        long[][] chunks = _chunks;
        return bit < (long)chunks.Length * ChunkBits
            && (Volatile.Read(ref chunks[bit / ChunkBits][(int)(bit % ChunkBits / 64)]) & (1L << (int)(bit % 64))) != 0;
    }

    /// <summary>The first bit at or after <paramref name="from"/> (below <paramref name="end"/>) whose value is <paramref name="value"/>; <paramref name="end"/> if none.</summary>
    public long Find(long from, long end, bool value)
    {
        long[][] chunks = _chunks;
        end = Math.Min(end, (long)chunks.Length * ChunkBits);
        for (long bit = from; bit < end;)
        {
            ulong word = (ulong)Volatile.Read(ref chunks[bit / ChunkBits][(int)(bit % ChunkBits / 64)]);
            if (!value)
            {
                word = ~word;
            }
            word >>= (int)(bit % 64);
            if (word != 0)
            {
                return Math.Min(end, bit + BitOperations.TrailingZeroCount(word));
            }
            bit = (bit | 63) + 1;
        }
        return end;
    }

    public long Count()
    {
        long n = 0;
        foreach (long[] chunk in _chunks)
        {
            foreach (long w in chunk)
            {
                n += BitOperations.PopCount((ulong)w);
            }
        }
        return n;
    }

    public void Or(DirtyBits other)
    {
        Grow(other.Capacity);
        long[][] mine = _chunks;
        long[][] theirs = other._chunks;
        for (int c = 0; c < theirs.Length; c++)
        {
            for (int w = 0; w < ChunkWords; w++)
            {
                long v = Volatile.Read(ref theirs[c][w]);
                if (v != 0)
                {
                    Interlocked.Or(ref mine[c][w], v);
                }
            }
        }
        Volatile.Write(ref ChangedFlag, 1);
    }

    /// <summary>The first <paramref name="bitCount"/> bits, little-endian words.</summary>
    public byte[] ToBytes(long bitCount)
    {
        long words = (bitCount + 63) / 64;
        byte[] bytes = new byte[words * 8];
        long[][] chunks = _chunks;
        for (long i = 0; i < words && i / ChunkWords < chunks.Length; i++)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan((int)(i * 8)), Volatile.Read(ref chunks[i / ChunkWords][i % ChunkWords]));
        }
        return bytes;
    }

    public static DirtyBits FromBytes(ReadOnlySpan<byte> bytes, long bitCount)
    {
        var bits = new DirtyBits(bitCount);
        long words = Math.Min(bytes.Length / 8, (bitCount + 63) / 64);
        for (long i = 0; i < words; i++)
        {
            bits._chunks[i / ChunkWords][i % ChunkWords] = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(bytes[(int)(i * 8)..]);
        }
        return bits;
    }
}
