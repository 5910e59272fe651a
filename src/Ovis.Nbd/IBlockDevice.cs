namespace Ovis.Nbd;

/// <summary>
/// What the NBD front needs from an export: a fixed-size byte range it can read, write,
/// flush, trim and zero, and ask the allocation of. Implementations must be safe for many
/// concurrent calls (one connection has many requests in flight, and several connections
/// may share a device: CAN_MULTI_CONN). Bounds are checked by the caller before any call.
/// A device is opened per connection and disposed when the connection ends.
/// </summary>
public interface IBlockDevice : IDisposable
{
    /// <summary>Size in bytes, fixed for the life of the connection.</summary>
    long Size { get; }

    /// <summary>Writes, trims and zeroes get EPERM without reaching the device.</summary>
    bool IsReadOnly { get; }

    /// <summary>Preferred block size advertised in NBD_INFO_BLOCK_SIZE (a power of two, e.g. 4096).</summary>
    int PreferredBlockSize { get; }

    /// <summary>Fills <paramref name="buffer"/> with the bytes at <paramref name="offset"/>.</summary>
    ValueTask<NbdError> ReadAsync(long offset, Memory<byte> buffer);

    /// <summary>
    /// Stores <paramref name="data"/>; when it returns None the data is visible to every later
    /// read on any connection. With <paramref name="fua"/> it is also durable.
    /// The device must copy <paramref name="data"/> if it keeps it past completion.
    /// </summary>
    ValueTask<NbdError> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua);

    /// <summary>Makes every write completed before the call durable.</summary>
    ValueTask<NbdError> FlushAsync();

    /// <summary>Discards a range; later reads return zeroes, space is given back.</summary>
    ValueTask<NbdError> TrimAsync(long offset, long length, bool fua);

    /// <summary>
    /// Zeroes a range. <paramref name="noHole"/>: keep it allocated.
    /// <paramref name="fastZero"/>: fail with ENOTSUP rather than be slower than a write.
    /// </summary>
    ValueTask<NbdError> WriteZeroesAsync(long offset, long length, bool noHole, bool fastZero, bool fua);

    /// <summary>Hint to prefetch a range (NBD_CMD_CACHE).</summary>
    ValueTask<NbdError> CacheAsync(long offset, long length);

    /// <summary>
    /// Describes the allocation of the range starting at <paramref name="offset"/> for
    /// base:allocation: appends extents in order, covering at least one byte and at most
    /// <paramref name="length"/> bytes; adjacent extents have different flags. Asked for
    /// BLOCK_STATUS and before each structured READ (whose zero runs are sent as holes, unread).
    /// </summary>
    ValueTask<NbdError> GetAllocationAsync(long offset, long length, List<NbdExtent> extents);
}

/// <summary>
/// An export that has dirty bitmaps, each offered as the meta context <c>qemu:dirty-bitmap:NAME</c>
/// (QEMU docs/interop/nbd.rst). Answered from memory, synchronously.
/// </summary>
public interface IDirtyBitmapDevice
{
    /// <summary>The bitmaps' names now.</summary>
    IReadOnlyList<string> DirtyBitmaps { get; }

    /// <summary>
    /// Appends extents from <paramref name="offset"/> covering at most <paramref name="length"/>
    /// bytes (at least one), flags <see cref="NbdDirtyState.Dirty"/> or none, adjacent ones
    /// different, at most <paramref name="maxExtents"/>; false when the bitmap no longer exists.
    /// </summary>
    bool GetDirtyExtents(string bitmap, long offset, long length, List<NbdExtent> extents, int maxExtents);
}

/// <summary>Flags of a qemu:dirty-bitmap:NAME descriptor (QEMU docs/interop/nbd.rst).</summary>
public static class NbdDirtyState
{
    /// <summary>NBD_STATE_DIRTY, bit 0: the extent changed since the bitmap was created or cleared.</summary>
    public const NbdExtentFlags Dirty = (NbdExtentFlags)1;
}

/// <summary>One base:allocation extent: a length and NBD_STATE_HOLE / NBD_STATE_ZERO flags.</summary>
public readonly record struct NbdExtent(long Length, NbdExtentFlags Flags);

[Flags]
public enum NbdExtentFlags : uint
{
    None = 0,
    Hole = 1,
    Zero = 2,
}

/// <summary>The errno values NBD puts on the wire (doc/proto.md, "Error values").</summary>
public enum NbdError : uint
{
    None = 0,
    EPERM = 1,
    EIO = 5,
    ENOMEM = 12,
    EINVAL = 22,
    ENOSPC = 28,
    EOVERFLOW = 75,
    ENOTSUP = 95,
    ESHUTDOWN = 108,
}

/// <summary>The set of exports a server offers; looked up by name during the handshake.</summary>
public interface IExportProvider
{
    /// <summary>Names and descriptions for NBD_OPT_LIST.</summary>
    IReadOnlyList<(string Name, string Description)> ListExports();

    /// <summary>
    /// Opens an export for one connection; null when no such export exists. The empty name
    /// means the default export, which may not exist. May complete asynchronously (taking a
    /// cluster lock, say): the handshake waits for it.
    /// </summary>
    /// <exception cref="ExportUnavailableException">
    /// The export exists but cannot be served here now; the client is told the message.
    /// </exception>
    ValueTask<IBlockDevice?> OpenAsync(string name);
}
