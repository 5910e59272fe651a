using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

/// <summary>
/// Reads the JSON bodies of admin requests by hand rather than through model binding, so that
/// every mistake (malformed JSON, a missing or misspelt field, a string where a number belongs)
/// is answered with 400 and one line that names the field, never a 500 or an empty body.
/// </summary>
internal static class AdminRequestReader
{
    private static readonly string[] CreateFields = ["name", "size", "objectSize"];
    private static readonly string[] ResizeFields = ["size", "allowShrink"];
    private static readonly string[] SettingsFields = ["cache"];
    private static readonly string[] TagFields = ["tag"];
    private static readonly string[] CloneFields = ["name"];
    private static readonly string[] BitmapFields = ["name", "granularity"];
    private static readonly string[] BackupFields = ["dest", "incremental", "bitmap", "rate", "resume", "keepSnapshot", "backing", "targetTimeout"];
    private static readonly string[] SourcesFields = ["sources"];

    public static async Task<CreateVolumeRequest> ReadCreateVolumeAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"name": "disk1", "size": 1073741824}""", cancellationToken);
        var body = Fields(document.RootElement, CreateFields);
        return new CreateVolumeRequest(
            RequiredString(body, "name"),
            RequiredInt64(body, "size"),
            OptionalInt64(body, "objectSize"));
    }

    public static async Task<ResizeVolumeRequest> ReadResizeVolumeAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"size": 2147483648}""", cancellationToken);
        var body = Fields(document.RootElement, ResizeFields);
        return new ResizeVolumeRequest(
            RequiredInt64(body, "size"),
            OptionalBoolean(body, "allowShrink") ?? false);
    }

    public static async Task<VolumeSettingsRequest> ReadVolumeSettingsAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"cache": "writeback"}""", cancellationToken);
        var cache = RequiredString(Fields(document.RootElement, SettingsFields), "cache");
        return CacheModes.TryParse(cache, out var mode)
            ? new VolumeSettingsRequest(mode)
            : throw new AdminRequestException($"field 'cache' must be writeback or writethrough, not '{cache}'");
    }

    public static async Task<SnapshotRequest> ReadSnapshotAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"tag": "v1"}""", cancellationToken);
        return new SnapshotRequest(RequiredString(Fields(document.RootElement, TagFields), "tag"));
    }

    public static async Task<CloneRequest> ReadCloneAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"name": "disk1-clone"}""", cancellationToken);
        return new CloneRequest(RequiredString(Fields(document.RootElement, CloneFields), "name"));
    }

    public static async Task<RollbackRequest> ReadRollbackAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"tag": "v1"}""", cancellationToken);
        return new RollbackRequest(RequiredString(Fields(document.RootElement, TagFields), "tag"));
    }

    public static async Task<AddBitmapRequest> ReadAddBitmapAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"name": "nightly"}""", cancellationToken);
        var body = Fields(document.RootElement, BitmapFields);
        return new AddBitmapRequest(RequiredString(body, "name"), OptionalInt64(body, "granularity"));
    }

    public static async Task<BackupRequest> ReadBackupAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"dest": "/backups/disk0.raw", "bitmap": "nightly"}""", cancellationToken);
        var body = Fields(document.RootElement, BackupFields);
        return new BackupRequest(
            RequiredString(body, "dest"),
            OptionalBoolean(body, "incremental") ?? false,
            body.TryGetValue("bitmap", out var bitmap) && bitmap.ValueKind != JsonValueKind.Null ? RequiredString(body, "bitmap") : null,
            OptionalInt64(body, "rate"),
            OptionalBoolean(body, "resume") ?? false,
            OptionalBoolean(body, "keepSnapshot") ?? false,
            body.TryGetValue("backing", out var backing) && backing.ValueKind != JsonValueKind.Null ? RequiredString(body, "backing") : null,
            OptionalInt64(body, "targetTimeout") is { } seconds ? (int)Math.Clamp(seconds, -1, int.MaxValue) : null);
    }

    public static async Task<IReadOnlyList<string>> ReadSourcesAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        using var document = await ParseAsync(request, """{"sources": ["/backups/full.raw", "/backups/inc1.raw"]}""", cancellationToken);
        var body = Fields(document.RootElement, SourcesFields);
        if (!body.TryGetValue("sources", out var sources) || sources.ValueKind != JsonValueKind.Array)
        {
            throw new AdminRequestException("field 'sources' must be an array of paths or NBD URIs");
        }

        return [.. sources.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new AdminRequestException($"field 'sources' must hold strings, not {Kind(e)}"))];
    }

    private static async Task<JsonDocument> ParseAsync(HttpRequest request, string example, CancellationToken cancellationToken)
    {
        // Any content type is accepted: `curl -d` sends form encoding by default, and refusing
        // it with 415 would only teach people to add a header. Kestrel's MaxRequestBodySize
        // bounds what this buffers (413 past it).
        using var buffer = new MemoryStream();
        await request.Body.CopyToAsync(buffer, cancellationToken);

        if (buffer.Length == 0)
        {
            throw new AdminRequestException($"request body is empty: expected a JSON object such as {example}");
        }

        try
        {
            return JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length));
        }
        catch (JsonException ex)
        {
            throw new AdminRequestException($"request body is not valid JSON: {Describe(ex)}");
        }
    }

    private static Dictionary<string, JsonElement> Fields(JsonElement root, string[] known)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new AdminRequestException($"request body must be a JSON object, not {Kind(root)}");
        }

        // Field names match case-insensitively, like the web defaults of System.Text.Json, but
        // an unknown field is an error: a misspelt "allowshrnk" must not silently mean false.
        var fields = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        foreach (var property in root.EnumerateObject())
        {
            var name = Array.Find(known, k => k.Equals(property.Name, StringComparison.OrdinalIgnoreCase))
                ?? throw new AdminRequestException($"unknown field '{property.Name}' (expected {string.Join(", ", known)})");
            if (!fields.TryAdd(name, property.Value))
            {
                throw new AdminRequestException($"field '{name}' appears more than once");
            }
        }

        return fields;
    }

    private static string RequiredString(Dictionary<string, JsonElement> fields, string name)
    {
        if (!fields.TryGetValue(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            throw new AdminRequestException($"missing field '{name}'");
        }

        return value.ValueKind == JsonValueKind.String
            ? value.GetString()!
            : throw new AdminRequestException($"field '{name}' must be a string, not {Kind(value)}");
    }

    private static long RequiredInt64(Dictionary<string, JsonElement> fields, string name)
        => OptionalInt64(fields, name) ?? throw new AdminRequestException($"missing field '{name}'");

    private static long? OptionalInt64(Dictionary<string, JsonElement> fields, string name)
    {
        if (!fields.TryGetValue(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (value.ValueKind != JsonValueKind.Number)
        {
            throw new AdminRequestException($"field '{name}' must be a number of bytes, not {Kind(value)}");
        }

        return value.TryGetInt64(out var number)
            ? number
            : throw new AdminRequestException($"field '{name}' must be a whole number of bytes below 2^63, not {value.GetRawText()}");
    }

    private static bool? OptionalBoolean(Dictionary<string, JsonElement> fields, string name)
    {
        if (!fields.TryGetValue(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new AdminRequestException($"field '{name}' must be true or false, not {Kind(value)}"),
        };
    }

    private static string Kind(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };

    // System.Text.Json appends "LineNumber: 0 | BytePositionInLine: 9." (and sometimes a Path)
    // to its messages; keep the sentence and say where in numbers people count from one.
    private static string Describe(JsonException ex)
    {
        var message = ex.Message;
        foreach (var marker in (ReadOnlySpan<string>)[" Path:", " LineNumber:"])
        {
            var cut = message.IndexOf(marker, StringComparison.Ordinal);
            if (cut >= 0)
            {
                message = message[..cut];
            }
        }

        message = message.TrimEnd('.', ' ');
        return ex.LineNumber is { } line && ex.BytePositionInLine is { } column
            ? $"{message} (line {line + 1}, column {column + 1})"
            : message;
    }
}
