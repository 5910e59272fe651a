using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

/// <summary>The BLOCKSUMS reply payload: per block its state byte, then its CRC32C big-endian (PeerProtocol.cs).</summary>
internal static class BlockSumWire
{
    private const int Size = PeerProtocol.BlockSumSize;

    /// <summary>Encodes straight into the pipe, as many sums per segment as fit, so a reply needs
    /// no buffer of its own.</summary>
    public static void Write(IBufferWriter<byte> output, ReadOnlySpan<BlockSum> sums)
    {
        while (!sums.IsEmpty)
        {
            Span<byte> span = output.GetSpan(Size);
            int n = Math.Min(sums.Length, span.Length / Size);
            for (int i = 0; i < n; i++)
            {
                span[i * Size] = (byte)sums[i].State;
                BinaryPrimitives.WriteUInt32BigEndian(span[(i * Size + 1)..], sums[i].Crc);
            }

            output.Advance(n * Size);
            sums = sums[n..];
        }
    }

    /// <summary>The bytes of <paramref name="sums"/>, where the receive loop puts the payload: the
    /// caller's memory is the only buffer a reply needs (decoded by <see cref="DecodeInPlace"/>).</summary>
    public static Span<byte> ReceiveTarget(Span<BlockSum> sums) => MemoryMarshal.AsBytes(sums);

    /// <summary>
    /// Decodes a payload received into <see cref="ReceiveTarget"/>. A BlockSum takes at least
    /// <see cref="PeerProtocol.BlockSumSize"/> bytes, so decoding from the last entry to the first
    /// overwrites only bytes of entries already decoded.
    /// </summary>
    public static void DecodeInPlace(Span<BlockSum> sums)
    {
        ReadOnlySpan<byte> raw = MemoryMarshal.AsBytes(sums);
        for (int i = sums.Length - 1; i >= 0; i--)
        {
            var state = (BlockState)raw[i * Size];
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(raw[(i * Size + 1)..]);
            sums[i] = new BlockSum(state, crc);
        }
    }
}
