namespace Ovis.Store.Tests;

/// <summary>
/// What the store keeps for layers above that derive state from writes (dirty bitmaps): the
/// ranges replayed at start stay listed, across further crashes, until consumed; checkpoint
/// participants run before the journal's tail moves, and one that fails keeps the records.
/// </summary>
public sealed class ReplayedChangesTests
{
    private static readonly ObjectId A = new(7, 3);
    private static readonly ObjectId B = new(7, 9);

    private static async Task Ok(ValueTask<StoreStatus> op) => Assert.Equal(StoreStatus.Ok, await op);

    [Fact]
    public async Task Replayed_ranges_are_listed_until_consumed_even_across_a_second_crash()
    {
        await using var f = new StoreFixture();
        Assert.Empty(f.Store.ReplayedChanges);
        await Ok(f.Store.WriteAsync(A, 8192, Bytes.Random(12288, 1), fua: false));
        await Ok(f.Store.ZeroAsync(B, 0, 4096, keepAllocated: true, fua: false));
        await Ok(f.Store.FlushAsync());

        await f.CrashAndReopenAsync();
        Assert.Contains(new StoreChange(A, 2, 3), f.Store.ReplayedChanges);
        Assert.Contains(new StoreChange(B, 0, 1), f.Store.ReplayedChanges);

        // Not consumed: a crash now (the journal was checkpointed at the start) keeps them.
        await f.CrashAndReopenAsync();
        Assert.Contains(new StoreChange(A, 2, 3), f.Store.ReplayedChanges);

        f.Store.ConsumeReplayedChanges();
        Assert.Empty(f.Store.ReplayedChanges);
        await f.CrashAndReopenAsync();
        Assert.Empty(f.Store.ReplayedChanges);
    }

    [Fact]
    public async Task A_failing_checkpoint_participant_keeps_the_records_in_the_journal()
    {
        await using var f = new StoreFixture();
        bool fail = true;
        int calls = 0;
        f.Store.AddCheckpointParticipant(() =>
        {
            calls++;
            if (fail)
            {
                throw new IOException("participant cannot save");
            }
        });
        await Ok(f.Store.WriteAsync(A, 0, Bytes.Random(4096, 2), fua: false));
        await Ok(f.Store.FlushAsync());
        // A clean close checkpoints: the participant fails, so the journal keeps the record.
        await Assert.ThrowsAsync<IOException>(async () => await f.Store.DisposeAsync());
        Assert.True(calls > 0);
        await f.CrashAndReopenAsync();
        Assert.Contains(new StoreChange(A, 0, 1), f.Store.ReplayedChanges);
    }
}
