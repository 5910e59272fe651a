namespace Ovis.Volumes;

/// <summary>
/// Where the volume registry (<see cref="CatalogState"/>) lives: embedded in a node's data
/// directory (<see cref="EmbeddedRegistry"/>) or shared by the nodes of a cluster (etcd). Every
/// change is optimistic: computed from a state read at some version and saved only if the
/// registry is still at that version, so of two nodes changing it at once one wins and the other
/// recomputes its change on the winner's state. Versions grow with every save.
/// </summary>
public interface IVolumeRegistry
{
    /// <summary>The registry now, with its version.</summary>
    Task<VersionedCatalog> LoadAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Replaces the registry with <paramref name="state"/> if nobody saved it since
    /// <paramref name="expectedVersion"/>; otherwise changes nothing and reports the state that was
    /// saved meanwhile. Throws <see cref="ArgumentException"/> for a state that would reuse ids
    /// (<see cref="CatalogState.ValidateAfter"/>).
    /// </summary>
    Task<RegistrySaveResult> TrySaveAsync(CatalogState state, long expectedVersion, CancellationToken cancellationToken = default);

    /// <summary>
    /// Every state saved after <paramref name="afterVersion"/>, by this instance or another, in
    /// version order (a state that was replaced again quickly may be skipped, the latest never
    /// is), until cancelled. States saved before the call but after that version come first, so
    /// load, then watch from the loaded version, and miss nothing. The embedded registry changes
    /// only through its own instance and yields nothing.
    /// </summary>
    IAsyncEnumerable<VersionedCatalog> WatchAsync(long afterVersion, CancellationToken cancellationToken = default);
}

/// <summary>The registry at one version.</summary>
public sealed record VersionedCatalog(CatalogState State, long Version);

/// <summary>
/// What <see cref="IVolumeRegistry.TrySaveAsync"/> did: <see cref="Saved"/> and the registry
/// after the call — the saved state with its new version, or, when another save came first,
/// the state that one left (recompute the change on it and try again).
/// </summary>
public sealed record RegistrySaveResult(bool Saved, VersionedCatalog Current);
