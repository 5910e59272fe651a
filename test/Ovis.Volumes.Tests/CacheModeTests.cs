using System.Text;

namespace Ovis.Volumes.Tests;

/// <summary>The per-volume cache mode: how the registry keeps it and what <see cref="VolumeManager.CacheModeOf"/> answers.</summary>
public sealed class CacheModeTests
{
    private const int MiB = 1 << 20;

    [Fact]
    public void A_registry_without_the_field_reads_as_writethrough_and_writethrough_is_not_written()
    {
        // A registry as written before the mode existed.
        CatalogState old = CatalogState.FromUtf8Json("""
            {
              "nextId": 2,
              "volumes": [
                { "id": 1, "name": "vm", "size": 67108864, "objectSize": 4194304, "created": "2024-05-01T12:00:00+00:00" }
              ]
            }
            """u8);
        Assert.Equal(CacheMode.Writethrough, old.Volumes[0].Cache);
        Assert.DoesNotContain("cache", Encoding.UTF8.GetString(old.ToUtf8Json()), StringComparison.OrdinalIgnoreCase);

        CatalogState writeback = old.With([old.Volumes[0] with { Cache = CacheMode.Writeback }]);
        string json = Encoding.UTF8.GetString(writeback.ToUtf8Json());
        Assert.Contains("\"cache\": \"writeback\"", json, StringComparison.Ordinal);
        Assert.Equal(CacheMode.Writeback, CatalogState.FromUtf8Json(Encoding.UTF8.GetBytes(json)).Volumes[0].Cache);
    }

    [Fact]
    public async Task The_mode_follows_the_live_volume_through_a_snapshot_and_a_restart_but_not_into_snapshots_or_clones()
    {
        await using var f = await ManagerFixture.CreateAsync();
        VolumeInfo created = await f.Manager.CreateAsync("vm", 64 * MiB);
        Assert.Equal(CacheMode.Writethrough, created.Cache);
        Assert.Equal(CacheMode.Writethrough, f.Manager.CacheModeOf(created.Id));

        VolumeInfo set = await f.Manager.SetCacheAsync("vm", CacheMode.Writeback);
        Assert.Equal(CacheMode.Writeback, set.Cache);
        Assert.Equal(CacheMode.Writeback, f.Manager.CacheModeOf(created.Id));

        // The snapshot keeps the old layer, read-only; the volume goes on, writeback, on a new one.
        VolumeInfo snapshot = await f.Manager.SnapshotAsync("vm", "s1");
        VolumeInfo live = f.Manager.Get("vm");
        Assert.Equal(CacheMode.Writethrough, snapshot.Cache);
        Assert.Equal(CacheMode.Writethrough, f.Manager.CacheModeOf(snapshot.Id));
        Assert.Equal(CacheMode.Writeback, live.Cache);
        Assert.Equal(CacheMode.Writeback, f.Manager.CacheModeOf(live.Id));
        var refused = await Assert.ThrowsAsync<VolumeException>(() => f.Manager.SetCacheAsync("vm@s1", CacheMode.Writeback));
        Assert.Equal(VolumeErrorCode.InvalidArgument, refused.Code);

        VolumeInfo clone = await f.Manager.CloneAsync("vm@s1", "copy");
        Assert.Equal(CacheMode.Writethrough, clone.Cache);
        Assert.Equal(CacheMode.Writeback, (await f.Manager.SetCacheAsync("copy", CacheMode.Writeback)).Cache);

        await f.ReopenAsync();
        Assert.Equal(CacheMode.Writeback, f.Manager.Get("vm").Cache);
        Assert.Equal(CacheMode.Writeback, f.Manager.CacheModeOf(live.Id));
        Assert.Equal(CacheMode.Writethrough, (await f.Manager.SetCacheAsync("vm", CacheMode.Writethrough)).Cache);
        Assert.Equal(CacheMode.Writethrough, f.Manager.CacheModeOf(live.Id));
        Assert.Equal(CacheMode.Writethrough, f.Manager.CacheModeOf(uint.MaxValue));
    }
}
