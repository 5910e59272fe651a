using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Gateway;
using Ovis.Store;

namespace Ovis.Cluster.Recovery;

/// <summary>
/// The recovery of one volume, run by the node that holds its lock — the only node writing it, so
/// recovery and client IO can take turns per object (<see cref="ObjectGate"/>). It:
/// <list type="bullet">
/// <item>adopts the dirty-region log a previous gateway left and makes those objects' copies
/// equal before any client reads them (a crashed gateway's half-done writes);</item>
/// <item>after a membership change fills the objects' new holders from a holder from before the
/// change; when a node that is new or was emptied is up, fills it; then records the new
/// baseline (docs/recovery.md);</item>
/// <item>when a node that missed writes is back, resyncs the logged objects it holds a copy of — no others;</item>
/// <item>scrubs slowly: one object at a time, every block read and checked on every copy.</item>
/// </list>
/// Reads wait only for work on objects whose readable copies may be wrong; other objects a
/// client touches go to the front of the background work, which waits while recovery is paused
/// and keeps under the bandwidth limit.
/// </summary>
public sealed partial class VolumeMaintenance : IAsyncDisposable
{
    private readonly string _volume;
    private readonly Func<VolumeLayout?> _layout;
    private readonly ReplicatedStore _store;
    private readonly ObjectReconciler _reconciler;
    private readonly EtcdRecoveryStore _records;
    private readonly RecoveryCounters _counters;
    private readonly Throttle _throttle;
    private readonly IRecoveryPause _pause;
    private readonly TimeSpan _scrubEvery;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _wake = new(0, int.MaxValue);
    private Task _run = Task.CompletedTask;
    private CancellationTokenRegistration _lostRegistration;
    // The stop token, read once: work queued by this recovery may still run after it is disposed.
    private readonly CancellationToken _stopping;
    // Where the scrub goes on: kept across this node's tenures of the lock, so slices of an idle
    // volume's scrub cover it all in turn.
    private readonly StrongBox<long> _scrubNext;
    private RecoveryBaseline? _baseline;
    private volatile bool _baselineRead;
    private volatile TaskCompletionSource _settled = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Placement? _before;
    // Data bytes this volume's recovery work wrote to copies, for the bandwidth limit.
    private long _bytesCopied;
    // The view the last queueing looked at: a view installed before this recovery was listening
    // is caught up with on the next round.
    private volatile ClusterView? _queuedFor;

    public VolumeMaintenance(string volume, Func<VolumeLayout?> layout, ReplicatedStore store, ObjectReconciler reconciler,
        EtcdRecoveryStore records, RecoveryCounters counters, Throttle throttle, IRecoveryPause pause, TimeSpan scrubEvery,
        StrongBox<long> scrubNext, ILogger logger)
    {
        _scrubNext = scrubNext;
        _volume = volume;
        _layout = layout;
        _store = store;
        _reconciler = reconciler;
        _records = records;
        _counters = counters;
        _throttle = throttle;
        _pause = pause;
        _scrubEvery = scrubEvery;
        _logger = logger;
        _stopping = _stop.Token;
    }

    /// <summary>
    /// Before the volume serves: adopts the dirty-region log of its layers (every object a
    /// predecessor may have left differing is resynced before a client reads or writes it), reads
    /// its baseline and queues the objects whose holders changed since; then runs in the background.
    /// </summary>
    /// <param name="lost">Cancelled when the volume's lock is lost: from then on another node may
    /// write the volume, and this one must not touch its copies.</param>
    public async Task StartAsync(CancellationToken lost)
    {
        CancellationToken cancellationToken = lost;
        _lostRegistration = lost.Register(static s => ((CancellationTokenSource)s!).Cancel(), _stop);
        if (_layout() is not { } layout)
            return;
        if (_store.DirtyLog is { } log)
        {
            IReadOnlyList<ObjectId> inherited = await log.AdoptAsync(layout.Chain, cancellationToken).ConfigureAwait(false);
            // A predecessor's half-done writes: copies a read may use may differ.
            foreach (ObjectId id in inherited)
                Queue(id, ReconcileReason.Resync, urgentForReads: true);
            if (inherited.Count > 0)
                LogInherited(_logger, _volume, inherited.Count);
        }
        _baseline = await _records.ReadBaselineAsync(_volume, cancellationToken).ConfigureAwait(false);
        _baselineRead = true;
        _queuedFor = _store.View;
        QueueChanged(_queuedFor, previous: null);
        _run = Task.Run(() => RunAsync(_stop.Token), CancellationToken.None);
    }

    /// <summary>
    /// A new view was installed (the caller holds the gate shut meanwhile, so no request reads
    /// the new placement before its moved objects are queued): queue what it moved.
    /// </summary>
    public void OnViewInstalled(ClusterView view)
    {
        if (_baselineRead)
        {
            ClusterView? previous = _queuedFor;
            _queuedFor = view;
            QueueChanged(view, previous);
        }
        Wake();
    }

    /// <summary>Something changed: look again now rather than at the next tick.</summary>
    public void Wake()
    {
        try
        {
            _wake.Release();
        }
        catch (ObjectDisposedException)
        {
            // Stopped meanwhile: nothing to wake.
        }
    }

    /// <summary>Queues the objects whose copies are not known complete in <paramref name="view"/>:
    /// all of them when the volume has no baseline yet or a node that is not synced is up (a full
    /// compare), else those whose holders differ from the baseline's.</summary>
    /// <param name="previous">The view queued for before this one, if this recovery saw it: the
    /// placement its writes went to.</param>
    private void QueueChanged(ClusterView view, ClusterView? previous)
    {
        if (_layout() is not { } layout || view.Placement is not { } placement)
            return;
        if (_baseline is not { } baseline)
        {
            // No baseline yet (a new volume whose first pass has not finished): when the members
            // changed under this gateway, the placement it wrote to is where the copies are. A
            // holder new to an object must never be taken for its source: its empty copy would
            // be copied over the data (seen: fio --verify read zeros after a node was taken out).
            if (previous?.Placement is { } last && !SameMembers(last, placement))
                _before = last;
            QueueAll(layout, _ => Need.Urgent);
            return;
        }
        bool membersChanged = !SameMembers(baseline, placement);
        _before = membersChanged ? baseline.Placement() : null;
        var unsynced = UnsyncedLive(baseline, view).ToHashSet();
        if (!membersChanged && unsynced.Count == 0)
            return;
        Placement? before = _before;
        int[] now = new int[view.Copies];
        QueueAll(layout, id =>
        {
            placement.ChooseIndexes(id.Packed, now);
            if (before is not null)
            {
                var then = before.Choose(id.Packed, view.Copies);
                // A holder new to the object may be read from (it is not stale): reads wait for it.
                if (!now.All(n => then.Any(t => t.Id == view.Replicas[n].NodeId)))
                    return Need.Urgent;
            }
            if (now.Any(unsynced.Contains))
                return now.Any(n => unsynced.Contains(n) && !view.Stale[n]) ? Need.Urgent : Need.Background;
            return Need.None;
        });
    }

    /// <summary>Whether an object needs work, and whether reads must wait for it.</summary>
    private enum Need
    {
        None,
        Background,
        Urgent,
    }

    private void QueueAll(VolumeLayout layout, Func<ObjectId, Need> need)
    {
        int queued = 0;
        foreach (ObjectId id in layout.Objects())
        {
            Need n = need(id);
            if (n != Need.None)
            {
                Queue(id, ReconcileReason.Move, urgentForReads: n == Need.Urgent);
                queued++;
            }
        }
        if (queued > 0)
            LogQueued(_logger, _volume, queued);
    }

    // Members and their weights: a drain started or cancelled moves objects as a join or leave does.
    private static bool SameMembers(Placement a, Placement b) => a.SameAs(b);

    private static bool SameMembers(RecoveryBaseline baseline, Placement placement) => baseline.Placement().SameAs(placement);

    private async Task RunAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                await PassAsync(_store.View, cancellationToken).ConfigureAwait(false);
                if (_scrubEvery > TimeSpan.Zero)
                    await ScrubNextAsync(cancellationToken).ConfigureAwait(false);
                TimeSpan tick = _scrubEvery > TimeSpan.Zero && _scrubEvery < TimeSpan.FromSeconds(2) ? _scrubEvery : TimeSpan.FromSeconds(2);
                await _wake.WaitAsync(tick, cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // etcd away, a node gone mid-copy: try again on the next round.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                LogPassFailed(_logger, _volume, ex);
                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>One round: resync the logged objects a returning stale node holds, work through
    /// the queue, and record the baseline when the queue emptied after a change.</summary>
    private async Task PassAsync(ClusterView view, CancellationToken cancellationToken)
    {
        if (_layout() is not { } layout || view.Placement is not { } placement)
            return;
        if (_queuedFor is { } queued && queued.Revision < view.Revision)
        {
            _queuedFor = view;
            QueueChanged(view, queued);
        }
        // A node that missed writes is back (or never left): the log names every object a copy may lack.
        foreach (ObjectId id in LoggedWithAllHoldersUp(layout, view))
            Queue(id, ReconcileReason.Resync, urgentForReads: false);
        bool allDone = await DrainAsync(layout, cancellationToken).ConfigureAwait(false);
        bool changed = NeedsFullPass(_baseline, view);
        if (!ReferenceEquals(view, _store.View) || !allDone)
            return;
        if (!changed)
        {
            if (LoggedWithAllHoldersUp(layout, view).Count == 0)
                _settled.TrySetResult();
            return;
        }
        string[] members = [.. placement.Nodes.Select(n => n.Id).Order(StringComparer.Ordinal)];
        string[] live = [.. Enumerable.Range(0, view.Replicas.Length).Where(n => view.Live[n]).Select(n => view.Replicas[n].NodeId)];
        string[] synced = [.. (_baseline?.Synced ?? members).Where(members.Contains).Union(live).Order(StringComparer.Ordinal)];
        var next = new RecoveryBaseline([.. placement.Nodes.Select(BaselineMember.Of)], synced);
        await _records.WriteBaselineAsync(_volume, next, cancellationToken).ConfigureAwait(false);
        _baseline = next;
        _before = null;
        LogBaseline(_logger, _volume, string.Join(",", members), string.Join(",", synced));
        Wake(); // one more round to see it settled
    }

    /// <summary>Whether the copies are not known complete in <paramref name="view"/>: no baseline
    /// yet, other members, or a member up that the baseline does not count as synced.</summary>
    public static bool NeedsFullPass(RecoveryBaseline? baseline, ClusterView view)
    {
        ArgumentNullException.ThrowIfNull(view);
        if (view.Placement is not { } placement)
            return false;
        return baseline is null || !SameMembers(baseline, placement) || UnsyncedLive(baseline, view).Any();
    }

    /// <summary>The nodes up in <paramref name="view"/> that the baseline does not count as holding their copies.</summary>
    private static IEnumerable<int> UnsyncedLive(RecoveryBaseline baseline, ClusterView view)
        => Enumerable.Range(0, view.NodeCount).Where(n => view.IsLive(n) && !baseline.Synced.Contains(view.NodeIdAt(n), StringComparer.Ordinal));

    /// <summary>The logged objects of the volume that some copy may lack and whose holders are all
    /// up — work that can be done now.</summary>
    private List<ObjectId> LoggedWithAllHoldersUp(VolumeLayout layout, ClusterView view)
    {
        return _store.DirtyLog is { } log
            ? [.. log.Marked().Where(id => layout.Contains(id) && log.IsMissed(id) && view.AllHoldersLive(id))]
            : [];
    }

    /// <summary>
    /// Completes when a round found nothing left to do that can be done now (or after
    /// <paramref name="atMost"/>): the node recovering an idle volume lets go then.
    /// </summary>
    public async Task SettledAsync(TimeSpan atMost, CancellationToken cancellationToken)
    {
        _settled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Wake();
        await Task.WhenAny(_settled.Task, Task.Delay(atMost, cancellationToken)).ConfigureAwait(false);
    }

    /// <summary>Works through this volume's queued objects; true when every one succeeded.</summary>
    private async Task<bool> DrainAsync(VolumeLayout layout, CancellationToken cancellationToken)
    {
        bool allDone = true;
        foreach (ObjectId next in _store.Gate.Pending().Where(layout.Contains).OrderBy(id => id.Packed))
        {
            // Objects clients touched meanwhile go first.
            ObjectId id = _store.Gate.TryTakeTouched(out ObjectId touched) && layout.Contains(touched) ? touched : next;
            await _pause.WaitWhilePausedAsync(cancellationToken).ConfigureAwait(false);
            long before = Interlocked.Read(ref _bytesCopied);
            if (!await _store.Gate.RunAsync(id).ConfigureAwait(false))
                allDone = false;
            // The limit is kept on average: the object's bytes are paid for after it moved (this
            // volume's bytes only: other volumes' recoveries pay for their own).
            await _throttle.WaitAsync(Interlocked.Read(ref _bytesCopied) - before, cancellationToken).ConfigureAwait(false);
        }
        return allDone && !_store.Gate.Pending().Any(layout.Contains);
    }

    /// <param name="urgentForReads">Some copy a read may use may not be right before the work is done.</param>
    private void Queue(ObjectId id, ReconcileReason reason, bool urgentForReads)
    {
        if (_store.Gate.Queue(id, o => WorkAsync(o, reason), urgentForReads))
            _counters.Queued(1);
    }

    private async Task<bool> WorkAsync(ObjectId id, ReconcileReason reason)
    {
        // Work of a recovery that stopped (its lock lost or its volume closed) does nothing: the
        // gate drops it, and whoever recovers the volume next has queued what it needs.
        _stopping.ThrowIfCancellationRequested();
        long objectSize = _layout()?.ObjectSize ?? 0;
        if (objectSize == 0)
            return true; // the volume is gone
        try
        {
            // Whatever queued it, after a membership change only a holder from before the change
            // has the object for sure: a new holder may have nothing yet.
            (ReconcileResult result, long bytes) = await _reconciler.ReconcileAsync(id, objectSize, _before, reason, throttled: false, _stopping).ConfigureAwait(false);
            Interlocked.Add(ref _bytesCopied, bytes);
            await RecordAsync(id, result).ConfigureAwait(false);
            if (result != ReconcileResult.Failed)
                _counters.Done(1);
            return result != ReconcileResult.Failed;
        }
#pragma warning disable CA1031 // A node gone mid-copy, etcd away: the object stays queued and is tried again.
        catch (Exception ex) when (ex is not OperationCanceledException)
#pragma warning restore CA1031
        {
            LogWorkFailed(_logger, id.ToString(), ex);
            return false;
        }
    }

    /// <summary>What the log must say after an object was reconciled: nothing differs when every
    /// holder took part; a holder that is down has to be brought up to date when it is back.</summary>
    private async Task RecordAsync(ObjectId id, ReconcileResult result)
    {
        if (_store.DirtyLog is not { } log)
            return;
        if (result == ReconcileResult.Complete)
        {
            log.Resynced(id);
        }
        else if (result == ReconcileResult.Partial)
        {
            log.EndWrite(await log.BeginWriteAsync(id).ConfigureAwait(false), missed: true);
        }
    }

    /// <summary>Scrubs one object now (every block of every copy read and checked; bad copies rewritten).</summary>
    public async Task<ReconcileResult> ScrubAsync(ObjectId id, CancellationToken cancellationToken)
    {
        long objectSize = _layout()?.ObjectSize ?? 0;
        if (objectSize == 0)
            return ReconcileResult.Complete;
        ReconcileResult result = ReconcileResult.Failed;
        await _store.Gate.RunExclusiveAsync(id, async o =>
        {
            (result, _) = await _reconciler.ReconcileAsync(o, objectSize, _before, ReconcileReason.Scrub, throttled: true, cancellationToken).ConfigureAwait(false);
            return true;
        }).ConfigureAwait(false);
        _counters.Scrubbed(1);
        return result;
    }

    private async Task ScrubNextAsync(CancellationToken cancellationToken)
    {
        if (_layout() is not { } layout)
            return;
        long total = (long)layout.Chain.Length * layout.ObjectsPerLayer;
        if (total == 0)
            return;
        await _pause.WaitWhilePausedAsync(cancellationToken).ConfigureAwait(false);
        long n = Interlocked.Increment(ref _scrubNext.Value) % total;
        var id = new ObjectId(layout.Chain[n / layout.ObjectsPerLayer], (uint)(n % layout.ObjectsPerLayer));
        await ScrubAsync(id, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await _lostRegistration.DisposeAsync().ConfigureAwait(false);
        await _stop.CancelAsync().ConfigureAwait(false);
        await _run.ConfigureAwait(false);
        // What it queued and did not do is no longer this node's to do (the next holder queues it again).
        if (_layout() is { } layout)
            _counters.Queued(-_store.Gate.Forget(layout.Contains));
        _stop.Dispose();
        _wake.Dispose();
    }

    [LoggerMessage(EventId = 64, Level = LogLevel.Warning, Message = "Volume {Volume}: {Count} objects left in the dirty-region log by an earlier gateway; each is resynced before use")]
    private static partial void LogInherited(ILogger logger, string volume, int count);

    [LoggerMessage(EventId = 65, Level = LogLevel.Information, Message = "Volume {Volume}: {Count} objects queued for recovery (their copies are not known complete)")]
    private static partial void LogQueued(ILogger logger, string volume, int count);

    [LoggerMessage(EventId = 66, Level = LogLevel.Information, Message = "Volume {Volume}: copies complete over members [{Members}], synced [{Synced}]")]
    private static partial void LogBaseline(ILogger logger, string volume, string members, string synced);

    [LoggerMessage(EventId = 68, Level = LogLevel.Warning, Message = "Object {Object}: recovery failed; it stays queued")]
    private static partial void LogWorkFailed(ILogger logger, string @object, Exception exception);

    [LoggerMessage(EventId = 67, Level = LogLevel.Warning, Message = "Volume {Volume}: recovery round failed; retrying")]
    private static partial void LogPassFailed(ILogger logger, string volume, Exception exception);
}
