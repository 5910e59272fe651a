using System.Threading.Tasks.Sources;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

/// <summary>
/// One request of a <see cref="PeerClient"/>, from the call until its result is delivered; it is
/// the awaitable the caller gets back, so a call costs this one object.
/// </summary>
/// <remarks>
/// Three parties may finish a request: the receive loop (a reply), the connection's teardown
/// (Unreachable) and the caller's cancellation token. Whoever removes it from the connection's
/// pending table owns it. The send loop meanwhile may be copying the caller's payload into the
/// pipe, and the caller must not get its buffer back while that copy runs: <see cref="_sendState"/>
/// hands delivery to the send loop in that case.
/// </remarks>
internal sealed class PeerRequest : IValueTaskSource<PeerResult>
{
    private const int Queued = 0;
    private const int Copying = 1;
    private const int Copied = 2;
    private const int Abandoned = 3;
    private const int DeliverAfterCopy = 4;

    private ManualResetValueTaskSourceCore<PeerResult> _core = new() { RunContinuationsAsynchronously = true };
    private int _sendState;
    private PeerResult _result;
    private CancellationToken _canceledBy;
    private bool _canceled;

    public PeerRequest(PeerOpcode opcode, PeerRequestFlags flags, long epoch, ulong objectId, long offset, uint length, long generation = 0)
    {
        Generation = generation;
        Opcode = opcode;
        Flags = flags;
        Epoch = epoch;
        ObjectId = objectId;
        Offset = offset;
        Length = length;
    }

    public PeerOpcode Opcode { get; }

    public PeerRequestFlags Flags { get; }

    public long Epoch { get; }

    /// <summary>Changes and FENCE: the sender's volume-lock generation (PeerProtocol.cs, fencing).</summary>
    public long Generation { get; }

    public ulong ObjectId { get; }

    public long Offset { get; }

    public uint Length { get; }

    /// <summary>Set by the connection when the request is registered.</summary>
    public ulong Handle { get; set; }

    public PeerClientConnection? Connection { get; set; }

    /// <summary>Environment.TickCount64 when the request was queued, for the request timeout.</summary>
    public long QueuedAt { get; set; }

    public CancellationTokenRegistration Registration { get; set; }

    /// <summary>WRITE and FILL_HOLES: the caller's data, copied into the pipe by the send loop.</summary>
    public ReadOnlyMemory<byte> Payload { get; init; }

    /// <summary>READ: where the reply's data goes, written by the receive loop.</summary>
    public Memory<byte> ReadBuffer { get; init; }

    /// <summary>ALLOCATION: where the reply's states go, written by the receive loop.</summary>
    public Memory<BlockState> States { get; init; }

    /// <summary>BLOCKSUMS: where the reply's sums go, received and decoded in place by the receive loop.</summary>
    public Memory<BlockSum> Sums { get; init; }

    /// <summary>STATS: filled in by the receive loop before the result is delivered.</summary>
    public PeerStats Stats { get; set; }

    public PeerRequestHeader Header => new(Opcode, Flags, (ulong)Epoch, Handle, ObjectId, (ulong)Offset, Length, (ulong)Generation);

    public bool HasPayload => Header.HasPayload;

    public ValueTask<PeerResult> AsValueTask() => new(this, _core.Version);

    /// <summary>Send loop: false when the request was finished before its turn (skip it).</summary>
    public bool TryBeginCopy() => Interlocked.CompareExchange(ref _sendState, Copying, Queued) == Queued;

    /// <summary>Send loop: the payload is in the pipe; delivers the result if someone finished the request meanwhile.</summary>
    public void EndCopy()
    {
        if (Interlocked.CompareExchange(ref _sendState, Copied, Copying) != Copying)
        {
            Deliver();
        }
    }

    /// <summary>Finishes the request; the caller must have removed it from the pending table.</summary>
    public void Finish(PeerResult result)
    {
        _result = result;
        Release();
    }

    /// <summary>Finishes the request as canceled by the caller's token.</summary>
    public void FinishCanceled(CancellationToken token)
    {
        _canceled = true;
        _canceledBy = token;
        Release();
    }

    private void Release()
    {
        int state = Interlocked.CompareExchange(ref _sendState, Abandoned, Queued);
        if (state == Copying && Interlocked.CompareExchange(ref _sendState, DeliverAfterCopy, Copying) == Copying)
        {
            // The send loop is reading the caller's payload; it delivers when it is done.
            return;
        }

        Deliver();
    }

    private void Deliver()
    {
        // Unregister, not Dispose: this may run inside the cancellation callback itself.
        Registration.Unregister();
        if (_canceled)
        {
            _core.SetException(new OperationCanceledException(_canceledBy));
        }
        else
        {
            _core.SetResult(_result);
        }
    }

    PeerResult IValueTaskSource<PeerResult>.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<PeerResult>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<PeerResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
