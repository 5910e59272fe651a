using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Etcd;

namespace Ovis.Node;

/// <summary>
/// A node's place in its cluster: the catalog on etcd, the cluster's format and the node's
/// membership lease (the data path is <see cref="ClusterRuntime"/>). On an embedded node
/// <see cref="IsClustered"/> is false and everything else is null.
/// </summary>
public sealed partial class ClusterMembership : IAsyncDisposable
{
    public const string NodeIdFile = "node-id";

    /// <summary>Written in the data directory once the node has joined: which cluster its store belongs to.</summary>
    public const string JoinedFile = "cluster-joined";

    private readonly EtcdClient? _client;

    private ClusterMembership(EtcdClient? client, EtcdCatalog? catalog, ClusterFormat? format)
    {
        _client = client;
        Catalog = catalog;
        Format = format;
    }

    public static ClusterMembership Embedded { get; } = new(null, null, null);

    public bool IsClustered => Catalog is not null;

    public EtcdCatalog? Catalog { get; }

    public ClusterFormat? Format { get; }

    public NodeRegistration? Registration { get; private set; }

    /// <summary>Connects to the catalog and checks the cluster is formatted; one-line <see cref="NodeStartException"/> otherwise.</summary>
    internal static async Task<ClusterMembership> ConnectAsync(ClusterMembershipOptions options, ILogger logger, CancellationToken cancellationToken)
    {
        var client = new EtcdClient(options.Uri.Endpoints);
        try
        {
            var catalog = new EtcdCatalog(client, options.Uri.Name, logger);
            // A node started while etcd is down (a whole-site power-up, etcd restarting) waits for
            // it, as a node whose lease lapsed waits to rejoin; a catalog that answers "not
            // formatted" or "another cluster" is an operator's mistake and fails at once.
            for (int attempt = 0; ; attempt++)
            {
                try
                {
                    return new ClusterMembership(client, catalog, await Describe(options, () => catalog.RequireFormatAsync(cancellationToken)));
                }
                catch (NodeStartException ex) when (ex.InnerException is EtcdException or HttpRequestException)
                {
                    if (attempt % 30 == 0)
                        LogWaitingForCatalog(logger, options.Uri.ToString(), ex.InnerException.Message);
                    await Task.Delay(CatalogRetry, cancellationToken);
                }
            }
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>How often a node that cannot reach etcd asks again, at start and to rejoin.</summary>
    internal static readonly TimeSpan CatalogRetry = TimeSpan.FromSeconds(1);

    /// <summary>Joins as <paramref name="id"/> with the node's bound NBD and peer addresses; with
    /// <paramref name="asMember"/> only if it is still the member it was (see <see cref="EtcdCatalog.JoinAsync"/>).</summary>
    internal async Task JoinAsync(ClusterMembershipOptions options, string id, string address, string peer, bool asMember, ILogger logger, CancellationToken cancellationToken)
    {
        var catalog = Catalog ?? throw new InvalidOperationException("not clustered");
        Registration = await Describe(options, () => catalog.JoinAsync(new NodeInfo(id, address, options.Zone) { Peer = peer }, options.LeaseTtlSeconds, asMember, cancellationToken));
        LogJoined(logger, id, catalog.Cluster, options.Zone, Registration.JoinedEpoch);
    }

    /// <summary>The membership now, after counting any node whose lease ran out into the epoch.</summary>
    public async Task<MembershipView> ReadMembershipAsync(CancellationToken cancellationToken)
    {
        var catalog = Catalog ?? throw new InvalidOperationException("not clustered");
        await catalog.ReconcileEpochAsync(cancellationToken);
        return await catalog.ReadMembershipAsync(cancellationToken);
    }

    /// <summary>Leaves the cluster (the node's key goes, the epoch is bumped) and closes the client.</summary>
    public async ValueTask DisposeAsync()
    {
        await StopRejoiningAsync();
        if (Registration is { } registration)
        {
            Registration = null;
            try
            {
                await registration.DisposeAsync();
            }
            catch (Exception ex) when (ex is EtcdException or HttpRequestException or CatalogException)
            {
                // The lease runs out on its own; leaving early is a courtesy.
            }
        }

        _client?.Dispose();
    }

    /// <summary>The id kept in the data directory, created the first time.</summary>
    internal static string ReadOrCreateNodeId(string dataDirectory)
    {
        var path = Path.Combine(dataDirectory, NodeIdFile);
        if (File.Exists(path))
        {
            var stored = File.ReadAllText(path).Trim();
            if (stored.Length > 0)
            {
                return stored;
            }
        }

        var id = "node-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        var temp = path + ".tmp";
        File.WriteAllText(temp, id + "\n");
        File.Move(temp, path, overwrite: true);
        return id;
    }

    /// <summary>
    /// Whether this data directory's store is the one that joined <paramref name="format"/>'s
    /// cluster before: a member back on it missed nothing it was not marked stale for, even with
    /// no objects (placement may have given it none). A wiped or replaced directory has no record.
    /// </summary>
    internal static bool JoinedBefore(string dataDirectory, ClusterFormat format)
    {
        var path = Path.Combine(dataDirectory, JoinedFile);
        return File.Exists(path) && File.ReadAllText(path).Trim() == JoinedRecord(format);
    }

    /// <summary>Records, after a join, that this data directory's store is a member's (see <see cref="JoinedBefore"/>).</summary>
    internal static void RecordJoined(string dataDirectory, ClusterFormat format)
    {
        if (JoinedBefore(dataDirectory, format))
        {
            return;
        }

        var path = Path.Combine(dataDirectory, JoinedFile);
        var temp = path + ".tmp";
        File.WriteAllText(temp, JoinedRecord(format) + "\n");
        File.Move(temp, path, overwrite: true);
    }

    // The name and the time of the format: a cluster formatted again under the same name is another one.
    private static string JoinedRecord(ClusterFormat format)
        => $"{format.Name} {format.FormattedAt.ToString("O", System.Globalization.CultureInfo.InvariantCulture)}";

    /// <summary>Runs a catalog action, turning its failures into one line for an operator.</summary>
    internal static async Task<T> Describe<T>(ClusterMembershipOptions options, Func<Task<T>> action)
    {
        try
        {
            return await action();
        }
        catch (CatalogException ex)
        {
            throw new NodeStartException(ex.Message, ex);
        }
        catch (ArgumentException ex)
        {
            throw new NodeStartException($"cannot join {options.Uri}: {ex.Message}", ex);
        }
        catch (Exception ex) when (ex is EtcdException or HttpRequestException)
        {
            throw new NodeStartException($"cannot reach the cluster catalog at {options.Uri}: {ex.Message}", ex);
        }
    }

    [LoggerMessage(EventId = 20, Level = LogLevel.Information, Message = "Joined cluster {Cluster} as {Node} in zone {Zone}, epoch {Epoch}")]
    private static partial void LogJoined(ILogger logger, string node, string cluster, string zone, long epoch);

    [LoggerMessage(EventId = 22, Level = LogLevel.Warning, Message = "Waiting for the cluster catalog at {Uri}: {Error}; trying again every second")]
    private static partial void LogWaitingForCatalog(ILogger logger, string uri, string error);
}
