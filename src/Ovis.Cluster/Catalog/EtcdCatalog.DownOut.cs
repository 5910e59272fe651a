using System.Text.Json;
using Ovis.Cluster.Etcd;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// Down → out: a member that is not live gets a record of when it was first seen down; once it
/// has been down long enough (the node's <c>--down-out-interval</c>) any node may take it out of
/// the members, which moves its objects' placement to the remaining nodes. A node taken out that
/// comes back joins as a new member.
/// </summary>
public sealed partial class EtcdCatalog
{
    /// <summary>
    /// Records that member <paramref name="id"/> is down, once: the first caller writes the time,
    /// later ones leave it (any node may call; the record goes when the node joins again or is
    /// taken out). Returns the time it has been down since, or null when it is live or no member.
    /// </summary>
    public async Task<DateTimeOffset?> MarkDownAsync(string id, CancellationToken cancellationToken = default)
    {
        ValidateName(id, "node id");
        var record = new DownRecord(DateTimeOffset.UtcNow);
        var result = await Client.TxnAsync(
            [EtcdCompare.Absent(Keys.Node(id)), EtcdCompare.Present(Keys.Member(id)), EtcdCompare.Absent(Keys.DownMark(id))],
            [new EtcdOp.Put(Keys.DownMark(id), JsonSerializer.SerializeToUtf8Bytes(record, CatalogJson.Default.DownRecord))],
            [new EtcdOp.Range(Keys.Node(id)), new EtcdOp.Range(Keys.DownMark(id))], cancellationToken).ConfigureAwait(false);
        if (result.Succeeded)
            return record.Since;
        return result.Reads is [[], [var down, ..]] ? ParseDown(down).Since : null;
    }

    /// <summary>The members recorded down, each with the time it was first seen down.</summary>
    public async Task<IReadOnlyDictionary<string, DateTimeOffset>> ReadDownSinceAsync(CancellationToken cancellationToken = default)
    {
        var range = await Client.RangePrefixAsync(Keys.Down, cancellationToken).ConfigureAwait(false);
        return range.Kvs.ToDictionary(kv => kv.Key[Keys.Down.Length..], kv => ParseDown(kv).Since, StringComparer.Ordinal);
    }

    /// <summary>
    /// Why member <paramref name="id"/> must not be taken out of <paramref name="view"/>'s members:
    /// the others that may hold copies (not draining) would span fewer zones than the cluster keeps
    /// copies, and no object could be placed; null when it may be.
    /// </summary>
    public static string? WhyNotTakeOut(ClusterFormat format, MembershipView view, string id)
    {
        ArgumentNullException.ThrowIfNull(format);
        ArgumentNullException.ThrowIfNull(view);
        int zones = HoldingZones(view, id).Length;
        string others = view.Draining.Any(d => d != id) ? "the other members that are not draining" : "the other members";
        return zones >= format.Copies ? null
            : $"{others} span {zones} zone(s), fewer than the {format.Copies} copies of cluster '{format.Name}': its objects could not be placed without it";
    }

    /// <summary>
    /// Takes member <paramref name="id"/> out of the cluster: deletes its member key, stale mark,
    /// down record and drain mark and bumps the epoch (same live nodes), in one transaction that holds only
    /// while the node is not live, is still a member, has been down since
    /// <paramref name="downBefore"/> or earlier by its down record (so a node that came back and
    /// died again gets a grace period of its own), and the epoch is as read. Returns false, and the
    /// node stays a member, down, when any of that fails — another node took it out first, it is
    /// back — or when <see cref="WhyNotTakeOut"/> refuses (logged). Several nodes may race; one wins.
    /// </summary>
    public async Task<bool> TakeOutAsync(string id, DateTimeOffset downBefore, CancellationToken cancellationToken = default)
    {
        ValidateName(id, "node id");
        var format = await RequireFormatAsync(cancellationToken).ConfigureAwait(false);
        for (int attempt = 0; attempt < MaxCasAttempts; attempt++)
        {
            var snapshot = await SnapshotAsync(cancellationToken).ConfigureAwait(false);
            var marks = await Client.TxnAsync([], [new EtcdOp.Range(Keys.Member(id)), new EtcdOp.Range(Keys.DownMark(id))],
                cancellationToken: cancellationToken).ConfigureAwait(false);
            if (snapshot.View.Nodes.Any(n => n.Id == id)
                || marks.Reads is not [[var member, ..], [var down, ..]]
                || ParseDown(down).Since > downBefore)
                return false;
            if (WhyNotTakeOut(format, snapshot.View, id) is { } why)
            {
                CatalogLog.TakeOutRefused(Logger, id, Cluster, why);
                return false;
            }

            string[] live = [.. snapshot.View.Nodes.Select(n => n.Id)];
            var next = new EpochRecord(snapshot.Epoch.Epoch + 1, live);
            var result = await Client.TxnAsync(
                [EtcdCompare.Absent(Keys.Node(id)), EtcdCompare.CreatedAt(Keys.Member(id), member.CreateRevision),
                 EtcdCompare.ModifiedAt(Keys.DownMark(id), down.ModRevision), EpochUnchanged(snapshot)],
                [new EtcdOp.Delete(Keys.Member(id)), new EtcdOp.Delete(Keys.StaleMark(id)), new EtcdOp.Delete(Keys.DownMark(id)),
                 new EtcdOp.Delete(Keys.DrainMark(id)), EpochPut(next)],
                cancellationToken: cancellationToken).ConfigureAwait(false);
            if (result.Succeeded)
            {
                CatalogLog.EpochBumped(Logger, Cluster, next.Epoch, string.Join(",", live));
                return true;
            }
        }
        throw new CatalogException($"cluster '{Cluster}': the membership kept changing; gave up taking node '{id}' out");
    }

    private static DownRecord ParseDown(EtcdKeyValue kv) =>
        JsonSerializer.Deserialize(kv.Value, CatalogJson.Default.DownRecord)
        ?? throw new CatalogException($"unreadable down record at {kv.Key}");
}
