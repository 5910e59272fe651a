using System.Text.Json.Serialization;

namespace Ovis.Cluster.Catalog;

/// <summary>A cluster's immutable settings, written once by <c>ovis cluster format</c>.</summary>
public sealed record ClusterFormat(string Name, int Copies, DateTimeOffset FormattedAt)
{
    /// <summary>Fewest copies a write must reach to be acknowledged while nodes are down; 0 in
    /// formats written before it existed, which means the default, a majority.</summary>
    public int MinCopies { get; init; }

    public int EffectiveMinCopies => MinCopies > 0 ? MinCopies : DefaultMinCopies(Copies);

    public static int DefaultMinCopies(int copies) => copies / 2 + 1;
}

/// <summary>A node: its id (unique in the cluster), NBD address, failure zone and the address
/// its peers send object operations to.</summary>
public sealed record NodeInfo(string Id, string Address, string Zone)
{
    public string? Peer { get; init; }
}

/// <summary>
/// The membership at one etcd revision: the epoch, the live nodes (<see cref="Nodes"/>, sorted by
/// id), every node that ever joined (<see cref="Members"/>: objects are placed over these, so a
/// node that is merely down keeps its objects), and the members whose copies may miss
/// acknowledged writes (<see cref="Stale"/>: never read from), and the members an operator is
/// draining (<see cref="Draining"/>: placement names them for no object, but they stay members, so
/// recovery copies from them). The epoch changes whenever the live set, the member set or the
/// draining set does.
/// </summary>
public sealed record MembershipView(long Epoch, IReadOnlyList<NodeInfo> Nodes, long Revision)
{
    public IReadOnlyList<NodeInfo> Members { get; init; } = [];

    public IReadOnlyList<string> Stale { get; init; } = [];

    /// <summary>Members being drained, sorted by id.</summary>
    public IReadOnlyList<string> Draining { get; init; } = [];

    public bool SameAs(MembershipView other) =>
        other.Epoch == Epoch
        && other.Nodes.Select(n => n.Id).SequenceEqual(Nodes.Select(n => n.Id), StringComparer.Ordinal)
        && other.Members.SequenceEqual(Members)
        && other.Stale.SequenceEqual(Stale, StringComparer.Ordinal)
        && other.Draining.SequenceEqual(Draining, StringComparer.Ordinal);
}

/// <summary>A catalog request refused for a reason an operator can act on (the message says which).</summary>
public sealed class CatalogException : Exception
{
    public CatalogException() { }

    public CatalogException(string message) : base(message) { }

    public CatalogException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>The value of the epoch key: the epoch and the node ids it was counted for.</summary>
internal sealed record EpochRecord(long Epoch, string[] Members);

internal sealed record LockRecord(string Node, DateTimeOffset AcquiredAt)
{
    /// <summary>Null for a gateway serving the volume; "recovery" for a node that took an idle
    /// volume only to recover its copies (it lets go soon, so an opener waits instead of failing).</summary>
    public string? Purpose { get; init; }
}

/// <summary>Why a member is stale: which gateway found it missing a write, in which epoch.</summary>
internal sealed record StaleRecord(string By, long Epoch, DateTimeOffset At);

/// <summary>When a member was first seen down (not live); see <see cref="EtcdCatalog.TakeOutAsync"/>.</summary>
internal sealed record DownRecord(DateTimeOffset Since);

/// <summary>Since when an operator drains a member; see <see cref="EtcdCatalog.SetDrainingAsync"/>.</summary>
internal sealed record DrainRecord(DateTimeOffset Since);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(ClusterFormat))]
[JsonSerializable(typeof(NodeInfo))]
[JsonSerializable(typeof(EpochRecord))]
[JsonSerializable(typeof(LockRecord))]
[JsonSerializable(typeof(StaleRecord))]
[JsonSerializable(typeof(RecoveryPause))]
[JsonSerializable(typeof(Recovery.RecoveryProgress))]
[JsonSerializable(typeof(DownRecord))]
[JsonSerializable(typeof(DrainRecord))]
internal sealed partial class CatalogJson : JsonSerializerContext;

/// <summary>
/// The key layout under <c>/ovis/&lt;cluster&gt;/</c>:
/// <code>
/// format            ClusterFormat             created once
/// epoch             EpochRecord               bumped by txn on every membership change
/// nodes/&lt;id&gt;        NodeInfo, node's lease    gone when the node's lease runs out
/// members/&lt;id&gt;      NodeInfo                  written at every join, kept while the node is down
/// stale/&lt;id&gt;        StaleRecord               the member missed a write; never read from until resynced
/// down/&lt;id&gt;         DownRecord                the member is not live since; gone when it joins or is taken out
/// draining/&lt;id&gt;     DrainRecord               placement names the member for no object; gone on cancel or when taken out
/// locks/&lt;volume&gt;    LockRecord, holder lease  gone with the holder's lease
/// served/&lt;volume&gt;   node id                   the node that last took the lock to serve it (a writeback cache replays only if that was itself)
/// volumes           CatalogState              the volume registry, replaced by txn on its mod_revision
/// recovery/paused   RecoveryPause             present while an operator has paused recovery
/// recovery/progress/&lt;id&gt;  RecoveryProgress, node's lease  the node's recovery figures, gone with the node
/// </code>
/// </summary>
internal sealed class CatalogKeys(string cluster)
{
    public string Root { get; } = $"/ovis/{cluster}/";

    public string Format => Root + "format";

    public string Epoch => Root + "epoch";

    public string Nodes => Root + "nodes/";

    public string Node(string id) => Nodes + id;

    public string Members => Root + "members/";

    public string Member(string id) => Members + id;

    public string Stale => Root + "stale/";

    public string StaleMark(string id) => Stale + id;

    public string Down => Root + "down/";

    public string DownMark(string id) => Down + id;

    public string Draining => Root + "draining/";

    public string DrainMark(string id) => Draining + id;

    public string Locks => Root + "locks/";

    public string Lock(string volume) => Locks + volume;

    public string Served(string volume) => Root + "served/" + volume;

    public string Volumes => Root + "volumes";

    public string RecoveryPaused => Root + "recovery/paused";

    public string AdminToken => Root + "admin-token";

    public string RecoveryProgress => Root + "recovery/progress/";

    public string Progress(string id) => RecoveryProgress + id;
}
