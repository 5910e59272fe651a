using System.Collections.Concurrent;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Recovery;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Store;

namespace Ovis.Cluster.Tests;

/// <summary>
/// The dirty-region log's bookkeeping against a store that records each save (and can be made
/// slow or failing): marks of concurrent writes share one save, a marked object pays nothing,
/// clears wait for a flush and idleness and ride on a save, a predecessor's marks are kept.
/// </summary>
public sealed class DirtyLogTests
{
    private static readonly TimeSpan T = TimeSpan.FromSeconds(10);

    /// <summary>An <see cref="IDirtyLogStore"/> in memory; each save can be held until released.</summary>
    private sealed class MemoryLogStore : IDirtyLogStore
    {
        public ConcurrentDictionary<uint, uint[]> Records { get; } = new();

        public int Saves;

        public TaskCompletionSource? Hold { get; set; }

        public bool Fail { get; set; }

        public Task<IReadOnlyDictionary<uint, uint[]>> LoadAsync(IReadOnlyCollection<uint> layers, CancellationToken cancellationToken)
            => Task.FromResult<IReadOnlyDictionary<uint, uint[]>>(layers.Where(Records.ContainsKey).ToDictionary(l => l, l => Records[l]));

        public async Task SaveAsync(IReadOnlyDictionary<uint, uint[]> layers, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Saves);
            if (Hold is { } hold)
                await hold.Task;
            if (Fail)
                throw new IOException("etcd is away");
            foreach (var (layer, indexes) in layers)
            {
                if (indexes.Length == 0)
                    Records.TryRemove(layer, out _);
                else
                    Records[layer] = indexes;
            }
        }
    }

    [Fact]
    public async Task Concurrent_first_writes_share_one_save_and_a_marked_object_pays_nothing()
    {
        var store = new MemoryLogStore { Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromHours(1));
        // The first mark's save is held: every mark made meanwhile waits for the next save, together.
        var first = log.BeginWriteAsync(new ObjectId(1, 0)).AsTask();
        await Eventually.TrueAsync(() => Task.FromResult(store.Saves == 1), T, "the first save started");
        var others = Enumerable.Range(1, 20).Select(i => log.BeginWriteAsync(new ObjectId(1, (uint)i)).AsTask()).ToArray();
        Assert.False(first.IsCompleted);
        Assert.DoesNotContain(others, t => t.IsCompleted);
        store.Hold.SetResult();
        await first.WaitAsync(T);
        await Task.WhenAll(others).WaitAsync(T);
        Assert.Equal(2, store.Saves);
        Assert.Equal(21, store.Records[1].Length);

        // An object already marked: no save at all, and the call completes synchronously.
        store.Hold = null;
        ValueTask<DirtyLog.WriteMark> again = log.BeginWriteAsync(new ObjectId(1, 5));
        Assert.True(again.IsCompletedSuccessfully);
        log.EndWrite(await again, missed: false);
        Assert.Equal(2, store.Saves);
    }

    [Fact]
    public async Task A_save_that_fails_fails_its_writes_and_the_next_write_marks_again()
    {
        var store = new MemoryLogStore { Fail = true };
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromHours(1));
        await Assert.ThrowsAsync<IOException>(() => log.BeginWriteAsync(new ObjectId(2, 7)).AsTask()).WaitAsync(T);
        Assert.False(log.IsMarked(new ObjectId(2, 7)));
        store.Fail = false;
        await log.BeginWriteAsync(new ObjectId(2, 7)).AsTask().WaitAsync(T);
        Assert.Equal([7u], store.Records[2]);
    }

    [Fact]
    public async Task Clears_wait_for_a_flush_after_the_write_and_idleness_and_never_drop_a_missed_copy()
    {
        var store = new MemoryLogStore();
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromMilliseconds(200));
        var clean = new ObjectId(3, 1);
        var missed = new ObjectId(3, 2);
        log.EndWrite(await log.BeginWriteAsync(clean), missed: false);
        log.EndWrite(await log.BeginWriteAsync(missed), missed: true);

        // Idle, but not flushed: both stay.
        await Task.Delay(700);
        Assert.Equal([1u, 2u], store.Records[3]);

        long generation = log.FlushStarting(3);
        log.FlushDone(3, generation);
        // The flushed, complete one goes (with a save of its own, as nothing else is saved); the missed one stays.
        await Eventually.TrueAsync(() => Task.FromResult(store.Records.TryGetValue(3, out var r) && r.SequenceEqual([2u])), T, "the clean object was cleared");
        Assert.True(log.IsMarked(missed));

        // Once resynced it may go too.
        log.Resynced(missed);
        await Eventually.TrueAsync(() => Task.FromResult(!store.Records.ContainsKey(3)), T, "the resynced object was cleared");
    }

    [Fact]
    public async Task A_write_after_the_flush_keeps_its_object_logged()
    {
        var store = new MemoryLogStore();
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromMilliseconds(100));
        var id = new ObjectId(4, 0);
        DirtyLog.WriteMark mark = await log.BeginWriteAsync(id);
        long generation = log.FlushStarting(4);
        log.EndWrite(mark, missed: false); // completed after the flush started: not covered by it
        log.FlushDone(4, generation);
        await Task.Delay(600);
        Assert.True(log.IsMarked(id));
        Assert.Equal([0u], store.Records[4]);
    }

    [Fact]
    public async Task A_predecessors_marks_are_adopted_kept_in_every_save_and_reported()
    {
        var store = new MemoryLogStore();
        store.Records[5] = [3, 9];
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromHours(1));
        var inherited = await log.AdoptAsync([5u, 6u], CancellationToken.None);
        Assert.Equal([new ObjectId(5, 3), new ObjectId(5, 9)], inherited.OrderBy(i => i.Index));
        Assert.True(log.IsMissed(new ObjectId(5, 3)));

        log.EndWrite(await log.BeginWriteAsync(new ObjectId(5, 4)), missed: false);
        Assert.Equal([3u, 4u, 9u], store.Records[5]);
    }

    [Fact]
    public async Task A_write_to_a_layer_not_adopted_adopts_it_first()
    {
        var store = new MemoryLogStore();
        store.Records[7] = [1];
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromHours(1));
        await log.BeginWriteAsync(new ObjectId(7, 2));
        Assert.Equal([1u, 2u], store.Records[7]);
    }

    [Fact]
    public async Task Release_clears_what_is_complete_at_once_and_forgets_the_layer()
    {
        var store = new MemoryLogStore();
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromHours(1));
        log.EndWrite(await log.BeginWriteAsync(new ObjectId(8, 0)), missed: false);
        log.EndWrite(await log.BeginWriteAsync(new ObjectId(8, 1)), missed: true);
        long generation = log.FlushStarting(8);
        log.FlushDone(8, generation);

        await log.ReleaseAsync([8u]).WaitAsync(T);
        Assert.Equal([1u], store.Records[8]);
        Assert.False(log.IsMarked(new ObjectId(8, 1)));
    }

    /// <summary>A write still on its way when its layer is released ends on the entry it began on,
    /// not on the one a later write created: a writer count gone below zero made every later
    /// write of the object spin in BeginWriteAsync forever (a writeback cache still draining).</summary>
    [Fact]
    public async Task A_write_that_outlives_a_release_does_not_wedge_the_next_writes_of_its_object()
    {
        var store = new MemoryLogStore();
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromHours(1));
        var id = new ObjectId(11, 3);
        DirtyLog.WriteMark early = await log.BeginWriteAsync(id);
        await log.ReleaseAsync([11u]).WaitAsync(T);

        DirtyLog.WriteMark late = await log.BeginWriteAsync(id).AsTask().WaitAsync(T);
        log.EndWrite(early, missed: false);
        log.EndWrite(late, missed: false);
        // Run elsewhere: the old bug spun synchronously, and the test must fail, not hang.
        DirtyLog.WriteMark next = await Task.Run(() => log.BeginWriteAsync(id).AsTask()).WaitAsync(T);
        log.EndWrite(next, missed: false);
        Assert.True(log.IsMarked(id));
    }

    /// <summary>The step a dirty bitmap relies on (docs/backup.md): an object is forgotten only after
    /// BeforeClear has run for its layer — while the save still names it — and never when it failed.</summary>
    [Fact]
    public async Task Objects_are_cleared_only_after_BeforeClear_ran_for_their_layer_and_never_when_it_failed()
    {
        var store = new MemoryLogStore();
        await using var log = new DirtyLog(store, NullLogger.Instance, TimeSpan.FromMilliseconds(100));
        var seen = new ConcurrentQueue<(uint Layer, bool StillLogged)>();
        bool fail = true;
        log.BeforeClear = layers =>
        {
            foreach (uint layer in layers)
                seen.Enqueue((layer, store.Records.ContainsKey(layer)));
            return fail ? throw new IOException("the bitmap could not be saved") : Task.CompletedTask;
        };
        var id = new ObjectId(9, 4);
        log.EndWrite(await log.BeginWriteAsync(id), missed: false);
        long generation = log.FlushStarting(9);
        log.FlushDone(9, generation);

        await Eventually.TrueAsync(() => Task.FromResult(seen.Count >= 2), T, "BeforeClear was called, and failed, twice");
        Assert.Equal([4u], store.Records[9]);
        Assert.True(log.IsMarked(id));

        fail = false;
        await Eventually.TrueAsync(() => Task.FromResult(!store.Records.ContainsKey(9)), T, "the object was cleared");
        Assert.All(seen, s => Assert.True(s.Layer == 9 && s.StillLogged));

        // Release runs it too, before it clears.
        fail = true;
        var other = new ObjectId(10, 0);
        log.EndWrite(await log.BeginWriteAsync(other), missed: false);
        generation = log.FlushStarting(10);
        log.FlushDone(10, generation);
        await log.ReleaseAsync([10u]).WaitAsync(T);
        Assert.Equal([0u], store.Records[10]);
    }
}
