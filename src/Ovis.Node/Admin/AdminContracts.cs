using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

// The JSON objects of the admin API (docs/admin-api.md). The CLI reuses these types, so the
// client and the server cannot drift apart.

/// <summary>Body of <c>POST /api/v1/volumes</c>.</summary>
public sealed record CreateVolumeRequest(string Name, long Size, long? ObjectSize = null);

/// <summary>Body of <c>POST /api/v1/volumes/{name}/resize</c>.</summary>
public sealed record ResizeVolumeRequest(long Size, bool AllowShrink = false);

/// <summary>Answer of <c>GET /api/v1/node</c>.</summary>
public sealed record NodeInfo(
    string Version,
    string DataDirectory,
    NodeListeners Listeners,
    long UsedBytes,
    int VolumeCount,
    DateTimeOffset Started,
    long UptimeSeconds);

/// <summary>Bound addresses: NBD as <c>HOST:PORT</c> or <c>unix:PATH</c>, admin as URLs.</summary>
public sealed record NodeListeners(IReadOnlyList<string> Nbd, IReadOnlyList<string> Admin);

/// <summary>Body of every 4xx and 5xx answer: one line meant for an operator.</summary>
public sealed record ErrorBody(string Error);

/// <summary>Answer of <c>GET /healthz</c>.</summary>
public sealed record HealthStatus(string Status);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(VolumeInfo))]
[JsonSerializable(typeof(IReadOnlyList<VolumeInfo>))]
[JsonSerializable(typeof(List<VolumeInfo>))]
[JsonSerializable(typeof(CreateVolumeRequest))]
[JsonSerializable(typeof(ResizeVolumeRequest))]
[JsonSerializable(typeof(NodeInfo))]
[JsonSerializable(typeof(ErrorBody))]
[JsonSerializable(typeof(HealthStatus))]
public sealed partial class AdminJsonContext : JsonSerializerContext
{
    /// <summary>
    /// The options the API answers with: web defaults (camelCase), with quotes and apostrophes
    /// left as they are so that <c>{"error": "volume 'x' not found"}</c> reads well in curl.
    /// The API's JSON is never embedded in HTML, which is what the default escaping guards.
    /// </summary>
    public static JsonSerializerOptions CreateApiOptions(bool indented = false) => new(JsonSerializerDefaults.Web)
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = indented,
    };

    /// <summary>Metadata bound to <see cref="CreateApiOptions"/>.</summary>
    public static AdminJsonContext Api { get; } = new(CreateApiOptions());
}
