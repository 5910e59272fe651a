namespace Ovis.Cluster.Peer;

/// <summary>
/// The serving node's view of the cluster epoch, as the peer server checks every request against it.
/// </summary>
public interface IEpochSource
{
    /// <summary>The epoch of the node's current membership view. Read on every request: keep it cheap.</summary>
    long Current { get; }

    /// <summary>
    /// Called when a request names an epoch newer than <see cref="Current"/>: the node's view may lag
    /// the catalog. Brings the view up to date (at least trying to reach <paramref name="seen"/>) and
    /// returns the epoch now current. May be called by many requests at once; implementations
    /// should share one refresh among them.
    /// </summary>
    ValueTask<long> CatchUpAsync(long seen, CancellationToken cancellationToken);
}
