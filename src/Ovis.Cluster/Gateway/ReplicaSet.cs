using System.Collections.Concurrent;
using Ovis.Cluster.Catalog;

namespace Ovis.Cluster.Gateway;

/// <summary>
/// The replicas a gateway talks to, one per node, kept across views (so connections survive an
/// epoch change) and each with a stable slot for the gateway's dirty-node masks. A node whose
/// peer address changed (it restarted elsewhere) gets a new connection in the same slot.
/// </summary>
public sealed class ReplicaSet(IReplica local, Func<NodeInfo, IReplica> connect) : IAsyncDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, (IReplica Replica, string? Peer, int Slot)> _byId = new(StringComparer.Ordinal);
    private readonly ConcurrentBag<IReplica> _retired = [];

    internal (IReplica Replica, int Slot) Get(NodeInfo node, bool isLocal)
    {
        lock (_lock)
        {
            if (_byId.TryGetValue(node.Id, out var known) && (isLocal || known.Peer == node.Peer))
                return (known.Replica, known.Slot);
            int slot = known.Replica is null ? _byId.Count : known.Slot;
            if (slot >= ClusterView.MaxMembers)
                throw new CatalogException($"more than {ClusterView.MaxMembers} nodes: not supported by this version");
            if (known.Replica is not null)
                _retired.Add(known.Replica);
            IReplica replica = isLocal ? local : connect(node);
            _byId[node.Id] = (replica, node.Peer, slot);
            return (replica, slot);
        }
    }

    /// <summary>The replica of a node seen before; null otherwise.</summary>
    public IReplica? Find(string nodeId)
    {
        lock (_lock)
            return _byId.TryGetValue(nodeId, out var known) ? known.Replica : null;
    }

    public async ValueTask DisposeAsync()
    {
        List<IReplica> all;
        lock (_lock)
        {
            all = [.. _byId.Values.Select(v => v.Replica), .. _retired];
            _byId.Clear();
        }
        foreach (IReplica replica in all)
            await replica.DisposeAsync().ConfigureAwait(false);
    }
}
