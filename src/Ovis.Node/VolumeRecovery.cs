using Microsoft.Extensions.Logging;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Gateway;
using Ovis.Cluster.Recovery;
using Ovis.Store;
using Ovis.Volumes;

namespace Ovis.Node;

/// <summary>
/// The recovery of the volumes this node holds the lock of — the volumes it writes — one
/// <see cref="VolumeMaintenance"/> each, started when the lock is taken and stopped when it goes.
/// </summary>
internal sealed class VolumeRecovery
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, VolumeMaintenance> _running = new(StringComparer.Ordinal);
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, System.Runtime.CompilerServices.StrongBox<long>> _scrubCursors =
        new(StringComparer.Ordinal);
    private readonly ReplicatedStore _store;
    private readonly EtcdRecoveryStore _records;
    private readonly IRecoveryPause _pause;
    private readonly NodeVolumes _volumes;
    private readonly RecoveryOptions _options;
    private readonly ILogger _logger;
    private readonly Throttle _throttle;

    public VolumeRecovery(ReplicatedStore store, EtcdRecoveryStore records, RecoveryCounters counters, IRecoveryPause pause,
        NodeVolumes volumes, RecoveryOptions options, ILogger logger)
    {
        _store = store;
        _records = records;
        Counters = counters;
        _pause = pause;
        _volumes = volumes;
        _options = options;
        _logger = logger;
        _throttle = new Throttle(options.BandwidthBytesPerSecond);
    }

    public RecoveryCounters Counters { get; }

    public RecoveryOptions Options => _options;

    /// <summary>The operators' pause switch.</summary>
    public IRecoveryPause Pause => _pause;

    /// <summary>Starts the recovery of <paramref name="volume"/>, whose lock this node just took;
    /// dispose the result before the lock is released.</summary>
    public async Task<IAsyncDisposable> StartAsync(string volume, CancellationToken cancellationToken)
    {
        // The dirty bitmaps first, with what the log names marked in them: the recovery below may
        // resync and clear those objects (docs/backup.md, "In a cluster").
        VolumeManager? manager = _volumes.TryGet();
        object? bitmaps = manager is null ? null : await manager.LoadBitmapsAsync(volume, _records.LoadAsync, cancellationToken).ConfigureAwait(false);
        var maintenance = new VolumeMaintenance(volume, () => Layout(volume), _store, new ObjectReconciler(_store, Counters, _throttle, _logger),
            _records, Counters, _throttle, _pause, _options.ScrubInterval,
            _scrubCursors.GetOrAdd(volume, static _ => new System.Runtime.CompilerServices.StrongBox<long>(-1)), _logger);
        try
        {
            await maintenance.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            if (bitmaps is not null)
                await manager!.UnloadBitmapsAsync(volume, bitmaps).ConfigureAwait(false);
            throw;
        }
        lock (_lock)
            _running[volume] = maintenance;
        return new Running(this, volume, maintenance, bitmaps);
    }

    /// <summary>The running recovery of a volume this node holds, or null.</summary>
    public VolumeMaintenance? Find(string volume)
    {
        lock (_lock)
            return _running.GetValueOrDefault(volume);
    }

    /// <summary>Called with the gate shut, right after a view is installed.</summary>
    public void OnViewInstalled(ClusterView view)
    {
        VolumeMaintenance[] running;
        lock (_lock)
            running = [.. _running.Values];
        foreach (VolumeMaintenance m in running)
            m.OnViewInstalled(view);
    }

    public VolumeLayout? Layout(string volume)
        => _volumes.TryGet() is { } manager && manager.TryGetLayout(volume, out uint[] chain, out long size, out long objectSize)
            ? new VolumeLayout(chain, size, objectSize)
            : null;

    private sealed class Running(VolumeRecovery owner, string volume, VolumeMaintenance maintenance, object? bitmaps) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            lock (owner._lock)
            {
                if (owner._running.TryGetValue(volume, out VolumeMaintenance? current) && ReferenceEquals(current, maintenance))
                    owner._running.Remove(volume);
            }
            await maintenance.DisposeAsync().ConfigureAwait(false);
            if (owner._store.DirtyLog is { } log && owner.Layout(volume) is { } layout)
            {
                try
                {
                    await log.ReleaseAsync(layout.Chain).ConfigureAwait(false);
                }
#pragma warning disable CA1031 // The next holder resyncs whatever stayed logged; releasing the lock matters more.
                catch (Exception)
#pragma warning restore CA1031
                {
                }
            }
            if (bitmaps is not null && owner._volumes.TryGet() is { } manager)
            {
                try
                {
                    await manager.UnloadBitmapsAsync(volume, bitmaps).ConfigureAwait(false);
                }
#pragma warning disable CA1031 // A bit not saved is in an object the log still names: the next holder marks it.
                catch (Exception)
#pragma warning restore CA1031
                {
                }
            }
        }
    }
}
