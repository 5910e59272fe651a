using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace Ovis.Store.Tests;

/// <summary>
/// Concurrency stress: eight writers, racing flushers and (in one test) a racing dispose, on a
/// store small enough that batches seal constantly, the four batch buffers run out (writers
/// wait for space) and the journal wraps and checkpoints many times.
///
/// Each writer owns disjoint byte ranges and keeps a model of them, so the expected content is
/// known exactly. Every await on the store is bounded by <see cref="StoreFixture.Timeout"/>: a
/// lost wake-up or a committer that never finishes (as when reservations were counted
/// non-atomically and the committer spun forever) fails the test with a message naming the
/// operation that hung, instead of hanging the run. No test sleeps to synchronise.
/// </summary>
public sealed class ConcurrencyStressTests(ITestOutputHelper output)
{
    private const int Block = 4096;
    private const int Writers = 8;
    private const int Flushers = 2;
    private const int JournalRecordHeader = 40;

    /// <summary>4 MiB of journal per checkpoint, 1 MiB of batch buffers: the journal is the bottleneck on purpose.</summary>
    private static LocalStoreOptions SmallStore() => new() { JournalSize = 16 << 20, BatchSize = 256 << 10, BatchCount = 4 };

    private static readonly long JournalSize = SmallStore().JournalSize;

    [Fact]
    public async Task ConcurrencyStress_writers_on_distinct_objects_with_racing_flushes_match_the_model_before_and_after_a_crash()
    {
        long started = Stopwatch.GetTimestamp();
        Slowest.Reset();
        var f = new StoreFixture(SmallStore());
        await using var closing = new Closing(f);
        LocalStore store = f.Store;
        const uint volume = 0xA;
        const int objectSize = 512 << 10;
        Model[] models = [.. Enumerable.Range(0, 2 * Writers).Select(i => new Model(new ObjectId(volume, (uint)i), objectSize))];
        var stats = new Stats();
        // 8 writers × 4 MiB: two laps of the 16 MiB journal, and a checkpoint every 4 MiB.
        const long perWriter = 4L << 20;

        await RunWithFlushersAsync(store, stats, clock: null, Enumerable.Range(0, Writers).Select(w =>
            Task.Run(() => DistinctObjectsWriterAsync(store, w, models[(2 * w)..(2 * w + 2)], perWriter, stats))));

        Assert.True(stats.Journaled >= 2 * JournalSize, $"only {stats.Journaled} bytes journaled: the journal did not wrap");
        await Ok(store.FlushAsync(), () => "final flush");
        await VerifyAllAsync(store, volume, models, "after the stress");
        await f.CrashAndReopenAsync();
        await VerifyAllAsync(f.Store, volume, models, "after crash and reopen");
        Report(stats, started);
        closing.Passed = true;
    }

    [Fact]
    public async Task ConcurrencyStress_writers_sharing_one_object_with_racing_flushes_match_the_model_before_and_after_a_crash()
    {
        long started = Stopwatch.GetTimestamp();
        Slowest.Reset();
        var f = new StoreFixture(SmallStore());
        await using var closing = new Closing(f);
        LocalStore store = f.Store;
        const uint volume = 0xB;
        // One shared object: 1000-byte stripes (so neighbours share 4 KiB blocks: read-modify-write
        // under contention), then 16 KiB chunks for aligned writes and zeroes. Stripe and chunk
        // i belong to writer i % 8. Each writer also owns a small side object it writes, zeroes
        // and deletes.
        var shared = new Model(new ObjectId(volume, 0), SharedLayout.ObjectSize);
        Model[] sides = [.. Enumerable.Range(0, Writers).Select(w => new Model(new ObjectId(volume, (uint)(1 + w)), 64 << 10))];
        var stats = new Stats();
        const long perWriter = 3L << 20;

        await RunWithFlushersAsync(store, stats, clock: null, Enumerable.Range(0, Writers).Select(w =>
            Task.Run(() => SharedObjectWriterAsync(store, w, shared, sides[w], perWriter, stats))));

        Assert.True(stats.Journaled > JournalSize, $"only {stats.Journaled} bytes journaled: the journal did not wrap");
        Model[] all = [shared, .. sides];
        await Ok(store.FlushAsync(), () => "final flush");
        await VerifyAllAsync(store, volume, all, "after the stress");
        await f.CrashAndReopenAsync();
        await VerifyAllAsync(f.Store, volume, all, "after crash and reopen");
        Report(stats, started);
        closing.Passed = true;
    }

    [Fact]
    public async Task ConcurrencyStress_a_flood_of_tiny_zero_records_keeps_the_committer_moving_and_reads_exact()
    {
        // Zeroing one block that the object holds is a 40-byte record, so a batch holds thousands
        // and reservations (under the journal lock) overlap with other threads' commits (outside
        // it) all the time: where a reservation count that is not updated atomically loses a
        // commit, the committer waits for that batch forever and every flush hangs.
        // Zeroes and writes of the same few blocks also put several records for one block in one
        // batch, and the writers read their blocks while the applier works through such batches:
        // a read must never see a version that a later record of the batch has replaced.
        long started = Stopwatch.GetTimestamp();
        Slowest.Reset();
        var f = new StoreFixture(SmallStore());
        await using var closing = new Closing(f);
        LocalStore store = f.Store;
        const uint volume = 0xE;
        const int blocks = 32;
        Model[] models = [.. Enumerable.Range(0, Writers).Select(w => new Model(new ObjectId(volume, (uint)w), blocks * Block))];
        var stats = new Stats();
        foreach (Model m in models)
        {
            // The object holds its last block, so a zero of any of its blocks is journaled.
            byte[] last = RandomBytes(new Random(m.Id.GetHashCode()), Block);
            await Ok(store.WriteAsync(m.Id, (blocks - 1) * Block, last, fua: false), () => $"write the last block of {m.Id}");
            m.Write((blocks - 1) * Block, last);
        }

        await RunWithFlushersAsync(store, stats, clock: null, Enumerable.Range(0, Writers).Select(w => Task.Run(async () =>
        {
            var rng = new Random(0xE000 + w);
            Model m = models[w];
            long journaled = 0;
            int op = 0;
            for (int round = 0; round < 16; round++)
            {
                for (int end = op + 300; op < end; op++)
                {
                    await YieldNowAndThen(op);
                    journaled += await RandomTinyOpAsync(op);
                }
                // Zero, write and zero again one block in one batch, with other records between
                // the write and the second zero; then flush, so the batch is applied, and read the
                // block while it is: every read must see the second zero.
                int b = rng.Next(blocks);
                await ZeroBlockAsync(b, rng.Next(2) == 0, op++);
                byte[] data = RandomBytes(rng, Block);
                await Ok(store.WriteAsync(m.Id, (long)b * Block, data, fua: false), () => $"writer {w} op {op}: write {m.Id} block {b}");
                m.Write((long)b * Block, data);
                op++;
                for (int i = 0; i < 100; i++)
                {
                    await ZeroBlockAsync((b + 1 + rng.Next(blocks - 1)) % blocks, rng.Next(2) == 0, op++);
                }
                await ZeroBlockAsync(b, rng.Next(2) == 0, op++);
                await FlushAsync(store, stats, null, $"writer {w} op {op++}");
                for (int i = 0; i < 100; i++)
                {
                    await ExpectContentAsync(store, m, (long)b * Block, Block, $"writer {w} op {op++} (block {b}: zeroed, written, zeroed again, flushed)");
                }
                journaled += Block + 102 * JournalRecordHeader;
            }
            stats.Add(journaled, op);

            // Mostly zeroes of one block, now and then a write, a partial write or a read of the object.
            async Task<long> RandomTinyOpAsync(int n)
            {
                int b = rng.Next(blocks);
                int kind = rng.Next(64);
                if (kind == 0)
                {
                    byte[] data = RandomBytes(rng, Block);
                    await Ok(store.WriteAsync(m.Id, (long)b * Block, data, fua: false), () => $"writer {w} op {n}: write {m.Id} block {b}");
                    m.Write((long)b * Block, data);
                    return Block;
                }
                if (kind <= 2)
                {
                    // Read-modify-write of a block: what it reads ends up in the journal.
                    int length = rng.Next(1, 200);
                    long offset = (long)b * Block + rng.Next(Block - length + 1);
                    byte[] data = RandomBytes(rng, length);
                    await Ok(store.WriteAsync(m.Id, offset, data, fua: false), () => $"writer {w} op {n}: unaligned write {m.Id} {offset}+{length}");
                    m.Write(offset, data);
                    return Block;
                }
                if (kind <= 6)
                {
                    await ExpectContentAsync(store, m, 0, m.Content.Length, $"writer {w} op {n}");
                    return 0;
                }
                await ZeroBlockAsync(b, (kind & 1) != 0, n);
                return JournalRecordHeader;
            }

            async Task ZeroBlockAsync(int b, bool keep, int n)
            {
                await Ok(store.ZeroAsync(m.Id, (long)b * Block, Block, keep, fua: false), () => $"writer {w} op {n}: zero {m.Id} block {b} keep={keep}");
                m.Zero((long)b * Block, Block, keep);
            }
        })));

        await Ok(store.FlushAsync(), () => "final flush");
        await VerifyAllAsync(store, volume, models, "after the flood");
        await f.CrashAndReopenAsync();
        await VerifyAllAsync(f.Store, volume, models, "after crash and reopen");
        Report(stats, started);
        closing.Passed = true;
    }

    [Fact]
    public async Task ConcurrencyStress_every_block_flushed_before_a_crash_reads_back_and_nothing_older_comes_back()
    {
        long started = Stopwatch.GetTimestamp();
        Slowest.Reset();
        var f = new StoreFixture(SmallStore());
        await using var closing = new Closing(f);
        const uint volume = 0xC;
        var clock = new DurabilityClock();
        var stats = new Stats();
        CrashWriter[] writers = [.. Enumerable.Range(0, Writers).Select(w => new CrashWriter(w, new ObjectId(volume, (uint)w), blocks: 256))];
        for (int round = 0; round < 2; round++)
        {
            LocalStore store = f.Store;
            long target = stats.Journaled + (12L << 20);
            // Writes, zeroes, deletes and fua writes, with flushes racing from other tasks; a write
            // is known durable once a flush that started after it completed has returned.
            await RunWithFlushersAsync(store, stats, clock, writers.Select(w =>
                Task.Run(() => w.RunAsync(store, clock, stats, () => stats.Journaled < target, maxOps: int.MaxValue, flushes: true))));
            // Then a burst nobody flushes: some of it is in sealed batches the committer wrote on
            // its own, the rest in the open batch, which the crash loses.
            await Task.WhenAll(writers.Select(w => Task.Run(() => w.RunAsync(store, clock, stats, () => true, maxOps: 25, flushes: false))))
                .WaitAsync(2 * StoreFixture.Timeout);
            await f.CrashAndReopenAsync();
            int unflushedLost = 0;
            foreach (CrashWriter w in writers)
            {
                unflushedLost += await w.VerifyAfterCrashAsync(f.Store, clock, $"round {round}");
            }
            output.WriteLine($"round {round}: {unflushedLost} blocks came back older than their last (unflushed) write, none older than their last flushed one");
        }
        Report(stats, started);
        closing.Passed = true;
    }

    [Fact]
    public async Task ConcurrencyStress_writes_and_flushes_racing_dispose_neither_hang_nor_throw_and_acknowledged_writes_survive()
    {
        long started = Stopwatch.GetTimestamp();
        Slowest.Reset();
        var f = new StoreFixture(SmallStore());
        LocalStore store = f.Store;
        const uint volume = 0xD;
        var race = new DisposeRace();
        Model[] models = [.. Enumerable.Range(0, Writers).Select(w => new Model(new ObjectId(volume, (uint)w), 256 << 10))];
        // Objects nobody touches after the warm-up: their blocks are applied to object files, so a
        // partial write to them after the dispose has to read those (closed) files.
        Model[] still = [.. Enumerable.Range(0, Writers).Select(w => new Model(new ObjectId(volume, (uint)(100 + w)), 64 << 10))];
        var indeterminate = new ConcurrentBag<Indeterminate>();
        bool disposeCalled = false;
        try
        {
            var rng = new Random(0xD);
            foreach (Model m in models.Concat(still))
            {
                byte[] data = RandomBytes(rng, 64 << 10);
                await Ok(store.WriteAsync(m.Id, 0, data, fua: false), () => $"warm-up write to {m.Id}");
                m.Write(0, data);
            }
            await Ok(store.FlushAsync(), () => "warm-up flush");

            Task[] tasks =
            [
                .. Enumerable.Range(0, Writers).Select(w => Task.Run(() => DisposeRaceWriterAsync(store, w, models[w], still[w], race, indeterminate))),
                .. Enumerable.Range(0, Flushers).Select(i => Task.Run(() => DisposeRaceFlusherAsync(store, i, race))),
            ];
            await race.WarmedUp.Task.WaitAsync(StoreFixture.Timeout);
            race.Phase = DisposeRace.Disposing;
            disposeCalled = true;
            long disposeStarted = Stopwatch.GetTimestamp();
            try
            {
                await store.DisposeAsync().AsTask().WaitAsync(StoreFixture.Timeout);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                race.Fail($"DisposeAsync racing writes and flushes threw {e.GetType().Name}: {e.Message}");
            }
            TimeSpan disposeTime = Stopwatch.GetElapsedTime(disposeStarted);
            race.Phase = DisposeRace.Disposed;
            race.DisposeDone.SetResult();
            // Every store call in these tasks is bounded; this bound only covers their sum.
            await Task.WhenAll(tasks).WaitAsync(4 * StoreFixture.Timeout);

            if (disposeTime < StoreFixture.Timeout)
            {
                // Everything acknowledged before or during the dispose is durable: the dispose
                // drains the journal. The one operation per writer that the dispose cut short
                // may have taken effect in part (per byte: old or new).
                LocalStore reopened = LocalStore.Open(f.Directory, f.Options, NullLogger.Instance);
                try
                {
                    foreach (Model m in models.Concat(still))
                    {
                        byte[] got = await Bytes.ReadAsync(reopened, m.Id, 0, m.Content.Length);
                        string? problem = CompareAllowingIndeterminate(m, got, [.. indeterminate.Where(i => i.Model == m)]);
                        if (problem is not null)
                        {
                            race.Fail($"after reopening the disposed store: {problem}");
                        }
                    }
                }
                finally
                {
                    await reopened.DisposeAsync().AsTask().WaitAsync(StoreFixture.Timeout);
                }
            }
            output.WriteLine($"{race.Ops} operations, {race.ClosedResults} returned Closed; dispose took {disposeTime.TotalMilliseconds:F0} ms");
            Report(null, started);
            string[] failures = [.. race.Failures];
            if (failures.Length > 0)
            {
                // Grouped, so that one symptom hit by 8 writers reads as one line.
                Assert.Fail($"{failures.Length} problems with a racing dispose:\n" + string.Join("\n", failures
                    .GroupBy(Symptom)
                    .Select(g => $"  {g.Count()}× {g.First()}")));
            }
        }
        finally
        {
            if (!disposeCalled)
            {
                await store.DisposeAsync().AsTask().WaitAsync(StoreFixture.Timeout);
            }
            try
            {
                Directory.Delete(f.Directory, recursive: true);
            }
            catch (IOException)
            {
                // A store that hung may still hold files; the temp directory is only clutter.
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Writers

    /// <summary>Aligned, unaligned and multi-record writes, zeroes, deletes, fua writes, flushes and
    /// read-backs on two objects only this writer touches.</summary>
    private static async Task DistinctObjectsWriterAsync(LocalStore store, int w, Model[] mine, long target, Stats stats)
    {
        var rng = new Random(0xA000 + w);
        long journaled = 0;
        int op = 0;
        for (; journaled < target; op++)
        {
            await YieldNowAndThen(op);
            Model m = mine[rng.Next(mine.Length)];
            int size = m.Content.Length;
            int blocksInObject = size / Block;
            int kind = rng.Next(100);
            if (kind < 35)
            {
                // One block to 16, and now and then more than one journal record holds (63 blocks).
                int blocks = rng.Next(8) == 0 ? rng.Next(64, 100) : rng.Next(1, 17);
                long offset = (long)rng.Next(blocksInObject - blocks + 1) * Block;
                byte[] data = RandomBytes(rng, blocks * Block);
                bool fua = rng.Next(16) == 0;
                await Ok(store.WriteAsync(m.Id, offset, data, fua), () => $"writer {w} op {op}: aligned write {m.Id} {offset}+{data.Length} fua={fua}");
                m.Write(offset, data);
                journaled += data.Length;
            }
            else if (kind < 60)
            {
                int length = rng.Next(1, 12_000);
                long offset = rng.Next(size - length + 1);
                byte[] data = RandomBytes(rng, length);
                bool fua = rng.Next(16) == 0;
                await Ok(store.WriteAsync(m.Id, offset, data, fua), () => $"writer {w} op {op}: unaligned write {m.Id} {offset}+{length} fua={fua}");
                m.Write(offset, data);
                journaled += BlocksCovered(offset, length) * Block;
            }
            else if (kind < 72)
            {
                (long offset, int length) = rng.Next(2) == 0 ? AlignedRange(rng, blocksInObject, 32) : (rng.Next(size - 40_000), rng.Next(1, 40_000));
                bool keep = rng.Next(2) == 0;
                bool fua = rng.Next(16) == 0;
                await Ok(store.ZeroAsync(m.Id, offset, length, keep, fua), () => $"writer {w} op {op}: zero {m.Id} {offset}+{length} keep={keep} fua={fua}");
                m.Zero(offset, length, keep);
                journaled += 2 * Block;
            }
            else if (kind < 75)
            {
                await Ok(store.DeleteAsync(m.Id), () => $"writer {w} op {op}: delete {m.Id}");
                m.Delete();
                journaled += Block;
            }
            else if (kind < 93)
            {
                (long offset, int length) = rng.Next(2) == 0 ? AlignedRange(rng, blocksInObject, 32) : (rng.Next(size - 20_000), rng.Next(1, 20_000));
                await ExpectContentAsync(store, m, offset, length, $"writer {w} op {op}");
            }
            else
            {
                await FlushAsync(store, stats, null, $"writer {w} op {op}");
            }
        }
        stats.Add(journaled, op);
    }

    /// <summary>Stripes of a shared object (sub-block, so neighbours' writes meet in one block),
    /// chunks of it (aligned), and a side object this writer alone writes, zeroes and deletes.</summary>
    private static async Task SharedObjectWriterAsync(LocalStore store, int w, Model shared, Model side, long target, Stats stats)
    {
        var rng = new Random(0xB000 + w);
        long journaled = 0;
        int op = 0;
        for (; journaled < target; op++)
        {
            await YieldNowAndThen(op);
            int kind = rng.Next(100);
            string at = $"writer {w} op {op}";
            if (kind < 45)
            {
                // A piece of one of my stripes: its block holds other writers' stripes too.
                (long offset, int length) = SharedLayout.PieceOfStripe(rng, w);
                if (rng.Next(5) == 0)
                {
                    bool keep = rng.Next(2) == 0;
                    await Ok(store.ZeroAsync(shared.Id, offset, length, keep, fua: false), () => $"{at}: zero stripe piece {offset}+{length}");
                    shared.Zero(offset, length, keep);
                }
                else
                {
                    byte[] data = RandomBytes(rng, length);
                    bool fua = rng.Next(20) == 0;
                    await Ok(store.WriteAsync(shared.Id, offset, data, fua), () => $"{at}: write stripe piece {offset}+{length} fua={fua}");
                    shared.Write(offset, data);
                }
                journaled += BlocksCovered(offset, length) * Block;
            }
            else if (kind < 70)
            {
                (long offset, int length) = SharedLayout.PieceOfChunk(rng, w);
                if (rng.Next(4) == 0)
                {
                    bool keep = rng.Next(2) == 0;
                    await Ok(store.ZeroAsync(shared.Id, offset, length, keep, fua: false), () => $"{at}: zero chunk blocks {offset}+{length} keep={keep}");
                    shared.Zero(offset, length, keep);
                }
                else
                {
                    byte[] data = RandomBytes(rng, length);
                    bool fua = rng.Next(20) == 0;
                    await Ok(store.WriteAsync(shared.Id, offset, data, fua), () => $"{at}: write chunk blocks {offset}+{length} fua={fua}");
                    shared.Write(offset, data);
                }
                journaled += length;
            }
            else if (kind < 80)
            {
                (long offset, int length) = rng.Next(2) == 0 ? SharedLayout.PieceOfStripe(rng, w) : SharedLayout.PieceOfChunk(rng, w);
                await ExpectContentAsync(store, shared, offset, length, at);
            }
            else if (kind < 95)
            {
                int sideKind = rng.Next(10);
                if (sideKind < 5)
                {
                    int length = rng.Next(1, 20_000);
                    long offset = rng.Next(side.Content.Length - length + 1);
                    byte[] data = RandomBytes(rng, length);
                    await Ok(store.WriteAsync(side.Id, offset, data, fua: false), () => $"{at}: write side {side.Id} {offset}+{length}");
                    side.Write(offset, data);
                    journaled += BlocksCovered(offset, length) * Block;
                }
                else if (sideKind < 7)
                {
                    int length = rng.Next(1, 30_000);
                    long offset = rng.Next(side.Content.Length - length + 1);
                    bool keep = rng.Next(2) == 0;
                    await Ok(store.ZeroAsync(side.Id, offset, length, keep, fua: false), () => $"{at}: zero side {side.Id} {offset}+{length} keep={keep}");
                    side.Zero(offset, length, keep);
                }
                else if (sideKind < 8)
                {
                    await Ok(store.DeleteAsync(side.Id), () => $"{at}: delete side {side.Id}");
                    side.Delete();
                }
                else
                {
                    await ExpectContentAsync(store, side, 0, side.Content.Length, at);
                }
            }
            else
            {
                await FlushAsync(store, stats, null, at);
            }
        }
        stats.Add(journaled, op);
    }

    private static async Task DisposeRaceWriterAsync(LocalStore store, int w, Model m, Model still, DisposeRace race, ConcurrentBag<Indeterminate> indeterminate)
    {
        var rng = new Random(0xD000 + w);
        int size = m.Content.Length;
        bool flushFailed = false;
        int op = 0;
        // Until the store refuses an operation, or the dispose is over.
        while (race.Phase != DisposeRace.Disposed)
        {
            await YieldNowAndThen(op++);
            int kind = rng.Next(8);
            if (kind == 7)
            {
                StoreStatus? fs = await race.CallAsync($"FlushAsync by writer {w}", () => store.FlushAsync());
                if (fs is not (StoreStatus.Ok or StoreStatus.Closed or null))
                {
                    race.Fail($"FlushAsync by writer {w} [{race.PhaseName}] returned {fs}");
                }
                if (fs is null)
                {
                    // Reported; another hung flush would only add a timeout to the run.
                    flushFailed = true;
                    break;
                }
                continue;
            }
            (string what, Func<ValueTask<StoreStatus>> call, Indeterminate effect, Action apply) = kind switch
            {
                0 or 1 => AlignedWrite(store, rng, m, w, fua: false),
                2 => AlignedWrite(store, rng, m, w, fua: true),
                3 or 4 => UnalignedWrite(store, rng, m, w),
                5 => Zero(store, rng, m, w),
                _ => ($"delete {m.Id} by writer {w}", () => store.DeleteAsync(m.Id), new Indeterminate(m, 0, new byte[size]), m.Delete),
            };
            StoreStatus? s = await race.CallAsync(what, call);
            if (s == StoreStatus.Ok)
            {
                apply();
                continue;
            }
            // Refused (or threw, or hung): it may have taken effect in part. Stop changing the model.
            indeterminate.Add(effect);
            if (s is not (StoreStatus.Closed or null))
            {
                race.Fail($"{what} [{race.PhaseName}] returned {s}");
            }
            else if (s == StoreStatus.Closed)
            {
                Interlocked.Increment(ref race.ClosedResults);
                if (race.Phase == DisposeRace.Running)
                {
                    race.Fail($"{what} returned Closed before DisposeAsync was called");
                }
            }
            break;
        }

        // After the dispose, every kind of write is refused with Closed (an Ok would be a write
        // acknowledged and then lost), and nothing throws or hangs.
        await race.DisposeDone.Task.WaitAsync(4 * StoreFixture.Timeout);
        (string, Func<ValueTask<StoreStatus>>)[] late =
        [
            ($"aligned write to {m.Id} by writer {w}", () => store.WriteAsync(m.Id, 0, new byte[Block], fua: false)),
            ($"fua write to {m.Id} by writer {w}", () => store.WriteAsync(m.Id, Block, new byte[2 * Block], fua: true)),
            ($"unaligned write (read-modify-write of an applied block) to {still.Id} by writer {w}", () => store.WriteAsync(still.Id, 100, new byte[100], fua: false)),
            ($"unaligned zero of {still.Id} by writer {w}", () => store.ZeroAsync(still.Id, Block + 10, 3 * Block, keepAllocated: false, fua: false)),
            ($"aligned zero of {still.Id} by writer {w}", () => store.ZeroAsync(still.Id, 8 * Block, 2 * Block, keepAllocated: true, fua: false)),
            ($"delete of {still.Id} by writer {w}", () => store.DeleteAsync(still.Id)),
        ];
        foreach ((string what, Func<ValueTask<StoreStatus>> call) in late)
        {
            StoreStatus? s = await race.CallAsync(what, call);
            if (s is not (StoreStatus.Closed or null))
            {
                race.Fail($"{what} after DisposeAsync returned {s} (expected Closed)");
            }
        }
        // A read after the dispose may be refused or served, but must not throw either.
        StoreStatus? read = await race.CallAsync($"read of {still.Id} by writer {w}", () => store.ReadAsync(still.Id, 0, new byte[3 * Block]));
        if (read is not (StoreStatus.Ok or StoreStatus.Closed or null))
        {
            race.Fail($"read of {still.Id} by writer {w} after DisposeAsync returned {read}");
        }
        if (!flushFailed)
        {
            StoreStatus? flushed = await race.CallAsync($"FlushAsync by writer {w}", () => store.FlushAsync());
            if (flushed is not (StoreStatus.Ok or StoreStatus.Closed or null))
            {
                race.Fail($"FlushAsync by writer {w} after DisposeAsync returned {flushed}");
            }
        }
    }

    private static (string, Func<ValueTask<StoreStatus>>, Indeterminate, Action) AlignedWrite(LocalStore store, Random rng, Model m, int w, bool fua)
    {
        (long offset, int length) = AlignedRange(rng, m.Content.Length / Block, 24);
        byte[] data = RandomBytes(rng, length);
        return ($"aligned write {m.Id} {offset}+{length} fua={fua} by writer {w}", () => store.WriteAsync(m.Id, offset, data, fua),
            new Indeterminate(m, offset, data), () => m.Write(offset, data));
    }

    private static (string, Func<ValueTask<StoreStatus>>, Indeterminate, Action) UnalignedWrite(LocalStore store, Random rng, Model m, int w)
    {
        int length = rng.Next(1, 12_000);
        long offset = rng.Next(m.Content.Length - length + 1);
        byte[] data = RandomBytes(rng, length);
        return ($"unaligned write {m.Id} {offset}+{length} by writer {w}", () => store.WriteAsync(m.Id, offset, data, fua: false),
            new Indeterminate(m, offset, data), () => m.Write(offset, data));
    }

    private static (string, Func<ValueTask<StoreStatus>>, Indeterminate, Action) Zero(LocalStore store, Random rng, Model m, int w)
    {
        int length = rng.Next(1, 40_000);
        long offset = rng.Next(m.Content.Length - length + 1);
        bool keep = rng.Next(2) == 0;
        return ($"zero {m.Id} {offset}+{length} keep={keep} by writer {w}", () => store.ZeroAsync(m.Id, offset, length, keep, fua: false),
            new Indeterminate(m, offset, new byte[length]), () => m.Zero(offset, length, keep));
    }

    private static async Task DisposeRaceFlusherAsync(LocalStore store, int i, DisposeRace race)
    {
        for (int n = 0; race.Phase != DisposeRace.Disposed; n++)
        {
            await YieldNowAndThen(n);
            // Odd flushers flush the volume: that waiter continues on the committer's thread.
            StoreStatus? s = await race.CallAsync($"FlushAsync by flusher {i}", () => i % 2 == 0 ? store.FlushAsync() : store.FlushAsync(0xD));
            if (s is not (StoreStatus.Ok or StoreStatus.Closed or null))
            {
                race.Fail($"FlushAsync by flusher {i} [{race.PhaseName}] returned {s}");
            }
            if (s is null)
            {
                // Reported; another hung flush would only add a timeout to the run.
                return;
            }
            if (s == StoreStatus.Closed)
            {
                // Refused at once from now on: spinning on it would only slow the dispose down.
                break;
            }
        }
        await race.DisposeDone.Task.WaitAsync(4 * StoreFixture.Timeout);
        StoreStatus? late = await race.CallAsync($"FlushAsync by flusher {i}", () => i % 2 == 0 ? store.FlushAsync() : store.FlushAsync(0xD));
        if (late is not (StoreStatus.Ok or StoreStatus.Closed or null))
        {
            race.Fail($"FlushAsync by flusher {i} after DisposeAsync returned {late}");
        }
    }

    /// <summary>Runs <paramref name="writers"/> while <see cref="Flushers"/> tasks flush in a loop,
    /// until the writers are done; every flush is bounded and must return Ok.</summary>
    private static async Task RunWithFlushersAsync(LocalStore store, Stats stats, DurabilityClock? clock, IEnumerable<Task> writers)
    {
        using var stop = new CancellationTokenSource();
        Task[] flushers = [.. Enumerable.Range(0, Flushers).Select(i => Task.Run(async () =>
        {
            for (int n = 0; !stop.IsCancellationRequested; n++)
            {
                await FlushAsync(store, stats, clock, $"flusher {i} flush {n}");
                await Task.Yield();
            }
        }))];
        Task[] running = [.. writers];
        // Each store call is bounded by the timeout, which names the call that hung; these
        // bounds are wider, so that it is that message a failure reports.
        Exception? failure = null;
        try
        {
            await Task.WhenAll(running).WaitAsync(2 * StoreFixture.Timeout);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            failure = e;
        }
        await stop.CancelAsync();
        try
        {
            await Task.WhenAll(flushers).WaitAsync(2 * StoreFixture.Timeout);
        }
        catch (Exception e) when (failure is null && e is not OutOfMemoryException)
        {
            failure = e;
        }
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    /// <summary>
    /// Disposes the fixture when the test got to its end. After a failure it only starts the
    /// dispose: a store that hung would make the dispose time out too, and its TimeoutException
    /// would replace the failure that says what hung.
    /// </summary>
    private sealed class Closing(StoreFixture f) : IAsyncDisposable
    {
        public bool Passed { get; set; }

        public async ValueTask DisposeAsync()
        {
            if (Passed)
            {
                await f.DisposeAsync();
            }
            else
            {
                _ = f.DisposeAsync().AsTask().ContinueWith(t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Durability across a crash with writes in flight: per block, the history of values.

    /// <summary>Orders completions of writes and starts of flushes: a write whose completion stamp is
    /// at most the start stamp of a flush that returned Ok was completed before that flush was
    /// called, so it is durable.</summary>
    private sealed class DurabilityClock
    {
        private long _now;
        private long _durable;

        public long Tick() => Interlocked.Increment(ref _now);

        public long Now => Interlocked.Read(ref _now);

        public long Durable => Interlocked.Read(ref _durable);

        public void MarkDurable(long upTo)
        {
            long current;
            while ((current = Durable) < upTo && Interlocked.CompareExchange(ref _durable, upTo, current) != current)
            {
            }
        }
    }

    private readonly record struct Version(long Stamp, int Value, bool Fua);

    private sealed class CrashWriter(int w, ObjectId id, int blocks)
    {
        private readonly Random _rng = new(0xC000 + w);
        // Value 0 is a zero block; other values are random blocks seeded by the value.
        private readonly List<Version>[] _history = [.. Enumerable.Range(0, blocks).Select(_ => new List<Version> { new(0, 0, true) })];
        private int _next = (w + 1) << 22;

        public async Task RunAsync(LocalStore store, DurabilityClock clock, Stats stats, Func<bool> more, int maxOps, bool flushes)
        {
            int op = 0;
            for (; op < maxOps && more(); op++)
            {
                await YieldNowAndThen(op);
                string at = $"crash writer {w} op {op}";
                int kind = _rng.Next(100);
                if (kind < 70 || !flushes && kind >= 88)
                {
                    int count = _rng.Next(1, 9);
                    int first = _rng.Next(blocks - count + 1);
                    bool fua = flushes && _rng.Next(15) == 0;
                    byte[] data = new byte[count * Block];
                    int[] values = new int[count];
                    for (int i = 0; i < count; i++)
                    {
                        values[i] = ++_next;
                        Fill(data.AsSpan(i * Block, Block), values[i]);
                    }
                    await Ok(store.WriteAsync(id, (long)first * Block, data, fua), () => $"{at}: write {id} blocks {first}+{count} fua={fua}");
                    long stamp = clock.Tick();
                    for (int i = 0; i < count; i++)
                    {
                        _history[first + i].Add(new(stamp, values[i], fua));
                    }
                    stats.Add(data.Length, 1);
                }
                else if (kind < 85)
                {
                    int count = _rng.Next(1, 9);
                    int first = _rng.Next(blocks - count + 1);
                    bool keep = _rng.Next(2) == 0;
                    await Ok(store.ZeroAsync(id, (long)first * Block, (long)count * Block, keep, fua: false), () => $"{at}: zero {id} blocks {first}+{count} keep={keep}");
                    long stamp = clock.Tick();
                    for (int i = 0; i < count; i++)
                    {
                        _history[first + i].Add(new(stamp, 0, false));
                    }
                    stats.Add(Block, 1);
                }
                else if (kind < 88)
                {
                    await Ok(store.DeleteAsync(id), () => $"{at}: delete {id}");
                    long stamp = clock.Tick();
                    foreach (List<Version> h in _history)
                    {
                        h.Add(new(stamp, 0, false));
                    }
                    stats.Add(Block, 1);
                }
                else
                {
                    await FlushAsync(store, stats, clock, at);
                    stats.Add(0, 1);
                }
            }
        }

        /// <summary>Each block must hold the last version known durable or a later one. Returns how
        /// many blocks hold an older version than the last one written (unflushed writes lost).</summary>
        public async Task<int> VerifyAfterCrashAsync(LocalStore store, DurabilityClock clock, string when)
        {
            long durable = clock.Durable;
            byte[] got = await Bytes.ReadAsync(store, id, 0, blocks * Block);
            byte[] expected = new byte[Block];
            int older = 0;
            for (int b = 0; b < blocks; b++)
            {
                List<Version> h = _history[b];
                int floor = h.FindLastIndex(v => v.Stamp <= durable || v.Fua);
                ReadOnlySpan<byte> block = got.AsSpan(b * Block, Block);
                int match = -1;
                for (int i = h.Count - 1; i >= floor && match < 0; i--)
                {
                    Fill(expected, h[i].Value);
                    if (block.SequenceEqual(expected))
                    {
                        match = i;
                    }
                }
                if (match < 0)
                {
                    int stale = -1;
                    for (int i = floor - 1; i >= 0 && stale < 0; i--)
                    {
                        Fill(expected, h[i].Value);
                        if (block.SequenceEqual(expected))
                        {
                            stale = i;
                        }
                    }
                    Assert.Fail(stale >= 0
                        ? $"{when}: {id} block {b} holds version {stale} of {h.Count} (stamp {h[stale].Stamp}), older than version {floor} (stamp {h[floor].Stamp}, fua={h[floor].Fua}) which a flush that returned Ok covered (durable up to stamp {durable})"
                        : $"{when}: {id} block {b} holds none of its versions {floor}..{h.Count - 1} (durable up to stamp {durable})");
                }
                if (match < h.Count - 1)
                {
                    older++;
                }
                // What recovery found is now what the store holds, durably (it checkpoints on open).
                int value = h[match].Value;
                h.Clear();
                h.Add(new(0, value, true));
            }
            return older;
        }

        private static void Fill(Span<byte> block, int value)
        {
            if (value == 0)
            {
                block.Clear();
            }
            else
            {
                new Random(value).NextBytes(block);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Racing dispose

    private sealed class DisposeRace
    {
        public const int Running = 0;
        public const int Disposing = 1;
        public const int Disposed = 2;
        private const int WarmUpOps = 1500;

        public volatile int Phase;
        public long Ops;
        public int ClosedResults;
        public readonly TaskCompletionSource WarmedUp = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly TaskCompletionSource DisposeDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly ConcurrentQueue<string> Failures = new();

        public string PhaseName => NameOf(Phase);

        private static string NameOf(int phase) => phase switch
        {
            Running => "before DisposeAsync",
            Disposing => "during DisposeAsync",
            _ => "after DisposeAsync",
        };

        public void Fail(string problem) => Failures.Enqueue(problem);

        /// <summary>Calls the store, bounded; an exception or a hang is recorded and returns null.</summary>
        public async Task<StoreStatus?> CallAsync(string what, Func<ValueTask<StoreStatus>> call)
        {
            int before = Phase;
            try
            {
                return await call().AsTask().WaitAsync(StoreFixture.Timeout);
            }
            catch (TimeoutException)
            {
                Fail($"{what} [called {NameOf(before)}] HUNG: not complete after {StoreFixture.Timeout.TotalSeconds:F0} s");
                return null;
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Fail($"{what} [called {NameOf(before)}, failed {NameOf(Phase)}] threw {e.GetType().FullName}: {e.Message}");
                return null;
            }
            finally
            {
                if (Interlocked.Increment(ref Ops) == WarmUpOps)
                {
                    WarmedUp.TrySetResult();
                }
            }
        }
    }

    /// <summary>An operation cut short by the dispose: its bytes may read as before or as after it.</summary>
    private sealed record Indeterminate(Model Model, long Offset, byte[] After);

    private static string? CompareAllowingIndeterminate(Model m, byte[] got, Indeterminate[] cut)
    {
        for (int i = 0; i < got.Length; i++)
        {
            if (got[i] == m.Content[i] || cut.Any(c => i >= c.Offset && i < c.Offset + c.After.Length && got[i] == c.After[i - c.Offset]))
            {
                continue;
            }
            return $"{m.Id} byte {i} (block {i / Block}) is {got[i]:x2}, expected {m.Content[i]:x2}"
                + (cut.Length > 0 ? $" (operations cut short: {string.Join(", ", cut.Select(c => $"{c.Offset}+{c.After.Length}"))})" : "");
        }
        return null;
    }

    /// <summary>A symptom without the writer's number, object and offsets, for grouping.</summary>
    private static string Symptom(string failure)
    {
        string s = System.Text.RegularExpressions.Regex.Replace(failure, @"(writer|flusher) \d+", "$1 N");
        s = System.Text.RegularExpressions.Regex.Replace(s, @"[0-9a-f]{8}\.[0-9a-f]{8}", "OBJ");
        return System.Text.RegularExpressions.Regex.Replace(s, @"\d+\+\d+", "R");
    }

    // ---------------------------------------------------------------------------------------
    // The model

    private enum Alloc : byte
    {
        Hole,
        Data,
        /// <summary>Zeroed with keepAllocated: reported as Zero, or as Hole past what the object held.</summary>
        ZeroKept,
    }

    private sealed class Model(ObjectId id, int size)
    {
        public ObjectId Id { get; } = id;

        public byte[] Content { get; } = new byte[size];

        public Alloc[] States { get; } = new Alloc[size / Block];

        public void Write(long offset, ReadOnlySpan<byte> data)
        {
            data.CopyTo(Content.AsSpan((int)offset));
            MarkData(offset, data.Length);
        }

        /// <summary>As <see cref="IObjectStore.ZeroAsync"/> does it: partial blocks at the ends are
        /// written as zero bytes (so they hold data) — except by a trim, which leaves a partial
        /// block that holds no data as it is —, whole blocks become holes or zero blocks.</summary>
        public void Zero(long offset, long length, bool keep)
        {
            Content.AsSpan((int)offset, (int)length).Clear();
            long end = offset + length;
            long firstWhole = (offset + Block - 1) / Block * Block;
            long endWhole = end / Block * Block;
            if (firstWhole >= endWhole)
            {
                MarkZeroed(offset, length, keep);
                return;
            }
            MarkZeroed(offset, firstWhole - offset, keep);
            MarkZeroed(endWhole, end - endWhole, keep);
            States.AsSpan((int)(firstWhole / Block), (int)((endWhole - firstWhole) / Block)).Fill(keep ? Alloc.ZeroKept : Alloc.Hole);
        }

        public void Delete()
        {
            Array.Clear(Content);
            Array.Clear(States);
        }

        private void MarkZeroed(long offset, long length, bool keep)
        {
            if (length > 0 && (keep || States[offset / Block] == Alloc.Data || States[(offset + length - 1) / Block] == Alloc.Data))
            {
                MarkData(offset, length);
            }
        }

        private void MarkData(long offset, long length)
        {
            if (length > 0)
            {
                States.AsSpan((int)(offset / Block), BlocksCovered(offset, length)).Fill(Alloc.Data);
            }
        }
    }

    /// <summary>Stripes of 1000 bytes, then chunks of 4 blocks; stripe or chunk i belongs to writer i % 8.</summary>
    private static class SharedLayout
    {
        public const int StripeBytes = 1000;
        public const int Stripes = 160;
        public const int ChunkBlocks = 4;
        public const int Chunks = 64;
        public static readonly long ChunkStart = (Stripes * StripeBytes + Block - 1) / Block * Block;

        public static readonly int ObjectSize = (int)(ChunkStart + (long)Chunks * ChunkBlocks * Block);

        public static (long Offset, int Length) PieceOfStripe(Random rng, int w)
        {
            int stripe = w + Writers * rng.Next(Stripes / Writers);
            int start = rng.Next(StripeBytes);
            return ((long)stripe * StripeBytes + start, rng.Next(1, StripeBytes - start + 1));
        }

        public static (long Offset, int Length) PieceOfChunk(Random rng, int w)
        {
            int chunk = w + Writers * rng.Next(Chunks / Writers);
            int count = rng.Next(1, ChunkBlocks + 1);
            int first = rng.Next(ChunkBlocks - count + 1);
            return (ChunkStart + ((long)chunk * ChunkBlocks + first) * Block, count * Block);
        }
    }

    private static async Task ExpectContentAsync(LocalStore store, Model m, long offset, int length, string at)
    {
        var buf = new byte[length];
        StoreStatus s = await Bounded(store.ReadAsync(m.Id, offset, buf), () => $"{at}: read {m.Id} {offset}+{length}");
        Assert.True(s == StoreStatus.Ok, $"{at}: read {m.Id} {offset}+{length} returned {s}");
        int diff = FirstDifference(buf, m.Content.AsSpan((int)offset, length));
        if (diff >= 0)
        {
            Assert.Fail($"{at}: read {m.Id} {offset}+{length} differs from the model at byte {offset + diff} (block {(offset + diff) / Block}): {buf[diff]:x2}, expected {m.Content[offset + diff]:x2}");
        }
    }

    /// <summary>Content, allocation, used bytes and the object list of a volume against the models.</summary>
    private static async Task VerifyAllAsync(LocalStore store, uint volume, Model[] models, string when)
    {
        long dataBlocks = 0;
        var expectedListed = new HashSet<ObjectId>();
        foreach (Model m in models)
        {
            await ExpectContentAsync(store, m, 0, m.Content.Length, when);
            var states = new BlockState[m.States.Length];
            await Ok(store.GetAllocationAsync(m.Id, 0, states), () => $"{when}: allocation of {m.Id}");
            for (int b = 0; b < states.Length; b++)
            {
                bool ok = m.States[b] switch
                {
                    Alloc.Data => states[b] == BlockState.Data,
                    Alloc.Hole => states[b] == BlockState.Hole,
                    _ => states[b] is BlockState.Zero or BlockState.Hole,
                };
                Assert.True(ok, $"{when}: {m.Id} block {b} is reported {states[b]}, the model says {m.States[b]}");
            }
            int data = m.States.Count(s => s == Alloc.Data);
            dataBlocks += data;
            if (data > 0)
            {
                expectedListed.Add(m.Id);
            }
        }
        Assert.Equal(dataBlocks * Block, store.GetUsedBytes(volume));
        Assert.Equal(expectedListed.OrderBy(i => i.Packed), store.ListObjects().Where(i => i.Volume == volume).OrderBy(i => i.Packed));
    }

    // ---------------------------------------------------------------------------------------
    // Helpers

    /// <summary>The slowest store call of the running test (tests of a class run one at a time).</summary>
    private static class Slowest
    {
        private static readonly Lock Gate = new();
        private static TimeSpan _time;
        private static string _what = "";

        public static void Reset()
        {
            lock (Gate)
            {
                _time = TimeSpan.Zero;
                _what = "";
            }
        }

        public static void Record(TimeSpan time, Func<string> what)
        {
            if (time <= _time)
            {
                return;
            }
            lock (Gate)
            {
                if (time > _time)
                {
                    _time = time;
                    _what = what();
                }
            }
        }

        public static string Describe()
        {
            lock (Gate)
            {
                return $"slowest store call {_time.TotalMilliseconds:F0} ms ({_what})";
            }
        }
    }

    private sealed class Stats
    {
        private long _journaled;
        private long _ops;
        private long _flushes;
        private long _maxFlushTicks;

        public long Journaled => Interlocked.Read(ref _journaled);

        public long Ops => Interlocked.Read(ref _ops);

        public long Flushes => Interlocked.Read(ref _flushes);

        public TimeSpan MaxFlush => TimeSpan.FromTicks(Interlocked.Read(ref _maxFlushTicks));

        public void Add(long journaled, long ops)
        {
            Interlocked.Add(ref _journaled, journaled);
            Interlocked.Add(ref _ops, ops);
        }

        public void Flushed(TimeSpan took)
        {
            Interlocked.Increment(ref _flushes);
            long t = took.Ticks, max;
            while ((max = Interlocked.Read(ref _maxFlushTicks)) < t && Interlocked.CompareExchange(ref _maxFlushTicks, t, max) != max)
            {
            }
        }
    }

    private static async Task FlushAsync(LocalStore store, Stats stats, DurabilityClock? clock, string who)
    {
        long start = clock?.Now ?? 0;
        long t0 = Stopwatch.GetTimestamp();
        await Ok(store.FlushAsync(), () => $"{who}: FlushAsync");
        stats.Flushed(Stopwatch.GetElapsedTime(t0));
        clock?.MarkDurable(start);
    }

    /// <summary>The status of a store call, awaited for at most the timeout; <paramref name="what"/>
    /// is formatted only when it is needed, so that the harness costs little next to the store.</summary>
    private static async ValueTask<StoreStatus> Bounded(ValueTask<StoreStatus> op, Func<string> what)
    {
        if (op.IsCompletedSuccessfully)
        {
            return op.Result;
        }
        long t0 = Stopwatch.GetTimestamp();
        try
        {
            StoreStatus s = await op.AsTask().WaitAsync(StoreFixture.Timeout);
            Slowest.Record(Stopwatch.GetElapsedTime(t0), what);
            return s;
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"{what()} did not complete within {StoreFixture.Timeout.TotalSeconds:F0} s: it hung", e);
        }
    }

    private static async ValueTask Ok(ValueTask<StoreStatus> op, Func<string> what)
    {
        StoreStatus s = await Bounded(op, what);
        if (s != StoreStatus.Ok)
        {
            Assert.Fail($"{what()} returned {s}");
        }
    }

    private void Report(Stats? stats, long started)
    {
        if (stats is not null)
        {
            output.WriteLine($"{stats.Ops} writer operations, {stats.Journaled >> 20} MiB journaled ({(double)stats.Journaled / JournalSize:F1} laps of the journal), {stats.Flushes} flushes, slowest {stats.MaxFlush.TotalMilliseconds:F0} ms");
        }
        output.WriteLine(Slowest.Describe());
        output.WriteLine($"took {Stopwatch.GetElapsedTime(started).TotalSeconds:F2} s");
    }

    /// <summary>Most calls complete synchronously; a writer that never yields would keep a pool
    /// thread from the store's committer and applier (which run on the pool) and from the other
    /// writers. Real clients yield on their sockets.</summary>
    private static async ValueTask YieldNowAndThen(int op)
    {
        if (op % 16 == 15)
        {
            await Task.Yield();
        }
    }

    private static byte[] RandomBytes(Random rng, int length)
    {
        var b = new byte[length];
        rng.NextBytes(b);
        return b;
    }

    private static (long Offset, int Length) AlignedRange(Random rng, int blocksInObject, int maxBlocks)
    {
        int count = rng.Next(1, maxBlocks + 1);
        return ((long)rng.Next(blocksInObject - count + 1) * Block, count * Block);
    }

    private static int BlocksCovered(long offset, long length) => (int)((offset + length + Block - 1) / Block - offset / Block);

    private static int FirstDifference(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        int common = a.CommonPrefixLength(b);
        return common == a.Length && a.Length == b.Length ? -1 : common;
    }
}
