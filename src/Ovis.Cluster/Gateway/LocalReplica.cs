using Ovis.Cluster.Fencing;
using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>
/// The gateway node's own store. It needs no epoch check: the gateway and the store share one
/// membership view. Its changes pass the node's fences like a peer's (a paused gateway must not
/// change its own copy either once the next holder has fenced it). The store is the node's;
/// disposing this does not close it.
/// </summary>
public sealed class LocalReplica(string nodeId, LocalStore store, FenceTable fences) : IReplica
{
    public string NodeId => nodeId;

    public ValueTask<PeerResult> WriteAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua)
        => fences.TryEnter(id.Volume, generation) switch
        {
            FenceVerdict.Admitted => Leave(store.WriteAsync(id, offset, data, fua), id.Volume, generation, epoch),
            FenceVerdict.Fenced => new(new PeerResult(PeerStatus.Fenced, epoch)),
            _ => RaiseThenAsync(new WriteOp(offset, data, fua), epoch, generation, id),
        };

    public ValueTask<PeerResult> ReadAsync(long epoch, ObjectId id, long offset, Memory<byte> buffer)
        => Map(store.ReadAsync(id, offset, buffer), epoch);

    public ValueTask<PeerResult> ZeroAsync(long epoch, long generation, ObjectId id, long offset, long length, bool keepAllocated, bool fua)
        => fences.TryEnter(id.Volume, generation) switch
        {
            FenceVerdict.Admitted => Leave(store.ZeroAsync(id, offset, length, keepAllocated, fua), id.Volume, generation, epoch),
            FenceVerdict.Fenced => new(new PeerResult(PeerStatus.Fenced, epoch)),
            _ => RaiseThenAsync(new ZeroOp(offset, length, keepAllocated, fua), epoch, generation, id),
        };

    public ValueTask<PeerResult> FillHolesAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false)
        => fences.TryEnter(id.Volume, generation) switch
        {
            FenceVerdict.Admitted => Leave(store.FillHolesAsync(id, offset, data, zeroes, fromReserve), id.Volume, generation, epoch),
            FenceVerdict.Fenced => new(new PeerResult(PeerStatus.Fenced, epoch)),
            _ => RaiseThenAsync(new FillOp(offset, data, zeroes, fromReserve), epoch, generation, id),
        };

    public ValueTask<PeerResult> DeleteAsync(long epoch, long generation, ObjectId id)
        => fences.TryEnter(id.Volume, generation) switch
        {
            FenceVerdict.Admitted => Leave(store.DeleteAsync(id), id.Volume, generation, epoch),
            FenceVerdict.Fenced => new(new PeerResult(PeerStatus.Fenced, epoch)),
            _ => RaiseThenAsync(default(DeleteOp), epoch, generation, id),
        };

    public async ValueTask<PeerResult> FenceAsync(long epoch, uint layer, long generation)
    {
        try
        {
            return new(await fences.RaiseAsync(layer, generation).ConfigureAwait(false) ? PeerStatus.Ok : PeerStatus.Fenced, epoch);
        }
        catch (IOException)
        {
            return new(PeerStatus.IoError, epoch);
        }
    }

    public ValueTask<PeerResult> FlushAsync(long epoch) => Map(store.FlushAsync(), epoch);

    public ValueTask<PeerResult> GetAllocationAsync(long epoch, ObjectId id, long offset, Memory<BlockState> states)
        => Map(store.GetAllocationAsync(id, offset, states), epoch);

    public ValueTask<PeerResult> GetBlockSumsAsync(long epoch, ObjectId id, long offset, Memory<BlockSum> sums, bool verify)
        => Map(store.GetBlockSumsAsync(id, offset, sums, verify), epoch);

    /// <summary>A change from a holder newer than any this node has seen: the fence goes up first.</summary>
    private async ValueTask<PeerResult> RaiseThenAsync<TOp>(TOp op, long epoch, long generation, ObjectId id) where TOp : struct, IReplicaOp
    {
        PeerResult raised = await FenceAsync(epoch, id.Volume, generation).ConfigureAwait(false);
        return raised.IsOk ? await op.Send(this, epoch, generation, id).ConfigureAwait(false) : raised;
    }

    private ValueTask<PeerResult> Leave(ValueTask<StoreStatus> pending, uint layer, long generation, long epoch)
    {
        if (!pending.IsCompleted)
            return LeaveAsync(pending, layer, generation, epoch);
        fences.Exit(layer, generation);
        return new(From(pending.GetAwaiter().GetResult(), epoch));
    }

    private async ValueTask<PeerResult> LeaveAsync(ValueTask<StoreStatus> pending, uint layer, long generation, long epoch)
    {
        try
        {
            return From(await pending.ConfigureAwait(false), epoch);
        }
        finally
        {
            fences.Exit(layer, generation);
        }
    }

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
