namespace Ovis.Cluster.Peer;

/// <summary>Timeouts of a <see cref="PeerClient"/>.</summary>
public sealed record PeerClientOptions
{
    /// <summary>Longest wait for a TCP connection to the peer; the calls waiting for it then get
    /// <see cref="PeerStatus.Unreachable"/>.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Longest wait for any reply. When a request has waited longer, the peer is taken to be stuck:
    /// the connection is dropped and every request on it gets <see cref="PeerStatus.Unreachable"/>.
    /// <see cref="Timeout.InfiniteTimeSpan"/> turns this off.
    /// </summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>After a timeout, how often one connect attempt probes the silent peer; calls meanwhile get
    /// <see cref="PeerStatus.Unreachable"/> at once.</summary>
    public TimeSpan ProbeInterval { get; init; } = TimeSpan.FromSeconds(1);
}
