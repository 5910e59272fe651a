using System.Text.Json.Serialization;
using Ovis.Cluster.Recovery;

namespace Ovis.Cluster.Catalog;

/// <summary>A member as a volume's placement baseline remembers it.</summary>
public sealed record BaselineMember(string Id, string Zone)
{
    /// <summary>The member was being drained: placement gave it weight 0 (absent in baselines
    /// written before drains existed, which had none).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool Draining { get; init; }

    /// <summary>The member as this baseline's placement counts it.</summary>
    public ClusterNode Node() => new(Id, Zone, Draining ? 0 : 1);

    /// <summary>The baseline entry of a node of a placement.</summary>
    public static BaselineMember Of(ClusterNode node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return new(node.Id, node.Zone) { Draining = node.Weight == 0 };
    }
}

/// <summary>
/// Where a volume's objects are known to be complete: the members its copies were placed over when
/// its last full recovery pass finished, and which of them hold every copy placed on them
/// (<see cref="Synced"/>). A node new to the cluster, or back with an empty store, is not synced
/// until a full pass has filled it; a node that was merely down stays synced — what it missed is
/// in the dirty-region log.
/// </summary>
public sealed record RecoveryBaseline(BaselineMember[] Members, string[] Synced)
{
    public Placement Placement() => new(Members.Select(m => m.Node()));
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(RecoveryBaseline))]
[JsonSerializable(typeof(uint[]))]
internal sealed partial class RecoveryJson : JsonSerializerContext;
