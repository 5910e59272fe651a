namespace Ovis.Volumes;

/// <summary>Turns a bitmap's bits into byte runs of one state.</summary>
internal static class DirtyRuns
{
    public static void Collect(DirtyBits bits, long granularity, long offset, long length, List<(long Length, bool Dirty)> runs, int maxRuns)
    {
        long end = offset + length;
        long at = offset;
        long endBit = (end + granularity - 1) / granularity;
        while (at < end && runs.Count < maxRuns)
        {
            long bit = at / granularity;
            bool dirty = bits.Get(bit);
            long next = bits.Find(bit + 1, endBit, !dirty);
            long runEnd = Math.Min(end, next * granularity);
            runs.Add((runEnd - at, dirty));
            at = runEnd;
        }
    }

    /// <summary>Every dirty byte range of [0, size), in order.</summary>
    public static IEnumerable<(long Offset, long Length)> Dirty(DirtyBits bits, long granularity, long size)
    {
        long endBit = (size + granularity - 1) / granularity;
        for (long bit = bits.Find(0, endBit, true); bit < endBit; bit = bits.Find(bit, endBit, true))
        {
            long stop = bits.Find(bit, endBit, false);
            long start = bit * granularity;
            yield return (start, Math.Min(size, stop * granularity) - start);
            bit = stop;
        }
    }
}
