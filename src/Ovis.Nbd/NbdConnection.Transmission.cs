using System.Buffers;
using System.IO.Pipelines;

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
    private bool _replySignalPending;

    private enum ReceiveStatus
    {
        NeedData,
        NeedCapacity,
        Disconnect,
        ProtocolError,
    }

    private async Task TransmitAsync(CancellationToken cancellationToken)
    {
        Task output = OutputLoopAsync();
        try
        {
            await ReadLoopAsync(cancellationToken);
        }
        finally
        {
            // Whatever ended the read loop, requests already started run to completion and
            // their buffers go back exactly once before the device is disposed.
            AbandonPartialPayload();
            WriteRepliesIfIdle();
            await DrainAsync();
            lock (_sync)
            {
                _outputStopping = true;
            }

            _repliesReady.Set();
            await output;
        }
    }

    private async Task ReadLoopAsync(CancellationToken cancellationToken)
    {
        PipeReader input = _transport.Input;
        while (true)
        {
            ReadResult result = await input.ReadAsync(cancellationToken);
            ReadOnlySequence<byte> buffer = result.Buffer;
            ReceiveStatus status = ReceiveRequests(ref buffer);

            // The replies the batch completed synchronously go out together, from this thread.
            if (_replySignalPending)
            {
                _replySignalPending = false;
                WriteRepliesIfIdle();
            }

            switch (status)
            {
                case ReceiveStatus.NeedData:
                    input.AdvanceTo(buffer.Start, buffer.End);
                    if (result.IsCompleted || result.IsCanceled)
                    {
                        if (!buffer.IsEmpty || _payloadOperation is not null || _skipOperation is not null)
                        {
                            NbdLog.ClientVanished(_logger, _connectionId);
                        }

                        return;
                    }

                    break;

                case ReceiveStatus.NeedCapacity:
                    // Leave the unadmitted header in the pipe (examined == consumed, so the next
                    // read returns at once) and stop reading until a reply frees budget.
                    input.AdvanceTo(buffer.Start);
                    if (result.IsCanceled)
                    {
                        return;
                    }

                    await _capacityFreed.WaitAsync();
                    break;

                default:
                    input.AdvanceTo(buffer.Start);
                    return;
            }
        }
    }

    /// <summary>Parses, checks and starts every whole request in <paramref name="buffer"/>, consuming what it used.</summary>
    private ReceiveStatus ReceiveRequests(ref ReadOnlySequence<byte> buffer)
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
                return ReceiveStatus.ProtocolError;
            }

            if (request.Command == NbdCommand.Disconnect)
            {
                buffer = buffer.Slice(NbdRequest.Size);
                return ReceiveStatus.Disconnect;
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
                        return ReceiveStatus.ProtocolError;
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

    private void AbandonPartialPayload()
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
