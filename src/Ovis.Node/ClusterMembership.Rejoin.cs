using Microsoft.Extensions.Logging;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Etcd;

namespace Ovis.Node;

/// <summary>
/// Rejoin: a node whose lease etcd let run out — etcd was down or out of reach longer than the
/// lease, the process was paused, a partition healed — joins again by itself as soon as etcd
/// answers, with a new lease. It comes back as it would after a restart: as the member it was
/// (the gateways that wrote while it was out marked it stale and logged what it missed, so it
/// resyncs through the dirty-region log before it serves reads), or, when it was taken out
/// meanwhile, stale as a new node that recovery fills again. While it is out its exports say so.
/// </summary>
public sealed partial class ClusterMembership
{
    private readonly CancellationTokenSource _stopRejoining = new();
    private Task _rejoining = Task.CompletedTask;

    /// <summary>Whether this node holds a live membership lease now (false while it rejoins).</summary>
    public bool IsMember => Registration is { IsLost: false };

    /// <summary>
    /// After the first join: whenever the lease is lost, joins again with the node's addresses.
    /// <paramref name="prepare"/> says, before each attempt, whether the node may join as the member
    /// it was (marking it stale when not); <paramref name="rejoined"/> hands the new lease on.
    /// </summary>
    internal void KeepJoined(ClusterMembershipOptions options, string id, string address, string peer,
        Func<CancellationToken, Task<bool>> prepare, Func<NodeRegistration, Task> rejoined, ILogger logger)
    {
        _rejoining = Task.Run(() => RejoinLoopAsync(options, id, address, peer, prepare, rejoined, logger, _stopRejoining.Token), CancellationToken.None);
    }

    private async Task RejoinLoopAsync(ClusterMembershipOptions options, string id, string address, string peer,
        Func<CancellationToken, Task<bool>> prepare, Func<NodeRegistration, Task> rejoined, ILogger logger, CancellationToken stop)
    {
        try
        {
            while (Registration is { } registration)
            {
                var lost = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                using (registration.Lost.Register(() => lost.TrySetResult()))
                    await lost.Task.WaitAsync(stop).ConfigureAwait(false);
                LogRejoining(logger, id, Catalog!.Cluster);
                for (int attempt = 0; ; attempt++)
                {
                    try
                    {
                        bool asMember = await prepare(stop).ConfigureAwait(false);
                        await JoinAsync(options, id, address, peer, asMember, logger, stop).ConfigureAwait(false);
                        await DisposeQuietlyAsync(registration).ConfigureAwait(false);
                        await rejoined(Registration!).ConfigureAwait(false);
                        LogRejoined(logger, id, Catalog.Cluster, attempt + 1);
                        break;
                    }
                    catch (Exception ex) when (ex is NodeStartException or CatalogException or EtcdException or HttpRequestException)
                    {
                        if (attempt % 30 == 0)
                            LogRejoinFailed(logger, id, ex.Message);
                        await Task.Delay(CatalogRetry, stop).ConfigureAwait(false);
                    }
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    private async Task StopRejoiningAsync()
    {
        if (!IsClustered || _stopRejoining.IsCancellationRequested)
            return;
        await _stopRejoining.CancelAsync();
        await _rejoining;
    }

    private static async Task DisposeQuietlyAsync(NodeRegistration registration)
    {
        try
        {
            await registration.DisposeAsync();
        }
        catch (Exception ex) when (ex is EtcdException or HttpRequestException or CatalogException)
        {
            // The old lease is gone already; giving it back is a courtesy.
        }
    }

    [LoggerMessage(EventId = 23, Level = LogLevel.Warning, Message = "Node {Node} is out of cluster {Cluster} (its lease ran out): its exports are refused and its volumes' requests fail until it rejoins, which it does as soon as the catalog answers")]
    private static partial void LogRejoining(ILogger logger, string node, string cluster);

    [LoggerMessage(EventId = 24, Level = LogLevel.Information, Message = "Node {Node} rejoined cluster {Cluster} (attempt {Attempt})")]
    private static partial void LogRejoined(ILogger logger, string node, string cluster, int attempt);

    [LoggerMessage(EventId = 25, Level = LogLevel.Warning, Message = "Node {Node} cannot rejoin yet: {Error}; trying again every second")]
    private static partial void LogRejoinFailed(ILogger logger, string node, string error);
}
