using Microsoft.Extensions.Logging;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Recovery;

namespace Ovis.Node;

/// <summary>
/// This node's end of recovery's plumbing: the <see cref="Counters"/> the recovery engine
/// updates, the cluster's pause switch as last read from the catalog (<see cref="Paused"/>,
/// <see cref="WaitWhilePausedAsync"/>), and a loop that every second reads the switch again and
/// publishes the counters to <c>recovery/progress/&lt;node&gt;</c> when they changed.
/// </summary>
/// <remarks>
/// The switch is polled rather than watched: one small read a second costs nothing, and a poll
/// that fails (etcd unreachable for a while) simply keeps the last known state and tries again,
/// where a watch would need resuming and compaction handling. Created with the cluster runtime,
/// it starts once the node has joined: its figures hang on the node's lease.
/// </remarks>
public sealed partial class RecoveryControl : Ovis.Cluster.Recovery.IRecoveryPause, IAsyncDisposable
{
    /// <summary>How often the switch is read and the counters published.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(1);

    private readonly RecoveryCatalog _catalog;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stop = new();
    private TaskCompletionSource? _resumed; // set while paused, completed on resume
    private Task _loop = Task.CompletedTask;
    private long _leaseId;
    private RecoveryProgress? _published;
    private bool _failing;
    private int _disposed;

    public RecoveryControl(RecoveryCatalog catalog, string nodeId, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentException.ThrowIfNullOrEmpty(nodeId);
        ArgumentNullException.ThrowIfNull(logger);
        _catalog = catalog;
        NodeId = nodeId;
        _logger = logger;
    }

    public string NodeId { get; }

    /// <summary>This node's recovery figures; the recovery engine adds to them.</summary>
    public RecoveryCounters Counters { get; } = new();

    /// <summary>Whether an operator has paused recovery, as of the last read of the catalog (at most <see cref="Interval"/> ago while etcd answers).</summary>
    public bool Paused => Volatile.Read(ref _resumed) is not null;

    /// <summary>
    /// Completes at once while recovery runs; while it is paused, when it is resumed. Throws
    /// <see cref="OperationCanceledException"/> when <paramref name="cancellationToken"/> fires or
    /// the control is disposed (the node stops).
    /// </summary>
    public Task WaitWhilePausedAsync(CancellationToken cancellationToken)
        => Volatile.Read(ref _resumed) is { } resumed ? resumed.Task.WaitAsync(cancellationToken) : Task.CompletedTask;

    /// <summary>After the join: reads the switch once, so that recovery never starts while paused, then follows it.</summary>
    /// <param name="leaseId">The node's membership lease, which the published figures are attached to.</param>
    public async Task StartAsync(long leaseId, CancellationToken cancellationToken)
    {
        _leaseId = leaseId;
        SetPaused(await _catalog.ReadPausedAsync(cancellationToken).ConfigureAwait(false) is not null);
        _loop = Task.Run(() => RunAsync(_stop.Token), CancellationToken.None);
    }

    /// <summary>After a rejoin: the figures hang on the new lease (the old one took them with it).</summary>
    public void UseLease(long leaseId)
    {
        _leaseId = leaseId;
        _published = null;
    }

    private async Task RunAsync(CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(Interval);
        try
        {
            do
            {
                await TickAsync(cancellationToken).ConfigureAwait(false);
            }
            while (await timer.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false));
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
    }

    private async Task TickAsync(CancellationToken cancellationToken)
    {
        try
        {
            SetPaused(await _catalog.ReadPausedAsync(cancellationToken).ConfigureAwait(false) is not null);
            RecoveryProgress now = Counters.Snapshot(NodeId, Paused);
            // Only a change is written: an idle cluster costs etcd no write at all.
            if (_published is null || _published with { At = now.At } != now)
            {
                await _catalog.PublishProgressAsync(now, _leaseId, cancellationToken).ConfigureAwait(false);
                _published = now;
            }
            if (_failing)
            {
                _failing = false;
                LogCatalogBack(_logger);
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw;
        }
#pragma warning disable CA1031 // etcd unreachable or slow: keep the last known switch, try again next second.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            if (!_failing)
            {
                _failing = true;
                LogCatalogFailed(_logger, ex);
            }
        }
    }

    private void SetPaused(bool paused)
    {
        lock (_lock)
        {
            if (paused && _resumed is null)
            {
                Volatile.Write(ref _resumed, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
                LogPaused(_logger);
            }
            else if (!paused && _resumed is { } resumed)
            {
                Volatile.Write(ref _resumed, null);
                resumed.SetResult();
                LogResumed(_logger);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.ConfigureAwait(false);
        lock (_lock)
        {
            // Whoever still waits for a resume learns that none will come.
            _resumed?.TrySetCanceled();
        }
        _stop.Dispose();
    }

    [LoggerMessage(EventId = 50, Level = LogLevel.Information, Message = "Recovery paused by an operator: it waits until resumed")]
    private static partial void LogPaused(ILogger logger);

    [LoggerMessage(EventId = 51, Level = LogLevel.Information, Message = "Recovery resumed")]
    private static partial void LogResumed(ILogger logger);

    [LoggerMessage(EventId = 52, Level = LogLevel.Warning, Message = "Cannot read the recovery switch or publish recovery progress; keeping the last known state and retrying every second")]
    private static partial void LogCatalogFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 53, Level = LogLevel.Information, Message = "Recovery switch and progress reach the catalog again")]
    private static partial void LogCatalogBack(ILogger logger);
}
