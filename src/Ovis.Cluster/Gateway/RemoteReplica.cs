using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>Another node's store, over one pipelined peer connection.</summary>
public sealed class RemoteReplica(string nodeId, PeerClient client) : IReplica
{
    public string NodeId => nodeId;

    public PeerClient Client => client;

    public ValueTask<PeerResult> WriteAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua)
        => client.WriteAsync(epoch, generation, id, offset, data, fua);

    public ValueTask<PeerResult> ReadAsync(long epoch, ObjectId id, long offset, Memory<byte> buffer)
        => client.ReadAsync(epoch, id, offset, buffer);

    public ValueTask<PeerResult> ZeroAsync(long epoch, long generation, ObjectId id, long offset, long length, bool keepAllocated, bool fua)
        => client.ZeroAsync(epoch, generation, id, offset, length, keepAllocated, fua);

    public ValueTask<PeerResult> FillHolesAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false)
        => client.FillHolesAsync(epoch, generation, id, offset, data, zeroes, fromReserve);

    public ValueTask<PeerResult> DeleteAsync(long epoch, long generation, ObjectId id) => client.DeleteAsync(epoch, generation, id);

    public ValueTask<PeerResult> FenceAsync(long epoch, uint layer, long generation) => client.FenceAsync(epoch, layer, generation);

    public ValueTask<PeerResult> FlushAsync(long epoch) => client.FlushAsync(epoch);

    public ValueTask<PeerResult> GetAllocationAsync(long epoch, ObjectId id, long offset, Memory<BlockState> states)
        => client.GetAllocationAsync(epoch, id, offset, states);

    public ValueTask<PeerResult> GetBlockSumsAsync(long epoch, ObjectId id, long offset, Memory<BlockSum> sums, bool verify)
        => client.GetBlockSumsAsync(epoch, id, offset, sums, verify);

    public ValueTask DisposeAsync() => client.DisposeAsync();
}
