namespace Ovis.Store.Tests;

public sealed class Crc32CTests
{
    [Fact]
    public void The_check_value_of_the_standard_matches() => Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8));

    [Theory]
    [InlineData(4096, 0)]
    [InlineData(4096, 3)]
    [InlineData(512, 5)]
    [InlineData(100, 1)]
    public void Block_checksums_four_at_a_time_equal_one_at_a_time(int blockSize, int misalign)
    {
        byte[] buffer = Bytes.Random((blockSize * 9) + misalign, blockSize + misalign);
        for (int count = 0; count <= 9; count++)
        {
            ReadOnlySpan<byte> data = buffer.AsSpan(misalign, count * blockSize);
            var crcs = new uint[count];
            Crc32C.ComputeBlocks(data, blockSize, crcs);
            for (int i = 0; i < count; i++)
            {
                Assert.Equal(Crc32C.Compute(data.Slice(i * blockSize, blockSize)), crcs[i]);
            }
        }
    }
}
