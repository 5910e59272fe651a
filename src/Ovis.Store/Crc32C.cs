using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Ovis.Store;

/// <summary>CRC32C (Castagnoli) with the CPU's crc32 instruction via <see cref="BitOperations.Crc32C(uint, ulong)"/>.
/// System.IO.Hashing is not in this machine's NuGet mirror.</summary>
public static class Crc32C
{
    public static uint Compute(ReadOnlySpan<byte> data) => ~Append(~0u, data);

    private static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        ReadOnlySpan<ulong> words = MemoryMarshal.Cast<byte, ulong>(data);
        foreach (ulong w in words)
        {
            crc = BitOperations.Crc32C(crc, BitConverter.IsLittleEndian ? w : BinaryPrimitives.ReverseEndianness(w));
        }
        foreach (byte b in data[(words.Length * 8)..])
        {
            crc = BitOperations.Crc32C(crc, b);
        }
        return crc;
    }
}
