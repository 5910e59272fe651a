namespace Ovis.Store.Tests;

public sealed class BlockSumTests
{
    private const int Bs = LocalStore.StoreBlockSize;
    private static readonly ObjectId A = new(1, 0);

    // Nothing is committed or applied until a test flushes: unflushed writes stay in the overlay.
    private static readonly LocalStoreOptions Held = new()
    {
        JournalSize = 64L << 20,
        BatchSize = 4 << 20,
        BatchCount = 8,
        CommitInterval = TimeSpan.FromMinutes(10),
        CheckpointInterval = TimeSpan.FromMinutes(10),
    };

    private static async Task Ok(ValueTask<StoreStatus> op) => Assert.Equal(StoreStatus.Ok, await op.AsTask().WaitAsync(StoreFixture.Timeout));

    private static async Task<BlockSum[]> SumsAsync(LocalStore store, ObjectId id, long offset, int blocks, bool verify = false)
    {
        var sums = new BlockSum[blocks];
        await Ok(store.GetBlockSumsAsync(id, offset, sums, verify));
        return sums;
    }

    private static BlockSum DataSum(ReadOnlySpan<byte> block) => new(BlockState.Data, Crc32C.Compute(block));

    private static string ObjectFile(StoreFixture f, ObjectId id)
        => Path.Combine(f.Directory, "objects", id.Volume.ToString("x8"), id.Index.ToString("x8"));

    private static async Task FlushAndApplyAsync(StoreFixture f)
    {
        await Ok(f.Store.FlushAsync());
        await f.Store.WhenAppliedAsync().WaitAsync(StoreFixture.Timeout);
    }

    [Fact]
    public async Task Equal_content_gives_equal_sums_whether_in_the_journal_or_applied()
    {
        await using var one = new StoreFixture(Held);
        await using var two = new StoreFixture(Held);
        byte[] data = Bytes.Random(40 * Bs, 1);
        // The same content by different writes: one whole, the other in unaligned pieces.
        await Ok(one.Store.WriteAsync(A, 0, data, fua: false));
        for (int at = 0; at < data.Length; at += 5000)
        {
            int n = Math.Min(5000, data.Length - at);
            await Ok(two.Store.WriteAsync(A, at, data.AsMemory(at, n), fua: false));
        }
        // The whole write went straight into the file (a large write into holes), its record not
        // applied yet; the pieces are only in the journal's memory, not even the file created.
        Assert.Equal(1, one.Store.DirectWriteCount);
        Assert.True(File.Exists(ObjectFile(one, A)));
        Assert.False(File.Exists(ObjectFile(two, A)));

        BlockSum[] expected = [.. Enumerable.Range(0, 40).Select(b => DataSum(data.AsSpan(b * Bs, Bs)))];
        Assert.Equal(expected, await SumsAsync(one.Store, A, 0, 40));
        Assert.Equal(expected, await SumsAsync(two.Store, A, 0, 40));
        Assert.Equal(expected, await SumsAsync(two.Store, A, 0, 40, verify: true));

        // One store applied, the other not: the same sums.
        await FlushAndApplyAsync(one);
        Assert.Equal(expected, await SumsAsync(one.Store, A, 0, 40));
        Assert.Equal(expected, await SumsAsync(one.Store, A, 0, 40, verify: true));
        Assert.Equal(expected[10..20], await SumsAsync(one.Store, A, 10 * Bs, 10));

        // Both applied, and after a restart from the block metadata on disk.
        await FlushAndApplyAsync(two);
        Assert.Equal(expected, await SumsAsync(two.Store, A, 0, 40, verify: true));
        await one.ReopenAsync();
        Assert.Equal(expected, await SumsAsync(one.Store, A, 0, 40));
    }

    [Fact]
    public async Task Changing_a_block_changes_exactly_its_sum()
    {
        await using var f = new StoreFixture(Held);
        byte[] data = Bytes.Random(8 * Bs, 2);
        await Ok(f.Store.WriteAsync(A, 0, data, fua: false));
        await FlushAndApplyAsync(f);
        BlockSum[] before = await SumsAsync(f.Store, A, 0, 8);

        // One byte of block 3, pending in the overlay; then applied.
        data[3 * Bs + 100] ^= 1;
        await Ok(f.Store.WriteAsync(A, 3 * Bs + 100, data.AsMemory(3 * Bs + 100, 1), fua: false));
        foreach (bool applied in new[] { false, true })
        {
            if (applied)
            {
                await FlushAndApplyAsync(f);
            }
            BlockSum[] after = await SumsAsync(f.Store, A, 0, 8, verify: applied);
            Assert.NotEqual(before[3], after[3]);
            Assert.Equal(DataSum(data.AsSpan(3 * Bs, Bs)), after[3]);
            after[3] = before[3];
            Assert.Equal(before, after);
        }
    }

    [Fact]
    public async Task Holes_and_allocated_zeroes_sum_to_zero()
    {
        await using var f = new StoreFixture(Held);
        byte[] data = Bytes.Random(8 * Bs, 3);
        await Ok(f.Store.WriteAsync(A, 0, data, fua: false));
        await Ok(f.Store.ZeroAsync(A, Bs, 2 * Bs, keepAllocated: true, fua: false));
        await Ok(f.Store.ZeroAsync(A, 5 * Bs, Bs, keepAllocated: false, fua: false));
        BlockSum hole = new(BlockState.Hole, 0), zero = new(BlockState.Zero, 0);
        // Past the object's end (block 8 on) are holes.
        BlockSum[] expected =
        [
            DataSum(data.AsSpan(0, Bs)), zero, zero, DataSum(data.AsSpan(3 * Bs, Bs)), DataSum(data.AsSpan(4 * Bs, Bs)),
            hole, DataSum(data.AsSpan(6 * Bs, Bs)), DataSum(data.AsSpan(7 * Bs, Bs)), hole, hole,
        ];
        Assert.Equal(expected, await SumsAsync(f.Store, A, 0, 10));
        await FlushAndApplyAsync(f);
        Assert.Equal(expected, await SumsAsync(f.Store, A, 0, 10, verify: true));
        // The last blocks of the largest object, and an object never written.
        Assert.All(await SumsAsync(f.Store, A, LocalStore.MaxObjectBytes - 4 * Bs, 4), s => Assert.Equal(hole, s));
        Assert.All(await SumsAsync(f.Store, new ObjectId(1, 9), 0, 4, verify: true), s => Assert.Equal(hole, s));
        Assert.Empty(await SumsAsync(f.Store, A, 0, 0, verify: true));
    }

    [Fact]
    public async Task Verify_reads_the_data_and_finds_a_byte_flipped_on_disk_without_it_the_sums_come_from_the_table()
    {
        await using var f = new StoreFixture();
        // More than one verifying piece (64 blocks), with the bad block in the second.
        byte[] data = Bytes.Random(128 * Bs, 4);
        await Ok(f.Store.WriteAsync(A, 0, data, fua: false));
        await Ok(f.Store.FlushAsync());
        await f.ReopenAsync(); // clean close: the data is in the object file, the journal is empty
        BlockSum[] good = await SumsAsync(f.Store, A, 0, 128, verify: true);
        using (var fs = new FileStream(ObjectFile(f, A), FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = 100 * Bs + 7;
            int b = fs.ReadByte();
            fs.Position = 100 * Bs + 7;
            fs.WriteByte((byte)(b ^ 0x10));
        }
        await f.ReopenAsync();

        // Without verify nothing is read: the sums are the checksums of what was written.
        Assert.Equal(good, await SumsAsync(f.Store, A, 0, 128));
        Assert.Equal(StoreStatus.IoError, await f.Store.GetBlockSumsAsync(A, 0, new BlockSum[128], verify: true));
        Assert.Equal(StoreStatus.IoError, await f.Store.GetBlockSumsAsync(A, 100 * Bs, new BlockSum[1], verify: true));
        Assert.Equal(StoreStatus.IoError, await f.Store.ReadAsync(A, 100 * Bs, new byte[Bs]));
        // The blocks around it verify.
        Assert.Equal(good[..100], await SumsAsync(f.Store, A, 0, 100, verify: true));
        Assert.Equal(good[101..], await SumsAsync(f.Store, A, 101 * Bs, 27, verify: true));

        // Rewritten, it verifies again: from the overlay, then from the file.
        await Ok(f.Store.WriteAsync(A, 100 * Bs, data.AsMemory(100 * Bs, Bs), fua: false));
        Assert.Equal(good, await SumsAsync(f.Store, A, 0, 128, verify: true));
        await FlushAndApplyAsync(f);
        Assert.Equal(good, await SumsAsync(f.Store, A, 0, 128, verify: true));
    }

    [Fact]
    public async Task A_misaligned_or_out_of_range_request_is_refused()
    {
        await using var f = new StoreFixture();
        await Assert.ThrowsAsync<ArgumentException>(() => f.Store.GetBlockSumsAsync(A, 100, new BlockSum[1], verify: false).AsTask());
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => f.Store.GetBlockSumsAsync(A, -Bs, new BlockSum[1], verify: false).AsTask());
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => f.Store.GetBlockSumsAsync(A, LocalStore.MaxObjectBytes - Bs, new BlockSum[2], verify: false).AsTask());
    }
}
