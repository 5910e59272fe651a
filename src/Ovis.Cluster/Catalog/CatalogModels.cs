using System.Text.Json.Serialization;

namespace Ovis.Cluster.Catalog;

/// <summary>A cluster's immutable settings, written once by <c>ovis cluster format</c>.</summary>
public sealed record ClusterFormat(string Name, int Copies, DateTimeOffset FormattedAt);

/// <summary>A member node: its id (unique in the cluster), peer address and failure zone.</summary>
public sealed record NodeInfo(string Id, string Address, string Zone);

/// <summary>
/// The membership at one etcd revision: the epoch and the live nodes, sorted by id. The epoch
/// changes whenever the set of nodes does.
/// </summary>
public sealed record MembershipView(long Epoch, IReadOnlyList<NodeInfo> Nodes, long Revision)
{
    public bool SameAs(MembershipView other) =>
        other.Epoch == Epoch && other.Nodes.Select(n => n.Id).SequenceEqual(Nodes.Select(n => n.Id), StringComparer.Ordinal);
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

internal sealed record LockRecord(string Node, DateTimeOffset AcquiredAt);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(ClusterFormat))]
[JsonSerializable(typeof(NodeInfo))]
[JsonSerializable(typeof(EpochRecord))]
[JsonSerializable(typeof(LockRecord))]
internal sealed partial class CatalogJson : JsonSerializerContext;

/// <summary>
/// The key layout under <c>/ovis/&lt;cluster&gt;/</c>:
/// <code>
/// format            ClusterFormat             created once
/// epoch             EpochRecord               bumped by txn on every membership change
/// nodes/&lt;id&gt;        NodeInfo, node's lease    gone when the node's lease runs out
/// locks/&lt;volume&gt;    LockRecord, holder lease  gone with the holder's lease
/// volumes           CatalogState              the volume registry, replaced by txn on its mod_revision
/// </code>
/// </summary>
internal sealed class CatalogKeys(string cluster)
{
    public string Root { get; } = $"/ovis/{cluster}/";

    public string Format => Root + "format";

    public string Epoch => Root + "epoch";

    public string Nodes => Root + "nodes/";

    public string Node(string id) => Nodes + id;

    public string Locks => Root + "locks/";

    public string Lock(string volume) => Locks + volume;

    public string Volumes => Root + "volumes";
}
