using System.Net.Sockets;
using System.Text;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;

namespace Ovis.Cluster.Etcd;

/// <summary>
/// A client of etcd's v3 gRPC API, through the service stubs of the dotnet-etcd package over
/// one HTTP/2 channel per endpoint. Thread-safe; one instance per process is enough.
/// </summary>
/// <remarks>
/// Not dotnet-etcd's own <c>EtcdClient</c>: its channel retries every call that ends
/// <c>Unavailable</c> up to five times, transactions and lease grants included, and spends
/// seconds in back-off before another endpoint is tried. Here, requests go to the endpoint that
/// answered last; a connection that cannot be opened moves the request to the next endpoint; a
/// request that may have reached etcd moves only when it is idempotent (reads, puts,
/// keepalives), never a transaction or a lease grant, which the caller must re-check
/// (docs/cluster.md).
/// </remarks>
public sealed partial class EtcdClient : IDisposable
{
    private readonly Endpoint[] _endpoints;
    private readonly TimeSpan _requestTimeout;
    private int _current;

    /// <param name="endpoints">client URLs, <c>http://HOST:PORT</c></param>
    /// <param name="requestTimeout">bound on one unary request (default 10 s); watches are not bounded</param>
    public EtcdClient(IEnumerable<string> endpoints, TimeSpan? requestTimeout = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        _endpoints = [.. endpoints.Select(e => new Endpoint(ParseEndpoint(e)))];
        if (_endpoints.Length == 0)
            throw new ArgumentException("at least one etcd endpoint is needed", nameof(endpoints));
        _requestTimeout = requestTimeout ?? TimeSpan.FromSeconds(10);
    }

    /// <summary>The endpoints, in the order they are tried.</summary>
    public IReadOnlyList<Uri> Endpoints => [.. _endpoints.Select(e => e.Uri)];

    /// <summary>Puts a key (attached to <paramref name="leaseId"/> when non-zero); returns the new store revision.</summary>
    public async Task<long> PutAsync(string key, byte[] value, long leaseId = 0, CancellationToken cancellationToken = default)
    {
        var request = PutRequest(key, value, leaseId);
        var response = await CallAsync("put", idempotent: true, (e, o) => e.Kv.PutAsync(request, o).ResponseAsync,
            cancellationToken).ConfigureAwait(false);
        return response.Header.Revision;
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
        var request = RangeRequest(key, prefix);
        var response = await CallAsync("range", idempotent: true, (e, o) => e.Kv.RangeAsync(request, o).ResponseAsync,
            cancellationToken).ConfigureAwait(false);
        return new EtcdRange(ReadKvs(response.Kvs), response.Header.Revision);
    }

    /// <summary>Deletes one key; returns how many keys were deleted (0 or 1).</summary>
    public Task<long> DeleteAsync(string key, CancellationToken cancellationToken = default) =>
        DeleteRangeAsync(key, prefix: false, cancellationToken);

    /// <summary>Deletes every key that starts with <paramref name="prefix"/>; returns how many.</summary>
    public Task<long> DeletePrefixAsync(string prefix, CancellationToken cancellationToken = default) =>
        DeleteRangeAsync(prefix, prefix: true, cancellationToken);

    private async Task<long> DeleteRangeAsync(string key, bool prefix, CancellationToken cancellationToken)
    {
        var request = DeleteRequest(key, prefix);
        var response = await CallAsync("delete", idempotent: true, (e, o) => e.Kv.DeleteRangeAsync(request, o).ResponseAsync,
            cancellationToken).ConfigureAwait(false);
        return response.Deleted;
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
        var request = new TxnRequest();
        request.Compare.AddRange(compare.Select(c => c.ToProto()));
        request.Success.AddRange(success.Select(RequestOp));
        if (failure is not null)
            request.Failure.AddRange(failure.Select(RequestOp));
        var response = await CallAsync("txn", idempotent: false, (e, o) => e.Kv.TxnAsync(request, o).ResponseAsync,
            cancellationToken).ConfigureAwait(false);
        var reads = response.Responses
            .Select(r => r.ResponseCase == ResponseOp.ResponseOneofCase.ResponseRange ? ReadKvs(r.ResponseRange.Kvs) : [])
            .ToList<IReadOnlyList<EtcdKeyValue>>();
        return new EtcdTxnResult(response.Succeeded, response.Header.Revision, reads);
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

    private static RequestOp RequestOp(EtcdOp op) => op switch
    {
        EtcdOp.Put put => new RequestOp { RequestPut = PutRequest(put.Key, put.Value, put.LeaseId) },
        EtcdOp.Range range => new RequestOp { RequestRange = RangeRequest(range.Key, range.Prefix) },
        EtcdOp.Delete delete => new RequestOp { RequestDeleteRange = DeleteRequest(delete.Key, delete.Prefix) },
        _ => throw new ArgumentException($"unknown etcd operation {op.GetType().Name}", nameof(op)),
    };

    private static PutRequest PutRequest(string key, byte[] value, long leaseId)
    {
        ArgumentNullException.ThrowIfNull(value);
        return new PutRequest { Key = Key(key), Value = ByteString.CopyFrom(value), Lease = leaseId };
    }

    private static RangeRequest RangeRequest(string key, bool prefix)
    {
        var request = new RangeRequest { Key = Key(key) };
        if (prefix)
            request.RangeEnd = RangeEnd(key);
        return request;
    }

    private static DeleteRangeRequest DeleteRequest(string key, bool prefix)
    {
        var request = new DeleteRangeRequest { Key = Key(key) };
        if (prefix)
            request.RangeEnd = RangeEnd(key);
        return request;
    }

    internal static ByteString Key(string key)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        return ByteString.CopyFromUtf8(key);
    }

    internal static ByteString RangeEnd(string prefix) => ByteString.CopyFrom(PrefixEnd(Encoding.UTF8.GetBytes(prefix)));

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

    /// <summary>
    /// Runs <paramref name="call"/> on the endpoint that answered last, moving on to the next one
    /// when it cannot be reached (and, for an idempotent request, when it may have been reached).
    /// </summary>
    private async Task<T> CallAsync<T>(string what, bool idempotent, Func<Endpoint, CallOptions, Task<T>> call,
        CancellationToken cancellationToken)
    {
        Exception? last = null;
        int start = Volatile.Read(ref _current);
        for (int i = 0; i < _endpoints.Length; i++)
        {
            int index = (start + i) % _endpoints.Length;
            var endpoint = _endpoints[index];
            try
            {
                var result = await call(endpoint, new CallOptions(deadline: DateTime.UtcNow + _requestTimeout,
                    cancellationToken: cancellationToken)).ConfigureAwait(false);
                Volatile.Write(ref _current, index);
                return result;
            }
            catch (RpcException e) when (cancellationToken.IsCancellationRequested)
            {
                throw new OperationCanceledException($"etcd {what} cancelled", e, cancellationToken);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && (idempotent || NeverSent(e)))
            {
                last = e;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.DeadlineExceeded)
            {
                if (!idempotent)
                    throw new EtcdException($"etcd at {endpoint.Uri} did not answer {what} in time; it may have been applied", e);
                last = e;
            }
            catch (RpcException e)
            {
                throw Refused(e);
            }
        }
        throw Unreachable(last);
    }

    /// <summary>The connection could not even be opened: the request cannot have reached etcd.</summary>
    private static bool NeverSent(RpcException e)
    {
        for (Exception? inner = e.Status.DebugException; inner is not null; inner = inner.InnerException)
        {
            if (inner is SocketException or HttpRequestException { HttpRequestError: HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError })
                return true;
        }
        return false;
    }

    private static EtcdException Refused(RpcException e) => new(e.Status.Detail, (int)e.StatusCode, e);

    private EtcdException Unreachable(Exception? last) =>
        new($"no etcd endpoint answered ({string.Join(", ", _endpoints.Select(e => e.Uri.ToString()))}): {(last as RpcException)?.Status.Detail ?? last?.Message}", last!);

    private static Uri ParseEndpoint(string endpoint)
    {
        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"'{endpoint}' is not an etcd client URL (http://HOST:PORT)", nameof(endpoint));
        return new Uri(uri.GetLeftPart(UriPartial.Authority));
    }

    private static List<EtcdKeyValue> ReadKvs(IEnumerable<Mvccpb.KeyValue> kvs) => [.. kvs.Select(ReadKv)];

    private static EtcdKeyValue ReadKv(Mvccpb.KeyValue kv) =>
        new(kv.Key.ToStringUtf8(), kv.Value.ToByteArray(), kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease);

    public void Dispose()
    {
        foreach (var endpoint in _endpoints)
            endpoint.Dispose();
    }

    /// <summary>One etcd member: an HTTP/2 channel and the service stubs on it.</summary>
    private sealed class Endpoint : IDisposable
    {
        private readonly GrpcChannel _channel;

        public Endpoint(Uri uri)
        {
            Uri = uri;
            _channel = GrpcChannel.ForAddress(uri, new GrpcChannelOptions
            {
                HttpHandler = new SocketsHttpHandler
                {
                    ConnectTimeout = TimeSpan.FromSeconds(3),
                    // A watch on a member that died or was cut off must end, so that it resumes on
                    // another one: HTTP/2 pings find it within seconds. Only while calls are open:
                    // etcd closes connections that ping with no stream open (too_many_pings).
                    KeepAlivePingDelay = TimeSpan.FromSeconds(10),
                    KeepAlivePingTimeout = TimeSpan.FromSeconds(5),
                    KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
                    EnableMultipleHttp2Connections = true,
                },
                // No service config, so no retry policy: the retries are CallAsync's.
            });
            Kv = new KV.KVClient(_channel);
            Lease = new Lease.LeaseClient(_channel);
            Watch = new Watch.WatchClient(_channel);
        }

        public Uri Uri { get; }

        public KV.KVClient Kv { get; }

        public Lease.LeaseClient Lease { get; }

        public Watch.WatchClient Watch { get; }

        public void Dispose() => _channel.Dispose();
    }
}
