using System.Buffers;
using System.Buffers.Binary;

namespace Ovis.Cluster.Peer;

/* The peer protocol: how a node sends object operations to another node's store.

   One TCP connection carries many requests at once. The sender picks a handle per request; the
   receiver answers every request exactly once, in the order the operations finish (not the order
   they were sent), with the same handle. Every field is big-endian. There is no handshake: a
   later, incompatible version changes the magic numbers.

   Request header, 52 bytes, then `length` payload bytes for WRITE and for FILL_HOLES without ZEROES:

        0                   1                   2                   3
        0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
       +---------------------------------------------------------------+
     0 |                  magic (0x4F564651, "OVFQ")                   |
       +-------------------------------+-------------------------------+
     4 |            opcode             |             flags             |
       +-------------------------------+-------------------------------+
     8 |                   epoch (64) of the sender                    |
       +                                                               +
    12 |                                                               |
       +---------------------------------------------------------------+
    16 |                          handle (64)                          |
       +                                                               +
    20 |                                                               |
       +---------------------------------------------------------------+
    24 |                object id (64, ObjectId.Packed)                |
       +                                                               +
    28 |                                                               |
       +---------------------------------------------------------------+
    32 |                 offset (64), bytes in the object              |
       +                                                               +
    36 |                                                               |
       +---------------------------------------------------------------+
    40 |                          length (32)                          |
       +---------------------------------------------------------------+
    44 |      generation (64) of the sender's volume lock (fencing)    |
       +                                                               +
    48 |                                                               |
       +===============================================================+
    52 |  payload: length bytes (WRITE; FILL_HOLES without ZEROES)  ...
       +---------------------------------------------------------------+

   Reply header, 28 bytes, then `length` payload bytes:

        0                   1                   2                   3
        0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
       +---------------------------------------------------------------+
     0 |                  magic (0x4F565052, "OVPR")                   |
       +-------------------------------+-------------------------------+
     4 |            status             |        reserved (zero)        |
       +-------------------------------+-------------------------------+
     8 |          epoch (64): the server's epoch when it replied       |
       +                                                               +
    12 |                                                               |
       +---------------------------------------------------------------+
    16 |                   handle (64) of the request                  |
       +                                                               +
    20 |                                                               |
       +---------------------------------------------------------------+
    24 |                          length (32)                          |
       +===============================================================+
    28 |  payload: length bytes (only with status OK)               ...
       +---------------------------------------------------------------+

   Opcodes. Fields an opcode does not use must be zero; flags it does not allow make it INVALID.

     op          value  flags               offset, length               payload     OK reply payload
     READ          1    -                   bytes                        -           `length` bytes
     WRITE         2    FUA                 bytes                        `length`    -
     ZERO          3    FUA, KEEP_ALLOCATED bytes                        -           -
     FILL_HOLES    4    ZEROES              bytes, both block-aligned    `length`    -
                                                                         unless ZEROES
     DELETE        5    -                   0, 0                         -           -
     FLUSH         6    -                   0, 0 (object id 0 too)       -           -
     ALLOCATION    7    -                   block-aligned offset;        -           `length` bytes, one
                                            length counts blocks                     BlockState per block
     STATS         8    -                   0, 0 (object id 0 too)       -           8 × u64: used bytes,
                                                                                     objects, journal syncs,
                                                                                     then the store's file
                                                                                     system: total, free,
                                                                                     reserved bytes, near-full
                                                                                     and full ratio × 10^6
                                                                                     (total 0: not known)
     PING          9    -                   0, 0 (object id 0 too)       -           -
     BLOCKSUMS    10    VERIFY              block-aligned offset;        -           `length` × 5 bytes, per
                                            length counts blocks                     block its BlockState
                                                                                     (u8) and CRC32C (u32)
     FENCE        11    -                   0, 0; object id: the layer   -           -
                                            in the high 32 bits, index 0

   Flags: FUA (0x1) = durable before the reply; KEEP_ALLOCATED (0x2) = zeroed blocks stay
   allocated (BlockState.Zero) instead of becoming holes; ZEROES (0x4) = FILL_HOLES fills with
   allocated zeroes and carries no payload (`length` still gives the range); VERIFY (0x8) =
   BLOCKSUMS reads the data blocks from disk and checks them against their checksums (a scrub),
   answering IO_ERROR if one fails. FLUSH is one journal sync of the serving store: every write
   answered before the FLUSH arrived is then durable, and concurrent flushes share the store's
   group commit. STATS may grow: a reader takes the fields it knows from the front of the payload
   and skips the rest. BLOCKSUMS gives a copy's blocks in brief (Ovis.Store.BlockSum: a data
   block's CRC32C as reads see it, 0 for holes and allocated zeroes), so copies on different nodes
   can be compared without moving their data; without VERIFY it reads only the block table. A
   server whose store keeps no checksums answers BLOCKSUMS INVALID.

   Statuses: 0 OK, 1 IO_ERROR, 2 NO_SPACE, 3 CLOSED (the values of StoreStatus), 4 STALE_EPOCH,
   5 INVALID, 7 FENCED. A reply other than OK has no payload.

   Fencing (docs/fencing.md). The changes — WRITE, ZERO, FILL_HOLES, DELETE — carry the
   generation of the sender's lock on the volume the object's layer belongs to; every other
   opcode but FENCE must send 0. The server keeps, per layer and durably, the newest generation
   it has seen: a change with an older one is answered FENCED and never applied; a newer one
   raises the layer's fence (on disk, after the changes admitted under older generations have
   finished) before it is applied. FENCE raises the fence of one layer to the request's
   generation without changing data: OK once the fence is on disk, FENCED when the server has
   seen a newer generation already. A new lock holder fences every layer of its volume on every
   live member before it serves a request.

   Epochs. Every request names the sender's epoch; every object operation (all but STATS and
   PING) is served only when that equals the server's epoch. An older epoch is refused with
   STALE_EPOCH and never applied. A newer one means the server's membership view lags: it
   catches up first (IEpochSource.CatchUpAsync) and serves the request if the epochs now agree,
   otherwise refuses it with STALE_EPOCH. Either way the reply's epoch lets the sender refresh and
   retry. An epoch above 2^63 - 1 is INVALID.

   Malformed input. A bad request magic means the framing is lost: the server closes the
   connection without a reply. Otherwise a request is checked before its payload is buffered: an
   unknown opcode, a flag or field the opcode does not allow, a range past the store's largest
   object (offset + length > MaxObjectSize, the length in bytes for ALLOCATION and BLOCKSUMS) or a
   misaligned FILL_HOLES, ALLOCATION or BLOCKSUMS, or an object index above the store's largest
   (IObjectStore.MaxObjectIndex) is answered INVALID, its payload (if any) is
   skipped and the connection continues. An unknown opcode is taken to carry no payload; should
   one follow anyway, it fails the next magic check. A WRITE or FILL_HOLES that declares a payload
   over MaxPayloadLength is answered INVALID and then the connection is closed: skipping up to
   4 GiB to stay in step is not worth it, and a sender that does this is broken. A READ, ZERO,
   ALLOCATION or BLOCKSUMS over its limit has no payload to skip, so it is answered INVALID and the
   connection continues.
*/

/// <summary>Constants of the peer protocol; the wire format is described at the top of PeerProtocol.cs.</summary>
public static class PeerProtocol
{
    /// <summary>"OVFQ": the first four bytes of every request (requests without a generation were "OVPQ").</summary>
    public const uint RequestMagic = 0x4F564651;

    /// <summary>"OVPR": the first four bytes of every reply.</summary>
    public const uint ReplyMagic = 0x4F565052;

    public const int RequestHeaderSize = 52;

    public const int ReplyHeaderSize = 28;

    /// <summary>Largest payload of one request or reply: a whole 16 MiB object plus a block of slack.</summary>
    public const int MaxPayloadLength = (16 << 20) + 4096;

    /// <summary>Size of the STATS reply payload this version writes.</summary>
    public const int StatsPayloadSize = 64;

    /// <summary>The shortest STATS reply payload a reader accepts (that of the first version, without space).</summary>
    public const int MinStatsPayloadSize = 24;

    /// <summary>STATS carries ratios as integers in millionths.</summary>
    public const double RatioScale = 1_000_000;

    /// <summary>Bytes per block in a BLOCKSUMS reply: the state, then the big-endian CRC32C.</summary>
    public const int BlockSumSize = 5;

    /// <summary>The first <paramref name="size"/> bytes of <paramref name="buffer"/>, copied into
    /// <paramref name="scratch"/> only when they straddle pipe segments.</summary>
    internal static ReadOnlySpan<byte> PeekHeader(in ReadOnlySequence<byte> buffer, Span<byte> scratch, int size)
    {
        ReadOnlySpan<byte> first = buffer.FirstSpan;
        if (first.Length >= size)
        {
            return first[..size];
        }

        buffer.Slice(0, size).CopyTo(scratch);
        return scratch[..size];
    }
}

/// <summary>What a request asks of the serving store.</summary>
public enum PeerOpcode : ushort
{
    /// <summary>Not an operation; never valid on the wire.</summary>
    None = 0,
    Read = 1,
    Write = 2,
    Zero = 3,
    FillHoles = 4,
    Delete = 5,
    Flush = 6,
    Allocation = 7,
    Stats = 8,
    Ping = 9,
    BlockSums = 10,
    Fence = 11,
}

/// <summary>Request flags; which ones an opcode allows is listed in PeerProtocol.cs.</summary>
[Flags]
public enum PeerRequestFlags : ushort
{
    None = 0,

    /// <summary>WRITE, ZERO: durable on the server before the reply.</summary>
    Fua = 1 << 0,

    /// <summary>ZERO: the zeroed blocks stay allocated (<see cref="Ovis.Store.BlockState.Zero"/>).</summary>
    KeepAllocated = 1 << 1,

    /// <summary>FILL_HOLES: fill with allocated zeroes; the request carries no payload.</summary>
    Zeroes = 1 << 2,

    /// <summary>BLOCKSUMS: read the data blocks and check them against their checksums.</summary>
    Verify = 1 << 3,

    /// <summary>FILL_HOLES: may go past the full ratio (a snapshot merge, which frees what it copies).</summary>
    FromReserve = 1 << 4,
}

/// <summary>
/// Outcome of a peer request. The first four are <see cref="Ovis.Store.StoreStatus"/> values from the
/// serving store; <see cref="Unreachable"/> is decided by the client and never sent.
/// </summary>
public enum PeerStatus : ushort
{
    Ok = 0,

    /// <summary>The serving store could not read or write the data.</summary>
    IoError = 1,

    /// <summary>The serving store's device is full.</summary>
    NoSpace = 2,

    /// <summary>The serving store is shutting down.</summary>
    Closed = 3,

    /// <summary>The request's epoch differs from the server's (see the reply's epoch): refused, not applied.</summary>
    StaleEpoch = 4,

    /// <summary>The request was malformed or out of range: refused, not applied.</summary>
    Invalid = 5,

    /// <summary>No reply: the peer could not be reached, the connection failed or the request timed out.
    /// The request may or may not have been applied.</summary>
    Unreachable = 6,

    /// <summary>The change's lock generation is older than the newest the server has seen for the
    /// layer: another node holds the volume now. Refused, not applied.</summary>
    Fenced = 7,
}

/// <summary>A request header as it travels; see the layout at the top of this file.</summary>
internal readonly record struct PeerRequestHeader(
    PeerOpcode Opcode,
    PeerRequestFlags Flags,
    ulong Epoch,
    ulong Handle,
    ulong ObjectId,
    ulong Offset,
    uint Length,
    ulong Generation = 0)
{
    public const int Size = PeerProtocol.RequestHeaderSize;

    /// <summary>Whether the opcode changes an object, and so carries a lock generation and is fenced.</summary>
    public bool IsChange => Opcode is PeerOpcode.Write or PeerOpcode.Zero or PeerOpcode.FillHoles or PeerOpcode.Delete;

    /// <summary>Whether <see cref="Length"/> payload bytes follow the header. Decides the framing, so it
    /// depends only on the opcode and flags, never on whether the request is valid.</summary>
    public bool HasPayload => Opcode == PeerOpcode.Write || (Opcode == PeerOpcode.FillHoles && (Flags & PeerRequestFlags.Zeroes) == 0);

    public static uint ReadMagic(ReadOnlySpan<byte> source) => BinaryPrimitives.ReadUInt32BigEndian(source);

    public static PeerRequestHeader Read(ReadOnlySpan<byte> source)
    {
        source = source[..Size];
        return new PeerRequestHeader(
            (PeerOpcode)BinaryPrimitives.ReadUInt16BigEndian(source[4..]),
            (PeerRequestFlags)BinaryPrimitives.ReadUInt16BigEndian(source[6..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[16..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[24..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[32..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[40..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[44..]));
    }

    /// <summary>The header at the front of <paramref name="buffer"/> (at least <see cref="Size"/> bytes).</summary>
    public static ReadOnlySpan<byte> Peek(in ReadOnlySequence<byte> buffer, Span<byte> scratch)
        => PeerProtocol.PeekHeader(buffer, scratch, Size);

    public void Write(Span<byte> destination)
    {
        destination = destination[..Size];
        BinaryPrimitives.WriteUInt32BigEndian(destination, PeerProtocol.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)Opcode);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)Flags);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Epoch);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], Handle);
        BinaryPrimitives.WriteUInt64BigEndian(destination[24..], ObjectId);
        BinaryPrimitives.WriteUInt64BigEndian(destination[32..], Offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[40..], Length);
        BinaryPrimitives.WriteUInt64BigEndian(destination[44..], Generation);
    }
}

/// <summary>A reply header as it travels; see the layout at the top of this file.</summary>
internal readonly record struct PeerReplyHeader(PeerStatus Status, ulong Epoch, ulong Handle, uint Length)
{
    public const int Size = PeerProtocol.ReplyHeaderSize;

    public static uint ReadMagic(ReadOnlySpan<byte> source) => BinaryPrimitives.ReadUInt32BigEndian(source);

    /// <summary>Parses a header whose magic the caller has checked. The reserved field is ignored.</summary>
    public static PeerReplyHeader Read(ReadOnlySpan<byte> source)
    {
        source = source[..Size];
        return new PeerReplyHeader(
            (PeerStatus)BinaryPrimitives.ReadUInt16BigEndian(source[4..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[16..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[24..]));
    }

    /// <summary>The header at the front of <paramref name="buffer"/> (at least <see cref="Size"/> bytes).</summary>
    public static ReadOnlySpan<byte> Peek(in ReadOnlySequence<byte> buffer, Span<byte> scratch)
        => PeerProtocol.PeekHeader(buffer, scratch, Size);

    public void Write(Span<byte> destination)
    {
        destination = destination[..Size];
        BinaryPrimitives.WriteUInt32BigEndian(destination, PeerProtocol.ReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)Status);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], 0);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Epoch);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], Handle);
        BinaryPrimitives.WriteUInt32BigEndian(destination[24..], Length);
    }
}
