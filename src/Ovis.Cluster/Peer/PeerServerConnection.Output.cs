using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

internal sealed partial class PeerServerConnection
{
    // Large READ replies are pushed to the socket in pieces of about this size rather than piling
    // a whole batch into the pipe before the first byte leaves.
    private const int FlushThreshold = 256 << 10;

    private volatile bool _outputStopping;

    // Output loop only: once the peer stops taking replies, operations are still released but
    // nothing more is written.
    private bool _outputFailed;

    /// <summary>
    /// The only writer of the transport. Each wake-up drains every finished operation in
    /// completion order and flushes once for the lot (or every FlushThreshold bytes).
    /// </summary>
    private async Task OutputLoopAsync()
    {
        PipeWriter output = _transport.Output;
        while (true)
        {
            await _repliesReady.WaitAsync();
            bool drained = false;
            while (!drained)
            {
                long unflushed = 0;
                drained = true;
                while (TryDequeueCompleted(out PeerOperation? operation))
                {
                    if (!_outputFailed)
                    {
                        try
                        {
                            unflushed += WriteReply(output, operation);
                        }
                        catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
                        {
                            OutputFailed(ex);
                        }
                    }

                    // The reply's bytes now live in the pipe: the buffers and budget go back.
                    ReleaseOperation(operation);
                    if (unflushed >= FlushThreshold)
                    {
                        drained = false;
                        break;
                    }
                }

                if (unflushed == 0 || _outputFailed)
                {
                    continue;
                }

                // No cancellation token: a stop request still lets in-flight replies go out; it
                // is the transport's own abort that ends a flush the peer never drains.
                try
                {
                    FlushResult result = await output.FlushAsync();
                    if (result.IsCompleted || result.IsCanceled)
                    {
                        OutputFailed(null);
                    }
                }
                catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
                {
                    OutputFailed(ex);
                }
            }

            if (_outputStopping)
            {
                return;
            }
        }
    }

    private bool TryDequeueCompleted([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out PeerOperation? operation)
    {
        lock (_sync)
        {
            return _completed.TryDequeue(out operation);
        }
    }

    private void OutputFailed(Exception? exception)
    {
        if (_outputFailed)
        {
            return;
        }

        _outputFailed = true;
        PeerLog.TransportClosed(_logger, _connectionId, exception);
        // Nobody is listening any more: stop reading requests too.
        _transport.Input.CancelPendingRead();
    }

    /// <summary>Encodes one operation's reply into the pipe; returns the bytes written.</summary>
    private long WriteReply(PipeWriter output, PeerOperation operation)
    {
        PeerRequestHeader request = operation.Request;
        scoped ReadOnlySpan<byte> payload = default;
        ReadOnlySpan<BlockSum> sums = default;
        Span<byte> stats = stackalloc byte[PeerProtocol.StatsPayloadSize];
        if (operation.Status == PeerStatus.Ok)
        {
            switch (request.Opcode)
            {
                case PeerOpcode.Read:
                    payload = operation.Buffer.AsSpan(0, (int)request.Length);
                    break;
                case PeerOpcode.Allocation:
                    payload = MemoryMarshal.AsBytes(operation.States.AsSpan(0, (int)request.Length));
                    break;
                case PeerOpcode.BlockSums:
                    sums = operation.Sums.AsSpan(0, (int)request.Length);
                    break;
                case PeerOpcode.Stats:
                    PeerStats values = operation.Stats;
                    BinaryPrimitives.WriteInt64BigEndian(stats, values.UsedBytes);
                    BinaryPrimitives.WriteInt64BigEndian(stats[8..], values.ObjectCount);
                    BinaryPrimitives.WriteInt64BigEndian(stats[16..], values.JournalSyncs);
                    Ovis.Store.StoreSpace space = values.Space ?? default;
                    BinaryPrimitives.WriteInt64BigEndian(stats[24..], space.TotalBytes);
                    BinaryPrimitives.WriteInt64BigEndian(stats[32..], space.AvailableBytes);
                    BinaryPrimitives.WriteInt64BigEndian(stats[40..], space.ReservedBytes);
                    BinaryPrimitives.WriteInt64BigEndian(stats[48..], (long)Math.Round(space.NearFullRatio * PeerProtocol.RatioScale));
                    BinaryPrimitives.WriteInt64BigEndian(stats[56..], (long)Math.Round(space.FullRatio * PeerProtocol.RatioScale));
                    payload = stats;
                    break;
            }
        }

        int length = payload.Length + sums.Length * PeerProtocol.BlockSumSize;
        var header = new PeerReplyHeader(operation.Status, (ulong)_epochs.Current, request.Handle, (uint)length);
        header.Write(output.GetSpan(PeerReplyHeader.Size));
        output.Advance(PeerReplyHeader.Size);
        if (!payload.IsEmpty)
        {
            output.Write(payload);
        }

        BlockSumWire.Write(output, sums);
        return PeerReplyHeader.Size + length;
    }
}
