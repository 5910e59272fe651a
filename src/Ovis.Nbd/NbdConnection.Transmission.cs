using System.Buffers;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    private readonly long _maxSkippedPayload;

    // Read loop only.
    private readonly byte[] _requestScratch = new byte[NbdRequest.Size];
    private NbdOperation? _payloadOperation;
    private int _payloadReceived;
    private long _skipRemaining;

    // A rejected WRITE whose payload is being discarded: its error reply is queued only once the
    // last payload byte has been read. libnbd files a request as in flight only after sending all
    // of it, so a reply that overtakes the payload matches no cookie and ends the session.
    private NbdOperation? _skipOperation;

    // Whatever ends the read loop, requests already started run to completion and their buffers
    // go back exactly once before the device is disposed (ConnectionLoops.RunAsync).
    private Task TransmitAsync(CancellationToken cancellationToken) => _loops.RunAsync(cancellationToken);

    ReceiveStatus IRequestProtocol<NbdOperation>.ReceiveRequests(ref ReadOnlySequence<byte> buffer)
    {
        while (true)
        {
            if (_payloadOperation is { } writing)
            {
                if (!ReceivePayload(writing, ref buffer))
                {
                    return ReceiveStatus.NeedData;
                }

                _payloadOperation = null;
                Start(writing);
                continue;
            }

            if (_skipOperation is { } rejected)
            {
                long skipped = Math.Min(_skipRemaining, buffer.Length);
                buffer = buffer.Slice(skipped);
                _skipRemaining -= skipped;
                if (_skipRemaining > 0)
                {
                    return ReceiveStatus.NeedData;
                }

                _skipOperation = null;
                Complete(rejected, onReadLoop: true);
                continue;
            }

            if (buffer.Length < NbdRequest.Size)
            {
                return ReceiveStatus.NeedData;
            }

            NbdRequest request = NbdRequest.Read(buffer, _requestScratch);
            if (request.Magic != NbdMagic.Request)
            {
                NbdLog.ProtocolError(_logger, _connectionId, "bad request magic");
                return ReceiveStatus.Close;
            }

            if (request.Command == NbdCommand.Disconnect)
            {
                buffer = buffer.Slice(NbdRequest.Size);
                return ReceiveStatus.Close;
            }

            // Checked before any payload is buffered, so a bad request costs no memory.
            NbdError error = Validate(request, out NbdErrorReason reason);
            long chargedBytes = error == NbdError.None && request.Command is NbdCommand.Read or NbdCommand.Write
                ? request.Length
                : 0;
            if (!TryAdmit(request, chargedBytes, out NbdOperation? operation))
            {
                return ReceiveStatus.NeedCapacity;
            }

            buffer = buffer.Slice(NbdRequest.Size);
            if (error != NbdError.None)
            {
                operation.Fail(error, reason);
                if (request.Command == NbdCommand.Write && request.Length > 0)
                {
                    // The payload follows anyway. Skipping costs no memory, but past a sane
                    // bound the client is treated as hostile ("Size constraints"): the reply
                    // goes out and the connection ends, since the stream cannot be resynced.
                    if (request.Length > _maxSkippedPayload)
                    {
                        Complete(operation, onReadLoop: true);
                        NbdLog.ProtocolError(_logger, _connectionId, "rejected write payload too large to skip");
                        return ReceiveStatus.Close;
                    }

                    // Replied to once the payload has been read and dropped (see _skipOperation).
                    _skipOperation = operation;
                    _skipRemaining = request.Length;
                    continue;
                }

                Complete(operation, onReadLoop: true);
                continue;
            }

            if (request.Command == NbdCommand.Write && request.Length > 0)
            {
                operation.Buffer = BufferPool.Rent((int)request.Length);
                _payloadOperation = operation;
                _payloadReceived = 0;
                continue;
            }

            Start(operation);
        }
    }

    /// <summary>Copies what has arrived of a WRITE payload; true once all of it is in the operation's buffer.</summary>
    private bool ReceivePayload(NbdOperation operation, ref ReadOnlySequence<byte> buffer)
    {
        int length = (int)operation.Request.Length;
        int count = (int)Math.Min(length - _payloadReceived, buffer.Length);
        buffer.Slice(0, count).CopyTo(operation.Buffer.AsSpan(_payloadReceived, count));
        buffer = buffer.Slice(count);
        _payloadReceived += count;
        return _payloadReceived == length;
    }

    void IRequestProtocol<NbdOperation>.InputEnded(bool bytesLeft)
    {
        if (bytesLeft || _payloadOperation is not null || _skipOperation is not null)
        {
            NbdLog.ClientVanished(_logger, _connectionId);
        }
    }

    void IRequestProtocol<NbdOperation>.AbandonPartialRequest()
    {
        _skipRemaining = 0;
        if (_skipOperation is { } rejected)
        {
            // The client left before its payload ended: nobody waits for the error reply.
            _skipOperation = null;
            ReleaseOperation(rejected);
        }

        if (_payloadOperation is { } operation)
        {
            _payloadOperation = null;
            ReleaseOperation(operation);
        }
    }
}
