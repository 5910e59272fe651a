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
    public long MaxInFlightBytes { get; init; } = 64L << 20;

    /// <summary>Requests one connection may have between being read and their reply being written.</summary>
    public int MaxInFlightRequests { get; init; } = 256;
}
