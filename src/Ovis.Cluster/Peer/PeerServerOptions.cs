namespace Ovis.Cluster.Peer;

/// <summary>Limits applied to every peer connection a <see cref="PeerServer"/> serves.</summary>
public sealed record PeerServerOptions
{
    /// <summary>Requests one connection may have between being read and their reply being written.</summary>
    public int MaxInFlightRequests { get; init; } = 512;

    /// <summary>
    /// Payload bytes (read buffers, write payloads, allocation maps) one connection may hold at once.
    /// When they are spent the server stops reading, which pushes back on the sender through TCP. A
    /// single request larger than this is still admitted when nothing else is in flight.
    /// </summary>
    public long MaxInFlightBytes { get; init; } = 64L << 20;

    /// <summary>
    /// Connections served at once; more are closed as they arrive, without a reply (the protocol
    /// has no handshake to refuse in). Far above what a cluster's gateways open, low enough that a
    /// flood of connections cannot exhaust the node's file descriptors.
    /// </summary>
    public int MaxConnections { get; init; } = 1024;
}
