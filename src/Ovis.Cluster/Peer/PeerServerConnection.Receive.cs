using System.Buffers;
using System.Runtime.CompilerServices;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

internal sealed partial class PeerServerConnection
{
    // Read loop only.
    private readonly byte[] _headerScratch = new byte[PeerRequestHeader.Size];
    private PeerOperation? _payloadOperation;
    private int _payloadReceived;
    private long _skipRemaining;

    ReceiveStatus IRequestProtocol<PeerOperation>.ReceiveRequests(ref ReadOnlySequence<byte> buffer)
    {
        while (true)
        {
            if (_payloadOperation is { } receiving)
            {
                if (!ReceivePayload(receiving, ref buffer))
                {
                    return ReceiveStatus.NeedData;
                }

                _payloadOperation = null;
                Start(receiving);
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

            if (buffer.Length < PeerRequestHeader.Size)
            {
                return ReceiveStatus.NeedData;
            }

            ReadOnlySpan<byte> raw = PeerRequestHeader.Peek(buffer, _headerScratch);
            if (PeerRequestHeader.ReadMagic(raw) != PeerProtocol.RequestMagic)
            {
                // The framing is lost: nothing after this can be trusted, not even a handle to reply to.
                PeerLog.ProtocolError(_logger, _connectionId, "bad request magic");
                return ReceiveStatus.Close;
            }

            PeerRequestHeader request = PeerRequestHeader.Read(raw);

            // Checked before any payload is buffered, so a bad or stale request costs no memory.
            PeerStatus status = Validate(request, out bool closeAfterReply);
            if (status == PeerStatus.Ok && IsEpochChecked(request.Opcode) && (long)request.Epoch < _epochs.Current)
            {
                status = PeerStatus.StaleEpoch;
            }

            long charged = status == PeerStatus.Ok ? ChargedBytes(request) : 0;
            if (!TryAdmit(request, charged, out PeerOperation? operation))
            {
                return ReceiveStatus.NeedCapacity;
            }

            buffer = buffer.Slice(PeerRequestHeader.Size);
            if (status != PeerStatus.Ok)
            {
                operation.Status = status;
                Complete(operation, onReadLoop: true);
                if (closeAfterReply)
                {
                    PeerLog.ProtocolError(_logger, _connectionId, "request payload over the maximum");
                    return ReceiveStatus.Close;
                }

                if (request.HasPayload)
                {
                    _skipRemaining = request.Length;
                }

                continue;
            }

            if (request.HasPayload && request.Length > 0)
            {
                operation.Buffer = _bufferPool.Rent((int)request.Length);
                _payloadOperation = operation;
                _payloadReceived = 0;
                continue;
            }

            Start(operation);
        }
    }

    /// <summary>Copies what has arrived of a payload; true once all of it is in the operation's buffer.</summary>
    private bool ReceivePayload(PeerOperation operation, ref ReadOnlySequence<byte> buffer)
    {
        int length = (int)operation.Request.Length;
        int count = (int)Math.Min(length - _payloadReceived, buffer.Length);
        buffer.Slice(0, count).CopyTo(operation.Buffer.AsSpan(_payloadReceived, count));
        buffer = buffer.Slice(count);
        _payloadReceived += count;
        return _payloadReceived == length;
    }

    void IRequestProtocol<PeerOperation>.InputEnded(bool bytesLeft)
    {
        if (bytesLeft || _payloadOperation is not null || _skipRemaining > 0)
        {
            PeerLog.SenderVanished(_logger, _connectionId);
        }
    }

    void IRequestProtocol<PeerOperation>.AbandonPartialRequest()
    {
        _skipRemaining = 0;
        if (_payloadOperation is { } operation)
        {
            _payloadOperation = null;
            ReleaseOperation(operation);
        }
    }

    /// <summary>
    /// Checks a request against the rules of its opcode (PeerProtocol.cs). <paramref name="closeAfterReply"/>
    /// is set when the request declares a payload too large to skip.
    /// </summary>
    private PeerStatus Validate(in PeerRequestHeader request, out bool closeAfterReply)
    {
        closeAfterReply = false;
        if (request.HasPayload && request.Length > PeerProtocol.MaxPayloadLength)
        {
            closeAfterReply = true;
            return PeerStatus.Invalid;
        }

        if (request.Epoch > long.MaxValue || request.Generation > long.MaxValue
            || (request.Generation != 0 && !request.IsChange && request.Opcode != PeerOpcode.Fence))
        {
            return PeerStatus.Invalid;
        }

        // An object the store cannot hold: taking it would fail the store's next checkpoint for
        // good (LocalStore.MaxObjectIndexValue), not just this request.
        if (NamesObject(request.Opcode) && ObjectId.FromPacked(request.ObjectId).Index > _maxObjectIndex)
        {
            return PeerStatus.Invalid;
        }

        switch (request.Opcode)
        {
            case PeerOpcode.Read:
                return request.Flags == PeerRequestFlags.None && request.Length <= PeerProtocol.MaxPayloadLength && InObject(request.Offset, request.Length)
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            case PeerOpcode.Write:
                return (request.Flags & ~PeerRequestFlags.Fua) == 0 && InObject(request.Offset, request.Length)
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            case PeerOpcode.Zero:
                return (request.Flags & ~(PeerRequestFlags.Fua | PeerRequestFlags.KeepAllocated)) == 0 && InObject(request.Offset, request.Length)
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            case PeerOpcode.FillHoles:
                return (request.Flags & ~(PeerRequestFlags.Zeroes | PeerRequestFlags.FromReserve)) == 0
                    && request.Length <= PeerProtocol.MaxPayloadLength
                    && request.Offset % (ulong)_blockSize == 0
                    && request.Length % (uint)_blockSize == 0
                    && InObject(request.Offset, request.Length)
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            case PeerOpcode.Allocation:
                // Length counts blocks; 2^32 blocks of 4 KiB cannot overflow 64 bits.
                return request.Flags == PeerRequestFlags.None
                    && request.Offset % (ulong)_blockSize == 0
                    && InObject(request.Offset, request.Length * (ulong)_blockSize)
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            case PeerOpcode.BlockSums:
                // As ALLOCATION; only a store that keeps checksums can answer.
                return _sums is not null
                    && (request.Flags & ~PeerRequestFlags.Verify) == 0
                    && request.Offset % (ulong)_blockSize == 0
                    && InObject(request.Offset, request.Length * (ulong)_blockSize)
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            case PeerOpcode.Delete:
                return request.Flags == PeerRequestFlags.None && request.Offset == 0 && request.Length == 0
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            case PeerOpcode.Fence:
                return request.Flags == PeerRequestFlags.None && (uint)request.ObjectId == 0 && request.Offset == 0 && request.Length == 0
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            case PeerOpcode.Flush:
            case PeerOpcode.Stats:
            case PeerOpcode.Ping:
                return request.Flags == PeerRequestFlags.None && request.ObjectId == 0 && request.Offset == 0 && request.Length == 0
                    ? PeerStatus.Ok
                    : PeerStatus.Invalid;

            default:
                return PeerStatus.Invalid;
        }
    }

    private static bool NamesObject(PeerOpcode opcode)
        => opcode is PeerOpcode.Read or PeerOpcode.Write or PeerOpcode.Zero or PeerOpcode.FillHoles
            or PeerOpcode.Delete or PeerOpcode.Allocation or PeerOpcode.BlockSums;

    private bool InObject(ulong offset, ulong length)
        => offset <= (ulong)_maxObjectSize && length <= (ulong)_maxObjectSize - offset;

    /// <summary>Object operations are served only at the server's epoch; STATS and PING at any.</summary>
    private static bool IsEpochChecked(PeerOpcode opcode) => opcode is not (PeerOpcode.Stats or PeerOpcode.Ping);

    /// <summary>Memory the request holds while in flight: its payload, read buffer, allocation map or sums.</summary>
    private static long ChargedBytes(in PeerRequestHeader request) => request.Opcode switch
    {
        PeerOpcode.Read or PeerOpcode.Allocation => request.Length,
        PeerOpcode.BlockSums => request.Length * (long)Unsafe.SizeOf<BlockSum>(),
        _ when request.HasPayload => request.Length,
        _ => 0,
    };
}
