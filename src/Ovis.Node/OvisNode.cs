using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Ovis.Node.Admin;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Fencing;
using Ovis.Volumes;

namespace Ovis.Node;

/// <summary>
/// One running node: its volumes, NBD listeners and admin HTTP API in one ASP.NET Core host.
/// <c>ovis serve</c> runs one; tests start them in-process on port 0. Dispose to stop.
/// </summary>
public sealed partial class OvisNode : IAsyncDisposable
{
    /// <summary>In the data directory of a clustered node: the newest lock generation seen per layer (docs/fencing.md).</summary>
    public const string FencesFile = "fences";

    private readonly WebApplication _app;
    private readonly NodeVolumes _volumes;
    private readonly ILogger _logger;
    private readonly TimeSpan _shutdownTimeout;
    private readonly Lock _stopLock = new();
    private readonly ClusterMembership _membership;
    private readonly ClusterRuntime? _cluster;
    private readonly RecoveryControl? _recovery;
    private readonly DataDirectory? _data;
    private Task? _stopTask;
    private CacheReplay? _cacheReplay;

    private OvisNode(WebApplication app, NodeVolumes volumes, NodeStatus status, ClusterMembership membership,
        ClusterRuntime? cluster, RecoveryControl? recovery, DataDirectory? data, TimeSpan shutdownTimeout, ILogger logger)
    {
        _app = app;
        _membership = membership;
        _cluster = cluster;
        _recovery = recovery;
        _data = data;
        _shutdownTimeout = shutdownTimeout;
        _volumes = volumes;
        Status = status;
        _logger = logger;
    }

    /// <summary>Version, data directory, bound listeners and uptime.</summary>
    public NodeStatus Status { get; }

    public VolumeManager Volumes => _volumes.TryGet() ?? throw new InvalidOperationException("the node has not started");

    /// <summary>The node's cluster membership; <see cref="ClusterMembership.Embedded"/> without <c>--cluster</c>.</summary>
    public ClusterMembership Membership => _membership;

    /// <summary>The first bound NBD TCP address with its real port, e.g. <c>127.0.0.1:41237</c>; null without TCP.</summary>
    public System.Net.IPEndPoint? NbdEndPoint { get; private set; }

    /// <summary>The first bound admin URL with its real port, e.g. <c>http://127.0.0.1:41238</c>.</summary>
    public Uri AdminUri { get; private set; } = null!;

    /// <summary>Fires when something inside the host asks the node to stop.</summary>
    public CancellationToken Stopping => _app.Lifetime.ApplicationStopping;

    /// <summary>
    /// Opens the data directory, binds every listener and, with <see cref="NodeOptions.Cluster"/>,
    /// joins the cluster. Throws <see cref="NodeStartException"/> with one line for an operator
    /// when any of it fails.
    /// </summary>
    /// <remarks>
    /// A clustered node binds its listeners before it joins (it registers their real ports) and
    /// opens its volumes only after: they write through the gateway, which needs the node live
    /// in the membership, or it would mark its own copies stale.
    /// </remarks>
    public static async Task<OvisNode> StartAsync(NodeOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        RefuseOpenAdminOnNetwork(options);
        var dataDirectory = Path.GetFullPath(options.DataDirectory);
        var storeOptions = new Ovis.Store.LocalStoreOptions { JournalSize = options.JournalSize, NearFullRatio = options.NearFullRatio, FullRatio = options.FullRatio };
        var storeLogger = StoreLoggerFactory.CreateLogger("Ovis.Store");
        var clusterLogger = StoreLoggerFactory.CreateLogger("Ovis.Cluster");

        var volumes = new NodeVolumes();
        var status = new NodeStatus(dataDirectory, TimeProvider.System);
        var membership = ClusterMembership.Embedded;
        DataDirectory? data = null;
        ClusterRuntime? cluster = null;
        RecoveryControl? recovery = null;
        AdminToken? token;
        WebApplication? app = null;
        try
        {
            if (options.Cluster is { } joining)
            {
                data = await OpenDataAsync(dataDirectory, () => DataDirectory.OpenAsync(dataDirectory, storeOptions, storeLogger, cancellationToken));
                volumes.LocalStore = data.Store;
                membership = await ClusterMembership.ConnectAsync(joining, clusterLogger, cancellationToken);
                token = await ResolveTokenAsync(options, dataDirectory, membership.Catalog, cancellationToken);
                var nodeId = joining.NodeId ?? ClusterMembership.ReadOrCreateNodeId(dataDirectory);
                var fences = await OpenDataAsync(dataDirectory, () => Task.FromResult(FenceTable.Open(Path.Combine(dataDirectory, FencesFile))));
                cluster = await ClusterMembership.Describe(joining, () => ClusterRuntime.CreateAsync(membership, nodeId, data.Store, fences, joining.Recovery, clusterLogger, cancellationToken));
                var cacheDirectory = Path.GetFullPath(options.CacheDirectory);
                await OpenDataAsync(cacheDirectory, () =>
                {
                    cluster.OpenCache(cacheDirectory, options.CacheSize, layer => volumes.TryGet()?.CacheModeOf(layer) == CacheMode.Writeback, options.CacheWriteAround);
                    return Task.FromResult(true);
                });
                recovery = new RecoveryControl(new RecoveryCatalog(membership.Catalog!), nodeId, clusterLogger);
            }
            else
            {
                var manager = await OpenDataAsync(dataDirectory, () => VolumeManager.OpenAsync(dataDirectory, storeOptions, storeLogger, cancellationToken));
                volumes.LocalStore = (Ovis.Store.LocalStore)manager.Store;
                volumes.Set(manager);
                token = await ResolveTokenAsync(options, dataDirectory, null, cancellationToken);
            }

            status.TokenFile = token?.Path;

            var listeners = new Listeners();
            app = BuildApplication(options, volumes, status, membership, cluster, recovery, token, listeners);
            var node = new OvisNode(app, volumes, status, membership, cluster, recovery, data, options.ShutdownTimeout, app.Services.GetRequiredService<ILogger<OvisNode>>());
            try
            {
                await app.StartAsync(cancellationToken);
            }
            catch (IOException ex)
            {
                throw new NodeStartException(DescribeBindFailure(ex, listeners), ex);
            }

            node.Publish(listeners);
            if (options.Cluster is { } clusterOptions && cluster is not null)
            {
                var address = (status.NbdListeners.Count > 0 ? status.NbdListeners[0] : null)
                    ?? throw new NodeStartException("a clustered node needs an NBD address (--nbd)");
                var registry = new EtcdVolumeRegistry(membership.Catalog!.Client, membership.Catalog.Cluster);
                var trustsItsCopies = await ClusterMembership.Describe(clusterOptions,
                    () => cluster.MarkStaleIfEmptyAsync(registry, ClusterMembership.JoinedBefore(dataDirectory, membership.Format!), cancellationToken));
                await membership.JoinAsync(clusterOptions, cluster.NodeId, address, clusterOptions.AdvertisedPeer ?? status.PeerListener!, trustsItsCopies, node._logger, cancellationToken);
                ClusterMembership.RecordJoined(dataDirectory, membership.Format!);
                await ClusterMembership.Describe(clusterOptions, async () =>
                {
                    await cluster.StartAsync(clusterOptions.DownOutInterval, cancellationToken);
                    await recovery!.StartAsync(membership.Registration!.LeaseId, cancellationToken);
                    var manager = await VolumeManager.OpenAsync(cluster.VolumeStore, registry, cluster.Bitmaps, clusterLogger, cancellationToken);
                    // Attached before the volumes are published: no volume's lock is taken before
                    // its recovery (and its dirty bitmaps) start with it.
                    cluster.Attach(new VolumeRecovery(cluster.Store, cluster.Records, recovery.Counters, recovery,
                        volumes, clusterOptions.Recovery, clusterLogger), () => [.. volumes.Get().List().Where(v => !v.IsSnapshot).Select(v => v.Name)],
                        app.Services.GetRequiredService<VolumeLocks>(), volumes);
                    volumes.Set(manager);
                    return true;
                });
                node._cacheReplay = CacheReplay.Start(cluster.Cache!, app.Services.GetRequiredService<VolumeLocks>(), volumes, membership.Catalog!, cluster.NodeId, clusterLogger);
                membership.KeepJoined(clusterOptions, cluster.NodeId, address, clusterOptions.AdvertisedPeer ?? status.PeerListener!, cluster.PrepareRejoinAsync, async rejoined =>
                {
                    recovery!.UseLease(rejoined.LeaseId);
                    await cluster.RefreshAsync(0);
                }, node._logger);
            }

            LogStarted(node._logger, NodeStatus.Version, dataDirectory);
            return node;
        }
        catch
        {
            if (app is not null)
            {
                await app.DisposeAsync();
            }

            if (volumes.TryGet() is { } opened)
            {
                await DisposeQuietlyAsync(opened);
            }

            if (recovery is not null)
            {
                await recovery.DisposeAsync();
            }

            await membership.DisposeAsync();
            if (cluster is not null)
            {
                await cluster.DisposeAsync();
            }

            if (data is not null)
            {
                await data.DisposeAsync();
            }

            throw;
        }
    }

    private static async Task<T> OpenDataAsync<T>(string dataDirectory, Func<Task<T>> open)
    {
        try
        {
            return await open();
        }
        catch (VolumeException ex)
        {
            // Already a sentence for an operator, naming the directory ("... is in use by another Ovis process").
            throw new NodeStartException(ex.Message, ex);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            throw new NodeStartException($"cannot open the data directory '{dataDirectory}': {ex.Message}", ex);
        }
    }

    /// <summary>
    /// Stops accepting, asks open NBD connections to finish (cutting them after
    /// <see cref="NodeOptions.ShutdownTimeout"/>), then closes the volumes, which flushes them.
    /// Safe to call more than once; later calls wait for the first.
    /// </summary>
    public Task StopAsync()
    {
        lock (_stopLock)
        {
            return _stopTask ??= StopCoreAsync();
        }
    }

    public async ValueTask DisposeAsync() => await StopAsync();

    private async Task StopCoreAsync()
    {
        LogStopping(_logger);

        // Order matters: no connection and no job may still use a volume when the manager closes;
        // a clustered node flushes its volumes through its peers before it leaves the cluster,
        // and closes its own store last.
        try
        {
            if (_cluster is not null)
            {
                await _cluster.StopIdleRecoveryAsync();
            }

            if (_cacheReplay is not null)
            {
                await _cacheReplay.DisposeAsync();
            }

            await _app.StopAsync(CancellationToken.None);
        }
        finally
        {
            await WaitForJobsAsync();
            await _app.DisposeAsync();

            // Recovery's switch and figures stop before the data it works on closes, and before
            // the leave revokes the lease its figures hang on (they go with it).
            if (_recovery is not null)
            {
                await _recovery.DisposeAsync();
            }

            if (_volumes.TryGet() is { } volumes)
            {
                await volumes.DisposeAsync();
            }

            // Acknowledged writes stay durable across a clean stop, as on a single node (whose
            // store flushes when it closes): every copy this gateway wrote to syncs them now.
            if (_cluster is not null)
            {
                await _cluster.VolumeStore.FlushAsync();
            }

            await _membership.DisposeAsync();
            if (_cluster is not null)
            {
                await _cluster.DisposeAsync();
            }

            if (_data is not null)
            {
                await _data.DisposeAsync();
            }
        }

        LogStopped(_logger);
    }

    // A flatten cannot be cancelled half-way; give it the time connections get, then close the
    // volumes under it: it fails as it would in a crash, which the volumes must survive anyway.
    // Backups, restores and verifies are cancelled and end at once.
    private async Task WaitForJobsAsync()
    {
        var stillRunning = await _app.Services.GetRequiredService<JobRegistry>().WaitForRunningAsync(_shutdownTimeout);
        if (stillRunning > 0)
        {
            LogJobsAbandoned(_logger, stillRunning, _shutdownTimeout.TotalSeconds);
        }
    }

    private static async Task DisposeQuietlyAsync(VolumeManager volumes)
    {
        try
        {
            await volumes.DisposeAsync();
        }
        catch (Exception)
        {
            // Already failing to start; the first error is the one worth reporting.
        }
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "Ovis {Version} started, data in {DataDirectory}")]
    private static partial void LogStarted(ILogger logger, string version, string dataDirectory);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Stopping: closing connections, then flushing volumes")]
    private static partial void LogStopping(ILogger logger);

    [LoggerMessage(EventId = 3, Level = LogLevel.Information, Message = "Stopped")]
    private static partial void LogStopped(ILogger logger);

    [LoggerMessage(EventId = 4, Level = LogLevel.Warning, Message = "{Count} job(s) still running after {Seconds} s; closing the volumes under them")]
    private static partial void LogJobsAbandoned(ILogger logger, int count, double seconds);
}
