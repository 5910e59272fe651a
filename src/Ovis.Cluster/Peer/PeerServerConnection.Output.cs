using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

internal sealed partial class PeerServerConnection
{
    long IRequestProtocol<PeerOperation>.WriteReply(PipeWriter output, PeerOperation operation)
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
