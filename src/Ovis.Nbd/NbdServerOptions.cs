namespace Ovis.Nbd;

/// <summary>Limits applied to every NBD connection.</summary>
public sealed class NbdServerOptions
{
    /// <summary>
    /// Largest READ or WRITE payload a client may request; advertised as the maximum in
    /// NBD_INFO_BLOCK_SIZE. The spec asks servers to accept at least 32 MiB (doc/proto.md,
    /// "Size constraints").
    /// </summary>
    public int MaxPayloadSize { get; init; } = 32 << 20;

    /// <summary>
    /// Payload bytes (read buffers and write payloads) one connection may hold at once. A single
    /// request larger than this is still admitted when nothing else is in flight.
    /// </summary>
    public long MaxInFlightBytes { get; init; } = 8L << 20;

    /// <summary>Requests one connection may have between being read and their reply being written.</summary>
    public int MaxInFlightRequests { get; init; } = 256;

    /// <summary>
    /// How long a connection may take from accept to the transmission phase (an export selected)
    /// before it is closed; <see cref="Timeout.InfiniteTimeSpan"/> for no limit. 10 s, like
    /// qemu-nbd's <c>--handshake-limit</c>.
    /// </summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);
}
