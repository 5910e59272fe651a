using System.Buffers;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Ovis.Cluster.Etcd;

/// <summary>
/// A client of etcd's v3 JSON gateway (<c>POST /v3/…</c>, keys and values base64, int64s as
/// strings). The gRPC client packages are not available here, and the gateway needs nothing but
/// HTTP. Thread-safe; one instance per process is enough.
/// </summary>
/// <remarks>
/// Requests go to the endpoint that answered last. A connection that cannot be opened moves the
/// request to the next endpoint; a request that may have reached etcd (the connection broke
/// afterwards) moves only when it is idempotent (reads, puts, keepalives), never a transaction
/// or a lease grant, which the caller must re-check.
/// </remarks>
public sealed partial class EtcdClient : IDisposable
{
    private readonly HttpClient _http;
    private readonly Uri[] _endpoints;
    private int _current;

    /// <param name="endpoints">client URLs, <c>http://HOST:PORT</c></param>
    /// <param name="requestTimeout">bound on one unary request (default 10 s); watches are not bounded</param>
    public EtcdClient(IEnumerable<string> endpoints, TimeSpan? requestTimeout = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        _endpoints = [.. endpoints.Select(ParseEndpoint)];
        if (_endpoints.Length == 0)
            throw new ArgumentException("at least one etcd endpoint is needed", nameof(endpoints));
        _http = new HttpClient(new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(3),
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        })
        {
            // Unary requests only: a watch reads its stream after SendAsync, outside this bound.
            Timeout = requestTimeout ?? TimeSpan.FromSeconds(10),
        };
    }

    /// <summary>The endpoints, in the order they are tried.</summary>
    public IReadOnlyList<Uri> Endpoints => _endpoints;

    /// <summary>Puts a key (attached to <paramref name="leaseId"/> when non-zero); returns the new store revision.</summary>
    public async Task<long> PutAsync(string key, byte[] value, long leaseId = 0, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(value);
        using var doc = await PostAsync("/v3/kv/put", w =>
        {
            w.WriteString("key", EncodeKey(key));
            w.WriteBase64String("value", value);
            if (leaseId != 0)
                w.WriteString("lease", Int(leaseId));
        }, idempotent: true, cancellationToken).ConfigureAwait(false);
        return HeaderRevision(doc.RootElement);
    }

    /// <summary>Puts a UTF-8 text value.</summary>
    public Task<long> PutAsync(string key, string value, long leaseId = 0, CancellationToken cancellationToken = default) =>
        PutAsync(key, Encoding.UTF8.GetBytes(value), leaseId, cancellationToken);

    /// <summary>Reads one key; null when it does not exist.</summary>
    public async Task<EtcdKeyValue?> GetAsync(string key, CancellationToken cancellationToken = default)
    {
        var range = await RangeAsync(key, prefix: false, cancellationToken).ConfigureAwait(false);
        return range.Kvs.Count == 0 ? null : range.Kvs[0];
    }

    /// <summary>Reads every key that starts with <paramref name="prefix"/>, in key order, at one revision.</summary>
    public Task<EtcdRange> RangePrefixAsync(string prefix, CancellationToken cancellationToken = default) =>
        RangeAsync(prefix, prefix: true, cancellationToken);

    private async Task<EtcdRange> RangeAsync(string key, bool prefix, CancellationToken cancellationToken)
    {
        using var doc = await PostAsync("/v3/kv/range", w => WriteKeyRange(w, key, prefix),
            idempotent: true, cancellationToken).ConfigureAwait(false);
        return new EtcdRange(ReadKvs(doc.RootElement), HeaderRevision(doc.RootElement));
    }

    /// <summary>Deletes one key; returns how many keys were deleted (0 or 1).</summary>
    public Task<long> DeleteAsync(string key, CancellationToken cancellationToken = default) =>
        DeleteRangeAsync(key, prefix: false, cancellationToken);

    /// <summary>Deletes every key that starts with <paramref name="prefix"/>; returns how many.</summary>
    public Task<long> DeletePrefixAsync(string prefix, CancellationToken cancellationToken = default) =>
        DeleteRangeAsync(prefix, prefix: true, cancellationToken);

    private async Task<long> DeleteRangeAsync(string key, bool prefix, CancellationToken cancellationToken)
    {
        using var doc = await PostAsync("/v3/kv/deleterange", w => WriteKeyRange(w, key, prefix),
            idempotent: true, cancellationToken).ConfigureAwait(false);
        return Long(doc.RootElement, "deleted");
    }

    /// <summary>
    /// Runs <paramref name="success"/> when every comparison holds, <paramref name="failure"/>
    /// otherwise, atomically. Not retried on another endpoint once it may have reached etcd.
    /// </summary>
    public async Task<EtcdTxnResult> TxnAsync(IEnumerable<EtcdCompare> compare, IEnumerable<EtcdOp> success,
        IEnumerable<EtcdOp>? failure = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(compare);
        ArgumentNullException.ThrowIfNull(success);
        using var doc = await PostAsync("/v3/kv/txn", w =>
        {
            w.WriteStartArray("compare");
            foreach (var c in compare)
            {
                w.WriteStartObject();
                w.WriteString("key", EncodeKey(c.Key));
                if (c.Prefix)
                    w.WriteBase64String("range_end", PrefixEnd(Encoding.UTF8.GetBytes(c.Key)));
                w.WriteString("target", c.Target);
                w.WriteString("result", c.Result);
                w.WriteString(c.Field, c.Operand);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            WriteOps(w, "success", success);
            if (failure is not null)
                WriteOps(w, "failure", failure);
        }, idempotent: false, cancellationToken).ConfigureAwait(false);

        var root = doc.RootElement;
        // jsonpb omits false booleans: a failed transaction has no "succeeded".
        bool succeeded = root.TryGetProperty("succeeded", out var s) && s.GetBoolean();
        var reads = new List<IReadOnlyList<EtcdKeyValue>>();
        if (root.TryGetProperty("responses", out var responses))
        {
            foreach (var response in responses.EnumerateArray())
                reads.Add(response.TryGetProperty("response_range", out var range) ? ReadKvs(range) : []);
        }
        return new EtcdTxnResult(succeeded, HeaderRevision(root), reads);
    }

    /// <summary>Creates <paramref name="key"/> only if it does not exist; returns the existing key when it does.</summary>
    public async Task<(bool Created, EtcdKeyValue? Existing)> CreateAsync(string key, byte[] value, long leaseId = 0,
        CancellationToken cancellationToken = default)
    {
        var result = await TxnAsync([EtcdCompare.Absent(key)], [new EtcdOp.Put(key, value, leaseId)],
            [new EtcdOp.Range(key)], cancellationToken).ConfigureAwait(false);
        return result.Succeeded ? (true, null) : (false, result.Reads[0] is [var existing, ..] ? existing : null);
    }

    /// <summary>Replaces <paramref name="key"/> only if nobody modified it since <paramref name="modRevision"/>.</summary>
    public async Task<bool> CompareAndSwapAsync(string key, long modRevision, byte[] value, long leaseId = 0,
        CancellationToken cancellationToken = default)
    {
        var result = await TxnAsync([EtcdCompare.ModifiedAt(key, modRevision)], [new EtcdOp.Put(key, value, leaseId)],
            cancellationToken: cancellationToken).ConfigureAwait(false);
        return result.Succeeded;
    }

    private static void WriteOps(Utf8JsonWriter w, string name, IEnumerable<EtcdOp> ops)
    {
        w.WriteStartArray(name);
        foreach (var op in ops)
        {
            w.WriteStartObject();
            switch (op)
            {
                case EtcdOp.Put put:
                    w.WriteStartObject("request_put");
                    w.WriteString("key", EncodeKey(put.Key));
                    w.WriteBase64String("value", put.Value);
                    if (put.LeaseId != 0)
                        w.WriteString("lease", Int(put.LeaseId));
                    w.WriteEndObject();
                    break;
                case EtcdOp.Range get:
                    w.WriteStartObject("request_range");
                    WriteKeyRange(w, get.Key, get.Prefix);
                    w.WriteEndObject();
                    break;
                case EtcdOp.Delete delete:
                    w.WriteStartObject("request_delete_range");
                    WriteKeyRange(w, delete.Key, delete.Prefix);
                    w.WriteEndObject();
                    break;
                default:
                    throw new ArgumentException($"unknown etcd operation {op.GetType().Name}", nameof(ops));
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    private static void WriteKeyRange(Utf8JsonWriter w, string key, bool prefix)
    {
        byte[] keyBytes = Encoding.UTF8.GetBytes(key);
        w.WriteBase64String("key", keyBytes);
        if (prefix)
            w.WriteBase64String("range_end", PrefixEnd(keyBytes));
    }

    /// <summary>
    /// The end of the range of keys that start with <paramref name="prefix"/>: the prefix with its
    /// last byte below 0xff incremented and the rest cut (etcd's <c>GetPrefixRangeEnd</c>); "\0"
    /// (every key) when there is no such byte.
    /// </summary>
    internal static byte[] PrefixEnd(byte[] prefix)
    {
        for (int i = prefix.Length - 1; i >= 0; i--)
        {
            if (prefix[i] < 0xff)
            {
                var end = prefix.AsSpan(0, i + 1).ToArray();
                end[i]++;
                return end;
            }
        }
        return [0];
    }

    private async Task<JsonDocument> PostAsync(string path, Action<Utf8JsonWriter> writeBody, bool idempotent,
        CancellationToken cancellationToken)
    {
        byte[] payload = Serialize(writeBody);
        Exception? last = null;
        int start = Volatile.Read(ref _current);
        for (int i = 0; i < _endpoints.Length; i++)
        {
            int index = (start + i) % _endpoints.Length;
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(_endpoints[index], path))
            {
                Content = new ByteArrayContent(payload),
            };
            HttpResponseMessage response;
            try
            {
                response = await _http.SendAsync(request, cancellationToken).ConfigureAwait(false);
            }
            catch (HttpRequestException e) when (IsRetryable(e, idempotent))
            {
                last = e;
                continue;
            }
            catch (TaskCanceledException e) when (!cancellationToken.IsCancellationRequested)
            {
                // HttpClient.Timeout: etcd may have applied the request.
                if (!idempotent)
                    throw new EtcdException($"etcd at {_endpoints[index]} did not answer {path} in time; it may have been applied", e);
                last = e;
                continue;
            }
            Volatile.Write(ref _current, index);
            using (response)
            {
                byte[] body = await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode)
                    throw GatewayError(response.StatusCode, body, path);
                return JsonDocument.Parse(body);
            }
        }
        throw Unreachable(last);
    }

    private EtcdException Unreachable(Exception? last) =>
        new($"no etcd endpoint answered ({string.Join(", ", _endpoints.Select(e => e.ToString()))}): {last?.Message}", last!);

    private static bool IsRetryable(HttpRequestException e, bool idempotent) =>
        idempotent || e.HttpRequestError is HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError;

    private static EtcdException GatewayError(HttpStatusCode status, byte[] body, string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(body);
            if (TryError(doc.RootElement, out var error))
                return new EtcdException(error.Message, error.GrpcCode, status);
        }
        catch (JsonException)
        {
        }
        string text = Encoding.UTF8.GetString(body).Trim();
        return new EtcdException($"etcd answered {path} with HTTP {(int)status}: {text}", 0, status);
    }

    private static bool TryError(JsonElement root, out EtcdException error)
    {
        error = null!;
        if (root.ValueKind != JsonValueKind.Object)
            return false;
        string? message = root.TryGetProperty("message", out var m) ? m.GetString() : null;
        if (string.IsNullOrEmpty(message) && root.TryGetProperty("error", out var e) && e.ValueKind == JsonValueKind.String)
            message = e.GetString();
        if (string.IsNullOrEmpty(message))
            return false;
        int code = root.TryGetProperty("code", out var c) && c.ValueKind == JsonValueKind.Number ? c.GetInt32() : 0;
        error = new EtcdException(message, code, null);
        return true;
    }

    private static byte[] Serialize(Action<Utf8JsonWriter> writeBody)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            writeBody(w);
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    private static Uri ParseEndpoint(string endpoint)
    {
        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"'{endpoint}' is not an etcd client URL (http://HOST:PORT)", nameof(endpoint));
        return new Uri(uri.GetLeftPart(UriPartial.Authority));
    }

    internal static string EncodeKey(string key)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        return Convert.ToBase64String(Encoding.UTF8.GetBytes(key));
    }

    private static string Int(long value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>An int64 field: a string in jsonpb, absent when zero.</summary>
    private static long Long(JsonElement element, string name)
    {
        if (!element.TryGetProperty(name, out var p))
            return 0;
        return p.ValueKind == JsonValueKind.String
            ? long.Parse(p.GetString()!, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture)
            : p.GetInt64();
    }

    private static long HeaderRevision(JsonElement root) =>
        root.TryGetProperty("header", out var header) ? Long(header, "revision") : 0;

    private static List<EtcdKeyValue> ReadKvs(JsonElement root)
    {
        var kvs = new List<EtcdKeyValue>();
        if (root.TryGetProperty("kvs", out var array))
        {
            foreach (var kv in array.EnumerateArray())
                kvs.Add(ReadKv(kv));
        }
        return kvs;
    }

    private static EtcdKeyValue ReadKv(JsonElement kv) => new(
        Encoding.UTF8.GetString(kv.GetProperty("key").GetBytesFromBase64()),
        kv.TryGetProperty("value", out var value) ? value.GetBytesFromBase64() : [],
        Long(kv, "create_revision"),
        Long(kv, "mod_revision"),
        Long(kv, "version"),
        Long(kv, "lease"));

    public void Dispose() => _http.Dispose();
}
