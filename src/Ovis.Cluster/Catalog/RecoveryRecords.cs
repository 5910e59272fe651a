using System.Text.Json.Serialization;
using Ovis.Cluster.Recovery;

namespace Ovis.Cluster.Catalog;

/// <summary>A member as a volume's placement baseline remembers it.</summary>
public sealed record BaselineMember(string Id, string Zone);

/// <summary>
/// Where a volume's objects are known to be complete: the members its copies were placed over when
/// its last full recovery pass finished, and which of them hold every copy placed on them
/// (<see cref="Synced"/>). A node new to the cluster, or back with an empty store, is not synced
/// until a full pass has filled it; a node that was merely down stays synced — what it missed is
/// in the dirty-region log.
/// </summary>
public sealed record RecoveryBaseline(BaselineMember[] Members, string[] Synced)
{
    public Placement Placement() => new(Members.Select(m => new ClusterNode(m.Id, m.Zone)));
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(RecoveryBaseline))]
[JsonSerializable(typeof(uint[]))]
internal sealed partial class RecoveryJson : JsonSerializerContext;
