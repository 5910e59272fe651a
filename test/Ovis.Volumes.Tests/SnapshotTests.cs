using Ovis.Store;

namespace Ovis.Volumes.Tests;

public sealed class SnapshotTests
{
    private const int MiB = 1 << 20;

    [Fact]
    public async Task A_snapshot_keeps_what_was_there_and_the_volume_goes_on()
    {
        await using var f = await ManagerFixture.CreateAsync();
        await f.Manager.CreateAsync("vm", 64 * MiB);
        await f.WriteAsync("vm", 0, ManagerFixture.Pattern(MiB, 0xA1));
        VolumeInfo snap = await f.Manager.SnapshotAsync("vm", "s1");
        Assert.True(snap.IsSnapshot);
        Assert.Equal("vm@s1", snap.Name);
        await f.WriteAsync("vm", 4096, ManagerFixture.Pattern(4096, 0xB2));

        byte[] live = await f.ReadAsync("vm", 0, 3 * 4096);
        byte[] frozen = await f.ReadAsync("vm@s1", 0, 3 * 4096);
        Assert.All(frozen, b => Assert.Equal(0xA1, b));
        Assert.All(live[..4096], b => Assert.Equal(0xA1, b));
        Assert.All(live[4096..8192], b => Assert.Equal(0xB2, b));
        Assert.All(live[8192..], b => Assert.Equal(0xA1, b));
        Assert.Equal("vm@s1", f.Manager.Get("vm").Parent);

        using Volume s = f.Manager.Open("vm@s1")!;
        Assert.True(s.IsReadOnly);

        await f.ReopenAsync();
        Assert.All(await f.ReadAsync("vm@s1", 4096, 4096), b => Assert.Equal(0xA1, b));
        Assert.All(await f.ReadAsync("vm", 4096, 4096), b => Assert.Equal(0xB2, b));
    }

    [Fact]
    public async Task Copy_on_write_copies_nothing_for_whole_blocks_and_one_block_for_a_partial_one()
    {
        await using var f = await ManagerFixture.CreateAsync();
        await f.Manager.CreateAsync("vm", 64 * MiB);
        await f.WriteAsync("vm", 0, ManagerFixture.Pattern(4 * MiB, 0x11));
        await f.Manager.SnapshotAsync("vm", "s1");
        long before = f.Manager.CopyOnWriteBytes;

        await f.WriteAsync("vm", 8192, ManagerFixture.Pattern(4096, 0x22));
        Assert.Equal(0, f.Manager.CopyOnWriteBytes - before);

        await f.WriteAsync("vm", 100_000, ManagerFixture.Pattern(512, 0x33));
        Assert.Equal(4096, f.Manager.CopyOnWriteBytes - before);

        byte[] got = await f.ReadAsync("vm", 98304, 8192);
        Assert.All(got[..(100_000 - 98304)], b => Assert.Equal(0x11, b));
        Assert.All(got[(100_000 - 98304)..(100_512 - 98304)], b => Assert.Equal(0x33, b));
        Assert.All(got[(100_512 - 98304)..], b => Assert.Equal(0x11, b));
        // The 4 MiB object was not copied: the new layer holds two blocks.
        Assert.Equal(2 * 4096, f.Manager.Get("vm").UsedBytes);
    }

    [Fact]
    public async Task Trim_over_inherited_data_reads_zeroes_not_the_parent()
    {
        await using var f = await ManagerFixture.CreateAsync();
        await f.Manager.CreateAsync("vm", 64 * MiB);
        await f.WriteAsync("vm", 0, ManagerFixture.Pattern(8 * MiB, 0x44));
        await f.Manager.SnapshotAsync("vm", "s1");
        using (Volume v = f.Manager.Open("vm")!)
        {
            Assert.Equal(StoreStatus.Ok, await v.ZeroAsync(0, 8 * MiB, keepAllocated: false, fua: false));
            var states = new BlockState[2048];
            Assert.Equal(StoreStatus.Ok, await v.GetAllocationAsync(0, states));
            Assert.All(states, s => Assert.Equal(BlockState.Zero, s));
        }
        Assert.All(await f.ReadAsync("vm", 0, 8 * MiB), b => Assert.Equal(0, b));
        Assert.All(await f.ReadAsync("vm@s1", 0, 8 * MiB), b => Assert.Equal(0x44, b));
    }

    [Fact]
    public async Task Clone_rollback_flatten_and_deletes()
    {
        await using var f = await ManagerFixture.CreateAsync();
        await f.Manager.CreateAsync("base", 16 * MiB);
        await f.WriteAsync("base", 0, ManagerFixture.Pattern(2 * MiB, 0x55));
        await f.Manager.SnapshotAsync("base", "gold");
        await f.Manager.CloneAsync("base@gold", "vm1");
        await f.WriteAsync("vm1", MiB, ManagerFixture.Pattern(4096, 0x66));
        await f.WriteAsync("base", 0, ManagerFixture.Pattern(4096, 0x77));

        Assert.All(await f.ReadAsync("vm1", 0, 4096), b => Assert.Equal(0x55, b));
        Assert.All(await f.ReadAsync("vm1", MiB, 4096), b => Assert.Equal(0x66, b));
        Assert.All(await f.ReadAsync("base@gold", MiB, 4096), b => Assert.Equal(0x55, b));

        // Two layers need base@gold: refused, naming them.
        var refused = await Assert.ThrowsAsync<VolumeException>(() => f.Manager.DeleteAsync("base@gold"));
        Assert.Contains("vm1", refused.Message);
        Assert.Contains("base", refused.Message);
        // A volume with snapshots cannot go.
        await Assert.ThrowsAsync<VolumeException>(() => f.Manager.DeleteAsync("base"));

        // Rollback drops what base wrote since gold.
        await f.Manager.RollbackAsync("base", "gold");
        Assert.All(await f.ReadAsync("base", 0, 4096), b => Assert.Equal(0x55, b));

        // Flatten the clone: it stands alone, with the same content.
        await f.Manager.FlattenAsync("vm1");
        Assert.Null(f.Manager.Get("vm1").Parent);
        Assert.Equal(2 * MiB, f.Manager.Get("vm1").UsedBytes);

        // Now only base depends on gold: deleting the snapshot merges it into base.
        await f.Manager.DeleteAsync("base@gold");
        Assert.Null(f.Manager.Get("base").Parent);
        await f.ReopenAsync();
        Assert.All(await f.ReadAsync("base", 0, 2 * MiB), b => Assert.Equal(0x55, b));
        Assert.All(await f.ReadAsync("vm1", 0, 4096), b => Assert.Equal(0x55, b));
        Assert.All(await f.ReadAsync("vm1", MiB, 4096), b => Assert.Equal(0x66, b));
        Assert.DoesNotContain(f.Manager.List(), v => v.IsSnapshot);
        // The snapshot's own objects are gone: only base's and vm1's data remain.
        Assert.Equal(f.Manager.Get("base").UsedBytes + f.Manager.Get("vm1").UsedBytes, f.Manager.UsedBytes);
    }

    [Fact]
    public async Task Bad_requests_change_nothing()
    {
        await using var f = await ManagerFixture.CreateAsync();
        await f.Manager.CreateAsync("vm", 16 * MiB);
        await f.Manager.CreateAsync("other", 16 * MiB);
        await f.Manager.SnapshotAsync("vm", "s1");
        IReadOnlyList<VolumeInfo> before = f.Manager.List();

        Assert.Equal(VolumeErrorCode.NotFound, (await Assert.ThrowsAsync<VolumeException>(() => f.Manager.SnapshotAsync("missing", "s1"))).Code);
        Assert.Equal(VolumeErrorCode.AlreadyExists, (await Assert.ThrowsAsync<VolumeException>(() => f.Manager.SnapshotAsync("vm", "s1"))).Code);
        Assert.Equal(VolumeErrorCode.AlreadyExists, (await Assert.ThrowsAsync<VolumeException>(() => f.Manager.CloneAsync("vm@s1", "other"))).Code);
        Assert.Equal(VolumeErrorCode.InvalidArgument, (await Assert.ThrowsAsync<VolumeException>(() => f.Manager.CloneAsync("vm", "new"))).Code);
        Assert.Equal(VolumeErrorCode.InvalidArgument, (await Assert.ThrowsAsync<VolumeException>(() => f.Manager.SnapshotAsync("vm", "bad tag"))).Code);
        using (f.Manager.Open("vm"))
        {
            Assert.Equal(VolumeErrorCode.InUse, (await Assert.ThrowsAsync<VolumeException>(() => f.Manager.RollbackAsync("vm", "s1"))).Code);
        }
        Assert.Equal(before.Select(v => (v.Id, v.Name, v.Parent)), f.Manager.List().Select(v => (v.Id, v.Name, v.Parent)));
    }

    [Fact]
    public async Task Snapshots_taken_during_writes_hold_every_write_acknowledged_before_them()
    {
        await using var f = await ManagerFixture.CreateAsync();
        await f.Manager.CreateAsync("vm", 64 * MiB);
        using Volume v = f.Manager.Open("vm")!;
        var acknowledged = new List<(int Round, long Offset)>();
        var snapshotsAt = new List<int>();
        int round = 0;
        using var stop = new CancellationTokenSource();
        Task writer = Task.Run(async () =>
        {
            var rng = new Random(1);
            while (!stop.IsCancellationRequested)
            {
                long offset = rng.Next(0, 16 * 1024) * 4096L;
                int r = Volatile.Read(ref round);
                Assert.Equal(StoreStatus.Ok, await v.WriteAsync(offset, ManagerFixture.Pattern(4096, (byte)(r + 1)), fua: false));
                lock (acknowledged)
                {
                    acknowledged.Add((r, offset));
                }
            }
        });
        for (int i = 0; i < 5; i++)
        {
            await Task.Delay(20);
            int count;
            lock (acknowledged)
            {
                count = acknowledged.Count;
            }
            await f.Manager.SnapshotAsync("vm", $"s{i}").WaitAsync(ManagerFixture.Timeout);
            snapshotsAt.Add(count);
            Interlocked.Increment(ref round);
        }
        await stop.CancelAsync();
        await writer.WaitAsync(ManagerFixture.Timeout);
        // Every write acknowledged before snapshot i is in it (unless overwritten later in the
        // same snapshot's past): check the last write to each offset before the snapshot.
        for (int i = 0; i < snapshotsAt.Count; i++)
        {
            var last = new Dictionary<long, int>();
            lock (acknowledged)
            {
                foreach ((int r, long off) in acknowledged.Take(snapshotsAt[i]))
                {
                    last[off] = r;
                }
            }
            foreach ((long off, int r) in last)
            {
                byte[] got = await f.ReadAsync($"vm@s{i}", off, 4096);
                Assert.True(got[0] >= r + 1, $"snapshot s{i} at {off}: {got[0]} older than acknowledged round {r + 1}");
                Assert.True(got[0] <= i + 1, $"snapshot s{i} at {off}: {got[0]} was written after it");
                Assert.All(got, b => Assert.Equal(got[0], b));
            }
        }
    }
}
