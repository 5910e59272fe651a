using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Ovis.Cluster.Recovery;
using Ovis.Store;

namespace Ovis.Node.Metrics;

/// <summary>
/// The node's instruments, on one <see cref="Meter"/> that OpenTelemetry exports at
/// <c>/metrics</c> (docs/metrics.md lists them). Per-volume request instruments are updated on
/// the I/O path (<see cref="VolumeMetrics"/>); everything about the node is observed only when
/// scraped, so it costs nothing between scrapes.
/// </summary>
/// <remarks>
/// Names are written as Prometheus shows them (the exporter adds <c>_total</c> to counters):
/// OpenTelemetry's own dotted names would come out the same, but a reader grepping the code for
/// a metric from a dashboard finds it this way.
/// </remarks>
internal sealed class NodeMetrics : IDisposable
{
    public const string MeterName = "Ovis";

    // From 50 µs (a journal write acknowledged from memory) to 10 s (a request stuck behind a
    // dead peer until it is marked down): p50 and p99 of either end fall between two bounds.
    private static readonly double[] LatencyBuckets =
        [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    private readonly Meter _meter = new(MeterName, NodeStatus.Version);
    private readonly ConcurrentDictionary<string, VolumeMetrics> _volumes = new(StringComparer.Ordinal);

    public NodeMetrics(NodeVolumes volumes, RecoveryControl? recovery, NbdConnectionLimit connections, Ovis.Cluster.Cache.WritebackCache? cache = null)
    {
        Reads = _meter.CreateCounter<long>("ovis_volume_reads", "{request}", "NBD reads completed without error");
        ReadBytes = _meter.CreateCounter<long>("ovis_volume_read_bytes", "By", "Bytes returned by NBD reads");
        Writes = _meter.CreateCounter<long>("ovis_volume_writes", "{request}", "NBD writes completed without error");
        WriteBytes = _meter.CreateCounter<long>("ovis_volume_write_bytes", "By", "Bytes stored by NBD writes");
        Flushes = _meter.CreateCounter<long>("ovis_volume_flushes", "{request}", "NBD flushes completed without error");
        Zeroes = _meter.CreateCounter<long>("ovis_volume_zeroes", "{request}", "NBD trims and write-zeroes completed without error");
        ZeroBytes = _meter.CreateCounter<long>("ovis_volume_zero_bytes", "By", "Bytes trimmed or zeroed");
        Errors = _meter.CreateCounter<long>("ovis_volume_errors", "{request}", "NBD requests answered with an error, by op");
        InFlight = _meter.CreateUpDownCounter<long>("ovis_volume_requests_in_flight", "{request}", "NBD requests received and not yet answered");
        Duration = _meter.CreateHistogram("ovis_volume_request_duration", "s", "Time from an NBD request reaching the volume to its answer, by op",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });

        PeerRoundTrip = _meter.CreateHistogram("ovis_peer_round_trip", "s", "Round trip of a PING to another member, by peer",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        PeerPingsMissed = _meter.CreateCounter<long>("ovis_peer_pings_missed", "{ping}", "PINGs to another member that got no answer within 2 s, by peer");

        LocalStore? Local() => volumes.LocalStore;

        if (cache is not null)
        {
            // Per writeback volume this node holds something of: what the copies still miss, and how far behind they are.
            IEnumerable<(string Volume, Ovis.Volumes.VolumeCacheStats Stats)> Cached() =>
                (volumes.TryGet()?.List() ?? []).Where(v => !v.IsSnapshot && v.Cache == Ovis.Volumes.CacheMode.Writeback)
                    .Select(v => (v.Name, cache.StatsOf(v.Id)));
            _meter.CreateObservableGauge("ovis_cache_dirty_bytes", () => Cached().Select(c => new Measurement<long>(c.Stats.DirtyBytes, new KeyValuePair<string, object?>("volume", c.Volume))),
                "By", "Writes acknowledged from the writeback cache and not yet on every copy");
            _meter.CreateObservableGauge("ovis_cache_push_lag", () => Cached().Select(c => new Measurement<double>(c.Stats.PushLagSeconds, new KeyValuePair<string, object?>("volume", c.Volume))),
                "s", "Age of the oldest write not yet on every copy");
            _meter.CreateObservableCounter("ovis_cache_read_hit_blocks", () => Cached().Select(c => new Measurement<long>(c.Stats.ReadHits, new KeyValuePair<string, object?>("volume", c.Volume))),
                "{block}", "Blocks reads got from the writeback cache");
            _meter.CreateObservableCounter("ovis_cache_read_blocks", () => Cached().Select(c => new Measurement<long>(c.Stats.ReadBlocks, new KeyValuePair<string, object?>("volume", c.Volume))),
                "{block}", "Blocks read from writeback volumes in all");
            _meter.CreateObservableCounter("ovis_cache_around_writes", () => Cached().Select(c => new Measurement<long>(c.Stats.AroundWrites, new KeyValuePair<string, object?>("volume", c.Volume))),
                "{write}", "Writes of writeback volumes sent around the cache, because the copies answered faster than its log syncs");
            _meter.CreateObservableGauge("ovis_cache_log_used_bytes", () => cache.LogUsedBytes, "By", "Cache log bytes holding records still needed");
            _meter.CreateObservableGauge("ovis_cache_log_capacity_bytes", () => cache.LogCapacity, "By", "Size of the cache log ring (twice --cache-size)");
        }

        _meter.CreateObservableGauge("ovis_node_space_total_bytes", () => Observe(Local(), s => s.Space.TotalBytes), "By", "Size of the data directory's file system");
        _meter.CreateObservableGauge("ovis_node_space_used_bytes", () => Observe(Local(), s => s.Space.UsedBytes), "By", "Space in use there, writes in the journal included");
        _meter.CreateObservableGauge("ovis_node_space_available_bytes", () => Observe(Local(), s => s.Space.AvailableBytes), "By", "Space the file system has free");
        _meter.CreateObservableGauge("ovis_node_space_nearfull", () => Observe(Local(), s => s.Space.State >= SpaceState.NearFull ? 1L : 0L), "", "1 from --nearfull-ratio on");
        _meter.CreateObservableGauge("ovis_node_space_full", () => Observe(Local(), s => s.Space.State >= SpaceState.Full ? 1L : 0L), "", "1 while writes that need new space get ENOSPC");
        _meter.CreateObservableGauge("ovis_node_objects", () => Observe(Local(), s => (long)s.ListObjects().Count), "{object}", "Objects with data in this node's store");
        _meter.CreateObservableGauge("ovis_node_journal_used_bytes", () => Observe(Local(), s => s.JournalUsedBytes), "By", "Journal bytes not yet freed by a checkpoint");
        _meter.CreateObservableGauge("ovis_node_journal_capacity_bytes", () => Observe(Local(), s => s.JournalCapacity), "By", "Size of the journal ring");
        _meter.CreateObservableCounter("ovis_node_journal_syncs", () => Observe(Local(), s => s.JournalSyncCount), "{sync}", "Syncs of the journal (group commits)");
        _meter.CreateObservableCounter("ovis_node_direct_writes", () => Observe(Local(), s => s.DirectWriteCount), "{write}", "Large writes into holes written straight into object files");
        _meter.CreateObservableCounter("ovis_node_data_syncs", () => Observe(Local(), s => s.DataSyncCount), "{sync}", "File-system syncs by flushes that covered direct writes");
        _meter.CreateObservableGauge("ovis_nbd_connections", () => (long)connections.Connections.Open, "{connection}", "NBD connections open");
        _meter.CreateObservableGauge("ovis_nbd_connections_max", () => (long)connections.Connections.Max, "{connection}", "NBD connections served at once (--max-connections)");

        RecoveryCounters? Counters() => recovery?.Counters;

        _meter.CreateObservableCounter("ovis_recovery_objects_queued", () => Observe(Counters(), c => c.ObjectsQueued), "{object}", "Objects found needing recovery work");
        _meter.CreateObservableCounter("ovis_recovery_objects_done", () => Observe(Counters(), c => c.ObjectsDone), "{object}", "Objects whose recovery work is done");
        _meter.CreateObservableCounter("ovis_recovery_moved_bytes", () => Observe(Counters(), c => c.BytesMoved), "By", "Bytes copied to new places after a membership change");
        _meter.CreateObservableCounter("ovis_recovery_resynced_bytes", () => Observe(Counters(), c => c.BytesResynced), "By", "Bytes copied to nodes that missed writes (dirty-region log)");
        _meter.CreateObservableGauge("ovis_recovery_paused", () => Observe(recovery, r => r.Paused ? 1L : 0L), "", "1 while recovery is paused (ovis cluster recover pause)");
        _meter.CreateObservableCounter("ovis_scrub_objects", () => Observe(Counters(), c => c.ObjectsScrubbed), "{object}", "Objects whose copies the scrub compared");
        _meter.CreateObservableCounter("ovis_scrub_repaired_copies", () => Observe(Counters(), c => c.CopiesRepaired), "{copy}", "Copies found different or missing, by scrub or check, and repaired");
    }

    public Counter<long> Reads { get; }

    public Counter<long> ReadBytes { get; }

    public Counter<long> Writes { get; }

    public Counter<long> WriteBytes { get; }

    public Counter<long> Flushes { get; }

    public Counter<long> Zeroes { get; }

    public Counter<long> ZeroBytes { get; }

    public Counter<long> Errors { get; }

    public UpDownCounter<long> InFlight { get; }

    public Histogram<double> Duration { get; }

    public Histogram<double> PeerRoundTrip { get; }

    public Counter<long> PeerPingsMissed { get; }

    /// <summary>The instruments of one volume with its tags built once: every connection to it shares them.</summary>
    public VolumeMetrics ForVolume(string volume) => _volumes.GetOrAdd(volume, static (name, node) => new VolumeMetrics(node, name), this);

    public void Dispose() => _meter.Dispose();

    // A gauge of something that may not exist on this node (no recovery without a cluster):
    // no measurement rather than a made-up zero.
    private static IEnumerable<Measurement<long>> Observe<T>(T? source, Func<T, long> read)
        where T : class
        => source is null ? [] : [new Measurement<long>(read(source))];
}
