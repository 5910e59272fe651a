using Ovis.Cluster.Catalog;
using Ovis.Cluster.Etcd;
using Ovis.Node.Admin;

namespace Ovis.Node;

public sealed partial class OvisNode
{
    // Without a token, anyone who reaches the port may delete every volume: fine on loopback for
    // a test or a laptop, not on a network unless the operator says so.
    private static void RefuseOpenAdminOnNetwork(NodeOptions options)
    {
        if (options.RequireToken || options.Insecure || options.AdminAddress.IsLoopback)
        {
            return;
        }

        throw new NodeStartException(
            $"refusing to serve the admin API on {options.AdminAddress} without a token: anyone who can reach it could delete every volume; "
            + "drop --no-token, listen on 127.0.0.1, or add --insecure if this network is trusted");
    }

    /// <summary>
    /// The token admin requests must carry: the operator's <c>--token-file</c>, else a cluster's
    /// (settled in etcd by its first node and copied into the data directory for the local CLI),
    /// else the data directory's own; null with <see cref="NodeOptions.RequireToken"/> off.
    /// </summary>
    private static async Task<AdminToken?> ResolveTokenAsync(NodeOptions options, string dataDirectory, EtcdCatalog? catalog, CancellationToken cancellationToken)
    {
        if (!options.RequireToken)
        {
            return null;
        }

        if (options.TokenFile is { } file)
        {
            return AdminToken.ReadFile(file);
        }

        if (catalog is null)
        {
            return await OpenDataAsync(dataDirectory, () => Task.FromResult(AdminToken.ReadOrCreate(dataDirectory)));
        }

        string settled;
        try
        {
            settled = await catalog.SettleAdminTokenAsync(AdminToken.Generate(), cancellationToken);
        }
        catch (Exception ex) when (ex is EtcdException or HttpRequestException or CatalogException)
        {
            throw new NodeStartException($"cannot read the cluster's admin token from etcd: {ex.Message}", ex);
        }

        var path = Path.Combine(dataDirectory, AdminToken.FileName);
        var local = File.Exists(path) ? File.ReadAllText(path).Trim() : null;
        return local == settled
            ? new AdminToken(settled, path)
            : await OpenDataAsync(dataDirectory, () => Task.FromResult(AdminToken.Write(dataDirectory, settled)));
    }
}
