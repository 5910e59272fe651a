using System.Runtime.CompilerServices;

namespace Ovis.Nbd;

/// <summary>
/// One request from the moment its header is admitted until its reply is in the output pipe.
/// Pooled per connection, so the continuation delegate and extent lists are allocated once per
/// slot rather than per request.
/// </summary>
/// <remarks>
/// Ownership: the read loop fills it and starts the device work; whichever thread finishes the
/// last device call queues it; the holder of the writer (see NbdConnection) writes the reply, returns
/// <see cref="Buffer"/> to the pool and the operation to the connection. Only one of them
/// touches it at a time, so it needs no locking of its own.
/// </remarks>
internal sealed class NbdOperation
{
    private readonly NbdConnection _connection;
    private readonly Action _onDeviceCompleted;
    private ValueTaskAwaiter<NbdError> _awaiter;

    public NbdOperation(NbdConnection connection)
    {
        _connection = connection;
        _onDeviceCompleted = OnDeviceCompleted;
    }

    public NbdRequest Request { get; private set; }

    /// <summary>Payload bytes charged against the connection's in-flight budget.</summary>
    public long ChargedBytes { get; private set; }

    public NbdError Error { get; private set; }

    public NbdErrorReason Reason { get; private set; }

    /// <summary>READ data or WRITE payload, rented from the connection's pool; returned once its reply is written.</summary>
    public byte[]? Buffer { get; set; }

    /// <summary>READ: content segments (Zero = send as a hole). BLOCK_STATUS: the extents to report.</summary>
    public List<NbdExtent> Extents { get; } = [];

    /// <summary>BLOCK_STATUS: one list per selected dirty-bitmap context, in context-id order; the
    /// lists are kept for reuse, <see cref="BitmapContexts"/> says how many are in use.</summary>
    public List<List<NbdExtent>> BitmapExtents { get; } = [];

    public int BitmapContexts { get; set; }

    /// <summary>Raw output of IBlockDevice.GetAllocationAsync before it is merged into <see cref="Extents"/>.</summary>
    public List<NbdExtent> AllocationScratch { get; } = [];

    /// <summary>
    /// BLOCK_STATUS, and a structured READ before it knows its segments: the device is being asked
    /// for the allocation of the range past <see cref="AllocationCovered"/>.
    /// </summary>
    public bool QueryingAllocation { get; set; }

    /// <summary>Bytes from the request offset whose allocation is already in <see cref="Extents"/>.</summary>
    public long AllocationCovered { get; set; }

    /// <summary>Device calls issued so far; for READ the index of the next segment.</summary>
    public int Step { get; set; }

    /// <summary>READ: where the next segment starts, relative to the request offset.</summary>
    public long SegmentStart { get; set; }

    public void Initialize(in NbdRequest request, long chargedBytes)
    {
        Request = request;
        ChargedBytes = chargedBytes;
    }

    public void Fail(NbdError error, NbdErrorReason reason)
    {
        Error = error;
        Reason = reason;
    }

    /// <summary>Waits for a device call off the read loop; the cached delegate keeps this allocation-free.</summary>
    public void AwaitDevice(ValueTask<NbdError> pending)
    {
        _awaiter = pending.GetAwaiter();
        _awaiter.UnsafeOnCompleted(_onDeviceCompleted);
    }

    public void Reset()
    {
        Request = default;
        ChargedBytes = 0;
        Error = NbdError.None;
        Reason = NbdErrorReason.None;
        Buffer = null;
        Extents.Clear();
        AllocationScratch.Clear();
        BitmapContexts = 0;
        QueryingAllocation = false;
        AllocationCovered = 0;
        Step = 0;
        SegmentStart = 0;
    }

    private void OnDeviceCompleted()
    {
        ValueTaskAwaiter<NbdError> awaiter = _awaiter;
        _awaiter = default;
        _connection.OnDeviceCompleted(this, awaiter);
    }
}
