namespace Ovis.Nbd;

// Values from doc/proto.md of NetworkBlockDevice/nbd ("Values"), named after the spec's
// NBD_* constants. Everything is big-endian on the wire.

internal static class NbdMagic
{
    /// <summary>'NBDMAGIC', first 8 bytes of the greeting.</summary>
    public const ulong Init = 0x4e42444d41474943;

    /// <summary>'IHAVEOPT', second 8 bytes of the greeting and the start of every option.</summary>
    public const ulong Option = 0x49484156454F5054;

    public const ulong OptionReply = 0x3e889045565a9;
    public const uint Request = 0x25609513;
    public const uint SimpleReply = 0x67446698;
    public const uint StructuredReply = 0x668e33ef;
}

[Flags]
internal enum NbdHandshakeFlags : ushort
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}

[Flags]
internal enum NbdClientFlags : uint
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}

[Flags]
internal enum NbdTransmissionFlags : ushort
{
    None = 0,
    HasFlags = 1 << 0,
    ReadOnly = 1 << 1,
    SendFlush = 1 << 2,
    SendFua = 1 << 3,
    Rotational = 1 << 4,
    SendTrim = 1 << 5,
    SendWriteZeroes = 1 << 6,
    SendDf = 1 << 7,
    CanMultiConn = 1 << 8,
    SendResize = 1 << 9,
    SendCache = 1 << 10,
    SendFastZero = 1 << 11,
    BlockStatusPayload = 1 << 12,
}

internal enum NbdOption : uint
{
    ExportName = 1,
    Abort = 2,
    List = 3,
    PeekExport = 4,
    StartTls = 5,
    Info = 6,
    Go = 7,
    StructuredReply = 8,
    ListMetaContext = 9,
    SetMetaContext = 10,
    ExtendedHeaders = 11,
}

internal enum NbdOptionReplyType : uint
{
    Ack = 1,
    Server = 2,
    Info = 3,
    MetaContext = 4,
    ErrUnsup = 0x8000_0001,
    ErrPolicy = 0x8000_0002,
    ErrInvalid = 0x8000_0003,
    ErrPlatform = 0x8000_0004,
    ErrTlsReqd = 0x8000_0005,
    ErrUnknown = 0x8000_0006,
    ErrShutdown = 0x8000_0007,
    ErrBlockSizeReqd = 0x8000_0008,
    ErrTooBig = 0x8000_0009,
    ErrExtHeaderReqd = 0x8000_000a,
}

internal enum NbdInfoType : ushort
{
    Export = 0,
    Name = 1,
    Description = 2,
    BlockSize = 3,
}

internal enum NbdCommand : ushort
{
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    Cache = 5,
    WriteZeroes = 6,
    BlockStatus = 7,
}

[Flags]
internal enum NbdCommandFlags : ushort
{
    None = 0,
    Fua = 1 << 0,
    NoHole = 1 << 1,
    DontFragment = 1 << 2,
    ReqOne = 1 << 3,
    FastZero = 1 << 4,
    PayloadLength = 1 << 5,
}

[Flags]
internal enum NbdReplyFlags : ushort
{
    None = 0,
    Done = 1 << 0,
}

internal enum NbdReplyType : ushort
{
    None = 0,
    OffsetData = 1,
    OffsetHole = 2,
    BlockStatus = 5,
    Error = 0x8001,
    ErrorOffset = 0x8002,
}

internal static class NbdLimits
{
    /// <summary>Strings (export names, queries) MUST be no longer than this (doc/proto.md, "Conventions").</summary>
    public const int MaxStringLength = 4096;

    /// <summary>Option data buffered during the handshake; larger options get ERR_TOO_BIG.</summary>
    public const int MaxOptionLength = 64 << 10;

    /// <summary>Oversized option data skipped before answering ERR_TOO_BIG; beyond this the client is cut off.</summary>
    public const int MaxSkippedOptionLength = 1 << 20;

    /// <summary>
    /// Payload lengths up to 32 MiB SHOULD NOT be treated as a denial of service ("Size constraints"),
    /// so rejected WRITE payloads up to this size are skipped rather than ending the connection.
    /// </summary>
    public const int MinSkippedPayloadLength = 32 << 20;

    /// <summary>
    /// A rejected WRITE payload up to this many times the advertised maximum is read and dropped
    /// (EINVAL, connection kept): a client that ignores NBD_INFO_BLOCK_SIZE, or one told a smaller
    /// maximum than it assumed, is confused rather than hostile. Only longer payloads disconnect.
    /// </summary>
    public const int SkippedPayloadFactor = 4;

    /// <summary>Context id handed out for base:allocation by NBD_OPT_SET_META_CONTEXT.</summary>
    public const uint BaseAllocationContextId = 1;

    /// <summary>Ids of qemu:dirty-bitmap:NAME contexts start here, in the order they were selected.</summary>
    public const uint FirstBitmapContextId = 2;

    /// <summary>Descriptors in one NBD_REPLY_TYPE_BLOCK_STATUS chunk; the spec lets a server return fewer than asked.</summary>
    public const int MaxBlockStatusExtents = 4096;

    /// <summary>Content chunks in one structured READ reply; a more fragmented remainder is sent as data.</summary>
    public const int MaxReadSegments = 1024;
}
