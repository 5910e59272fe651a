using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>
/// One node's store as a gateway sees it: the node's own store, or a peer reached over the peer
/// protocol. Every request carries the gateway's epoch; a replica in a newer epoch refuses it
/// (<see cref="PeerStatus.StaleEpoch"/>) without applying it. Every change also carries the
/// generation of the gateway's lock on the volume; a replica that has seen a newer one refuses
/// it (<see cref="PeerStatus.Fenced"/>, docs/fencing.md).
/// </summary>
public interface IReplica : IAsyncDisposable
{
    string NodeId { get; }

    ValueTask<PeerResult> WriteAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua);

    ValueTask<PeerResult> ReadAsync(long epoch, ObjectId id, long offset, Memory<byte> buffer);

    ValueTask<PeerResult> ZeroAsync(long epoch, long generation, ObjectId id, long offset, long length, bool keepAllocated, bool fua);

    ValueTask<PeerResult> FillHolesAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false);

    ValueTask<PeerResult> DeleteAsync(long epoch, long generation, ObjectId id);

    /// <summary>Raises the node's fence of <paramref name="layer"/> to <paramref name="generation"/>, durably.</summary>
    ValueTask<PeerResult> FenceAsync(long epoch, uint layer, long generation);

    /// <summary>One journal sync on the node, shared with concurrent flushes.</summary>
    ValueTask<PeerResult> FlushAsync(long epoch);

    ValueTask<PeerResult> GetAllocationAsync(long epoch, ObjectId id, long offset, Memory<BlockState> states);

    /// <summary>The copy's blocks in brief (LocalStore.GetBlockSumsAsync); with <paramref name="verify"/>
    /// its data blocks are read and checked, a failed checksum being <see cref="PeerStatus.IoError"/>.</summary>
    ValueTask<PeerResult> GetBlockSumsAsync(long epoch, ObjectId id, long offset, Memory<BlockSum> sums, bool verify);
}
