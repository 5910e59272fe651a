namespace Ovis.Store.Tests;

/// <summary>
/// A store on a file system it fills (a tmpfs of its own): writes that find no space are refused
/// before the journal takes them, everything else keeps working, and the store reopens with the
/// file system filled to the last block by someone else.
/// </summary>
public sealed class FullDiskTests
{
    private const int Chunk = 64 << 10;
    private const long ObjectBytes = 4L << 20;

    private static LocalStoreOptions SmallJournal => new() { JournalSize = 4L << 20, BatchSize = 1 << 20, BatchCount = 4 };

    private static ObjectId ObjectOf(int chunk) => new(1, (uint)(chunk * (long)Chunk / ObjectBytes));

    private static long OffsetOf(int chunk) => chunk * (long)Chunk % ObjectBytes;

    private static async Task<StoreStatus> Run(ValueTask<StoreStatus> op) => await op.AsTask().WaitAsync(StoreFixture.Timeout);

    /// <summary>Writes 64 KiB chunks until the store refuses one; returns how many it took.</summary>
    private static async Task<int> FillAsync(LocalStore store, int seed = 0)
    {
        for (int i = 0; i < 4096; i++)
        {
            StoreStatus s = await Run(store.WriteAsync(ObjectOf(i), OffsetOf(i), Bytes.Random(Chunk, seed + i), fua: false));
            if (s == StoreStatus.NoSpace)
            {
                return i;
            }
            Assert.Equal(StoreStatus.Ok, s);
        }
        throw new Xunit.Sdk.XunitException("the file system never filled up");
    }

    [Fact]
    public async Task A_write_that_finds_no_space_gets_NoSpace_and_everything_else_keeps_working()
    {
        using var fs = new Tmpfs(24L << 20);
        await using var f = new StoreFixture(SmallJournal, fs.Path);
        int written = await FillAsync(f.Store);
        Assert.InRange(written, 100, 400); // about 18 MiB of 24 MiB past the 4 MiB journal
        Assert.Equal(SpaceState.Full, f.Store.Space.State);

        // Still healthy: a flush, an overwrite of allocated blocks, reads of all of it.
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.FlushAsync()));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(ObjectOf(0), OffsetOf(0), Bytes.Random(Chunk, 999), fua: true)));
        Assert.Equal(Bytes.Random(Chunk, 999), await Bytes.ReadAsync(f.Store, ObjectOf(0), OffsetOf(0), Chunk));
        for (int i = 1; i < written; i++)
        {
            Assert.Equal(Bytes.Random(Chunk, i), await Bytes.ReadAsync(f.Store, ObjectOf(i), OffsetOf(i), Chunk));
        }
        Assert.Equal(StoreStatus.NoSpace, await Run(f.Store.WriteAsync(new ObjectId(2, 0), 0, Bytes.Random(4096, 1), fua: false)));

        // A trim frees space for the next write at once (no flush in between).
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.ZeroAsync(ObjectOf(1), 0, ObjectBytes, keepAllocated: false, fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(new ObjectId(2, 0), 0, Bytes.Random(Chunk, 7), fua: false)));
    }

    [Fact]
    public async Task The_store_reopens_on_a_file_system_filled_to_the_last_block_and_flushed_data_reads_back()
    {
        using var fs = new Tmpfs(24L << 20);
        await using var f = new StoreFixture(SmallJournal, fs.Path);
        int written = await FillAsync(f.Store);
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.FlushAsync()));

        // Another program takes the margin the store kept; then a kill -9 and a restart, whose
        // replay and checkpoint must need no new block.
        string ballast = fs.FillUp();
        await f.CrashAndReopenAsync();
        for (int i = 0; i < written; i++)
        {
            Assert.Equal(Bytes.Random(Chunk, i), await Bytes.ReadAsync(f.Store, ObjectOf(i), OffsetOf(i), Chunk));
        }
        Assert.Equal(StoreStatus.NoSpace, await Run(f.Store.WriteAsync(ObjectOf(written + 64), 0, Bytes.Random(4096, 1), fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(ObjectOf(0), OffsetOf(0), Bytes.Random(Chunk, 5), fua: true)));
        await f.ReopenAsync();
        Assert.Equal(Bytes.Random(Chunk, 5), await Bytes.ReadAsync(f.Store, ObjectOf(0), OffsetOf(0), Chunk));

        // Deleting objects frees their space for writes at once.
        File.Delete(ballast);
        for (int i = 0; i < written; i += (int)(ObjectBytes / Chunk))
        {
            Assert.Equal(StoreStatus.Ok, await Run(f.Store.DeleteAsync(ObjectOf(i))));
        }
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(ObjectOf(written + 64), 0, Bytes.Random(Chunk, 8), fua: true)));
        Assert.True(f.Store.Space.State < SpaceState.NearFull, $"ratio {f.Store.Space.Ratio}");
    }

    [Fact]
    public async Task Replay_on_a_full_file_system_skips_the_writes_a_later_delete_or_trim_undid()
    {
        // No checkpoint between the writes and the crash: the journal still holds them all.
        using var fs = new Tmpfs(24L << 20);
        var options = new LocalStoreOptions { JournalSize = 16L << 20, BatchSize = 1 << 20, BatchCount = 4, CheckpointInterval = TimeSpan.FromHours(1) };
        await using var f = new StoreFixture(options, fs.Path);
        var deleted = new ObjectId(5, 0);
        var trimmed = new ObjectId(7, 0);
        var kept = new ObjectId(6, 0);
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(deleted, 0, Bytes.Random(1 << 20, 1), fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.DeleteAsync(deleted)));
        // Written, then trimmed but for its first and last 64 KiB, which stay.
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(trimmed, 0, Bytes.Random(1 << 20, 3), fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.ZeroAsync(trimmed, 64 << 10, (1 << 20) - (128 << 10), keepAllocated: false, fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(kept, 0, Bytes.Random(1 << 20, 2), fua: true)));
        await f.Store.WhenAppliedAsync().WaitAsync(StoreFixture.Timeout);

        // The space the deleted object had is someone else's now: replaying its write would need it.
        fs.FillUp();
        await f.CrashAndReopenAsync();
        Assert.Equal(Bytes.Random(1 << 20, 2), await Bytes.ReadAsync(f.Store, kept, 0, 1 << 20));
        Assert.Equal(new byte[4096], await Bytes.ReadAsync(f.Store, deleted, 0, 4096));
        Assert.DoesNotContain(deleted, f.Store.ListObjects());
        byte[] expected = Bytes.Random(1 << 20, 3);
        expected.AsSpan(64 << 10, (1 << 20) - (128 << 10)).Clear();
        Assert.Equal(expected, await Bytes.ReadAsync(f.Store, trimmed, 0, 1 << 20));
        await f.ReopenAsync();
        Assert.Equal(expected, await Bytes.ReadAsync(f.Store, trimmed, 0, 1 << 20));
    }

    [Fact]
    public async Task Past_the_full_ratio_only_writes_that_need_new_blocks_are_refused()
    {
        long total = 1L << 30;
        long available = total / 2;
        var options = SmallJournal with { SpaceProbe = () => (total, Volatile.Read(ref available)), NearFullRatio = 0.7, FullRatio = 0.8 };
        await using var f = new StoreFixture(options);
        var id = new ObjectId(3, 0);
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(id, 0, Bytes.Random(8192, 1), fua: true)));
        Assert.Equal(SpaceState.Ok, f.Store.Space.State);

        Volatile.Write(ref available, total / 4); // 75 % used
        await f.ReopenAsync();
        Assert.Equal(SpaceState.NearFull, f.Store.Space.State);
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(id, 8192, Bytes.Random(4096, 2), fua: false)));

        Volatile.Write(ref available, total / 10); // 90 % used
        await f.ReopenAsync();
        Assert.Equal(SpaceState.Full, f.Store.Space.State);
        Assert.Equal(StoreStatus.NoSpace, await Run(f.Store.WriteAsync(id, 16384, Bytes.Random(4096, 3), fua: false)));
        // A partial write into a hole block needs a block too; one into a data block does not.
        Assert.Equal(StoreStatus.NoSpace, await Run(f.Store.WriteAsync(id, 20480 + 100, Bytes.Random(100, 4), fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(id, 100, Bytes.Random(100, 5), fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.WriteAsync(id, 0, Bytes.Random(8192, 6), fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.ZeroAsync(id, 4096, 4096, keepAllocated: false, fua: false)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.DeleteAsync(id)));
        Assert.Equal(StoreStatus.Ok, await Run(f.Store.FlushAsync()));
    }
}
