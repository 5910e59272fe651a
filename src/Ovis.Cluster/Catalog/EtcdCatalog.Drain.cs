using System.Text.Json;
using Ovis.Cluster.Etcd;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// Draining: an operator retiring a node that works marks it <c>draining/ID</c>. Placement then
/// gives it weight 0 — it is chosen for no object — while it stays a member, live and serving, so
/// recovery copies each of its objects to the node that replaces it from the copies that were
/// there before (the drained node's own among them): no object ever has fewer copies than the
/// cluster keeps. The mark goes on cancel, or when the node is taken out.
/// </summary>
public sealed partial class EtcdCatalog
{
    /// <summary>
    /// Why member <paramref name="id"/> must not be drained: the members left to hold copies — not
    /// draining, not it — would span fewer zones than the cluster keeps copies; null when it may be.
    /// </summary>
    public static string? WhyNotDrain(ClusterFormat format, MembershipView view, string id)
    {
        ArgumentNullException.ThrowIfNull(format);
        ArgumentNullException.ThrowIfNull(view);
        string[] zones = HoldingZones(view, id);
        return zones.Length >= format.Copies ? null
            : $"draining node '{id}' would leave {zones.Length} zone(s) ({string.Join(", ", zones)}) for the {format.Copies} copies of cluster '{format.Name}': add a node in another zone first";
    }

    /// <summary>The zones of the members that may hold copies: neither draining nor <paramref name="without"/>.</summary>
    internal static string[] HoldingZones(MembershipView view, string without) =>
        [.. view.Members.Where(m => m.Id != without && !view.Draining.Contains(m.Id, StringComparer.Ordinal))
            .Select(m => m.Zone).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)];

    /// <summary>
    /// Starts (<paramref name="draining"/>) or cancels the drain of member <paramref name="id"/>: puts
    /// or deletes its mark and bumps the epoch, in one transaction that holds only while it is still
    /// a member and the epoch is as read — so every node's next view places objects without (or
    /// again with) it, and a gateway still on the old placement is refused by the copies of the new
    /// one and resends. Returns false when the member was already so. Throws a
    /// <see cref="CatalogException"/> when it is no member, or when <see cref="WhyNotDrain"/> refuses.
    /// </summary>
    public async Task<bool> SetDrainingAsync(string id, bool draining, CancellationToken cancellationToken = default)
    {
        ValidateName(id, "node id");
        var format = await RequireFormatAsync(cancellationToken).ConfigureAwait(false);
        for (int attempt = 0; attempt < MaxCasAttempts; attempt++)
        {
            var snapshot = await SnapshotAsync(cancellationToken).ConfigureAwait(false);
            MembershipView view = snapshot.View;
            if (!view.Members.Any(m => m.Id == id))
                throw new CatalogException($"node '{id}' is not a member of cluster '{Cluster}'");
            if (view.Draining.Contains(id, StringComparer.Ordinal) == draining)
                return false;
            if (draining && WhyNotDrain(format, view, id) is { } why)
                throw new CatalogException(why);

            string[] live = [.. view.Nodes.Select(n => n.Id)];
            var next = new EpochRecord(snapshot.Epoch.Epoch + 1, live);
            EtcdOp change = draining
                ? new EtcdOp.Put(Keys.DrainMark(id), JsonSerializer.SerializeToUtf8Bytes(new DrainRecord(DateTimeOffset.UtcNow), CatalogJson.Default.DrainRecord))
                : new EtcdOp.Delete(Keys.DrainMark(id));
            // Every join, leave and take-out bumps the epoch, so an unchanged epoch means the
            // members (and the other drains) are as this decision read them.
            var result = await Client.TxnAsync(
                [EtcdCompare.Present(Keys.Member(id)), draining ? EtcdCompare.Absent(Keys.DrainMark(id)) : EtcdCompare.Present(Keys.DrainMark(id)),
                 EpochUnchanged(snapshot)],
                [change, EpochPut(next)], cancellationToken: cancellationToken).ConfigureAwait(false);
            if (result.Succeeded)
            {
                CatalogLog.DrainChanged(Logger, Cluster, id, draining ? "is draining" : "is no longer draining", next.Epoch);
                return true;
            }
        }
        throw new CatalogException($"cluster '{Cluster}': the membership kept changing; gave up {(draining ? "draining" : "cancelling the drain of")} node '{id}'");
    }
}
