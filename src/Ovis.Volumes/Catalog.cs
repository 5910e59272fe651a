using System.Text.Json;
using System.Text.Json.Serialization;

namespace Ovis.Volumes;

/// <summary>
/// One layer as the catalog records it: a live volume, a clone, or a snapshot (Tag set). A
/// layer holds the blocks written to it; reads of its holes fall through to the parent layer.
/// </summary>
internal sealed record VolumeRecord(uint Id, string Name, long Size, long ObjectSize, DateTimeOffset Created)
{
    /// <summary>The layer whose data shows through this one's holes, or null.</summary>
    public uint? ParentId { get; init; }

    /// <summary>Set for a snapshot (read-only, named <c>NAME@TAG</c>).</summary>
    public string? Tag { get; init; }

    [JsonIgnore]
    public bool IsSnapshot => Tag is not null;

    [JsonIgnore]
    public string DisplayName => Tag is null ? Name : $"{Name}@{Tag}";
}

/// <summary>
/// The embedded catalog of a single node: the volume registry in one JSON file, replaced
/// atomically (write a temporary file, fsync it, rename it over the old one, fsync the
/// directory), so after a crash it is either the old or the new registry, never a mix.
/// Volume ids are never reused: objects of a deleted volume can never be mistaken for a new one's.
/// </summary>
internal sealed class Catalog
{
    private readonly string _path;

    private Catalog(string path, CatalogState state)
    {
        _path = path;
        State = state;
    }

    public CatalogState State { get; private set; }

    public static Catalog Load(string dataDirectory)
    {
        string path = Path.Combine(dataDirectory, "catalog.json");
        if (!File.Exists(path))
        {
            return new Catalog(path, new CatalogState(1, []));
        }
        CatalogState state = JsonSerializer.Deserialize(File.ReadAllBytes(path), CatalogJson.Default.CatalogState)
            ?? throw new InvalidDataException($"{path} is empty");
        return new Catalog(path, state);
    }

    /// <summary>Durably replaces the registry.</summary>
    public void Save(CatalogState state)
    {
        string tmp = _path + ".tmp";
        using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            JsonSerializer.Serialize(f, state, CatalogJson.Default.CatalogState);
            f.Flush(flushToDisk: true);
        }
        File.Move(tmp, _path, overwrite: true);
        Ovis.Store.DirectorySync.Sync(Path.GetDirectoryName(_path)!);
        State = state;
    }
}

internal sealed record CatalogState(uint NextId, List<VolumeRecord> Volumes);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(CatalogState))]
internal sealed partial class CatalogJson : JsonSerializerContext;
