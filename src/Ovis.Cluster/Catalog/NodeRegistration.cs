using System.Text.Json;
using Ovis.Cluster.Etcd;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// A node's membership: its key under <c>nodes/</c> on a lease that a background loop renews
/// every third of the TTL. Dispose to leave (the key goes and the epoch is bumped in one
/// transaction, then the lease and every lock on it are revoked). While renewals fail the node
/// is not <see cref="IsCurrent"/>; when etcd says the lease is gone, <see cref="Lost"/> fires: the
/// node is no longer a member (and joins again with a new registration).
/// </summary>
public sealed class NodeRegistration : IAsyncDisposable
{
    private readonly EtcdCatalog _catalog;
    private readonly CancellationTokenSource _lost = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _keepAlive;
    private readonly long _createRevision;
    private long _validUntil;
    private int _disposed;

    private NodeRegistration(EtcdCatalog catalog, NodeInfo node, EtcdLease lease, long grantedAt, long createRevision, long epoch)
    {
        _catalog = catalog;
        _validUntil = grantedAt + (lease.TtlSeconds * 1000);
        Node = node;
        LeaseId = lease.Id;
        TtlSeconds = lease.TtlSeconds;
        JoinedEpoch = epoch;
        _createRevision = createRevision;
        _keepAlive = Task.Run(KeepAliveLoopAsync);
    }

    public NodeInfo Node { get; }

    /// <summary>The lease every key of this node (its membership, its volume locks) hangs on.</summary>
    public long LeaseId { get; }

    public long TtlSeconds { get; }

    /// <summary>The epoch this node's join created.</summary>
    public long JoinedEpoch { get; }

    /// <summary>Cancelled when the lease is lost: the node's key and its locks are gone.</summary>
    public CancellationToken Lost => _lost.Token;

    /// <summary>Whether etcd said the lease is gone: this registration is over.</summary>
    public bool IsLost => _lost.IsCancellationRequested;

    /// <summary>
    /// Whether the lease is certainly still valid by this process's monotonic clock: the last
    /// renewal etcd answered was sent less than a TTL ago. A process that was paused longer than
    /// that learns here, before it sends a thing, that its locks may be someone else's — without
    /// waiting for its next renewal to fail. Cheap: read before every change a gateway sends.
    /// </summary>
    public bool IsCurrent => !_lost.IsCancellationRequested && Environment.TickCount64 < Volatile.Read(ref _validUntil);

    internal static async Task<NodeRegistration> JoinAsync(EtcdCatalog catalog, NodeInfo node, long ttlSeconds, bool asMember,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(node);
        EtcdCatalog.ValidateName(node.Id, "node id");
        await catalog.RequireFormatAsync(cancellationToken).ConfigureAwait(false);
        var client = catalog.Client;
        string key = catalog.Keys.Node(node.Id);
        // A node restarted right after a crash finds its old key still there until the old lease
        // runs out: it waits that long (a lease of the same length) before it takes a lease itself.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(ttlSeconds + 2);
        while (await client.GetAsync(key, cancellationToken).ConfigureAwait(false) is not null && DateTime.UtcNow < deadline)
            await Task.Delay(TimeSpan.FromMilliseconds(250), cancellationToken).ConfigureAwait(false);
        long grantedAt = Environment.TickCount64;
        var lease = await client.GrantLeaseAsync(ttlSeconds, cancellationToken).ConfigureAwait(false);
        try
        {
            byte[] value = JsonSerializer.SerializeToUtf8Bytes(node, CatalogJson.Default.NodeInfo);
            for (int attempt = 0; attempt < 32; attempt++)
            {
                var snapshot = await catalog.SnapshotAsync(cancellationToken).ConfigureAwait(false);
                if (snapshot.View.Nodes.Any(n => n.Id == node.Id))
                    throw new CatalogException($"node '{node.Id}' is already a member of cluster '{catalog.Cluster}' (a live process holds its lease)");
                // The epoch compare below keeps this true up to the join: taking a member out bumps it.
                if (asMember && !snapshot.View.Members.Any(m => m.Id == node.Id))
                    throw new CatalogException($"node '{node.Id}' was taken out of cluster '{catalog.Cluster}' while it started (down longer than the down-out interval): start it again to join as a new member");
                // Members the epoch counts plus this one: a node whose lease ran out unnoticed is
                // dropped by the next reconcile, which bumps the epoch again.
                string[] members = [.. snapshot.View.Nodes.Select(n => n.Id).Append(node.Id).Order(StringComparer.Ordinal)];
                var epoch = new EpochRecord(snapshot.Epoch.Epoch + 1, members);
                var result = await client.TxnAsync(
                    [EtcdCompare.Absent(key), catalog.EpochUnchanged(snapshot)],
                    [new EtcdOp.Put(key, value, lease.Id), new EtcdOp.Put(catalog.Keys.Member(node.Id), value),
                     new EtcdOp.Delete(catalog.Keys.DownMark(node.Id)), catalog.EpochPut(epoch)],
                    cancellationToken: cancellationToken).ConfigureAwait(false);
                if (result.Succeeded)
                {
                    CatalogLog.Joined(catalog.Logger, node.Id, catalog.Cluster, epoch.Epoch);
                    return new NodeRegistration(catalog, node, lease, grantedAt, result.Revision, epoch.Epoch);
                }
            }
            throw new CatalogException($"node '{node.Id}' could not join cluster '{catalog.Cluster}': membership kept changing");
        }
        catch
        {
            await client.RevokeAsync(lease.Id, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Completes when the lease is current again (true) or known to be lost (false), or once it has
    /// not been current for <paramref name="limit"/> (false). While etcd does not answer nobody can take this node's
    /// locks either, so requests wait here instead of failing: after an etcd restart the lease
    /// is still there (etcd extends every lease when a leader takes over) and the first renewal
    /// makes it current again.
    /// </summary>
    public async ValueTask<bool> WaitCurrentAsync(TimeSpan limit)
    {
        // Counted from when the lease stopped being current, not from each request: once a lease
        // is late by the limit, every request fails at once instead of waiting the limit again.
        long deadline = Volatile.Read(ref _validUntil) + (long)limit.TotalMilliseconds;
        while (!IsCurrent)
        {
            if (_lost.IsCancellationRequested || Environment.TickCount64 >= deadline)
                return false;
            await Task.Delay(TimeSpan.FromMilliseconds(20)).ConfigureAwait(false);
        }
        return true;
    }

    /// <summary>
    /// Renews the lease every third of the TTL. A renewal that fails (etcd down, slow or cut off)
    /// is tried again at the next tick; only etcd's own answer that the lease is gone makes it
    /// <see cref="Lost"/>. Giving up on the lease after a TTL without answers, as this loop once
    /// did, turned an etcd restart into a node that left for good (its lease outlived the restart).
    /// </summary>
    private async Task KeepAliveLoopAsync()
    {
        var interval = TimeSpan.FromSeconds(Math.Max(0.5, TtlSeconds / 3.0));
        bool failing = false;
        using var timer = new PeriodicTimer(interval);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                long ttl;
                // The lease runs from when etcd takes the renewal, later than this: counting from the send is safe.
                long sent = Environment.TickCount64;
                try
                {
                    // One renewal may not hold up the next for longer than the lease lasts.
                    using var attempt = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
                    attempt.CancelAfter(TimeSpan.FromSeconds(TtlSeconds));
                    ttl = await _catalog.Client.KeepAliveOnceAsync(LeaseId, attempt.Token).ConfigureAwait(false);
                }
                catch (EtcdException e) when (e.GrpcCode == 5)
                {
                    ttl = 0; // NOT_FOUND: the lease ran out in etcd
                }
                catch (Exception e) when (e is EtcdException or HttpRequestException
                    || (e is OperationCanceledException && !_stop.IsCancellationRequested))
                {
                    if (!failing)
                        CatalogLog.KeepAliveFailed(_catalog.Logger, Node.Id, e);
                    failing = true;
                    continue;
                }
                if (ttl > 0)
                {
                    if (failing)
                        CatalogLog.KeepAliveBack(_catalog.Logger, Node.Id);
                    failing = false;
                    Volatile.Write(ref _validUntil, sent + (ttl * 1000));
                    continue;
                }
                CatalogLog.LeaseLost(_catalog.Logger, Node.Id, _catalog.Cluster);
                await _lost.CancelAsync().ConfigureAwait(false);
                return;
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>
    /// Stops renewing the lease without giving it back, as a killed process would: the node's
    /// key and locks vanish when the lease runs out. For tests of failure handling.
    /// </summary>
    internal async Task AbandonAsync()
    {
        Interlocked.Exchange(ref _disposed, 1);
        await _stop.CancelAsync().ConfigureAwait(false);
        await _keepAlive.ConfigureAwait(false);
    }

    /// <summary>Leaves the cluster: removes the node and bumps the epoch atomically, then revokes the lease.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        await _stop.CancelAsync().ConfigureAwait(false);
        await _keepAlive.ConfigureAwait(false);
        var client = _catalog.Client;
        string key = _catalog.Keys.Node(Node.Id);
        for (int attempt = 0; attempt < 32 && !_lost.IsCancellationRequested; attempt++)
        {
            var snapshot = await _catalog.SnapshotAsync(CancellationToken.None).ConfigureAwait(false);
            if (!snapshot.NodeKvs.Any(kv => kv.Key == key && kv.CreateRevision == _createRevision))
                break; // our key is gone already (the lease ran out): a reconcile bumps the epoch
            string[] members = [.. snapshot.View.Nodes.Select(n => n.Id).Where(id => id != Node.Id)];
            var result = await client.TxnAsync(
                [EtcdCompare.CreatedAt(key, _createRevision), _catalog.EpochUnchanged(snapshot)],
                [new EtcdOp.Delete(key), _catalog.EpochPut(new EpochRecord(snapshot.Epoch.Epoch + 1, members))],
                cancellationToken: CancellationToken.None).ConfigureAwait(false);
            if (result.Succeeded)
                break;
        }
        await client.RevokeAsync(LeaseId, CancellationToken.None).ConfigureAwait(false);
        _lost.Dispose();
        _stop.Dispose();
    }
}
