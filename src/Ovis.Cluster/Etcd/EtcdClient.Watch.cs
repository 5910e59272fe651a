using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;

namespace Ovis.Cluster.Etcd;

public sealed partial class EtcdClient
{
    /// <summary>
    /// Every change to a key under <paramref name="prefix"/> from <paramref name="startRevision"/>
    /// on (0 = from now), in revision order, until cancelled. Read with
    /// <see cref="RangePrefixAsync"/> first and watch from its <c>Revision + 1</c> to miss nothing.
    /// </summary>
    /// <remarks>
    /// The gateway streams newline-delimited JSON (<c>{"result":{…}}</c>). When a stream breaks,
    /// the watch resumes on the next endpoint from the revision after the last one seen, so the
    /// caller sees every change exactly once. Throws <see cref="EtcdWatchCompactedException"/>
    /// when etcd no longer holds the history it would need.
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
            using var response = await OpenWatchAsync(key, prefix, next, cancellationToken).ConfigureAwait(false);
            using var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            while (true)
            {
                string? line;
                try
                {
                    line = await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (Exception e) when (e is IOException or HttpRequestException && !cancellationToken.IsCancellationRequested)
                {
                    line = null;
                }
                if (line is null)
                    break; // the stream broke: resume from `next`
                if (line.Length == 0)
                    continue;

                var batch = ParseWatchLine(line, ref next);
                foreach (var e in batch)
                    yield return e;
            }
        }
    }

    private static List<EtcdWatchEvent> ParseWatchLine(string line, ref long next)
    {
        using var doc = JsonDocument.Parse(line);
        var root = doc.RootElement;
        if (!root.TryGetProperty("result", out var result))
        {
            if (TryError(root, out var error))
                throw error;
            return [];
        }
        if (result.TryGetProperty("canceled", out var canceled) && canceled.GetBoolean())
        {
            long compact = Long(result, "compact_revision");
            if (compact > 0)
                throw new EtcdWatchCompactedException(compact);
            string reason = result.TryGetProperty("cancel_reason", out var r) ? r.GetString() ?? "" : "";
            throw new EtcdException($"etcd cancelled the watch: {reason}");
        }
        var events = new List<EtcdWatchEvent>();
        if (result.TryGetProperty("events", out var array))
        {
            foreach (var e in array.EnumerateArray())
            {
                // jsonpb omits the enum's zero value: no "type" is a PUT.
                var type = e.TryGetProperty("type", out var t) && t.GetString() == "DELETE" ? EtcdEventType.Delete : EtcdEventType.Put;
                var kv = ReadKv(e.GetProperty("kv"));
                events.Add(new EtcdWatchEvent(type, kv));
                next = Math.Max(next, kv.ModRevision + 1);
            }
        }
        // The header revision of a "created" answer or a progress notice is the store revision
        // the watch is synchronised with: nothing under the key changed up to it.
        long headerRevision = HeaderRevision(result);
        if (headerRevision > 0 && events.Count == 0)
            next = Math.Max(next, headerRevision + 1);
        return events;
    }

    private async Task<HttpResponseMessage> OpenWatchAsync(string key, bool prefix, long startRevision,
        CancellationToken cancellationToken)
    {
        byte[] payload = Serialize(w =>
        {
            w.WriteStartObject("create_request");
            WriteKeyRange(w, key, prefix);
            if (startRevision > 0)
                w.WriteString("start_revision", Int(startRevision));
            w.WriteEndObject();
        });
        Exception? last = null;
        int start = Volatile.Read(ref _current);
        for (int i = 0; i < _endpoints.Length; i++)
        {
            int index = (start + i) % _endpoints.Length;
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(_endpoints[index], "/v3/watch"))
            {
                Content = new ByteArrayContent(payload),
            };
            HttpResponseMessage response;
            try
            {
                response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
            {
                last = e;
                continue;
            }
            if (!response.IsSuccessStatusCode)
            {
                using (response)
                {
                    byte[] body = await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
                    throw GatewayError(response.StatusCode, body, "/v3/watch");
                }
            }
            Volatile.Write(ref _current, index);
            return response;
        }
        throw Unreachable(last);
    }
}
