using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>
/// The gateway node's own store. It needs no epoch check: the gateway and the store share one
/// membership view. The store is the node's; disposing this does not close it.
/// </summary>
public sealed class LocalReplica(string nodeId, LocalStore store) : IReplica
{
    public string NodeId => nodeId;

    public ValueTask<PeerResult> WriteAsync(long epoch, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua)
        => Map(store.WriteAsync(id, offset, data, fua), epoch);

    public ValueTask<PeerResult> ReadAsync(long epoch, ObjectId id, long offset, Memory<byte> buffer)
        => Map(store.ReadAsync(id, offset, buffer), epoch);

    public ValueTask<PeerResult> ZeroAsync(long epoch, ObjectId id, long offset, long length, bool keepAllocated, bool fua)
        => Map(store.ZeroAsync(id, offset, length, keepAllocated, fua), epoch);

    public ValueTask<PeerResult> FillHolesAsync(long epoch, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes)
        => Map(store.FillHolesAsync(id, offset, data, zeroes), epoch);

    public ValueTask<PeerResult> DeleteAsync(long epoch, ObjectId id) => Map(store.DeleteAsync(id), epoch);

    public ValueTask<PeerResult> FlushAsync(long epoch) => Map(store.FlushAsync(), epoch);

    public ValueTask<PeerResult> GetAllocationAsync(long epoch, ObjectId id, long offset, Memory<BlockState> states)
        => Map(store.GetAllocationAsync(id, offset, states), epoch);

    public ValueTask<PeerResult> GetBlockSumsAsync(long epoch, ObjectId id, long offset, Memory<BlockSum> sums, bool verify)
        => Map(store.GetBlockSumsAsync(id, offset, sums, verify), epoch);

    // The local store completes most calls synchronously: no state machine then.
    private static ValueTask<PeerResult> Map(ValueTask<StoreStatus> pending, long epoch)
        => pending.IsCompletedSuccessfully
            ? new(From(pending.Result, epoch))
            : MapAsync(pending, epoch);

    private static async ValueTask<PeerResult> MapAsync(ValueTask<StoreStatus> pending, long epoch)
        => From(await pending.ConfigureAwait(false), epoch);

    private static PeerResult From(StoreStatus status, long epoch) => new(status switch
    {
        StoreStatus.Ok => PeerStatus.Ok,
        StoreStatus.NoSpace => PeerStatus.NoSpace,
        StoreStatus.Closed => PeerStatus.Closed,
        _ => PeerStatus.IoError,
    }, epoch);

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
