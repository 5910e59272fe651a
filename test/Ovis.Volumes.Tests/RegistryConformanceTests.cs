namespace Ovis.Volumes.Tests;

/// <summary>
/// What every <see cref="IVolumeRegistry"/> must do, run against each implementation by a small
/// derived class (the embedded one here, the etcd one in Ovis.Cluster.Tests, which compiles this
/// file too). Each test gets a fresh, empty registry.
/// </summary>
public abstract class RegistryConformanceTests : IAsyncLifetime
{
    protected static readonly TimeSpan T = TimeSpan.FromSeconds(20);
    private static readonly DateTimeOffset Created = new(2024, 5, 1, 12, 0, 0, TimeSpan.Zero);

    /// <summary>The registry under test, empty.</summary>
    protected abstract IVolumeRegistry Registry { get; }

    /// <summary>
    /// Another instance over the same registry: another node's for a shared registry; for one that
    /// only its own instance may change (embedded), the instance after a restart, opened when the
    /// first is no longer used.
    /// </summary>
    protected abstract Task<IVolumeRegistry> OpenAnotherAsync();

    /// <summary>Whether a second instance may change the registry while the first is in use (shared by nodes).</summary>
    protected abstract bool IsShared { get; }

    public virtual Task InitializeAsync() => Task.CompletedTask;

    public virtual Task DisposeAsync() => Task.CompletedTask;

    private static VolumeRecord Layer(uint id, string name, string? tag = null, uint? parent = null)
        => new(id, name, 64L << 20, 4L << 20, Created) { Tag = tag, ParentId = parent };

    private static async Task<VersionedCatalog> SaveAsync(IVolumeRegistry registry, VersionedCatalog from, params VolumeRecord[] volumes)
    {
        RegistrySaveResult result = await registry.TrySaveAsync(from.State.With(volumes), from.Version).WaitAsync(T);
        Assert.True(result.Saved, "the save was refused");
        return result.Current;
    }

    private static void AssertSame(CatalogState expected, CatalogState actual)
    {
        Assert.Equal(expected.NextId, actual.NextId);
        Assert.Equal(expected.Volumes, actual.Volumes);
    }

    [Fact]
    public async Task An_empty_registry_has_no_layers_and_gives_out_id_1_first()
    {
        VersionedCatalog empty = await Registry.LoadAsync().WaitAsync(T);
        Assert.Empty(empty.State.Volumes);
        Assert.Equal(1u, empty.State.NextId);
    }

    [Fact]
    public async Task A_saved_state_loads_back_whole_and_its_version_grows()
    {
        VersionedCatalog empty = await Registry.LoadAsync().WaitAsync(T);
        VersionedCatalog saved = await SaveAsync(Registry, empty,
            Layer(1, "vm", tag: "s1"), Layer(2, "vm", parent: 1), Layer(3, "clone", parent: 1));
        Assert.True(saved.Version > empty.Version);
        Assert.Equal(4u, saved.State.NextId);

        VersionedCatalog loaded = await Registry.LoadAsync().WaitAsync(T);
        Assert.Equal(saved.Version, loaded.Version);
        AssertSame(saved.State, loaded.State);
        Assert.Equal("vm@s1", loaded.State.Volumes[0].DisplayName);
        Assert.Equal(1u, loaded.State.Volumes[1].ParentId);

        VersionedCatalog second = await SaveAsync(Registry, loaded, [.. loaded.State.Volumes.Where(v => v.Id != 3)]);
        Assert.True(second.Version > saved.Version);

        IVolumeRegistry other = await OpenAnotherAsync();
        AssertSame(second.State, (await other.LoadAsync().WaitAsync(T)).State);
    }

    [Fact]
    public async Task A_save_from_a_stale_version_is_refused_and_changes_nothing()
    {
        VersionedCatalog empty = await Registry.LoadAsync().WaitAsync(T);
        VersionedCatalog first = await SaveAsync(Registry, empty, Layer(1, "a"));

        // Computed from the empty registry, which is gone.
        RegistrySaveResult stale = await Registry.TrySaveAsync(empty.State.With([Layer(1, "b")]), empty.Version).WaitAsync(T);
        Assert.False(stale.Saved);
        Assert.Equal(first.Version, stale.Current.Version);
        AssertSame(first.State, stale.Current.State);

        VersionedCatalog now = await Registry.LoadAsync().WaitAsync(T);
        Assert.Equal(first.Version, now.Version);
        Assert.Equal("a", Assert.Single(now.State.Volumes).Name);

        // The state it reported is current: a change computed from it is saved.
        VersionedCatalog second = await SaveAsync(Registry, stale.Current, Layer(1, "a"), Layer(2, "b"));
        Assert.Equal(2, second.State.Volumes.Count);
    }

    [Fact]
    public async Task Of_concurrent_saves_from_one_version_exactly_one_wins()
    {
        VersionedCatalog empty = await Registry.LoadAsync().WaitAsync(T);
        RegistrySaveResult[] results = await Task.WhenAll(Enumerable.Range(0, 8).Select(i =>
            Task.Run(() => Registry.TrySaveAsync(empty.State.With([Layer(1, $"v{i}")]), empty.Version)))).WaitAsync(T);
        RegistrySaveResult winner = Assert.Single(results, r => r.Saved);
        VersionedCatalog now = await Registry.LoadAsync().WaitAsync(T);
        Assert.Equal(winner.Current.Version, now.Version);
        Assert.Equal(Assert.Single(winner.Current.State.Volumes).Name, Assert.Single(now.State.Volumes).Name);
    }

    [Fact]
    public async Task Ids_are_never_reused()
    {
        VersionedCatalog empty = await Registry.LoadAsync().WaitAsync(T);
        VersionedCatalog three = await SaveAsync(Registry, empty, Layer(1, "a"), Layer(2, "b"), Layer(3, "c"));
        // The layer with the highest id goes; its id stays used.
        VersionedCatalog two = await SaveAsync(Registry, three, Layer(1, "a"), Layer(2, "b"));
        Assert.Equal(4u, two.State.NextId);

        // A state that would give out an id again is refused, and nothing changes.
        await Assert.ThrowsAsync<ArgumentException>(() => Registry.TrySaveAsync(new CatalogState(3, [Layer(1, "a")]), two.Version).WaitAsync(T));
        await Assert.ThrowsAsync<ArgumentException>(() => Registry.TrySaveAsync(new CatalogState(4, [Layer(1, "a"), Layer(4, "d")]), two.Version).WaitAsync(T));
        await Assert.ThrowsAsync<ArgumentException>(() => Registry.TrySaveAsync(new CatalogState(5, [Layer(1, "a"), Layer(1, "d")]), two.Version).WaitAsync(T));
        Assert.Equal(two.Version, (await Registry.LoadAsync().WaitAsync(T)).Version);

        IVolumeRegistry other = await OpenAnotherAsync();
        VersionedCatalog reloaded = await other.LoadAsync().WaitAsync(T);
        Assert.Equal(4u, reloaded.State.NextId);
        Assert.Equal(5u, (await SaveAsync(other, reloaded, Layer(1, "a"), Layer(2, "b"), Layer(reloaded.State.NextId, "d"))).State.NextId);
    }

    [Fact]
    public async Task A_watch_reports_what_is_saved_after_its_version()
    {
        VersionedCatalog empty = await Registry.LoadAsync().WaitAsync(T);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        // A save made before the watch starts, but after the version it watches from, is seen too.
        VersionedCatalog first = await SaveAsync(Registry, empty, Layer(1, "a"));
        await using var watch = Registry.WatchAsync(empty.Version, cts.Token).GetAsyncEnumerator(cts.Token);
        VersionedCatalog seen = await NextAsync(watch, "the first save");
        Assert.Equal(first.Version, seen.Version);
        AssertSame(first.State, seen.State);

        VersionedCatalog second = await SaveAsync(Registry, first, Layer(1, "a"), Layer(2, "b"));
        seen = await NextAsync(watch, "the second save");
        Assert.Equal(second.Version, seen.Version);
        AssertSame(second.State, seen.State);
        await cts.CancelAsync();
    }

    [Fact]
    public async Task A_change_made_through_another_instance_is_seen_by_a_watch()
    {
        if (!IsShared)
        {
            // Nothing but its own instance changes this registry: the watch stays quiet until cancelled.
            VersionedCatalog loaded = await Registry.LoadAsync().WaitAsync(T);
            using var quiet = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
            await using var idle = Registry.WatchAsync(loaded.Version, quiet.Token).GetAsyncEnumerator(quiet.Token);
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => idle.MoveNextAsync().AsTask().WaitAsync(T));
            return;
        }
        IVolumeRegistry other = await OpenAnotherAsync();
        VersionedCatalog empty = await Registry.LoadAsync().WaitAsync(T);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await using var watch = Registry.WatchAsync(empty.Version, cts.Token).GetAsyncEnumerator(cts.Token);
        Task<bool> pending = watch.MoveNextAsync().AsTask();

        VersionedCatalog saved = await SaveAsync(other, await other.LoadAsync().WaitAsync(T), Layer(1, "from-other"));
        Assert.True(await pending.WaitAsync(T));
        Assert.Equal(saved.Version, watch.Current.Version);
        AssertSame(saved.State, watch.Current.State);

        // The watcher's next save starts from what it saw.
        VersionedCatalog mine = await SaveAsync(Registry, watch.Current, Layer(1, "from-other"), Layer(2, "mine"));
        Assert.Equal(2, (await other.LoadAsync().WaitAsync(T)).State.Volumes.Count);
        Assert.True(mine.Version > saved.Version);
        await cts.CancelAsync();
    }

    private static async Task<VersionedCatalog> NextAsync(IAsyncEnumerator<VersionedCatalog> watch, string what)
    {
        bool more;
        try
        {
            more = await watch.MoveNextAsync().AsTask().WaitAsync(T);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"{what}: not seen by the watch within {T}");
        }
        return more ? watch.Current : throw new InvalidOperationException($"{what}: the watch ended");
    }
}
