using System.Diagnostics.CodeAnalysis;

namespace Ovis.Node;

/// <summary>What one node serves and where; the defaults are those of <c>ovis serve</c>.</summary>
public sealed class NodeOptions
{
    public const int DefaultNbdPort = 10809;
    public const int DefaultAdminPort = 7070;
    public const int DefaultPeerPort = 7071;
    public const int DefaultMaxConnections = 1024;

    /// <summary>The smallest <see cref="CacheSize"/>, as for the journal: a smaller cache would be
    /// full after one burst of writes, and they would wait for the replicas anyway.</summary>
    public const long MinCacheSize = 16L << 20;

    /// <summary>The data directory; relative paths are resolved against the current directory.</summary>
    public string DataDirectory { get; set; } = "ovis-data";

    /// <summary>NBD over TCP; null serves NBD only on <see cref="NbdSocketPath"/>.</summary>
    public ListenAddress? NbdAddress { get; set; } = ListenAddress.Loopback(DefaultNbdPort);

    /// <summary>NBD over a Unix domain socket, in addition to TCP; null for none.</summary>
    public string? NbdSocketPath { get; set; }

    /// <summary>How long an NBD client may take to reach the transmission phase before it is cut off; <see cref="Timeout.InfiniteTimeSpan"/> for no limit.</summary>
    public TimeSpan NbdHandshakeTimeout { get; set; } = new Ovis.Nbd.NbdServerOptions().HandshakeTimeout;

    /// <summary>NBD connections served at once, over all NBD listeners; more are closed as they arrive.</summary>
    public int MaxNbdConnections { get; set; } = DefaultMaxConnections;

    /// <summary>The admin HTTP API.</summary>
    public ListenAddress AdminAddress { get; set; } = ListenAddress.Loopback(DefaultAdminPort);

    /// <summary>The admin token's file, shared by every node of a cluster that is given it; null
    /// uses the cluster's token in etcd, or on a single node <c>admin-token</c> in the data directory
    /// (created the first time). See docs/admin-api.md, "Token".</summary>
    public string? TokenFile { get; set; }

    /// <summary>False serves the admin API without a token: anyone who reaches it may change
    /// state. Refused on an admin address other than loopback unless <see cref="Insecure"/>.</summary>
    public bool RequireToken { get; set; } = true;

    /// <summary>The operator accepts an admin API without a token on a non-loopback address.</summary>
    public bool Insecure { get; set; }

    /// <summary>Size of the store's journal ring (see docs/store.md).</summary>
    public long JournalSize { get; set; } = new Ovis.Store.LocalStoreOptions().JournalSize;

    /// <summary>Share of the data directory's file system in use from which the node reports <c>nearfull</c>.</summary>
    public double NearFullRatio { get; set; } = new Ovis.Store.LocalStoreOptions().NearFullRatio;

    /// <summary>Share of the file system in use from which the node reports <c>full</c> and refuses
    /// writes that need new space with ENOSPC (docs/store.md, "Full disks").</summary>
    public double FullRatio { get; set; } = new Ovis.Store.LocalStoreOptions().FullRatio;

    /// <summary>Where the gateway writeback cache keeps its log (docs/writeback-cache.md);
    /// <c>cache</c> in <see cref="DataDirectory"/> unless set (null sets it back to that).</summary>
    [AllowNull]
    public string CacheDirectory
    {
        get => _cacheDirectory ?? Path.Combine(DataDirectory, "cache");
        set => _cacheDirectory = value;
    }

    private string? _cacheDirectory;

    /// <summary>Bytes of acknowledged writes the writeback cache may hold before they are on the
    /// replicas; at least <see cref="MinCacheSize"/>. Whether the file system has room is the cache's check.</summary>
    public long CacheSize { get; set; } = 256L << 20;

    /// <summary>Whether a writeback volume's writes go around the cache while the replicas answer
    /// faster than its log syncs (docs/writeback-cache.md, "Write-around"); off, every one is cached.</summary>
    public bool CacheWriteAround { get; set; } = true;

    /// <summary>How long a stop waits for NBD clients to finish before their connections are cut.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The cluster to join; null keeps the node on its embedded catalog, alone.</summary>
    public ClusterMembershipOptions? Cluster { get; set; }
}

/// <summary>How a node joins a cluster: <c>ovis serve --cluster URI --zone Z</c>.</summary>
public sealed class ClusterMembershipOptions
{
    public required Ovis.Cluster.Catalog.ClusterUri Uri { get; init; }

    /// <summary>The node's failure zone.</summary>
    public required string Zone { get; init; }

    /// <summary>The node's id; null uses the one stored in the data directory (<c>node-id</c>), created once.</summary>
    public string? NodeId { get; init; }

    /// <summary>TTL of the membership lease: how long a dead node stays listed, and its volume locks held.</summary>
    public long LeaseTtlSeconds { get; init; } = 10;

    /// <summary>How long a member may stay down before it is taken out of the cluster (its objects
    /// placed on the others); <see cref="TimeSpan.Zero"/> never takes one out.</summary>
    public TimeSpan DownOutInterval { get; init; } = TimeSpan.FromSeconds(600);

    /// <summary>Where this node serves the peer protocol (object copies from other nodes' gateways).</summary>
    public ListenAddress PeerAddress { get; init; } = ListenAddress.Loopback(NodeOptions.DefaultPeerPort);

    /// <summary>The peer address other nodes dial when it is not where this node listens (NAT, a
    /// proxy in between); null publishes the listening address as bound.</summary>
    public string? AdvertisedPeer { get; init; }

    public RecoveryOptions Recovery { get; set; } = new();
}
