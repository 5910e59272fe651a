using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Etcd;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// One cluster's catalog on etcd, under <c>/ovis/&lt;cluster&gt;/</c>: its format, membership
/// (nodes with leases), the epoch, and per-volume locks. Every change that must be atomic is one
/// etcd transaction.
/// </summary>
public sealed partial class EtcdCatalog
{
    private const int MaxCasAttempts = 32;
    private readonly ILogger _logger;

    public EtcdCatalog(EtcdClient client, string cluster, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(client);
        ValidateName(cluster, "cluster name");
        Client = client;
        Cluster = cluster;
        Keys = new CatalogKeys(cluster);
        _logger = logger ?? NullLogger.Instance;
    }

    public EtcdClient Client { get; }

    public string Cluster { get; }

    internal CatalogKeys Keys { get; }

    internal ILogger Logger => _logger;

    /// <summary>
    /// Formats the cluster with <paramref name="copies"/> copies of every object, once: a second
    /// format is refused with a <see cref="CatalogException"/> naming the existing one.
    /// </summary>
    public async Task<ClusterFormat> FormatAsync(int copies, int minCopies = 0, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(copies, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(minCopies);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(minCopies, copies);
        var format = new ClusterFormat(Cluster, copies, DateTimeOffset.UtcNow) { MinCopies = minCopies };
        var epoch = new EpochRecord(0, []);
        // The format and epoch 0 appear together or not at all.
        var result = await Client.TxnAsync(
            [EtcdCompare.Absent(Keys.Format)],
            [new EtcdOp.Put(Keys.Format, JsonSerializer.SerializeToUtf8Bytes(format, CatalogJson.Default.ClusterFormat)),
             new EtcdOp.Put(Keys.Epoch, JsonSerializer.SerializeToUtf8Bytes(epoch, CatalogJson.Default.EpochRecord))],
            [new EtcdOp.Range(Keys.Format)], cancellationToken).ConfigureAwait(false);
        if (result.Succeeded)
            return format;
        var existing = result.Reads[0] is [var kv, ..] ? ParseFormat(kv) : null;
        throw new CatalogException(existing is null
            ? $"cluster '{Cluster}' is already formatted"
            : $"cluster '{Cluster}' is already formatted (copies {existing.Copies}, at {existing.FormattedAt:u}); a cluster is formatted once");
    }

    /// <summary>The cluster's format; null when it was never formatted.</summary>
    public async Task<ClusterFormat?> ReadFormatAsync(CancellationToken cancellationToken = default)
    {
        var kv = await Client.GetAsync(Keys.Format, cancellationToken).ConfigureAwait(false);
        return kv is null ? null : ParseFormat(kv);
    }

    /// <summary>The format, or a <see cref="CatalogException"/> saying the cluster does not exist.</summary>
    public async Task<ClusterFormat> RequireFormatAsync(CancellationToken cancellationToken = default) =>
        await ReadFormatAsync(cancellationToken).ConfigureAwait(false)
        ?? throw new CatalogException(
            $"cluster '{Cluster}' is not formatted at {string.Join(",", Client.Endpoints)}: check the name, or run `ovis cluster format --copies N` first");

    /// <summary>
    /// Joins the cluster: puts the node's key with a lease of <paramref name="ttlSeconds"/>, bumps
    /// the epoch in the same transaction, and keeps the lease alive until the registration is
    /// disposed (a graceful leave) or the process dies (the key goes when the lease runs out). The
    /// node's down record goes in the same transaction. With <paramref name="asMember"/> it joins
    /// only as the member it was — a node that trusts its copies because it was one — and fails
    /// with a <see cref="CatalogException"/> if it has been taken out meanwhile.
    /// </summary>
    public Task<NodeRegistration> JoinAsync(NodeInfo node, long ttlSeconds = 10, bool asMember = false, CancellationToken cancellationToken = default) =>
        NodeRegistration.JoinAsync(this, node, ttlSeconds, asMember, cancellationToken);

    /// <summary>The membership and epoch, read together at one revision.</summary>
    public async Task<MembershipView> ReadMembershipAsync(CancellationToken cancellationToken = default) =>
        (await SnapshotAsync(cancellationToken).ConfigureAwait(false)).View;

    internal async Task<MembershipSnapshot> SnapshotAsync(CancellationToken cancellationToken)
    {
        // A transaction without conditions: both ranges at the same revision.
        var result = await Client.TxnAsync([],
            [new EtcdOp.Range(Keys.Nodes, Prefix: true), new EtcdOp.Range(Keys.Epoch),
             new EtcdOp.Range(Keys.Members, Prefix: true), new EtcdOp.Range(Keys.Stale, Prefix: true),
             new EtcdOp.Range(Keys.Draining, Prefix: true)],
            cancellationToken: cancellationToken).ConfigureAwait(false);
        var nodes = result.Reads[0]
            .Select(kv => (Kv: kv, Node: JsonSerializer.Deserialize(kv.Value, CatalogJson.Default.NodeInfo)!))
            .OrderBy(n => n.Node.Id, StringComparer.Ordinal)
            .ToList();
        var epochKv = result.Reads[1] is [var e, ..] ? e : null;
        var epoch = epochKv is null ? new EpochRecord(0, []) : JsonSerializer.Deserialize(epochKv.Value, CatalogJson.Default.EpochRecord)!;
        NodeInfo[] members = [.. result.Reads[2]
            .Select(kv => JsonSerializer.Deserialize(kv.Value, CatalogJson.Default.NodeInfo)!)
            .OrderBy(n => n.Id, StringComparer.Ordinal)];
        string[] stale = [.. result.Reads[3].Select(kv => kv.Key[Keys.Stale.Length..]).Order(StringComparer.Ordinal)];
        string[] draining = [.. result.Reads[4].Select(kv => kv.Key[Keys.Draining.Length..]).Order(StringComparer.Ordinal)];
        var view = new MembershipView(epoch.Epoch, [.. nodes.Select(n => n.Node)], result.Revision)
        {
            Members = members,
            Stale = stale,
            Draining = draining,
        };
        return new MembershipSnapshot(view, epoch, epochKv?.ModRevision ?? 0, [.. nodes.Select(n => n.Kv)]);
    }

    /// <summary>
    /// Bumps the epoch when the live nodes differ from the ones it was counted for — a node's
    /// lease ran out, which etcd does without a transaction of ours. Any member may call it; the
    /// compare on the epoch's revision lets one of several racing callers win. Returns whether
    /// this call bumped it.
    /// </summary>
    public async Task<bool> ReconcileEpochAsync(CancellationToken cancellationToken = default)
    {
        for (int attempt = 0; attempt < MaxCasAttempts; attempt++)
        {
            var snapshot = await SnapshotAsync(cancellationToken).ConfigureAwait(false);
            string[] live = [.. snapshot.View.Nodes.Select(n => n.Id)];
            if (live.SequenceEqual(snapshot.Epoch.Members, StringComparer.Ordinal))
                return false;
            var next = new EpochRecord(snapshot.Epoch.Epoch + 1, live);
            var result = await Client.TxnAsync([EpochUnchanged(snapshot)], [EpochPut(next)],
                cancellationToken: cancellationToken).ConfigureAwait(false);
            if (result.Succeeded)
            {
                CatalogLog.EpochBumped(_logger, Cluster, next.Epoch, string.Join(",", live));
                return true;
            }
        }
        throw new CatalogException($"cluster '{Cluster}': the epoch kept changing; gave up reconciling it");
    }

    /// <summary>
    /// The membership now, then again after every change of nodes or epoch, until cancelled.
    /// When nodes vanished without a transaction (their leases ran out) it bumps the epoch
    /// (<see cref="ReconcileEpochAsync"/>) before reporting, so every view it yields has an epoch
    /// that counts its node set.
    /// </summary>
    public async IAsyncEnumerable<MembershipView> WatchMembershipAsync(
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (true)
        {
            await ReconcileEpochAsync(cancellationToken).ConfigureAwait(false);
            var snapshot = await SnapshotAsync(cancellationToken).ConfigureAwait(false);
            MembershipView last = snapshot.View;
            if (!snapshot.EpochCountsNodes)
                continue; // changed again between the two reads
            yield return last;

            bool compacted = false;
            var events = Client.WatchPrefixAsync(Keys.Root, last.Revision + 1, cancellationToken)
                .WithCancellation(cancellationToken).ConfigureAwait(false).GetAsyncEnumerator();
            try
            {
                while (true)
                {
                    try
                    {
                        if (!await events.MoveNextAsync())
                            break;
                    }
                    catch (EtcdWatchCompactedException)
                    {
                        compacted = true;
                        break;
                    }
                    string key = events.Current.Kv.Key;
                    if (key != Keys.Epoch && !key.StartsWith(Keys.Nodes, StringComparison.Ordinal)
                        && !key.StartsWith(Keys.Members, StringComparison.Ordinal) && !key.StartsWith(Keys.Stale, StringComparison.Ordinal)
                        && !key.StartsWith(Keys.Draining, StringComparison.Ordinal))
                        continue;
                    await ReconcileEpochAsync(cancellationToken).ConfigureAwait(false);
                    snapshot = await SnapshotAsync(cancellationToken).ConfigureAwait(false);
                    if (!snapshot.EpochCountsNodes || snapshot.View.SameAs(last))
                        continue;
                    last = snapshot.View;
                    yield return last;
                }
            }
            finally
            {
                await events.DisposeAsync();
            }
            if (!compacted)
                yield break;
        }
    }

    /// <summary>
    /// Takes the lock of <paramref name="volume"/> for <paramref name="holder"/>, attached to the
    /// holder's lease: null while another node holds it. The lock ends when disposed or when the
    /// holder's lease runs out, so a crashed gateway never leaves a volume stuck.
    /// </summary>
    public Task<VolumeLock?> TryAcquireVolumeLockAsync(string volume, NodeRegistration holder,
        CancellationToken cancellationToken = default) =>
        VolumeLock.TryAcquireAsync(this, volume, holder, purpose: null, cancellationToken);

    /// <summary>Takes the lock of an idle volume only to recover its copies: an opener that finds
    /// it held so waits for it (<see cref="IsLockedForRecoveryAsync"/>).</summary>
    public Task<VolumeLock?> TryAcquireVolumeLockForRecoveryAsync(string volume, NodeRegistration holder,
        CancellationToken cancellationToken = default) =>
        VolumeLock.TryAcquireAsync(this, volume, holder, purpose: "recovery", cancellationToken);

    /// <summary>Whether <paramref name="volume"/>'s lock is held by a node recovering it (not serving it).</summary>
    public async Task<bool> IsLockedForRecoveryAsync(string volume, CancellationToken cancellationToken = default)
    {
        var kv = await Client.GetAsync(Keys.Lock(volume), cancellationToken).ConfigureAwait(false);
        return kv is not null && JsonSerializer.Deserialize(kv.Value, CatalogJson.Default.LockRecord)!.Purpose == "recovery";
    }

    /// <summary>The id of the node holding <paramref name="volume"/>'s lock; null when free.</summary>
    public async Task<string?> GetVolumeLockHolderAsync(string volume, CancellationToken cancellationToken = default)
    {
        ValidateName(volume, "volume name");
        var kv = await Client.GetAsync(Keys.Lock(volume), cancellationToken).ConfigureAwait(false);
        return kv is null ? null : JsonSerializer.Deserialize(kv.Value, CatalogJson.Default.LockRecord)!.Node;
    }

    /// <summary>
    /// Records durably that <paramref name="node"/>'s copies may miss acknowledged writes, so that
    /// no gateway reads from it until recovery clears the mark. A gateway calls this before it
    /// acknowledges a write or flush that did not reach the node.
    /// </summary>
    public async Task MarkStaleAsync(string node, string by, long epoch, CancellationToken cancellationToken = default)
    {
        ValidateName(node, "node id");
        byte[] value = JsonSerializer.SerializeToUtf8Bytes(new StaleRecord(by, epoch, DateTimeOffset.UtcNow), CatalogJson.Default.StaleRecord);
        // Only the first mark is written: the record says when the node first fell behind.
        await Client.TxnAsync([EtcdCompare.Absent(Keys.StaleMark(node))], [new EtcdOp.Put(Keys.StaleMark(node), value)],
            cancellationToken: cancellationToken).ConfigureAwait(false);
    }

    internal EtcdCompare EpochUnchanged(MembershipSnapshot snapshot) =>
        snapshot.EpochModRevision == 0 ? EtcdCompare.Absent(Keys.Epoch) : EtcdCompare.ModifiedAt(Keys.Epoch, snapshot.EpochModRevision);

    internal EtcdOp.Put EpochPut(EpochRecord epoch) =>
        new(Keys.Epoch, JsonSerializer.SerializeToUtf8Bytes(epoch, CatalogJson.Default.EpochRecord));

    internal static void ValidateName(string name, string what)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        foreach (char c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
                throw new ArgumentException($"{what} '{name}': use letters, digits, '-', '_' and '.'", nameof(name));
        }
    }

    private static ClusterFormat ParseFormat(EtcdKeyValue kv) =>
        JsonSerializer.Deserialize(kv.Value, CatalogJson.Default.ClusterFormat)
        ?? throw new CatalogException($"unreadable cluster format at {kv.Key}");
}

internal sealed record MembershipSnapshot(MembershipView View, EpochRecord Epoch, long EpochModRevision, IReadOnlyList<EtcdKeyValue> NodeKvs)
{
    public bool EpochCountsNodes => View.Nodes.Select(n => n.Id).SequenceEqual(Epoch.Members, StringComparer.Ordinal);
}
