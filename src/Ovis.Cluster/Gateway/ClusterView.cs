using Ovis.Cluster.Catalog;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>
/// What a gateway knows of the cluster in one epoch: where each object's copies live (placement
/// over every member, so a node that is merely down keeps its objects), which members are up,
/// which are stale (they missed acknowledged writes: never read from), and how to reach each.
/// Immutable; the node builds a new one for every membership change.
/// </summary>
public sealed class ClusterView
{
    /// <summary>Dirty-node sets are 64-bit masks over <see cref="ReplicaSet"/> slots.</summary>
    public const int MaxMembers = 64;

    private ClusterView(long epoch, long revision, int copies, int minCopies, Placement? placement, IReplica[] replicas,
        int[] slots, bool[] live, bool[] stale, int localIndex, string? placementError)
    {
        Epoch = epoch;
        Revision = revision;
        Copies = copies;
        MinCopies = minCopies;
        Placement = placement;
        Replicas = replicas;
        Slots = slots;
        Live = live;
        Stale = stale;
        LocalIndex = localIndex;
        PlacementError = placementError;
    }

    public long Epoch { get; }

    /// <summary>The catalog revision the view was read at: orders views with the same epoch (stale marks do not bump it).</summary>
    public long Revision { get; }

    public int Copies { get; }

    /// <summary>Fewest copies a write must reach to be acknowledged.</summary>
    public int MinCopies { get; }

    /// <summary>Null when the members cannot hold <see cref="Copies"/> copies in distinct zones.</summary>
    public Placement? Placement { get; }

    // Indexed like Placement.Nodes.
    internal IReplica[] Replicas { get; }

    internal int[] Slots { get; }

    internal bool[] Live { get; }

    internal bool[] Stale { get; }

    /// <summary>Nodes of the view, indexed like <see cref="Placement"/>'s.</summary>
    public int NodeCount => Replicas.Length;

    public string NodeIdAt(int node) => Replicas[node].NodeId;

    public bool IsLive(int node) => Live[node];

    /// <summary>The node missed acknowledged writes: never read from until it is resynced.</summary>
    public bool IsStale(int node) => Stale[node];

    /// <summary>Whether <paramref name="node"/> holds a copy of <paramref name="id"/> (false when nothing can be placed).</summary>
    public bool Holds(int node, ObjectId id)
    {
        if (Placement is not { } placement || node < 0)
            return false;
        Span<int> holders = stackalloc int[Copies];
        placement.ChooseIndexes(id.Packed, holders);
        return holders.Contains(node);
    }

    /// <summary>Whether every holder of <paramref name="id"/> is up, so its copies can be made equal now.</summary>
    public bool AllHoldersLive(ObjectId id)
    {
        if (Placement is not { } placement)
            return false;
        Span<int> holders = stackalloc int[Copies];
        placement.ChooseIndexes(id.Packed, holders);
        foreach (int n in holders)
        {
            if (!Live[n])
                return false;
        }
        return true;
    }

    /// <summary>This node's index in <see cref="Placement"/>'s nodes, or -1.</summary>
    public int LocalIndex { get; }

    /// <summary>Why objects cannot be placed (too few zones), in words for an operator; null when they can.</summary>
    public string? PlacementError { get; }

    /// <summary>Builds the view of <paramref name="membership"/> for the node <paramref name="localId"/>.</summary>
    public static ClusterView Build(MembershipView membership, ClusterFormat format, string localId, ReplicaSet replicas)
    {
        ArgumentNullException.ThrowIfNull(membership);
        ArgumentNullException.ThrowIfNull(format);
        ArgumentNullException.ThrowIfNull(replicas);
        int copies = format.Copies;
        if (membership.Members.Count > MaxMembers)
            throw new CatalogException($"cluster '{format.Name}' has {membership.Members.Count} members; this version supports at most {MaxMembers}");
        // A draining member has weight 0: placement names it for no object, yet it stays one of
        // the view's nodes, live and reachable, so recovery can copy from it (a former holder).
        var draining = membership.Draining.ToHashSet(StringComparer.Ordinal);
        var placement = membership.Members.Count == 0 ? null
            : new Placement(membership.Members.Select(m => new ClusterNode(m.Id, m.Zone, draining.Contains(m.Id) ? 0 : 1)));
        string? error = null;
        if (placement is null || placement.Zones.Count < copies)
        {
            int zones = placement?.Zones.Count ?? 0;
            error = $"cluster '{format.Name}' keeps {copies} copies in distinct zones but its nodes span {zones} zone(s)"
                + (zones == 0 ? "" : $" ({string.Join(", ", placement!.Zones)})")
                + ": add nodes in other zones (ovis serve --zone) or format the cluster with fewer copies";
            placement = null;
        }
        var nodes = placement?.Nodes ?? [];
        var byId = membership.Members.ToDictionary(m => m.Id, StringComparer.Ordinal);
        var liveIds = membership.Nodes.Select(n => n.Id).ToHashSet(StringComparer.Ordinal);
        var staleIds = membership.Stale.ToHashSet(StringComparer.Ordinal);
        var replicaArray = new IReplica[nodes.Count];
        var slots = new int[nodes.Count];
        var live = new bool[nodes.Count];
        var stale = new bool[nodes.Count];
        int local = -1;
        for (int i = 0; i < nodes.Count; i++)
        {
            NodeInfo info = byId[nodes[i].Id];
            (replicaArray[i], slots[i]) = replicas.Get(info, info.Id == localId);
            live[i] = liveIds.Contains(info.Id);
            stale[i] = staleIds.Contains(info.Id);
            if (info.Id == localId)
                local = i;
        }
        return new ClusterView(membership.Epoch, membership.Revision, copies, Math.Min(format.EffectiveMinCopies, copies), placement,
            replicaArray, slots, live, stale, local, error);
    }
}
