using System.Runtime.CompilerServices;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

/// <summary>
/// One request on the server, from the moment its header is admitted until its reply is in the
/// output pipe. Pooled per connection, so its continuation delegate is allocated once per slot.
/// </summary>
/// <remarks>
/// Ownership passes along and is never shared: the read loop fills it and starts the store call;
/// whichever thread completes that call queues it for the output loop; the output loop writes the
/// reply and returns <see cref="Buffer"/>, <see cref="States"/> and <see cref="Sums"/> to their pools.
/// </remarks>
internal sealed class PeerOperation
{
    private readonly PeerServerConnection _connection;
    private readonly Action _onStoreCompleted;
    private ValueTaskAwaiter<StoreStatus> _awaiter;

    public PeerOperation(PeerServerConnection connection)
    {
        _connection = connection;
        _onStoreCompleted = OnStoreCompleted;
    }

    public PeerRequestHeader Request { get; private set; }

    /// <summary>Bytes charged against the connection's in-flight budget.</summary>
    public long ChargedBytes { get; private set; }

    public PeerStatus Status { get; set; }

    /// <summary>A change admitted by the fence table: it must leave the table when it completes.</summary>
    public bool FenceHeld { get; set; }

    /// <summary>READ data or WRITE / FILL_HOLES payload, rented from the server's pool.</summary>
    public byte[]? Buffer { get; set; }

    /// <summary>ALLOCATION: one state per block, rented from the shared BlockState pool.</summary>
    public BlockState[]? States { get; set; }

    /// <summary>BLOCKSUMS: one sum per block, rented from the shared BlockSum pool.</summary>
    public BlockSum[]? Sums { get; set; }

    /// <summary>STATS: what the reply carries.</summary>
    public PeerStats Stats { get; set; }

    public void Initialize(in PeerRequestHeader request, long chargedBytes)
    {
        Request = request;
        ChargedBytes = chargedBytes;
        Status = PeerStatus.Ok;
    }

    /// <summary>Waits for a store call off the read loop; the cached delegate keeps this allocation-free.</summary>
    public void AwaitStore(ValueTask<StoreStatus> pending)
    {
        _awaiter = pending.GetAwaiter();
        _awaiter.UnsafeOnCompleted(_onStoreCompleted);
    }

    public void Reset()
    {
        Request = default;
        ChargedBytes = 0;
        Status = PeerStatus.Ok;
        FenceHeld = false;
        Buffer = null;
        States = null;
        Sums = null;
        Stats = default;
    }

    private void OnStoreCompleted()
    {
        ValueTaskAwaiter<StoreStatus> awaiter = _awaiter;
        _awaiter = default;
        _connection.OnStoreCompleted(this, awaiter);
    }
}
