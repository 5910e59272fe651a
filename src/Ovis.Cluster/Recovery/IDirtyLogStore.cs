namespace Ovis.Cluster.Recovery;

/// <summary>Where the dirty-region log lives durably: one record per layer, listing the object
/// indexes whose copies may differ. The catalog (etcd) in a cluster, so a gateway that takes a
/// volume over finds what its predecessor left.</summary>
public interface IDirtyLogStore
{
    /// <summary>The logged indexes of each of <paramref name="layers"/> (absent = none).</summary>
    Task<IReadOnlyDictionary<uint, uint[]>> LoadAsync(IReadOnlyCollection<uint> layers, CancellationToken cancellationToken);

    /// <summary>Replaces the records of the given layers in one round trip; an empty list removes one.</summary>
    Task SaveAsync(IReadOnlyDictionary<uint, uint[]> layers, CancellationToken cancellationToken);

    /// <summary>The tenure this node would save <paramref name="layer"/>'s record under now: the
    /// generation of its lock on the layer's volume, 0 when it holds none (or there are no locks).
    /// What was logged in memory under one tenure is never saved under another.</summary>
    long TenureOf(uint layer) => 0;
}
