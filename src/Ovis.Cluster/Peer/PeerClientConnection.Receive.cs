using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Runtime.InteropServices;

namespace Ovis.Cluster.Peer;

internal sealed partial class PeerClientConnection
{
    // Receive loop only (read by the heartbeat under _pendingLock, hence volatile): the request
    // whose reply payload is arriving, how much of it has, and what to skip.
    private volatile PeerRequest? _receiving;
    private PeerResult _receivingResult;
    private int _received;
    private int _receiveLength;
    private long _skipRemaining;
    private readonly byte[] _headerScratch = new byte[PeerReplyHeader.Size];
    private readonly byte[] _statsScratch = new byte[PeerProtocol.StatsPayloadSize];

    private async Task ReceiveLoopAsync()
    {
        Exception? failure = null;
        try
        {
            while (true)
            {
                ReadResult result = await _input.ReadAsync();
                ReadOnlySequence<byte> buffer = result.Buffer;
                string? problem = ReceiveReplies(ref buffer);
                _input.AdvanceTo(buffer.Start, buffer.End);
                if (problem is not null)
                {
                    PeerLog.ReplyProtocolError(_logger, _client.Peer, problem);
                    break;
                }

                if (result.IsCompleted || result.IsCanceled)
                {
                    break;
                }
            }
        }
        catch (Exception ex)
        {
            // A reset or a disposed socket; anything else would be a bug here, but it still must
            // not leave requests hanging.
            failure = ex;
        }

        Fail(failure);
        await _input.CompleteAsync();
        await _stream.DisposeAsync();
    }

    /// <summary>Matches every whole reply in <paramref name="buffer"/> to its request; a problem description ends the connection.</summary>
    private string? ReceiveReplies(ref ReadOnlySequence<byte> buffer)
    {
        while (true)
        {
            if (_receiving is { } receiving)
            {
                if (!ReceivePayload(receiving, ref buffer))
                {
                    return null;
                }

                _receiving = null;
                FinishWithPayload(receiving);
                continue;
            }

            if (_skipRemaining > 0)
            {
                long skipped = Math.Min(_skipRemaining, buffer.Length);
                buffer = buffer.Slice(skipped);
                _skipRemaining -= skipped;
                if (_skipRemaining > 0)
                {
                    return null;
                }

                continue;
            }

            if (buffer.Length < PeerReplyHeader.Size)
            {
                return null;
            }

            ReadOnlySpan<byte> raw = PeerReplyHeader.Peek(buffer, _headerScratch);
            if (PeerReplyHeader.ReadMagic(raw) != PeerProtocol.ReplyMagic)
            {
                return "bad reply magic";
            }

            PeerReplyHeader reply = PeerReplyHeader.Read(raw);
            buffer = buffer.Slice(PeerReplyHeader.Size);
            if (reply.Epoch > long.MaxValue)
            {
                return "epoch out of range";
            }

            PeerRequest? request;
            lock (_pendingLock)
            {
                if (_pending.Remove(reply.Handle, out request))
                {
                    // Visible to the heartbeat from here until its payload is in.
                    _receiving = reply.Length > 0 ? request : null;
                }
            }

            if (request is null)
            {
                // The request was canceled; its reply is dropped.
                _skipRemaining = reply.Length;
                continue;
            }

            var result = new PeerResult(ToStatus(reply.Status), (long)reply.Epoch);
            if (!ExpectedLength(request, result.Status, reply.Length))
            {
                _receiving = null;
                request.Finish(PeerResult.Unreachable);
                return "reply length does not fit the request";
            }

            if (reply.Length == 0)
            {
                request.Finish(result);
                continue;
            }

            _receivingResult = result;
            _received = 0;
            _receiveLength = (int)reply.Length;
        }
    }

    /// <summary>Copies what has arrived of a reply payload into the request's buffer; true once all of it has.</summary>
    private bool ReceivePayload(PeerRequest request, ref ReadOnlySequence<byte> buffer)
    {
        Span<byte> target = Target(request);
        int count = (int)Math.Min(_receiveLength - _received, buffer.Length);
        // Bytes past the target (later fields of a longer STATS payload) are skipped.
        int useful = Math.Clamp(target.Length - _received, 0, count);
        buffer.Slice(0, useful).CopyTo(target.Slice(_received, useful));
        buffer = buffer.Slice(count);
        _received += count;
        return _received == _receiveLength;
    }

    private Span<byte> Target(PeerRequest request) => request.Opcode switch
    {
        PeerOpcode.Read => request.ReadBuffer.Span,
        PeerOpcode.Allocation => MemoryMarshal.AsBytes(request.States.Span),
        PeerOpcode.BlockSums => BlockSumWire.ReceiveTarget(request.Sums.Span),
        PeerOpcode.Stats => _statsScratch,
        _ => default,
    };

    private void FinishWithPayload(PeerRequest request)
    {
        if (request.Opcode == PeerOpcode.Stats)
        {
            ReadOnlySpan<byte> s = _statsScratch;
            long total = BinaryPrimitives.ReadInt64BigEndian(s[24..]);
            request.Stats = new PeerStats(
                BinaryPrimitives.ReadInt64BigEndian(s),
                BinaryPrimitives.ReadInt64BigEndian(s[8..]),
                BinaryPrimitives.ReadInt64BigEndian(s[16..]))
            {
                Space = total <= 0 ? null : new Ovis.Store.StoreSpace(total,
                    BinaryPrimitives.ReadInt64BigEndian(s[32..]),
                    BinaryPrimitives.ReadInt64BigEndian(s[40..]),
                    BinaryPrimitives.ReadInt64BigEndian(s[48..]) / PeerProtocol.RatioScale,
                    BinaryPrimitives.ReadInt64BigEndian(s[56..]) / PeerProtocol.RatioScale),
            };
            // A shorter payload (an older server) leaves the later fields zero next time.
            Array.Clear(_statsScratch);
        }
        else if (request.Opcode == PeerOpcode.BlockSums)
        {
            BlockSumWire.DecodeInPlace(request.Sums.Span);
        }

        request.Finish(_receivingResult);
    }

    /// <summary>A reply other than OK has no payload; an OK one has exactly what its opcode promises.</summary>
    private static bool ExpectedLength(PeerRequest request, PeerStatus status, uint length)
    {
        if (status != PeerStatus.Ok)
        {
            return length == 0;
        }

        return request.Opcode switch
        {
            PeerOpcode.Read or PeerOpcode.Allocation => length == request.Length,
            PeerOpcode.BlockSums => length == (long)request.Length * PeerProtocol.BlockSumSize,
            PeerOpcode.Stats => length is >= PeerProtocol.MinStatsPayloadSize and <= PeerProtocol.MaxPayloadLength,
            _ => length == 0,
        };
    }

    // A status this client does not know (a newer server) did not succeed: an I/O error is the
    // safe reading. Unreachable is never valid on the wire.
    private static PeerStatus ToStatus(PeerStatus status)
        => status is <= PeerStatus.Invalid or PeerStatus.Fenced ? status : PeerStatus.IoError;
}
