using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>A change sent to every copy of an object; structs so the fan-out allocates no closure.</summary>
internal interface IReplicaOp
{
    ValueTask<PeerResult> Send(IReplica replica, long epoch, ObjectId id);
}

internal readonly record struct WriteOp(long Offset, ReadOnlyMemory<byte> Data, bool Fua) : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, ObjectId id) => replica.WriteAsync(epoch, id, Offset, Data, Fua);
}

internal readonly record struct ZeroOp(long Offset, long Length, bool KeepAllocated, bool Fua) : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, ObjectId id) => replica.ZeroAsync(epoch, id, Offset, Length, KeepAllocated, Fua);
}

internal readonly record struct FillOp(long Offset, ReadOnlyMemory<byte> Data, bool Zeroes) : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, ObjectId id) => replica.FillHolesAsync(epoch, id, Offset, Data, Zeroes);
}

internal readonly record struct DeleteOp : IReplicaOp
{
    public ValueTask<PeerResult> Send(IReplica replica, long epoch, ObjectId id) => replica.DeleteAsync(epoch, id);
}
