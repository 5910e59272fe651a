using System.Runtime.CompilerServices;
using Etcdserverpb;
using Grpc.Core;

namespace Ovis.Cluster.Etcd;

public sealed partial class EtcdClient
{
    /// <summary>
    /// Every change to a key under <paramref name="prefix"/> from <paramref name="startRevision"/>
    /// on (0 = from now), in revision order, until cancelled. Read with
    /// <see cref="RangePrefixAsync"/> first and watch from its <c>Revision + 1</c> to miss nothing.
    /// </summary>
    /// <remarks>
    /// One gRPC watch stream per call. When a stream breaks (the member died, was cut off — found
    /// by HTTP/2 pings — or restarted), the watch resumes on the next endpoint from the revision
    /// after the last one seen, so the caller sees every change exactly once. Throws
    /// <see cref="EtcdWatchCompactedException"/> when etcd no longer holds the history it would need.
    /// </remarks>
    public IAsyncEnumerable<EtcdWatchEvent> WatchPrefixAsync(string prefix, long startRevision,
        CancellationToken cancellationToken = default) =>
        WatchAsync(prefix, prefix: true, startRevision, cancellationToken);

    /// <summary>Every change to one key from <paramref name="startRevision"/> on; see <see cref="WatchPrefixAsync"/>.</summary>
    public IAsyncEnumerable<EtcdWatchEvent> WatchKeyAsync(string key, long startRevision,
        CancellationToken cancellationToken = default) =>
        WatchAsync(key, prefix: false, startRevision, cancellationToken);

    private async IAsyncEnumerable<EtcdWatchEvent> WatchAsync(string key, bool prefix, long startRevision,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        long next = startRevision;
        while (true)
        {
            using var call = await OpenWatchAsync(key, prefix, next, cancellationToken).ConfigureAwait(false);
            while (true)
            {
                WatchResponse? response;
                try
                {
                    response = await call.ResponseStream.MoveNext(cancellationToken).ConfigureAwait(false)
                        ? call.ResponseStream.Current
                        : null;
                }
                catch (RpcException) when (!cancellationToken.IsCancellationRequested)
                {
                    response = null;
                }
                if (response is null)
                    break; // the stream broke: resume from `next`
                foreach (var e in ReadEvents(response, ref next))
                    yield return e;
            }
        }
    }

    /// <summary>Opens a watch stream on the first endpoint that confirms it (etcd answers "created").</summary>
    private async Task<AsyncDuplexStreamingCall<WatchRequest, WatchResponse>> OpenWatchAsync(string key, bool prefix,
        long startRevision, CancellationToken cancellationToken)
    {
        var create = new WatchCreateRequest { Key = Key(key), StartRevision = startRevision };
        if (prefix)
            create.RangeEnd = RangeEnd(key);
        Exception? last = null;
        int start = Volatile.Read(ref _current);
        for (int i = 0; i < _endpoints.Length; i++)
        {
            int index = (start + i) % _endpoints.Length;
            var call = _endpoints[index].Watch.Watch(cancellationToken: cancellationToken);
            try
            {
                await call.RequestStream.WriteAsync(new WatchRequest { CreateRequest = create }, cancellationToken).ConfigureAwait(false);
                // Bounded like a unary request: a member that accepts the stream but never answers
                // (no quorum) must not hold the watch.
                using var created = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                created.CancelAfter(_requestTimeout);
                if (!await call.ResponseStream.MoveNext(created.Token).ConfigureAwait(false))
                    throw new RpcException(new Status(StatusCode.Unavailable, "the watch stream ended before etcd confirmed it"));
                var first = call.ResponseStream.Current;
                long ignored = startRevision;
                if (first.Canceled || ReadEvents(first, ref ignored).Count > 0 || !first.Created)
                    throw new EtcdException("etcd answered a watch request with something other than its confirmation");
                Volatile.Write(ref _current, index);
                return call;
            }
            catch (EtcdException)
            {
                call.Dispose();
                throw;
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
            {
                call.Dispose();
                last = e;
            }
            catch
            {
                call.Dispose();
                throw;
            }
        }
        throw Unreachable(last);
    }

    private static List<EtcdWatchEvent> ReadEvents(WatchResponse response, ref long next)
    {
        if (response.Canceled)
        {
            if (response.CompactRevision > 0)
                throw new EtcdWatchCompactedException(response.CompactRevision);
            throw new EtcdException($"etcd cancelled the watch: {response.CancelReason}");
        }
        var events = new List<EtcdWatchEvent>(response.Events.Count);
        foreach (var e in response.Events)
        {
            var kv = ReadKv(e.Kv);
            events.Add(new EtcdWatchEvent(e.Type == Mvccpb.Event.Types.EventType.Delete ? EtcdEventType.Delete : EtcdEventType.Put, kv));
            next = Math.Max(next, kv.ModRevision + 1);
        }
        // A progress notice (no events, not the confirmation) carries the revision the watch is
        // synchronised with: nothing under the key changed up to it. The confirmation does not:
        // a watch from a past revision gets it before the history it replays.
        if (events.Count == 0 && !response.Created && response.Header is { Revision: > 0 } header)
            next = Math.Max(next, header.Revision + 1);
        return events;
    }
}
