namespace Ovis.Store;

/// <summary>
/// An object: a sparse byte range of up to <see cref="IObjectStore.MaxObjectSize"/> bytes,
/// named by the volume it belongs to and its slot index in that volume.
/// </summary>
public readonly record struct ObjectId(uint Volume, uint Index)
{
    public ulong Packed => ((ulong)Volume << 32) | Index;
    public static ObjectId FromPacked(ulong packed) => new((uint)(packed >> 32), (uint)packed);
    public override string ToString() => $"{Volume:x8}.{Index:x8}";
}

/// <summary>Outcome of a store operation; errors are values on the data path.</summary>
public enum StoreStatus
{
    Ok = 0,
    /// <summary>A checksum did not match or the device failed: the data cannot be trusted.</summary>
    IoError,
    /// <summary>The device is full.</summary>
    NoSpace,
    /// <summary>The store is shutting down.</summary>
    Closed,
}

/// <summary>Allocation of one store block (4 KiB).</summary>
public enum BlockState : byte
{
    /// <summary>Never written or trimmed: reads as zeroes, uses no space.</summary>
    Hole = 0,
    /// <summary>Holds data.</summary>
    Data = 1,
    /// <summary>Zeroed but kept allocated (WRITE_ZEROES with NO_HOLE): reads as zeroes.</summary>
    Zero = 2,
}

/// <summary>
/// Reads, writes, zeroes and flushes objects. Implemented by a node's local store and by the
/// replicating gateway. Safe for concurrent use.
/// Contract: a write that has completed is seen by every later read; after
/// <see cref="FlushAsync()"/> completes, every write completed before the call is durable, with
/// the metadata needed to find it; a write with <c>fua</c> is durable when it completes.
/// </summary>
public interface IObjectStore : IAsyncDisposable
{
    /// <summary>Checksum and allocation granularity, 4096.</summary>
    int BlockSize { get; }

    /// <summary>Largest object the store accepts.</summary>
    long MaxObjectSize { get; }

    /// <summary>Largest <see cref="ObjectId.Index"/> the store accepts; a store without such a limit takes any.</summary>
    uint MaxObjectIndex => uint.MaxValue;

    /// <summary>
    /// Writes <paramref name="data"/>. A partial block that is a hole is completed from
    /// <paramref name="underlay"/> when one is given (the content a layered volume inherits),
    /// otherwise from zeroes.
    /// </summary>
    ValueTask<StoreStatus> WriteAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua, IBlockSource? underlay = null);

    /// <summary>
    /// Copies blocks into an object only where it has a hole now, atomically per block with
    /// respect to other writes: <paramref name="data"/> covers whole blocks from the block-aligned
    /// <paramref name="offset"/>; with <paramref name="zeroes"/> the holes become allocated zeroes
    /// and <paramref name="data"/> is ignored (its length still gives the range).
    /// <paramref name="fromReserve"/> lets the copy past the full ratio (never into the last
    /// margin of the disk): for a snapshot merge, which frees what it copied right after.
    /// </summary>
    ValueTask<StoreStatus> FillHolesAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false);

    /// <summary>Fills <paramref name="buffer"/>; holes read as zeroes. Checksums are verified.</summary>
    ValueTask<StoreStatus> ReadAsync(ObjectId id, long offset, Memory<byte> buffer);

    /// <summary>Zeroes a range. <paramref name="keepAllocated"/> leaves its blocks reported as
    /// allocated (<see cref="BlockState.Zero"/>); otherwise they become holes. Space is freed either way.</summary>
    ValueTask<StoreStatus> ZeroAsync(ObjectId id, long offset, long length, bool keepAllocated, bool fua);

    ValueTask<StoreStatus> FlushAsync();

    /// <summary>
    /// Makes durable every completed write to objects of layer <paramref name="volume"/> (a
    /// replicating store flushes only the nodes holding such writes); the local store syncs its
    /// journal once either way.
    /// </summary>
    ValueTask<StoreStatus> FlushAsync(uint volume) => FlushAsync();

    /// <summary>Fills one state per block of the block-aligned range [offset, offset + states.Length * BlockSize).</summary>
    ValueTask<StoreStatus> GetAllocationAsync(ObjectId id, long offset, Memory<BlockState> states);

    /// <summary>Removes an object and frees its space (durable at the next flush).</summary>
    ValueTask<StoreStatus> DeleteAsync(ObjectId id);

    /// <summary>Ids of the objects the store holds (for accounting and clean-up).</summary>
    IReadOnlyCollection<ObjectId> ListObjects();

    /// <summary>Whether <see cref="ListObjects"/> names every object there is — not so for a
    /// node of a cluster whose objects are spread over more nodes than they have copies.</summary>
    bool ListsEveryObject => true;

    /// <summary>Bytes of object data held (allocated data blocks × block size).</summary>
    long UsedBytes { get; }
}

/// <summary>Where a layered volume's inherited blocks come from (its parent layers).</summary>
public interface IBlockSource
{
    /// <summary>Fills <paramref name="dest"/> (one block) with block <paramref name="block"/> of the
    /// object as the parent layers have it; false if they cannot be read.</summary>
    bool ReadBlock(int block, Span<byte> dest);

    /// <summary>The same as <see cref="ReadBlock"/>, for a store that cannot read the parents while it
    /// holds the object's lock.</summary>
    ValueTask<bool> ReadBlockAsync(int block, Memory<byte> dest);
}
