namespace Ovis.Store.Tests;

/// <summary>
/// Large writes into holes go straight into the object file with a record of their checksums
/// only (docs/store.md, "Direct writes"). What must hold: a flush covers them with one file-system
/// sync however many objects they touched; after a crash a block whose data did not reach the disk
/// reads as the hole it was (never an error, never a mix); replay never lets an earlier record
/// overwrite what a later direct write put in the file; a small write racing a large one on the
/// same block leaves one of them, whole.
/// </summary>
public sealed class DirectWriteTests
{
    private const uint Volume = 9;
    private const int Bs = LocalStore.StoreBlockSize;

    private static async Task Ok(ValueTask<StoreStatus> op) => Assert.Equal(StoreStatus.Ok, await op.AsTask().WaitAsync(StoreFixture.Timeout));

    private static string ObjectFile(StoreFixture f, ObjectId id)
        => Path.Combine(f.Directory, "objects", id.Volume.ToString("x8"), id.Index.ToString("x8"));

    [Fact]
    public async Task Large_writes_into_holes_skip_the_journal_and_one_flush_makes_them_durable_with_one_data_sync()
    {
        await using var f = new StoreFixture(StoreFixture.QuietTimers());
        var data = new byte[16][];
        for (uint i = 0; i < 16; i++)
        {
            data[i] = Bytes.Random(1 << 20, (int)i);
            await Ok(f.Store.WriteAsync(new ObjectId(Volume, i), 0, data[i], fua: false));
        }
        Assert.Equal(16, f.Store.DirectWriteCount);
        // Readable at once, from the files, before any flush.
        Assert.Equal(data[3], await Bytes.ReadAsync(f.Store, new ObjectId(Volume, 3), 0, 1 << 20));

        long journalSyncs = f.Store.JournalSyncCount, dataSyncs = f.Store.DataSyncCount;
        await Ok(f.Store.FlushAsync(Volume));
        Assert.Equal(1, f.Store.JournalSyncCount - journalSyncs);
        Assert.Equal(1, f.Store.DataSyncCount - dataSyncs);

        // A flush with no direct write since the last one costs the journal's sync only.
        await Ok(f.Store.WriteAsync(new ObjectId(Volume, 100), 0, Bytes.Random(Bs, 99), fua: false));
        await Ok(f.Store.FlushAsync());
        Assert.Equal(1, f.Store.DataSyncCount - dataSyncs);

        // An overwrite of data is journaled as before: it has old content a torn write would lose.
        await Ok(f.Store.WriteAsync(new ObjectId(Volume, 0), 0, data[1], fua: false));
        Assert.Equal(16, f.Store.DirectWriteCount);
        data[0] = data[1];
        await Ok(f.Store.FlushAsync());

        await f.CrashAndReopenAsync();
        for (uint i = 0; i < 16; i++)
        {
            Assert.Equal(data[i], await Bytes.ReadAsync(f.Store, new ObjectId(Volume, i), 0, 1 << 20));
        }
    }

    [Fact]
    public async Task An_import_into_more_objects_than_the_open_file_budget_keeps_to_it()
    {
        await using var f = new StoreFixture(StoreFixture.QuietTimers() with { MaxOpenFiles = 8 });
        byte[] data = Bytes.Random(16 * Bs, 8);
        for (uint i = 0; i < 40; i++)
        {
            await Ok(f.Store.WriteAsync(new ObjectId(Volume, i), 0, data, fua: false));
            Assert.InRange(f.Store.OpenFileCount, 0, 8);
        }
        Assert.Equal(40, f.Store.DirectWriteCount);
        await Ok(f.Store.FlushAsync());
        for (uint i = 0; i < 40; i += 13)
        {
            Assert.Equal(data, await Bytes.ReadAsync(f.Store, new ObjectId(Volume, i), 0, data.Length));
        }
    }

    [Fact]
    public async Task A_direct_write_whose_data_did_not_reach_the_disk_reads_as_the_hole_it_was()
    {
        await using var f = new StoreFixture(StoreFixture.QuietTimers());
        var id = new ObjectId(Volume, 1);
        byte[] data = Bytes.Random(64 * Bs, 5);
        await Ok(f.Store.WriteAsync(id, 0, data, fua: false));
        Assert.Equal(1, f.Store.DirectWriteCount);
        // The record becomes durable without the data (a device that reorders, or a power loss
        // before the page cache was written back): stand in for that by a crash, then by tearing
        // the file — two blocks with other bytes, the last 24 blocks never written.
        await Ok(f.Store.FlushAsync());
        await f.Store.CrashAsync().WaitAsync(StoreFixture.Timeout);
        using (var file = new FileStream(ObjectFile(f, id), FileMode.Open, FileAccess.Write))
        {
            file.Position = 3L * Bs;
            file.Write(Bytes.Random(Bs, 6));
            file.Position = 10L * Bs + 100;
            file.Write(Bytes.Random(10, 7));
            file.SetLength(40L * Bs);
        }
        f.Reopen();

        byte[] read = await Bytes.ReadAsync(f.Store, id, 0, 64 * Bs);
        var states = new BlockState[64];
        await Ok(f.Store.GetAllocationAsync(id, 0, states));
        for (int b = 0; b < 64; b++)
        {
            bool torn = b is 3 or 10 || b >= 40;
            Assert.Equal(torn ? new byte[Bs] : data.AsSpan(b * Bs, Bs).ToArray(), read.AsSpan(b * Bs, Bs).ToArray());
            Assert.Equal(torn ? BlockState.Hole : BlockState.Data, states[b]);
        }
        // The torn blocks are holes again, so the next large write into them is direct too.
        await Ok(f.Store.WriteAsync(id, 40L * Bs, data.AsMemory(40 * Bs), fua: false));
        Assert.Equal(1, f.Store.DirectWriteCount);
    }

    [Fact]
    public async Task Replay_keeps_earlier_records_off_the_blocks_a_later_direct_write_holds()
    {
        await using var f = new StoreFixture(StoreFixture.QuietTimers());
        var trimmed = new ObjectId(Volume, 1);
        var deleted = new ObjectId(Volume, 2);
        var overwritten = new ObjectId(Volume, 3);
        byte[] small = Bytes.Random(8 * Bs, 1);
        byte[] large = Bytes.Random(64 * Bs, 2);
        byte[] late = Bytes.Random(Bs, 3);

        // Journaled data, then a trim, then a direct write over the same blocks: replaying the first
        // two in order would overwrite, then punch, what the direct write left in the file.
        await Ok(f.Store.WriteAsync(trimmed, 0, small, fua: false));
        await Ok(f.Store.FlushAsync());
        await f.Store.WhenAppliedAsync().WaitAsync(StoreFixture.Timeout);
        await Ok(f.Store.ZeroAsync(trimmed, 0, 64 * Bs, keepAllocated: false, fua: false));
        await Ok(f.Store.FlushAsync());
        await f.Store.WhenAppliedAsync().WaitAsync(StoreFixture.Timeout);
        await Ok(f.Store.WriteAsync(trimmed, 0, large, fua: false));

        // The same after a delete: replaying the delete would remove the file.
        await Ok(f.Store.WriteAsync(deleted, 0, small, fua: false));
        await Ok(f.Store.FlushAsync());
        await f.Store.WhenAppliedAsync().WaitAsync(StoreFixture.Timeout);
        await Ok(f.Store.DeleteAsync(deleted));
        await Ok(f.Store.FlushAsync());
        await f.Store.WhenAppliedAsync().WaitAsync(StoreFixture.Timeout);
        await Ok(f.Store.WriteAsync(deleted, 0, large, fua: false));

        // A direct write, then a journaled one over one of its blocks: the later one wins.
        await Ok(f.Store.WriteAsync(overwritten, 0, large, fua: false));
        await Ok(f.Store.WriteAsync(overwritten, 5L * Bs, late, fua: false));
        Assert.Equal(3, f.Store.DirectWriteCount);
        await Ok(f.Store.FlushAsync());

        await f.CrashAndReopenAsync();
        Assert.Equal(large, await Bytes.ReadAsync(f.Store, trimmed, 0, 64 * Bs));
        Assert.Equal(large, await Bytes.ReadAsync(f.Store, deleted, 0, 64 * Bs));
        byte[] expected = (byte[])large.Clone();
        late.CopyTo(expected, 5 * Bs);
        Assert.Equal(expected, await Bytes.ReadAsync(f.Store, overwritten, 0, 64 * Bs));

        // And again after the start-up checkpoint made it the block metadata on disk.
        await f.CrashAndReopenAsync();
        Assert.Equal(large, await Bytes.ReadAsync(f.Store, trimmed, 0, 64 * Bs));
        Assert.Equal(expected, await Bytes.ReadAsync(f.Store, overwritten, 0, 64 * Bs));
    }

    [Fact]
    public async Task A_small_write_racing_a_large_one_on_the_same_block_leaves_one_of_them_whole_across_a_crash()
    {
        // Checkpoints every 20 ms race the writes too: a slot written while a direct record is
        // pending must not claim data the file may not hold yet.
        await using var f = new StoreFixture(StoreFixture.QuietTimers() with
        {
            CommitInterval = TimeSpan.FromMilliseconds(5),
            CheckpointInterval = TimeSpan.FromMilliseconds(20),
        });
        const int Objects = 60;
        byte[] large = Bytes.Random(64 * Bs, 1);
        byte[] small = Bytes.Random(Bs, 2);
        var seen = new byte[Objects][];
        for (uint i = 0; i < Objects; i++)
        {
            var id = new ObjectId(Volume, i);
            // A third each: the large one first (direct, then overwritten), the small one first (the
            // large one then has a pending block and is journaled), and both at once.
            Func<Task> writeLarge = () => Ok(f.Store.WriteAsync(id, 0, large, fua: false));
            Func<Task> writeSmall = () => Ok(f.Store.WriteAsync(id, 7L * Bs, small, fua: false));
            switch (i % 3)
            {
                case 0:
                    await writeLarge();
                    await writeSmall();
                    break;
                case 1:
                    await writeSmall();
                    await writeLarge();
                    break;
                default:
                    await Task.WhenAll(Task.Run(writeLarge), Task.Run(writeSmall));
                    break;
            }
            byte[] read = await Bytes.ReadAsync(f.Store, id, 0, 64 * Bs);
            byte[] block7 = read.AsSpan(7 * Bs, Bs).ToArray();
            Assert.True(block7.AsSpan().SequenceEqual(small) || block7.AsSpan().SequenceEqual(large.AsSpan(7 * Bs, Bs)), $"object {i}: block 7 is neither write");
            Assert.True(read.AsSpan(0, 7 * Bs).SequenceEqual(large.AsSpan(0, 7 * Bs)) && read.AsSpan(8 * Bs).SequenceEqual(large.AsSpan(8 * Bs)), $"object {i}: the large write's other blocks");
            seen[i] = read;
        }
        Assert.InRange(f.Store.DirectWriteCount, Objects / 3, Objects * 2 / 3);
        await Ok(f.Store.FlushAsync());

        await f.CrashAndReopenAsync();
        for (uint i = 0; i < Objects; i++)
        {
            Assert.Equal(seen[i], await Bytes.ReadAsync(f.Store, new ObjectId(Volume, i), 0, 64 * Bs));
        }
    }

    [Fact]
    public async Task A_crash_in_the_middle_of_large_writes_keeps_every_flushed_one_and_tears_none_into_errors()
    {
        await using var f = new StoreFixture(new LocalStoreOptions
        {
            JournalSize = 64L << 20,
            BatchSize = 1 << 20,
            BatchCount = 8,
            CheckpointInterval = TimeSpan.FromMilliseconds(30),
        });
        const int Objects = 48;
        const int Size = 256 * Bs;
        var flushed = new bool[Objects];
        byte[] Content(int i) => Bytes.Random(Size, 1000 + i);
        using var stop = new CancellationTokenSource();
        Task writer = Task.Run(async () =>
        {
            for (int i = 0; i < Objects && !stop.IsCancellationRequested; i++)
            {
                if (await f.Store.WriteAsync(new ObjectId(Volume, (uint)i), 0, Content(i), fua: false) != StoreStatus.Ok)
                {
                    return;
                }
                if (i % 4 == 3)
                {
                    if (await f.Store.FlushAsync() != StoreStatus.Ok)
                    {
                        return;
                    }
                    for (int j = 0; j <= i; j++)
                    {
                        flushed[j] = true;
                    }
                }
            }
        });
        await Task.Delay(Random.Shared.Next(20, 120));
        stop.Cancel();
        long direct = f.Store.DirectWriteCount;
        await f.Store.CrashAsync().WaitAsync(StoreFixture.Timeout);
        await writer.WaitAsync(StoreFixture.Timeout);
        f.Reopen();
        Assert.True(direct >= 1, "no write took the direct path before the crash");
        for (int i = 0; i < Objects; i++)
        {
            byte[] expected = Content(i);
            byte[] read = await Bytes.ReadAsync(f.Store, new ObjectId(Volume, (uint)i), 0, Size);
            if (flushed[i])
            {
                Assert.Equal(expected, read);
                continue;
            }
            for (int b = 0; b < Size / Bs; b++)
            {
                ReadOnlySpan<byte> got = read.AsSpan(b * Bs, Bs);
                Assert.True(got.SequenceEqual(expected.AsSpan(b * Bs, Bs)) || got.SequenceEqual(new byte[Bs]), $"object {i} block {b}: neither old nor new");
            }
        }
    }
}
