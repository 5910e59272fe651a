using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.Hosting;

namespace Ovis.Node.Metrics;

/// <summary>
/// Pings every other live member every few seconds and records the round trip, per peer, in
/// <c>ovis_peer_round_trip_seconds</c>; the last one is shown by <c>ovis node list</c> and the
/// dashboard. A PING touches no disk, so this is the network plus the queue of requests already on
/// the connection: when writes are slow and this is not, look at the disks.
/// </summary>
internal sealed class PeerRoundTrips(ClusterRuntime cluster, NodeMetrics metrics) : BackgroundService
{
    private static readonly TimeSpan Interval = TimeSpan.FromSeconds(5);

    // A peer that takes longer than this is as good as unreachable for a write; recorded as a
    // miss rather than a sample, so one frozen peer does not drag the histogram to seconds.
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(2);

    private readonly ConcurrentDictionary<string, double> _last = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, KeyValuePair<string, object?>[]> _tags = new(StringComparer.Ordinal);

    /// <summary>The last round trip to <paramref name="nodeId"/> in milliseconds; null when none answered lately.</summary>
    public double? LastMilliseconds(string nodeId) => _last.TryGetValue(nodeId, out double ms) ? ms : null;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Interval);
        do
        {
            var view = cluster.Store.View;
            var peers = Enumerable.Range(0, view.NodeCount)
                .Where(n => n != view.LocalIndex && view.IsLive(n))
                .Select(view.NodeIdAt)
                .ToList();
            foreach (string gone in _last.Keys.Except(peers))
                _last.TryRemove(gone, out _);
            await Task.WhenAll(peers.Select(ProbeAsync)).ConfigureAwait(false);
        }
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
    }

    private async Task ProbeAsync(string peer)
    {
        TimeSpan? took = await cluster.PingAsync(peer, Timeout).ConfigureAwait(false);
        var tags = _tags.GetOrAdd(peer, static id => [new("peer", id)]);
        if (took is { } t)
        {
            metrics.PeerRoundTrip.Record(t.TotalSeconds, tags);
            _last[peer] = t.TotalMilliseconds;
        }
        else
        {
            metrics.PeerPingsMissed.Add(1, tags);
            _last.TryRemove(peer, out _);
        }
    }
}
