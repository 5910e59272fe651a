using Microsoft.Extensions.Logging;
using Ovis.Cluster.Catalog;

namespace Ovis.Node;

/// <summary>
/// Down → out, like Ceph's <c>mon_osd_down_out_interval</c>: a member that stays down longer
/// than <see cref="Interval"/> is taken out of the cluster, so that placement stops counting on
/// it. On every membership view and once a second it records when each down member was first seen
/// down (<see cref="EtcdCatalog.MarkDownAsync"/>) and takes out those down long enough
/// (<see cref="EtcdCatalog.TakeOutAsync"/>). Every node runs one; the catalog's transactions let
/// one of them win.
/// </summary>
/// <remarks>
/// Downtime counts from the member's down record, but never from before this monitor started:
/// when a whole cluster restarts after a long stop, its members get the full interval to come
/// back rather than being taken out by whichever node starts first.
/// </remarks>
internal sealed partial class DownOutMonitor : IAsyncDisposable
{
    private static readonly TimeSpan Tick = TimeSpan.FromSeconds(1);

    private readonly EtcdCatalog _catalog;
    private readonly ClusterFormat _format;
    private readonly string _self;
    private readonly ILogger _logger;
    private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
    private readonly SemaphoreSlim _changed = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _viewLock = new();
    private readonly Task _loop;
    private MembershipView? _view;

    // The loop's own state, for the epoch it last checked: it starts over when the epoch changes.
    private long _epoch = -1;
    private readonly Dictionary<string, DateTimeOffset> _downSince = new(StringComparer.Ordinal);
    private readonly HashSet<string> _refused = new(StringComparer.Ordinal);
    private bool _failing;

    internal DownOutMonitor(EtcdCatalog catalog, ClusterFormat format, string self, TimeSpan interval, ILogger logger)
    {
        _catalog = catalog;
        _format = format;
        _self = self;
        _logger = logger;
        Interval = interval;
        _loop = Task.Run(LoopAsync);
    }

    /// <summary>How long a member may be down before it is taken out; zero never takes one out.</summary>
    public TimeSpan Interval { get; }

    /// <summary>A new membership view: checked at once. Views may arrive out of order; the newest is kept.</summary>
    internal void Observe(MembershipView view)
    {
        lock (_viewLock)
        {
            if (_view is not null && _view.Revision >= view.Revision)
                return;
            _view = view;
        }

        if (_changed.CurrentCount == 0)
            _changed.Release();
    }

    /// <summary>
    /// Seconds until this node takes out member <paramref name="id"/>, down since
    /// <paramref name="since"/> (0 when due); null when it never will: the interval is zero, or the
    /// other members of <paramref name="view"/> would span too few zones.
    /// </summary>
    public long? SecondsUntilOut(MembershipView view, string id, DateTimeOffset since)
    {
        ArgumentNullException.ThrowIfNull(view);
        if (Interval == TimeSpan.Zero || EtcdCatalog.WhyNotTakeOut(_format, view, id) is not null)
            return null;
        return Math.Max(0, (long)Math.Ceiling((OutAt(since) - DateTimeOffset.UtcNow).TotalSeconds));
    }

    private DateTimeOffset OutAt(DateTimeOffset since) => (since > _started ? since : _started) + Interval;

    private async Task LoopAsync()
    {
        var stop = _stop.Token;
        while (true)
        {
            try
            {
                await _changed.WaitAsync(Tick, stop).ConfigureAwait(false);
                MembershipView? view;
                lock (_viewLock)
                {
                    view = _view;
                }

                if (view is not null)
                    await CheckAsync(view, stop).ConfigureAwait(false);
                _failing = false;
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // etcd unreachable: try again next tick; one warning per outage, not one a second.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                if (!_failing)
                    LogCheckFailed(_logger, ex);
                _failing = true;
            }
        }
    }

    private async Task CheckAsync(MembershipView view, CancellationToken cancellationToken)
    {
        if (view.Epoch != _epoch)
        {
            _epoch = view.Epoch;
            _downSince.Clear();
            _refused.Clear();
        }

        var live = view.Nodes.Select(n => n.Id).ToHashSet(StringComparer.Ordinal);
        var down = view.Members.Where(m => m.Id != _self && !live.Contains(m.Id)).Select(m => m.Id).ToList();
        if (down.Count == 0)
            return;
        if (down.Any(id => !_downSince.ContainsKey(id)))
        {
            var recorded = await _catalog.ReadDownSinceAsync(cancellationToken).ConfigureAwait(false);
            foreach (var id in down.Where(id => !_downSince.ContainsKey(id)))
            {
                // Null when it is live after all (this view is behind): the next view says so.
                DateTimeOffset? since = recorded.TryGetValue(id, out var at) ? at : await _catalog.MarkDownAsync(id, cancellationToken).ConfigureAwait(false);
                if (since is { } known)
                    _downSince[id] = known;
            }
        }

        if (Interval == TimeSpan.Zero)
            return;
        var now = DateTimeOffset.UtcNow;
        foreach (var id in down)
        {
            // A refusal (too few zones would remain) stands until the membership changes.
            if (!_downSince.TryGetValue(id, out var since) || now < OutAt(since) || _refused.Contains(id))
                continue;
            if (await _catalog.TakeOutAsync(id, now - Interval, cancellationToken).ConfigureAwait(false))
                LogTakenOut(_logger, id, since, (long)(now - since).TotalSeconds);
            else
                _refused.Add(id);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.ConfigureAwait(false);
        _stop.Dispose();
        _changed.Dispose();
    }

    [LoggerMessage(EventId = 40, Level = LogLevel.Warning, Message = "Node {Node} down since {Since:u}: taken out after {Seconds} s; its objects are recovered on the remaining nodes")]
    private static partial void LogTakenOut(ILogger logger, string node, DateTimeOffset since, long seconds);

    [LoggerMessage(EventId = 41, Level = LogLevel.Warning, Message = "Down-out check failed; retrying every second")]
    private static partial void LogCheckFailed(ILogger logger, Exception exception);
}
