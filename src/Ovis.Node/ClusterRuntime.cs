using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Fencing;
using Ovis.Cluster.Gateway;
using Ovis.Cluster.Peer;
using Ovis.Cluster.Recovery;
using Ovis.Store;

namespace Ovis.Node;

/// <summary>
/// The data path of a clustered node: the gateway (<see cref="ReplicatedStore"/>) its volumes
/// write through, the peer server other gateways send copies to, and the membership view both
/// check epochs against — kept current by a watch on the catalog, and refreshed at once when a
/// peer answers from a newer epoch.
/// </summary>
internal sealed partial class ClusterRuntime : IGatewayControl, IEpochSource, IAsyncDisposable
{
    private readonly ClusterMembership _membership;
    private readonly EtcdCatalog _catalog;
    private readonly ClusterFormat _format;
    private readonly string _nodeId;
    private readonly ReplicaSet _replicas;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _refreshing = new(1, 1);
    private Task _watch = Task.CompletedTask;
    private Task _staleCheck = Task.CompletedTask;
    private VolumeRecovery? _recovery;
    private IdleVolumeRecovery? _idle;
    private Func<IReadOnlyCollection<string>>? _volumeNames;
    private DownOutMonitor? _downOut;

    private readonly LocalStore _local;
    private readonly bool _wasMember;

    private VolumeLocks? _locks;

    private ClusterRuntime(ClusterMembership membership, string nodeId, LocalStore local, FenceTable fences, ILogger logger, MembershipView first, RecoveryOptions recovery)
    {
        Fences = fences;
        _local = local;
        _wasMember = first.Members.Any(m => m.Id == nodeId);
        _membership = membership;
        _catalog = membership.Catalog!;
        _format = membership.Format!;
        _nodeId = nodeId;
        _logger = logger;
        _replicas = new ReplicaSet(new LocalReplica(nodeId, local, fences),
            node => new RemoteReplica(node.Id, new PeerClient(ParsePeer(node), new PeerClientOptions(), logger)));
        // Recovery's records are written under the volume's lock, like its copies (docs/fencing.md).
        Records = new EtcdRecoveryStore(_catalog)
        {
            LayerHolder = layer => _locks?.HolderOf(layer),
            VolumeHolder = volume => _locks?.GenerationOfVolume(volume),
            LayerTenure = layer => _locks?.TenureOf(layer) ?? 0,
        };
        DirtyLog? log = recovery.DirtyLog ? new DirtyLog(Records, logger, recovery.DirtyClearAfter) : null;
        Store = new ReplicatedStore(local, ClusterView.Build(first, _format, nodeId, _replicas), this, logger, log);
        PeerServer = new PeerServer(local, this, fences, new PeerServerOptions(), logger);
    }

    /// <summary>The gateway: every object on its placement's nodes.</summary>
    public ReplicatedStore Store { get; }

    /// <summary>The writeback cache over the gateway; null until <see cref="OpenCache"/>.</summary>
    public Ovis.Cluster.Cache.WritebackCache? Cache { get; private set; }

    /// <summary>The store volumes use: the cache over the gateway.</summary>
    public IObjectStore VolumeStore => Cache ?? (IObjectStore)Store;

    /// <summary>Opens the node's writeback cache (its log in <paramref name="directory"/>) and takes
    /// in what a log left there held; before the volumes open.</summary>
    public void OpenCache(string directory, long size, Func<uint, bool> writeback, bool writeAround)
        => Cache = Ovis.Cluster.Cache.WritebackCache.Open(Store, directory, size, writeback, _logger, writeAround);

    /// <summary>The recovery of the volumes this node writes; null until the volumes are open.</summary>
    public VolumeRecovery? Recovery => _recovery;

    /// <summary>Recovery's records in the catalog: dirty-region logs and volume baselines.</summary>
    public EtcdRecoveryStore Records { get; }

    /// <summary>This node's fences: the newest lock generation seen per layer (docs/fencing.md).</summary>
    public FenceTable Fences { get; }

    /// <summary>Serves this node's store to other nodes' gateways.</summary>
    public PeerServer PeerServer { get; }

    public string NodeId => _nodeId;

    /// <summary>Takes members out that stay down too long; null until <see cref="StartAsync"/>.</summary>
    public DownOutMonitor? DownOut => _downOut;

    /// <summary>Reads the membership and builds the first view; the node is not live in it until it joins.</summary>
    public static async Task<ClusterRuntime> CreateAsync(ClusterMembership membership, string nodeId, LocalStore local, FenceTable fences, RecoveryOptions recovery,
        ILogger logger, CancellationToken cancellationToken)
    {
        MembershipView first = await membership.ReadMembershipAsync(cancellationToken).ConfigureAwait(false);
        return new ClusterRuntime(membership, nodeId, local, fences, logger, first, recovery);
    }

    /// <summary>
    /// Hands the node's volume recovery in, once the volumes are open: every later view is
    /// installed with the gate shut until the objects it moved are queued, and this node's stale
    /// mark is lifted as soon as nothing it may have missed is left.
    /// </summary>
    public void Attach(VolumeRecovery recovery, Func<IReadOnlyCollection<string>> volumeNames, VolumeLocks locks, NodeVolumes volumes)
    {
        _recovery = recovery;
        _volumeNames = volumeNames;
        _locks = locks;
        _staleCheck = Task.Run(() => ClearOwnStaleMarkAsync(_stop.Token), CancellationToken.None);
        _idle = new IdleVolumeRecovery(this, locks, volumes, _logger);
        if (Store.DirtyLog is { } log)
            log.BeforeClear = layers => volumes.TryGet()?.SaveBitmapsOfLayersAsync(layers) ?? Task.CompletedTask;
    }

    /// <summary>Where the volumes' dirty bitmaps are kept: the catalog, saved under the volume's
    /// lock; null without the dirty-region log, which they rely on (docs/backup.md).</summary>
    public Ovis.Volumes.IBitmapStore? Bitmaps => Store.DirtyLog is null ? null
        : new EtcdBitmapStore(_catalog, volume => _locks?.GenerationOfVolumeOrRelease(volume));

    /// <summary>Stops recovering idle volumes: the first step of a stop, before the volumes close.</summary>
    public async Task StopIdleRecoveryAsync()
    {
        if (_idle is { } idle)
            await idle.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Before the join: a node that holds none of the cluster's data — new to the cluster, or back
    /// with a wiped store — is marked stale, since placement may name it for objects written
    /// before it came; no read is served from it until recovery has filled it. A cluster without
    /// volumes has nothing it could miss. Returns true when the node is not marked because it was
    /// a member with its store intact: it must join as that member (a node taken out meanwhile is
    /// new again, and missed the writes placed elsewhere while it was out).
    /// </summary>
    /// <param name="joinedBefore">This store joined the cluster before (its data directory says
    /// so). Then an empty store is not a wiped one: placement may simply have given it no object
    /// yet, and marking it would take a current member out of reads at every restart (until a
    /// recovery that has nothing to copy clears the mark).</param>
    public async Task<bool> MarkStaleIfEmptyAsync(Ovis.Volumes.IVolumeRegistry registry, bool joinedBefore, CancellationToken cancellationToken)
    {
        if (_wasMember && (joinedBefore || _local.ListObjects().Count > 0))
            return true;
        var loaded = await registry.LoadAsync(cancellationToken).ConfigureAwait(false);
        if (loaded.State.Volumes.Count == 0)
            return false;
        await _catalog.MarkStaleAsync(_nodeId, _nodeId, Store.View.Epoch, cancellationToken).ConfigureAwait(false);
        // Every volume must fill this node again, not only resync what the log names.
        await Records.UnsyncAsync(_nodeId, cancellationToken).ConfigureAwait(false);
        LogJoinsStale(_logger, _nodeId, _wasMember ? "its store is empty" : "it is new to the cluster, or back after it was taken out");
        return false;
    }

    /// <summary>
    /// Before a rejoin (the lease ran out while the node kept running): true when the node is
    /// still a member, and joins as it — the gateways that wrote while it was out marked it stale
    /// and logged what it missed, as for a restart. False when it was taken out meanwhile: then
    /// placement gave its objects to others and it is marked stale and unsynced like a new node.
    /// </summary>
    public async Task<bool> PrepareRejoinAsync(CancellationToken cancellationToken)
    {
        MembershipView now = await _membership.ReadMembershipAsync(cancellationToken).ConfigureAwait(false);
        if (now.Members.Any(m => m.Id == _nodeId))
            return true;
        await _catalog.MarkStaleAsync(_nodeId, _nodeId, now.Epoch, cancellationToken).ConfigureAwait(false);
        await Records.UnsyncAsync(_nodeId, cancellationToken).ConfigureAwait(false);
        LogJoinsStale(_logger, _nodeId, "it was taken out of the cluster while its lease was gone");
        return false;
    }

    /// <summary>After the join: follows membership changes, and takes out members down longer than
    /// <paramref name="downOutInterval"/>, until disposed.</summary>
    public async Task StartAsync(TimeSpan downOutInterval, CancellationToken cancellationToken)
    {
        _downOut = new DownOutMonitor(_catalog, _format, _nodeId, downOutInterval, _logger);
        await RefreshAsync(0).ConfigureAwait(false);
        _watch = Task.Run(() => WatchAsync(_stop.Token), CancellationToken.None);
        if (Store.View.PlacementError is { } error)
            LogCannotPlace(_logger, error);
    }

    private async Task WatchAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                await foreach (MembershipView view in _catalog.WatchMembershipAsync(cancellationToken).ConfigureAwait(false))
                    Install(view);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // etcd unreachable or a watch broken: keep trying, the view stays as it was.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                LogWatchFailed(_logger, ex);
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

    private void Install(MembershipView membership)
    {
        ClusterView before = Store.View;
        ClusterView next = ClusterView.Build(membership, _format, _nodeId, _replicas);
        if (_recovery is { } recovery && !SameMembers(before, next))
        {
            // No request may reach the new placement before the objects it moved are queued.
            Store.Gate.Shut();
            try
            {
                Store.Update(next);
                recovery.OnViewInstalled(Store.View);
            }
            finally
            {
                Store.Gate.Open();
            }
        }
        else
        {
            Store.Update(next);
        }
        _downOut?.Observe(membership);
        if (Store.View.Epoch != before.Epoch)
            LogEpoch(_logger, Store.View.Epoch, membership.Nodes.Count, membership.Members.Count, string.Join(",", membership.Stale));
    }

    /// <summary>Starts the recovery of a volume whose lock this node just took; null before <see cref="Attach"/>.</summary>
    /// <param name="lost">Cancelled when the lock is lost: another node may write the volume then, so recovery stops.</param>
    public async Task<IAsyncDisposable?> StartRecoveryAsync(string volume, CancellationToken lost)
        => _recovery is { } recovery ? await recovery.StartAsync(volume, lost).ConfigureAwait(false) : null;

    // Weights count: a drain started or cancelled moves objects like a member joining or leaving.
    private static bool SameMembers(ClusterView a, ClusterView b)
        => a.Placement is null ? b.Placement is null : a.Placement.SameAs(b.Placement);

    /// <summary>
    /// While this node is up and stale, asks every couple of seconds whether anything it may have
    /// missed is left (logged objects it holds a copy of, volumes not yet filled on it); the
    /// catalog lifts the mark in the same transaction that checked.
    /// </summary>
    private async Task ClearOwnStaleMarkAsync(CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false))
            {
                ClusterView view = Store.View;
                if (view.LocalIndex < 0 || !view.IsStale(view.LocalIndex) || !view.IsLive(view.LocalIndex) || view.Placement is null)
                    continue;
                try
                {
                    if (await Records.TryClearStaleAsync(_nodeId, _volumeNames!(), id => view.Holds(view.LocalIndex, id), cancellationToken).ConfigureAwait(false))
                    {
                        LogStaleCleared(_logger, _nodeId);
                        await RefreshAsync(0).ConfigureAwait(false);
                    }
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogWatchFailed(_logger, ex);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Reads the membership now unless a view at <paramref name="seen"/> or newer is installed;
    /// concurrent callers share one read.</summary>
    public async ValueTask RefreshAsync(long seen)
    {
        if (seen > 0 && Store.View.Epoch >= seen)
            return;
        await _refreshing.WaitAsync().ConfigureAwait(false);
        try
        {
            if (seen > 0 && Store.View.Epoch >= seen)
                return;
            Install(await _membership.ReadMembershipAsync(_stop.Token).ConfigureAwait(false));
        }
        finally
        {
            _refreshing.Release();
        }
    }

    public async ValueTask MarkStaleAsync(string nodeId, long epoch)
    {
        await _catalog.MarkStaleAsync(nodeId, _nodeId, epoch).ConfigureAwait(false);
        await RefreshAsync(0).ConfigureAwait(false);
    }

    // Null until the volumes are open (Attach): no change goes out before.
    long? IGatewayControl.GenerationOf(uint layer) => _locks?.GenerationOf(layer);

    ValueTask<long?> IGatewayControl.WaitGenerationAsync(uint layer) => _locks?.WaitGenerationAsync(layer) ?? new((long?)null);

    void IGatewayControl.OnFenced(uint layer, long generation) => _locks?.OnFenced(layer, generation);

    /// <summary>Fences every layer of <paramref name="volume"/> at <paramref name="generation"/> on
    /// every live member (<see cref="ReplicatedStore.FenceAsync"/>), before this node's first change under the lock.</summary>
    public Task FenceAsync(string volume, IReadOnlyList<uint> layers, long generation, CancellationToken cancellationToken)
        => Store.FenceAsync(volume, layers, generation, cancellationToken);

    /// <summary>
    /// Whether member <paramref name="nodeId"/> is drained: this node's placement names it for no
    /// object (weight 0), and every volume's copies are known complete over that placement — its
    /// recovery finished the moves and dropped the drained copies. False until the volumes are open here.
    /// </summary>
    public async Task<bool> DrainedAsync(string nodeId, CancellationToken cancellationToken)
    {
        if (Store.View.Placement is not { } placement || _volumeNames is not { } names
            || !placement.Nodes.Any(n => n.Id == nodeId && n.Weight == 0))
            return false;
        return await Records.CompleteOverAsync(names(), placement, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>What a node's store holds, as it reports it; null when it does not answer in time.</summary>
    public async Task<PeerStats?> StatsAsync(string nodeId)
    {
        if (nodeId == _nodeId)
            return new PeerStats(_local.UsedBytes, _local.ListObjects().Count, _local.JournalSyncCount) { Space = _local.Space };
        if (_replicas.Find(nodeId) is not RemoteReplica remote)
            return null;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        try
        {
            PeerStatsResult result = await remote.Client.StatsAsync(timeout.Token).ConfigureAwait(false);
            return result.IsOk ? result.Stats : null;
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested)
        {
            // A node that takes its connection but does not answer (paused, overloaded): unknown.
            return null;
        }
    }

    /// <summary>One peer round trip to <paramref name="nodeId"/> (a PING, which touches no disk, behind
    /// whatever the connection already carries); null when it is not a remote member or does not answer in time.</summary>
    public async Task<TimeSpan?> PingAsync(string nodeId, TimeSpan timeout)
    {
        if (nodeId == _nodeId || _replicas.Find(nodeId) is not RemoteReplica remote)
            return null;
        using var deadline = new CancellationTokenSource(timeout);
        long start = Stopwatch.GetTimestamp();
        try
        {
            PeerResult result = await remote.Client.PingAsync(deadline.Token).ConfigureAwait(false);
            return result.IsOk ? Stopwatch.GetElapsedTime(start) : null;
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            return null;
        }
    }

    long IEpochSource.Current => Store.View.Epoch;

    async ValueTask<long> IEpochSource.CatchUpAsync(long seen, CancellationToken cancellationToken)
    {
        await RefreshAsync(seen).ConfigureAwait(false);
        return Store.View.Epoch;
    }

    private static EndPoint ParsePeer(NodeInfo node)
        => PeerAddress.TryParse(node.Peer, out EndPoint? endPoint, out _)
            ? endPoint!
            : throw new CatalogException($"node '{node.Id}' has no usable peer address ('{node.Peer}'): restart it with this version");

    public async ValueTask DisposeAsync()
    {
        if (_downOut is not null)
            await _downOut.DisposeAsync().ConfigureAwait(false);
        await _stop.CancelAsync().ConfigureAwait(false);
        await _watch.ConfigureAwait(false);
        await _staleCheck.ConfigureAwait(false);
        if (Cache is { } cache)
            await cache.DisposeAsync().ConfigureAwait(false);
        if (Store.DirtyLog is { } log)
            await log.DisposeAsync().ConfigureAwait(false);
        await _replicas.DisposeAsync().ConfigureAwait(false);
        _stop.Dispose();
        _refreshing.Dispose();
    }

    [LoggerMessage(EventId = 30, Level = LogLevel.Information, Message = "Epoch {Epoch}: {Live} of {Members} nodes up; stale: [{Stale}]")]
    private static partial void LogEpoch(ILogger logger, long epoch, int live, int members, string stale);

    [LoggerMessage(EventId = 31, Level = LogLevel.Warning, Message = "Membership watch failed; retrying")]
    private static partial void LogWatchFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 33, Level = LogLevel.Warning, Message = "Node {Node} joins stale ({Reason}): no reads are served from it until its copies are recovered")]
    private static partial void LogJoinsStale(ILogger logger, string node, string reason);

    [LoggerMessage(EventId = 34, Level = LogLevel.Information, Message = "Node {Node} is current again: its stale mark is lifted, reads may use its copies")]
    private static partial void LogStaleCleared(ILogger logger, string node);

    [LoggerMessage(EventId = 32, Level = LogLevel.Error, Message = "{Error}")]
    private static partial void LogCannotPlace(ILogger logger, string error);
}
