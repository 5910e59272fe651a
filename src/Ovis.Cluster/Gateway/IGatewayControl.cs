namespace Ovis.Cluster.Gateway;

/// <summary>What a gateway asks of the node's membership when a replica disagrees with it.</summary>
public interface IGatewayControl
{
    /// <summary>A replica answered from epoch <paramref name="seen"/>, newer than the gateway's view:
    /// read the membership now and install the new view (<see cref="ReplicatedStore.Update"/>).</summary>
    ValueTask RefreshAsync(long seen);

    /// <summary>Durably records that <paramref name="nodeId"/> missed an acknowledged write, so that
    /// no gateway reads from it until it is resynced, and installs a view that shows the mark.
    /// Throws when that cannot be recorded.</summary>
    ValueTask MarkStaleAsync(string nodeId, long epoch);

    /// <summary>The generation of this node's lock on the volume <paramref name="layer"/> belongs
    /// to, for the changes it sends (docs/fencing.md); null when the node does not hold that lock
    /// now, or its lease may have run out: then no change may go out.</summary>
    long? GenerationOf(uint layer);

    /// <summary>As <see cref="GenerationOf"/>, but when the lock stands and only the lease's renewal
    /// is late (etcd restarting or out of reach), waits for it, for a bounded time.</summary>
    ValueTask<long?> WaitGenerationAsync(uint layer);

    /// <summary>A replica refused a change of <paramref name="layer"/> from <paramref name="generation"/>
    /// as fenced: another node holds the volume now. This node lets go of it; its clients get errors.</summary>
    void OnFenced(uint layer, long generation);
}
