using System.Buffers;
using System.IO.Pipelines;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    private readonly Lock _sync = new();

    // Guarded by _sync: the in-flight budget, finished operations waiting for the output loop,
    // and idle operation objects.
    private readonly Queue<NbdOperation> _completed;
    private readonly Stack<NbdOperation> _operationPool;
    private int _inFlightRequests;
    private long _inFlightBytes;

    private readonly NbdSignal _repliesReady = new();
    private readonly NbdSignal _capacityFreed = new();
    private readonly long _maxSkippedPayload;

    // Read loop only.
    private readonly byte[] _requestScratch = new byte[NbdRequest.Size];
    private NbdOperation? _payloadOperation;
    private int _payloadReceived;
    private long _skipRemaining;
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
            _repliesReady.Set();
            await DrainAsync();
            _outputStopping = true;
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

            // One wake-up for every reply the batch completed synchronously, so they share a flush.
            if (_replySignalPending)
            {
                _replySignalPending = false;
                _repliesReady.Set();
            }

            switch (status)
            {
                case ReceiveStatus.NeedData:
                    input.AdvanceTo(buffer.Start, buffer.End);
                    if (result.IsCompleted || result.IsCanceled)
                    {
                        if (!buffer.IsEmpty || _payloadOperation is not null || _skipRemaining > 0)
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

            if (_skipRemaining > 0)
            {
                long skipped = Math.Min(_skipRemaining, buffer.Length);
                buffer = buffer.Slice(skipped);
                _skipRemaining -= skipped;
                if (_skipRemaining > 0)
                {
                    return ReceiveStatus.NeedData;
                }

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
                Complete(operation, onReadLoop: true);
                if (request.Command == NbdCommand.Write && request.Length > 0)
                {
                    // The payload follows anyway. Skipping costs no memory, but past a sane
                    // bound the client is treated as hostile ("Size constraints").
                    if (request.Length > _maxSkippedPayload)
                    {
                        NbdLog.ProtocolError(_logger, _connectionId, "rejected write payload too large to skip");
                        return ReceiveStatus.ProtocolError;
                    }

                    _skipRemaining = request.Length;
                }

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

    /// <summary>The checks of doc/proto.md, "Error values", in the order a client would want them reported.</summary>
    private NbdError Validate(in NbdRequest request, out NbdErrorReason reason)
    {
        NbdCommandFlags allowed = NbdCommandFlags.Fua;
        switch (request.Command)
        {
            case NbdCommand.Read:
                // DF only exists once structured replies are on (NBD_FLAG_SEND_DF).
                if (_structuredReplies)
                {
                    allowed |= NbdCommandFlags.DontFragment;
                }

                break;
            case NbdCommand.Write:
            case NbdCommand.Flush:
            case NbdCommand.Trim:
            case NbdCommand.Cache:
                break;
            case NbdCommand.WriteZeroes:
                allowed |= NbdCommandFlags.NoHole | NbdCommandFlags.FastZero;
                break;
            case NbdCommand.BlockStatus:
                allowed |= NbdCommandFlags.ReqOne;
                break;
            default:
                reason = NbdErrorReason.UnknownCommand;
                return NbdError.EINVAL;
        }

        if ((request.Flags & ~allowed) != 0)
        {
            reason = NbdErrorReason.InvalidFlags;
            return NbdError.EINVAL;
        }

        if (request.Command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes
            && (_transmissionFlags & NbdTransmissionFlags.ReadOnly) != 0)
        {
            reason = NbdErrorReason.ReadOnly;
            return NbdError.EPERM;
        }

        if (request.Command is NbdCommand.Read or NbdCommand.Write && request.Length > (uint)_options.MaxPayloadSize)
        {
            reason = NbdErrorReason.PayloadTooLarge;
            return NbdError.EINVAL;
        }

        if (request.Command == NbdCommand.Flush)
        {
            // "For a flush request, length and offset are reserved, and MUST be set to all-zero."
            reason = request.Offset != 0 || request.Length != 0 ? NbdErrorReason.ReservedFieldsSet : NbdErrorReason.None;
            return reason == NbdErrorReason.None ? NbdError.None : NbdError.EINVAL;
        }

        if (request.Command == NbdCommand.BlockStatus)
        {
            if (!_baseAllocationSelected)
            {
                reason = NbdErrorReason.NoMetaContext;
                return NbdError.EINVAL;
            }

            // Every descriptor must have a nonzero length, so an empty range has no valid answer.
            if (request.Length == 0)
            {
                reason = NbdErrorReason.ZeroLength;
                return NbdError.EINVAL;
            }
        }

        ulong size = (ulong)_exportSize;
        if (request.Offset > size || request.Length > size - request.Offset)
        {
            reason = NbdErrorReason.OutOfRange;
            // ENOSPC for writes past the end, EINVAL for everything else.
            return request.Command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.ENOSPC : NbdError.EINVAL;
        }

        reason = NbdErrorReason.None;
        return NbdError.None;
    }

    /// <summary>Takes a request slot and <paramref name="bytes"/> of budget, or says to wait for a reply to free some.</summary>
    private bool TryAdmit(in NbdRequest request, long bytes, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out NbdOperation? operation)
    {
        lock (_sync)
        {
            // A request larger than the whole byte budget is admitted alone rather than never.
            if (_inFlightRequests >= _options.MaxInFlightRequests
                || (_inFlightBytes != 0 && _inFlightBytes + bytes > _options.MaxInFlightBytes))
            {
                operation = null;
                return false;
            }

            _inFlightRequests++;
            _inFlightBytes += bytes;
            _operationPool.TryPop(out operation);
        }

        operation ??= new NbdOperation(this);
        operation.Initialize(request, bytes);
        return true;
    }

    /// <summary>Returns an operation's buffer and budget; called once per operation, after its reply is written or abandoned.</summary>
    private void ReleaseOperation(NbdOperation operation)
    {
        if (operation.Buffer is { } buffer)
        {
            operation.Buffer = null;
            BufferPool.Return(buffer);
        }

        long bytes = operation.ChargedBytes;
        operation.Reset();
        lock (_sync)
        {
            _inFlightRequests--;
            _inFlightBytes -= bytes;
            _operationPool.Push(operation);
        }

        _capacityFreed.Set();
    }

    /// <summary>Hands a finished operation to the output loop.</summary>
    private void Complete(NbdOperation operation, bool onReadLoop)
    {
        lock (_sync)
        {
            _completed.Enqueue(operation);
        }

        // The read loop wakes the output loop once per batch; device completions at once.
        if (onReadLoop)
        {
            _replySignalPending = true;
        }
        else
        {
            _repliesReady.Set();
        }
    }

    private void AbandonPartialPayload()
    {
        _skipRemaining = 0;
        if (_payloadOperation is { } operation)
        {
            _payloadOperation = null;
            ReleaseOperation(operation);
        }
    }

    private async ValueTask DrainAsync()
    {
        while (true)
        {
            lock (_sync)
            {
                if (_inFlightRequests == 0)
                {
                    return;
                }
            }

            await _capacityFreed.WaitAsync();
        }
    }
}
