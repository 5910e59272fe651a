using Microsoft.Extensions.Logging;
using Ovis.Cluster.Gateway;
using Ovis.Cluster.Recovery;

namespace Ovis.Node;

/// <summary>
/// Recovers the volumes nobody serves: a volume is recovered by the node holding its lock, so
/// for an idle volume that needs work — copies not known complete over the current members, or
/// a dirty-region log whose objects' holders are all up — one node (the first live one by id,
/// so nodes do not fight over locks) takes its lock for recovery, lets the volume's recovery run
/// for a slice of a few seconds, and lets go. A client opening the volume meanwhile waits for
/// the slice to end rather than being refused.
/// </summary>
internal sealed partial class IdleVolumeRecovery : IAsyncDisposable
{
    private static readonly TimeSpan Slice = TimeSpan.FromSeconds(5);
    // After a slice, a volume is left alone this long: a client waiting to open it gets in first.
    private static readonly TimeSpan Pause = TimeSpan.FromSeconds(2);
    private readonly Dictionary<string, DateTime> _notBefore = new(StringComparer.Ordinal);
    // Idle volumes are scrubbed too, a short slice at a time, one volume after another.
    private static readonly TimeSpan ScrubSlice = TimeSpan.FromSeconds(2);
    private DateTime _nextScrub = DateTime.UtcNow;
    private int _scrubTurn;
    private readonly ClusterRuntime _runtime;
    private readonly VolumeLocks _locks;
    private readonly NodeVolumes _volumes;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _run;

    public IdleVolumeRecovery(ClusterRuntime runtime, VolumeLocks locks, NodeVolumes volumes, ILogger logger)
    {
        _runtime = runtime;
        _locks = locks;
        _volumes = volumes;
        _logger = logger;
        _run = Task.Run(() => RunAsync(_stop.Token), CancellationToken.None);
    }

    private async Task RunAsync(CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(2));
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false))
            {
                try
                {
                    await RoundAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogRoundFailed(_logger, ex);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private async Task RoundAsync(CancellationToken cancellationToken)
    {
        ClusterView view = _runtime.Store.View;
        if (view.LocalIndex < 0 || !view.IsLive(view.LocalIndex) || view.Placement is null || _runtime.Recovery is not { } recovery
            || _volumes.TryGet() is not { } manager)
            return;
        // Paused: no lock is taken for recovery either, so clients never wait for one.
        await recovery.Pause.WaitWhilePausedAsync(cancellationToken).ConfigureAwait(false);
        string? first = Enumerable.Range(0, view.NodeCount).Where(n => view.IsLive(n))
            .Select(n => view.NodeIdAt(n)).Order(StringComparer.Ordinal).FirstOrDefault();
        if (first != _runtime.NodeId)
            return;
        foreach (var volume in manager.List().Where(v => !v.IsSnapshot))
        {
            if (_notBefore.TryGetValue(volume.Name, out DateTime notBefore) && DateTime.UtcNow < notBefore)
                continue;
            if (recovery.Layout(volume.Name) is not { } layout || !await NeedsWorkAsync(volume.Name, layout, view, cancellationToken).ConfigureAwait(false))
                continue;
            await using (VolumeLocks.IShare? share = await _locks.TryAcquireForRecoveryAsync(volume.Name).ConfigureAwait(false))
            {
                if (share is null || recovery.Find(volume.Name) is not { } maintenance)
                    continue;
                LogRecovering(_logger, volume.Name);
                await maintenance.SettledAsync(Slice, cancellationToken).ConfigureAwait(false);
            }
            _notBefore[volume.Name] = DateTime.UtcNow + Pause;
        }
        await ScrubSliceAsync(recovery, manager, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Now and then (every twenty scrub intervals, at least 2 s apart) the next idle volume in
    /// turn is held for a short slice, in which its recovery scrubs an object per interval where
    /// it left off: idle volumes are scrubbed as slowly as served ones, with the lock held only briefly.
    /// </summary>
    private async Task ScrubSliceAsync(VolumeRecovery recovery, Ovis.Volumes.VolumeManager manager, CancellationToken cancellationToken)
    {
        TimeSpan interval = recovery.Options.ScrubInterval;
        if (interval <= TimeSpan.Zero || DateTime.UtcNow < _nextScrub)
            return;
        var volumes = manager.List().Where(v => !v.IsSnapshot).ToList();
        if (volumes.Count > 0)
        {
            string name = volumes[_scrubTurn++ % volumes.Count].Name;
            await using VolumeLocks.IShare? share = await _locks.TryAcquireForRecoveryAsync(name).ConfigureAwait(false);
            if (share is not null)
                await Task.Delay(ScrubSlice, cancellationToken).ConfigureAwait(false);
        }
        // Counted from the end of the slice: a client waiting to open the volume gets in between.
        _nextScrub = DateTime.UtcNow + TimeSpan.FromTicks(Math.Max(TimeSpan.FromSeconds(2).Ticks, interval.Ticks * 20));
    }

    /// <summary>Whether the volume's copies are not known complete in <paramref name="view"/>, or its
    /// log names objects whose holders are all up (so they can be made equal now).</summary>
    private async Task<bool> NeedsWorkAsync(string volume, VolumeLayout layout, ClusterView view, CancellationToken cancellationToken)
    {
        var baseline = await _runtime.Records.ReadBaselineAsync(volume, cancellationToken).ConfigureAwait(false);
        if (VolumeMaintenance.NeedsFullPass(baseline, view))
            return true;
        var logged = await _runtime.Records.LoadAsync(layout.Chain, cancellationToken).ConfigureAwait(false);
        return logged.Any(layer => layer.Value.Any(index => view.AllHoldersLive(new Ovis.Store.ObjectId(layer.Key, index))));
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _run.ConfigureAwait(false);
        _stop.Dispose();
    }

    [LoggerMessage(EventId = 70, Level = LogLevel.Information, Message = "Volume {Volume} is idle and its copies need recovery: recovering it here")]
    private static partial void LogRecovering(ILogger logger, string volume);

    [LoggerMessage(EventId = 71, Level = LogLevel.Warning, Message = "Recovery of idle volumes failed this round; retrying")]
    private static partial void LogRoundFailed(ILogger logger, Exception exception);
}
