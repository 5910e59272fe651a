using System.Text.Json.Serialization;

namespace Ovis.Volumes;

/// <summary>
/// How a gateway acknowledges a volume's writes (docs/writeback-cache.md). Kept per volume in the
/// registry, so every gateway of a cluster serves a volume the same way; snapshots are read-only
/// and always <see cref="Writethrough"/>.
/// </summary>
// Strings in JSON: the registry is read by people too, and "writeback" says what 1 does not.
[JsonConverter(typeof(JsonStringEnumConverter<CacheMode>))]
public enum CacheMode
{
    /// <summary>A write is acknowledged once its replicas have it (the default; 0, so a registry
    /// written before the mode existed reads as this).</summary>
    [JsonStringEnumMemberName("writethrough")]
    Writethrough = 0,

    /// <summary>A write is acknowledged once the gateway's cache log has it; replicas get it later,
    /// in flush order.</summary>
    [JsonStringEnumMemberName("writeback")]
    Writeback = 1,
}

/// <summary>The modes as operators write them: <c>writeback</c>, <c>writethrough</c> (the JSON names too).</summary>
public static class CacheModes
{
    public static string Name(CacheMode mode) => mode == CacheMode.Writeback ? "writeback" : "writethrough";

    /// <summary>Exactly <c>writeback</c> or <c>writethrough</c>, as the JSON has them.</summary>
    public static bool TryParse(string? text, out CacheMode mode)
    {
        (bool known, mode) = text switch
        {
            "writeback" => (true, CacheMode.Writeback),
            "writethrough" => (true, CacheMode.Writethrough),
            _ => (false, CacheMode.Writethrough),
        };
        return known;
    }
}
