using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>A request sent to the copies of an object (a change to all, a read to one); structs so
/// no closure is allocated.</summary>
internal interface IReplicaOp
{
    /// <summary>Changes carry <paramref name="generation"/>, the gateway's lock generation for the object's layer; reads ignore it.</summary>
    ValueTask<PeerResult> Send(IReplica replica, long epoch, long generation, ObjectId id);

    /// <summary>Each copy makes the change durable before it answers (FUA): no flush needs to cover it.</summary>
    bool Durable { get; }
}

internal readonly record struct WriteOp(long Offset, ReadOnlyMemory<byte> Data, bool Fua) : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, long generation, ObjectId id) => replica.WriteAsync(epoch, generation, id, Offset, Data, Fua);

    public bool Durable => Fua;
}

internal readonly record struct ZeroOp(long Offset, long Length, bool KeepAllocated, bool Fua) : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, long generation, ObjectId id) => replica.ZeroAsync(epoch, generation, id, Offset, Length, KeepAllocated, Fua);

    public bool Durable => Fua;
}

internal readonly record struct FillOp(long Offset, ReadOnlyMemory<byte> Data, bool Zeroes, bool FromReserve) : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, long generation, ObjectId id)
        => replica.FillHolesAsync(epoch, generation, id, Offset, Data, Zeroes, FromReserve);

    public bool Durable => false;
}

internal readonly record struct DeleteOp : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, long generation, ObjectId id) => replica.DeleteAsync(epoch, generation, id);

    public bool Durable => false;
}

internal readonly record struct ReadOp(long Offset, Memory<byte> Buffer) : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, long generation, ObjectId id) => replica.ReadAsync(epoch, id, Offset, Buffer);

    public bool Durable => false;
}

internal readonly record struct AllocationOp(long Offset, Memory<BlockState> States) : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, long generation, ObjectId id) => replica.GetAllocationAsync(epoch, id, Offset, States);

    public bool Durable => false;
}
