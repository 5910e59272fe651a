using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>A copy of an object that does not agree with the others, and why.</summary>
public sealed record CopyDifference(string Node, string Reason);

public sealed partial class ReplicatedStore
{
    /// <summary>
    /// Compares every copy of an object on the nodes that are up — allocation and data — and names
    /// the copies that differ from the first current copy that could be read, or could not be
    /// read at all (a checksum failed). Empty when all agree. Stale copies are compared too: a
    /// stale node whose copy happens to agree is not reported. Each node reads and verifies its
    /// own copy and sends only its block checksums (BLOCKSUMS with VERIFY): no data crosses the
    /// network.
    /// </summary>
    public async Task<IReadOnlyList<CopyDifference>> CheckObjectAsync(ObjectId id, long objectSize, CancellationToken cancellationToken = default)
    {
        ClusterView view = View;
        if (view.Placement is not { } placement)
            return [new CopyDifference("-", view.PlacementError ?? "no members")];
        int[] picks = new int[view.Copies];
        placement.ChooseIndexes(id.Packed, picks);
        // Current copies first, so the reference is one that reads may be served from.
        int[] order = [.. picks.Where(n => !view.Stale[n]), .. picks.Where(n => view.Stale[n])];
        int blocks = (int)(objectSize / BlockSize);
        uint zeroBlock = Crc32C.Compute(new byte[BlockSize]);
        BlockSum[]? reference = null;
        var differences = new List<CopyDifference>();
        foreach (int n in order)
        {
            cancellationToken.ThrowIfCancellationRequested();
            IReplica replica = view.Replicas[n];
            if (!view.Live[n])
            {
                differences.Add(new CopyDifference(replica.NodeId, "down: not checked"));
                continue;
            }
            var sums = new BlockSum[blocks];
            PeerResult read = await replica.GetBlockSumsAsync(view.Epoch, id, 0, sums, verify: true).ConfigureAwait(false);
            if (!read.IsOk)
            {
                differences.Add(new CopyDifference(replica.NodeId, read.Status == PeerStatus.IoError ? "unreadable: a checksum failed" : $"unreadable: {read.Status}"));
                continue;
            }
            if (reference is null)
            {
                reference = sums;
                continue;
            }
            if (!Content(sums, zeroBlock).SequenceEqual(Content(reference, zeroBlock)))
                differences.Add(new CopyDifference(replica.NodeId, "data differs"));
            else if (!Allocated(sums).SequenceEqual(Allocated(reference)))
                differences.Add(new CopyDifference(replica.NodeId, "allocation differs"));
        }
        return differences;
    }

    // What each block reads as: holes and allocated zeroes read as a block of zeroes, which a data
    // block may hold too; that is the same data, told apart (if at all) by its allocation.
    private static IEnumerable<uint> Content(BlockSum[] sums, uint zeroBlock) => sums.Select(s => s.State == BlockState.Data ? s.Crc : zeroBlock);

    // Zeroed-but-allocated and data blocks both hold space; a hole does not.
    private static IEnumerable<bool> Allocated(BlockSum[] sums) => sums.Select(s => s.State != BlockState.Hole);
}
