using System.Text;

namespace Ovis.Cluster.Catalog;

public sealed partial class EtcdCatalog
{
    /// <summary>
    /// The cluster's admin token: <paramref name="candidate"/> if no node has stored one yet (the
    /// first node to start writes it, in one transaction, so two first nodes cannot disagree),
    /// else the one stored. Every node accepts this token, so the CLI may talk to any of them.
    /// </summary>
    public async Task<string> SettleAdminTokenAsync(string candidate, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(candidate);
        var (created, existing) = await Client.CreateAsync(Keys.AdminToken, Encoding.UTF8.GetBytes(candidate), cancellationToken: cancellationToken).ConfigureAwait(false);
        if (created)
        {
            return candidate;
        }

        return existing?.ValueText.Trim() is { Length: > 0 } stored
            ? stored
            : throw new CatalogException($"the admin token of cluster '{Cluster}' in etcd ({Keys.AdminToken}) is empty: delete the key and restart a node to create a new one");
    }
}
