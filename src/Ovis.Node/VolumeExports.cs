using System.Buffers;
using Ovis.Nbd;
using Ovis.Store;
using Ovis.Volumes;

namespace Ovis.Node;

/// <summary>
/// Every volume of the node is an NBD export named after it. In a cluster a writable volume is
/// served by one node at a time: opening it takes the volume's lock (<see cref="VolumeLocks"/>),
/// and another node's open is refused, naming the holder, until the lock is released or dies
/// with its holder's lease. Snapshots are read-only and need no lock.
/// </summary>
internal sealed class VolumeExports(NodeVolumes volumes, VolumeLocks? locks) : IExportProvider
{
    public IReadOnlyList<(string Name, string Description)> ListExports()
        => volumes.TryGet() is { } manager ? [.. manager.List().Select(v => (v.Name, $"Ovis volume, {v.Size} bytes"))] : [];

    public async ValueTask<IBlockDevice?> OpenAsync(string name)
    {
        if (name.Length == 0 || volumes.TryGet() is not { } manager)
            return null;
        Volume? volume = manager.Open(name);
        if (volume is null || volume.IsReadOnly || locks is null)
            return volume is null ? null : new VolumeBlockDevice(volume, null);
        try
        {
            return new VolumeBlockDevice(volume, await locks.AcquireAsync(name).ConfigureAwait(false));
        }
        catch
        {
            volume.Dispose();
            throw;
        }
    }
}

/// <summary>
/// Adapts an open <see cref="Volume"/> to what the NBD front needs. With a lock share, every
/// request first checks that the lock still stands: once the node's lease may be gone, or a
/// replica has fenced this node, another node may be writing the volume — a change from here
/// could undo its writes and a read could return what it overwrote — so requests fail with EIO
/// (the replicas' fences refuse whatever change slips past this check; docs/fencing.md).
/// </summary>
internal sealed class VolumeBlockDevice(Volume volume, VolumeLocks.IShare? lockShare) : IBlockDevice
{
    // Block status answers at most this many blocks per request (64 MiB); clients ask again.
    private const int MaxStatusBlocks = 16384;

    public long Size { get; } = volume.Size;

    public bool IsReadOnly => volume.IsReadOnly;

    public int PreferredBlockSize => LocalStore.StoreBlockSize;

    private static NbdError ToNbd(StoreStatus s) => s switch
    {
        StoreStatus.Ok => NbdError.None,
        StoreStatus.NoSpace => NbdError.ENOSPC,
        StoreStatus.Closed => NbdError.ESHUTDOWN,
        _ => NbdError.EIO,
    };

    private static ValueTask<NbdError> Map(ValueTask<StoreStatus> op)
    {
        if (op.IsCompletedSuccessfully)
        {
            return new(ToNbd(op.Result));
        }
        return Await(op);

        static async ValueTask<NbdError> Await(ValueTask<StoreStatus> op) => ToNbd(await op.ConfigureAwait(false));
    }

    public ValueTask<NbdError> ReadAsync(long offset, Memory<byte> buffer) => LockLost ? new(NbdError.EIO) : Map(volume.ReadAsync(offset, buffer));

    private bool LockLost => lockShare is { IsValid: false };

    public ValueTask<NbdError> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua)
        => LockLost ? new(NbdError.EIO) : Map(volume.WriteAsync(offset, data, fua));

    public ValueTask<NbdError> FlushAsync() => LockLost ? new(NbdError.EIO) : Map(volume.FlushAsync());

    public ValueTask<NbdError> TrimAsync(long offset, long length, bool fua)
        => LockLost ? new(NbdError.EIO) : Map(volume.ZeroAsync(offset, length, keepAllocated: false, fua));

    // Zeroing is a metadata operation here whatever the flags, so FAST_ZERO never fails.
    public ValueTask<NbdError> WriteZeroesAsync(long offset, long length, bool noHole, bool fastZero, bool fua)
        => LockLost ? new(NbdError.EIO) : Map(volume.ZeroAsync(offset, length, keepAllocated: noHole, fua));

    // Object data is served from the page cache or the journal's memory already.
    public ValueTask<NbdError> CacheAsync(long offset, long length) => new(NbdError.None);

    public async ValueTask<NbdError> GetAllocationAsync(long offset, long length, List<NbdExtent> extents)
    {
        int bs = LocalStore.StoreBlockSize;
        long end = Math.Min(offset + length, Size);
        long aligned = offset / bs * bs;
        int blocks = (int)Math.Min((end - aligned + bs - 1) / bs, MaxStatusBlocks);
        BlockState[] states = ArrayPool<BlockState>.Shared.Rent(blocks);
        try
        {
            StoreStatus status = await volume.GetAllocationAsync(aligned, states.AsMemory(0, blocks)).ConfigureAwait(false);
            if (status != StoreStatus.Ok)
            {
                // The allocation is unknown, whatever the store's reason (a READ then reads the whole range).
                return NbdError.EIO;
            }
            long pos = offset;
            int b = 0;
            while (b < blocks && pos < end)
            {
                BlockState s = states[b];
                int runEnd = b + 1;
                while (runEnd < blocks && states[runEnd] == s)
                {
                    runEnd++;
                }
                long extentEnd = Math.Min(aligned + (long)runEnd * bs, end);
                extents.Add(new NbdExtent(extentEnd - pos, s switch
                {
                    BlockState.Hole => NbdExtentFlags.Hole | NbdExtentFlags.Zero,
                    BlockState.Zero => NbdExtentFlags.Zero,
                    _ => NbdExtentFlags.None,
                }));
                pos = extentEnd;
                b = runEnd;
            }
            return NbdError.None;
        }
        finally
        {
            ArrayPool<BlockState>.Shared.Return(states);
        }
    }

    public void Dispose()
    {
        volume.Dispose();
        // The release is one etcd request; the connection need not wait for it.
        _ = lockShare?.DisposeAsync().AsTask();
    }
}
