using System.Collections.Concurrent;

namespace Ovis.Store.Tests;

/// <summary>
/// The flush of a volume (<see cref="LocalStore.FlushAsync(uint)"/>, what an NBD FLUSH becomes):
/// its waiter continues on the journal's committer thread, and a round of one batch is one
/// RWF_DSYNC write. Same contract as <see cref="LocalStore.FlushAsync()"/>: one sync per flush
/// however many objects it covers, and what it covers survives a crash.
/// </summary>
public sealed class FlushPathTests
{
    private const uint Volume = 7;

    private static async Task Ok(ValueTask<StoreStatus> op) => Assert.Equal(StoreStatus.Ok, await op.AsTask().WaitAsync(StoreFixture.Timeout));

    [Fact]
    public async Task A_volume_flush_costs_one_journal_sync_and_what_it_covers_survives_a_crash()
    {
        await using var f = new StoreFixture(StoreFixture.QuietTimers());
        byte[] block = Bytes.Random(4096, 1);
        long before = f.Store.JournalSyncCount;
        for (uint i = 0; i < 100; i++)
        {
            await Ok(f.Store.WriteAsync(new ObjectId(Volume, i), 0, block, fua: false));
        }
        await Ok(f.Store.FlushAsync(Volume));
        Assert.Equal(1, f.Store.JournalSyncCount - before);

        // Write + flush, one at a time, as a QD1 client does: each flush is one sync (one durable
        // write of a lone batch) and reuses the pooled waiter of the one before.
        var last = new byte[8][];
        before = f.Store.JournalSyncCount;
        for (int n = 0; n < 200; n++)
        {
            byte[] data = Bytes.Random(4096, 100 + n);
            await Ok(f.Store.WriteAsync(new ObjectId(Volume, 200), (n % 8) * 4096L, data, fua: false));
            await Ok(f.Store.FlushAsync(Volume));
            last[n % 8] = data;
        }
        Assert.Equal(200, f.Store.JournalSyncCount - before);

        await f.CrashAndReopenAsync();
        for (uint i = 0; i < 100; i++)
        {
            Assert.Equal(block, await Bytes.ReadAsync(f.Store, new ObjectId(Volume, i), 0, 4096));
        }
        for (int b = 0; b < 8; b++)
        {
            Assert.Equal(last[b], await Bytes.ReadAsync(f.Store, new ObjectId(Volume, 200), b * 4096L, 4096));
        }
    }

    [Fact]
    public async Task Concurrent_volume_and_store_flushes_share_syncs_and_each_covers_the_writes_before_it()
    {
        await using var f = new StoreFixture(StoreFixture.QuietTimers());
        const int Tasks = 16, Rounds = 40;
        LocalStore store = f.Store;
        var flushed = new ConcurrentDictionary<(int Task, int Block), byte[]>();
        long before = store.JournalSyncCount;
        await Task.WhenAll(Enumerable.Range(0, Tasks).Select(t => Task.Run(async () =>
        {
            for (int r = 0; r < Rounds; r++)
            {
                byte[] data = Bytes.Random(4096, (t * 1000) + r);
                var id = new ObjectId(Volume, (uint)t);
                await Ok(store.WriteAsync(id, (r % 4) * 4096L, data, fua: false));
                // Both kinds of waiter in the same rounds.
                await Ok(r % 2 == 0 ? store.FlushAsync(Volume) : store.FlushAsync());
                flushed[(t, r % 4)] = data;
            }
        }))).WaitAsync(StoreFixture.Timeout);
        // Flushes that arrive together share a round: fewer syncs than flushes.
        Assert.InRange(store.JournalSyncCount - before, 1, Tasks * Rounds);

        await f.CrashAndReopenAsync();
        foreach (((int t, int b), byte[] data) in flushed)
        {
            Assert.Equal(data, await Bytes.ReadAsync(f.Store, new ObjectId(Volume, (uint)t), b * 4096L, 4096));
        }
    }

    [Fact]
    public async Task Volume_flushes_racing_a_crash_all_complete_and_every_acknowledged_one_holds()
    {
        var f = new StoreFixture(StoreFixture.QuietTimers());
        try
        {
            const int Tasks = 8;
            LocalStore store = f.Store;
            var acknowledged = new byte[Tasks][];
            var attempted = new byte[Tasks][];
            using var stop = new CancellationTokenSource();
            var started = new CountdownEvent(Tasks);
            Task[] tasks = [.. Enumerable.Range(0, Tasks).Select(t => Task.Run(async () =>
            {
                bool signalled = false;
                for (int r = 0; !stop.IsCancellationRequested; r++)
                {
                    byte[] data = Bytes.Random(4096, (t * 100000) + r);
                    Volatile.Write(ref attempted[t], data);
                    StoreStatus w = await store.WriteAsync(new ObjectId(Volume, (uint)t), 0, data, fua: false).AsTask().WaitAsync(StoreFixture.Timeout);
                    if (w != StoreStatus.Ok)
                    {
                        Assert.True(w is StoreStatus.Closed or StoreStatus.IoError, $"write answered {w}");
                        return;
                    }
                    StoreStatus s = await store.FlushAsync(Volume).AsTask().WaitAsync(StoreFixture.Timeout);
                    if (s != StoreStatus.Ok)
                    {
                        // Cut short by the crash: never acknowledged, never hung.
                        Assert.True(s is StoreStatus.Closed or StoreStatus.IoError, $"flush answered {s}");
                        return;
                    }
                    Volatile.Write(ref acknowledged[t], data);
                    if (!signalled && r >= 5)
                    {
                        signalled = true;
                        started.Signal();
                    }
                }
            }))];
            Assert.True(started.Wait(StoreFixture.Timeout));
            // The old store stops where it is (its flushes in flight fail), a new one replays.
            await f.CrashAndReopenAsync();
            stop.Cancel();
            await Task.WhenAll(tasks).WaitAsync(StoreFixture.Timeout);

            for (int t = 0; t < Tasks; t++)
            {
                // The last acknowledged write, or the one after it whose flush the crash cut
                // short (another task's flush may have covered it): never anything older.
                byte[] got = await Bytes.ReadAsync(f.Store, new ObjectId(Volume, (uint)t), 0, 4096);
                Assert.NotNull(acknowledged[t]);
                Assert.True(
                    got.AsSpan().SequenceEqual(acknowledged[t]) || got.AsSpan().SequenceEqual(attempted[t]),
                    $"object {t} reads neither its acknowledged write nor the one after it");
            }
        }
        finally
        {
            await f.DisposeAsync();
        }
    }
}
