using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Store;

namespace Ovis.Volumes.Tests;

/// <summary>
/// Deleting a snapshot moves its blocks into the layer over it a batch at a time, trimming each
/// batch from the snapshot once the copy is durable (docs/snapshots.md): the child's reads never
/// change, a delete that stopped half-way leaves the snapshot marked and unusable, and the next
/// delete finishes it.
/// </summary>
public sealed class SnapshotMergeTests
{
    private const int MiB = 1 << 20;
    private static readonly TimeSpan T = TimeSpan.FromSeconds(60);
    private static readonly LocalStoreOptions Options = new() { JournalSize = 32L << 20, BatchSize = 1 << 20, BatchCount = 8 };

    [Fact]
    public async Task A_delete_stopped_half_way_keeps_the_child_whole_and_the_next_delete_finishes_it_under_concurrent_reads()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ovis-merge-" + Guid.NewGuid().ToString("N"));
        try
        {
            DataDirectory data = await DataDirectory.OpenAsync(dir, Options, NullLogger.Instance).WaitAsync(T);
            // As a cluster node lists only its own copies: the merge asks every object slot.
            var store = new InterruptingStore(data.Store) { ListsEveryObject = false };
            VolumeManager m = await VolumeManager.OpenAsync(store, EmbeddedRegistry.Open(dir), NullLogger.Instance).WaitAsync(T);
            try
            {
                await m.CreateAsync("vm", 64 * MiB);
                // 40 MiB in the snapshot: more than two batches of 16 MiB.
                await WriteAsync(m, "vm", 0, Fill(40 * MiB, 0xA1));
                await m.SnapshotAsync("vm", "s1");
                await WriteAsync(m, "vm", 5 * MiB, Fill(MiB, 0xB2));
                uint snapshotId = m.Get("vm@s1").Id;
                long snapshotBytes = data.Store.GetUsedBytes(snapshotId);

                // The 21st copy (of at most 1 MiB each) fails: one batch of 16 MiB has moved and been
                // trimmed from the snapshot, four more copies have not been trimmed yet.
                store.FillsLeft = 20;
                await Assert.ThrowsAsync<IOException>(() => m.DeleteAsync("vm@s1")).WaitAsync(T);
                Assert.True(m.Get("vm@s1").Deleting);
                await Eventually(() => data.Store.GetUsedBytes(snapshotId) <= snapshotBytes - (16 * MiB), "the moved batch is trimmed from the snapshot");
                Assert.Equal(VolumeErrorCode.InUse, Assert.Throws<VolumeException>(() => m.Open("vm@s1")).Code);
                Assert.Equal(VolumeErrorCode.InUse, (await Assert.ThrowsAsync<VolumeException>(() => m.CloneAsync("vm@s1", "c1"))).Code);
                Assert.Equal(VolumeErrorCode.InUse, (await Assert.ThrowsAsync<VolumeException>(() => m.RollbackAsync("vm", "s1"))).Code);
                await AssertContentAsync(m);

                // After a restart the mark stands, and the next delete finishes while readers go on.
                await m.DisposeAsync();
                m = await VolumeManager.OpenAsync(store, EmbeddedRegistry.Open(dir), NullLogger.Instance).WaitAsync(T);
                Assert.True(m.Get("vm@s1").Deleting);
                store.FillsLeft = int.MaxValue;
                using var stop = new CancellationTokenSource();
                VolumeManager reading = m;
                var readers = Enumerable.Range(0, 2).Select(_ => Task.Run(async () =>
                {
                    int rounds = 0;
                    while (!stop.IsCancellationRequested || rounds == 0)
                    {
                        await AssertContentAsync(reading);
                        rounds++;
                    }
                    return rounds;
                })).ToArray();
                await m.DeleteAsync("vm@s1").WaitAsync(T);
                await stop.CancelAsync();
                Assert.All(await Task.WhenAll(readers).WaitAsync(T), r => Assert.True(r > 0));

                Assert.DoesNotContain(m.List(), v => v.IsSnapshot);
                Assert.Null(m.Get("vm").Parent);
                await AssertContentAsync(m);
                Assert.DoesNotContain(data.Store.ListObjects(), o => o.Volume == snapshotId);
            }
            finally
            {
                await m.DisposeAsync();
                await data.DisposeAsync();
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static async Task Eventually(Func<bool> condition, string what)
    {
        var until = DateTime.UtcNow + T;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, $"timed out waiting: {what}");
            await Task.Delay(20);
        }
    }

    /// <summary>vm reads 0xA1 in [0, 40 MiB) but 0xB2 in [5, 6 MiB), zeroes after.</summary>
    private static async Task AssertContentAsync(VolumeManager m)
    {
        using Volume v = m.Open("vm")!;
        var buffer = new byte[MiB];
        for (int i = 0; i < 42; i++)
        {
            Assert.Equal(StoreStatus.Ok, await v.ReadAsync((long)i * MiB, buffer).AsTask().WaitAsync(T));
            byte expected = i == 5 ? (byte)0xB2 : i < 40 ? (byte)0xA1 : (byte)0;
            int wrong = Array.FindIndex(buffer, b => b != expected);
            Assert.True(wrong < 0, $"MiB {i}: byte {wrong} is 0x{(wrong < 0 ? 0 : buffer[wrong]):x2}, not 0x{expected:x2}");
        }
    }

    private static async Task WriteAsync(VolumeManager m, string name, long offset, byte[] data)
    {
        using Volume v = m.Open(name)!;
        Assert.Equal(StoreStatus.Ok, await v.WriteAsync(offset, data, fua: false).AsTask().WaitAsync(T));
    }

    private static byte[] Fill(int length, byte value) => Enumerable.Repeat(value, length).ToArray();

    /// <summary>A store whose hole fills fail after a count, as a merge meets a dead disk or node.</summary>
    private sealed class InterruptingStore(IObjectStore inner) : IObjectStore
    {
        public int FillsLeft { get; set; } = int.MaxValue;

        public bool ListsEveryObject { get; init; } = true;

        public int BlockSize => inner.BlockSize;

        public long MaxObjectSize => inner.MaxObjectSize;

        public long UsedBytes => inner.UsedBytes;

        public ValueTask<StoreStatus> FillHolesAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false)
            => FillsLeft-- > 0 ? inner.FillHolesAsync(id, offset, data, zeroes, fromReserve) : new(StoreStatus.IoError);

        public ValueTask<StoreStatus> WriteAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua, IBlockSource? underlay = null)
            => inner.WriteAsync(id, offset, data, fua, underlay);

        public ValueTask<StoreStatus> ReadAsync(ObjectId id, long offset, Memory<byte> buffer) => inner.ReadAsync(id, offset, buffer);

        public ValueTask<StoreStatus> ZeroAsync(ObjectId id, long offset, long length, bool keepAllocated, bool fua)
            => inner.ZeroAsync(id, offset, length, keepAllocated, fua);

        public ValueTask<StoreStatus> FlushAsync() => inner.FlushAsync();

        public ValueTask<StoreStatus> GetAllocationAsync(ObjectId id, long offset, Memory<BlockState> states) => inner.GetAllocationAsync(id, offset, states);

        public ValueTask<StoreStatus> DeleteAsync(ObjectId id) => inner.DeleteAsync(id);

        public IReadOnlyCollection<ObjectId> ListObjects() => inner.ListObjects();

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
