using System.Text.Json;
using System.Text.Json.Serialization;

namespace Ovis.Volumes;

/// <summary>
/// One layer as the registry records it: a live volume, a clone, or a snapshot (Tag set). A
/// layer holds the blocks written to it; reads of its holes fall through to the parent layer.
/// </summary>
public sealed record VolumeRecord(uint Id, string Name, long Size, long ObjectSize, DateTimeOffset Created)
{
    /// <summary>The layer whose data shows through this one's holes, or null.</summary>
    public uint? ParentId { get; init; }

    /// <summary>Set for a snapshot (read-only, named <c>NAME@TAG</c>).</summary>
    public string? Tag { get; init; }

    /// <summary>A snapshot being merged into the one layer over it (<c>vdi delete</c>): its blocks
    /// go as they are copied, so it can no longer be opened, cloned or rolled back to, and a
    /// delete that stopped half-way is finished by the next one.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool Deleting { get; init; }

    /// <summary>How gateways acknowledge the volume's writes; always writethrough for a snapshot.
    /// Left out of the JSON when writethrough, so registries from before it read and stay the same.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public CacheMode Cache { get; init; }

    [JsonIgnore]
    public bool IsSnapshot => Tag is not null;

    [JsonIgnore]
    public string DisplayName => Tag is null ? Name : $"{Name}@{Tag}";
}

/// <summary>
/// The volume registry: every layer, and the id the next one gets. Volume ids are never reused:
/// objects of a deleted volume can never be mistaken for a new one's, so <see cref="NextId"/>
/// only grows, also when the layer with the highest id goes.
/// </summary>
public sealed record CatalogState(uint NextId, IReadOnlyList<VolumeRecord> Volumes)
{
    /// <summary>A registry that never held a volume.</summary>
    public static CatalogState Empty { get; } = new(1, []);

    /// <summary>The registry with <paramref name="volumes"/> instead: the next id moves past each of theirs, never back.</summary>
    public CatalogState With(IReadOnlyList<VolumeRecord> volumes)
    {
        ArgumentNullException.ThrowIfNull(volumes);
        uint next = NextId;
        foreach (VolumeRecord r in volumes)
        {
            next = Math.Max(next, r.Id + 1);
        }
        return new CatalogState(next, volumes);
    }

    /// <summary>
    /// Throws <see cref="ArgumentException"/> unless this state may replace <paramref name="previous"/>
    /// (null when unknown): ids and names unique, every id below <see cref="NextId"/>, and
    /// <see cref="NextId"/> not lower than before. Registries check it before they save.
    /// </summary>
    public void ValidateAfter(CatalogState? previous)
    {
        var ids = new HashSet<uint>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (VolumeRecord r in Volumes)
        {
            if (r.Id == 0 || r.Id >= NextId)
            {
                throw new ArgumentException($"layer '{r.DisplayName}' has id {r.Id}, not in [1, next id {NextId})", nameof(previous));
            }
            if (!ids.Add(r.Id) || !names.Add(r.DisplayName))
            {
                throw new ArgumentException($"layer '{r.DisplayName}' (id {r.Id}) is in the registry twice", nameof(previous));
            }
        }
        if (previous is not null && NextId < previous.NextId)
        {
            throw new ArgumentException($"next id {NextId} is below the registry's {previous.NextId}: ids would be reused", nameof(previous));
        }
    }

    /// <summary>The registry as UTF-8 JSON, the format both the embedded file and the etcd key hold.</summary>
    public byte[] ToUtf8Json() => JsonSerializer.SerializeToUtf8Bytes(this, CatalogJson.Default.CatalogState);

    /// <summary>Parses <see cref="ToUtf8Json"/>'s format; throws <see cref="InvalidDataException"/> when it is not that.</summary>
    public static CatalogState FromUtf8Json(ReadOnlySpan<byte> json)
    {
        try
        {
            return JsonSerializer.Deserialize(json, CatalogJson.Default.CatalogState)
                ?? throw new InvalidDataException("the volume registry is empty (null)");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"the volume registry is not readable: {e.Message}", e);
        }
    }
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(CatalogState))]
internal sealed partial class CatalogJson : JsonSerializerContext;
