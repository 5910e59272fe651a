using System.Diagnostics;
using Ovis.Store;

namespace Ovis.Cluster.Cache;

/// <summary>
/// One write the cache acknowledged: durable in the cache log at <see cref="Lsn"/>, held in memory
/// until every copy has it. Whole blocks only. Its fields other than the push state are fixed.
/// </summary>
internal sealed class CachedWrite(ObjectId id, long offset, byte[] data, long epoch, long lsn)
{
    public ObjectId Id { get; } = id;

    public long Offset { get; } = offset;

    public byte[] Data { get; } = data;

    /// <summary>The flush epoch it was acknowledged in: every write of an earlier epoch reaches
    /// the replicas before it.</summary>
    public long Epoch { get; } = epoch;

    public long Lsn { get; } = lsn;

    public long AckedAt { get; } = Stopwatch.GetTimestamp();

    /// <summary>The numbers of the blocks it covers in its object.</summary>
    public IEnumerable<int> Blocks(int blockSize) => Enumerable.Range((int)(Offset / blockSize), Data.Length / blockSize);

    // Guarded by the layer's lock from here on.

    /// <summary>The push attempt under way (completes whether or not it succeeded), or null.</summary>
    public Task? Attempt { get; set; }

    public LinkedListNode<CachedWrite>? Node { get; set; }

    private TaskCompletionSource<bool>? _done;

    /// <summary>True once on every copy; false when it was dropped unpushed.</summary>
    public Task<bool> Done => (_done ??= new(TaskCreationOptions.RunContinuationsAsynchronously)).Task;

    public void Complete(bool pushed)
    {
        _done ??= new(TaskCreationOptions.RunContinuationsAsynchronously);
        _done.TrySetResult(pushed);
    }
}
