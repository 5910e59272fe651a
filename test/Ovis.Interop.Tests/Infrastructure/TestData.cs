using System.Security.Cryptography;

namespace Ovis.Interop.Tests.Infrastructure;

public static class TestData
{
    public const int KiB = 1024;
    public const int MiB = 1024 * 1024;

    /// <summary>Deterministic pseudo-random bytes (a seed makes a failure reproducible).</summary>
    public static byte[] RandomBytes(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>
    /// Writes a file of <paramref name="size"/> bytes: seeded random data everywhere except the
    /// given zero ranges. The file is written densely (no holes), so it is a plain raw image.
    /// </summary>
    public static void WriteImage(string path, long size, int seed, params (long Offset, long Length)[] zeroRanges)
    {
        var rng = new Random(seed);
        var buffer = new byte[MiB];
        using var f = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        for (long pos = 0; pos < size; pos += buffer.Length)
        {
            var n = (int)Math.Min(buffer.Length, size - pos);
            rng.NextBytes(buffer.AsSpan(0, n));
            foreach (var (zo, zl) in zeroRanges)
            {
                var start = Math.Max(zo, pos);
                var end = Math.Min(zo + zl, pos + n);
                if (start < end)
                {
                    buffer.AsSpan((int)(start - pos), (int)(end - start)).Clear();
                }
            }
            f.Write(buffer, 0, n);
        }
    }

    public static string Sha256(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(f));
    }

    /// <summary>Null when equal, else a description of the first difference.</summary>
    public static string? FirstDifference(string pathA, string pathB)
    {
        using var a = File.OpenRead(pathA);
        using var b = File.OpenRead(pathB);
        if (a.Length != b.Length)
        {
            return $"sizes differ: {a.Length} vs {b.Length}";
        }
        var ba = new byte[MiB];
        var bb = new byte[MiB];
        long pos = 0;
        while (true)
        {
            var na = a.ReadAtLeast(ba, ba.Length, throwOnEndOfStream: false);
            var nb = b.ReadAtLeast(bb, bb.Length, throwOnEndOfStream: false);
            if (na == 0)
            {
                return null;
            }
            var i = ba.AsSpan(0, na).CommonPrefixLength(bb.AsSpan(0, nb));
            if (i < na)
            {
                return $"first difference at offset {pos + i}: 0x{ba[i]:x2} vs 0x{bb[i]:x2}";
            }
            pos += na;
        }
    }
}
