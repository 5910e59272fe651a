using System.Buffers;
using Ovis.Nbd;
using Ovis.Node.Metrics;
using Ovis.Store;
using Ovis.Volumes;

namespace Ovis.Node;

/// <summary>
/// Every volume of the node is an NBD export named after it. In a cluster a writable volume is
/// served by one node at a time: opening it takes the volume's lock (<see cref="VolumeLocks"/>),
/// and another node's open is refused, naming the holder, until the lock is released or dies
/// with its holder's lease. Snapshots are read-only and need no lock.
/// </summary>
internal sealed class VolumeExports(NodeVolumes volumes, VolumeLocks? locks, NodeMetrics metrics) : IExportProvider
{
    public IReadOnlyList<(string Name, string Description)> ListExports()
        => volumes.TryGet() is { } manager ? [.. manager.List().Select(v => (v.Name, $"Ovis volume, {v.Size} bytes"))] : [];

    public async ValueTask<IBlockDevice?> OpenAsync(string name)
    {
        if (name.Length == 0 || volumes.TryGet() is not { } manager)
            return null;
        Volume? volume;
        try
        {
            volume = manager.Open(name);
        }
        catch (VolumeException ex)
        {
            // A snapshot being deleted: the client is told why, in the NBD error's text.
            throw new ExportUnavailableException(ex.Message, ex);
        }
        if (volume is null || volume.IsReadOnly || locks is null)
            return volume is null ? null : new VolumeBlockDevice(volume, null, metrics.ForVolume(name));
        try
        {
            return new VolumeBlockDevice(volume, await locks.AcquireAsync(name).ConfigureAwait(false), metrics.ForVolume(name));
        }
        catch (Exception ex) when (ex is Ovis.Cluster.Etcd.EtcdException or HttpRequestException)
        {
            volume.Dispose();
            throw new ExportUnavailableException($"volume {name}: the cluster catalog does not answer, so this node cannot take the volume's lock now ({ex.Message}); retry when etcd is back", ex);
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
/// request first checks that the lock still stands: once the node's lease is gone, or a replica
/// has fenced this node, another node may be writing the volume — a change from here could undo
/// its writes and a read could return what it overwrote — so requests fail with EIO (the
/// replicas' fences refuse whatever change slips past this check; docs/fencing.md).
/// Reads, writes, flushes and zeroes are counted and timed in <paramref name="metrics"/>.
/// </summary>
internal sealed class VolumeBlockDevice(Volume volume, VolumeLocks.IShare? lockShare, VolumeMetrics metrics) : IBlockDevice, IDirtyBitmapDevice
{
    public IReadOnlyList<string> DirtyBitmaps => volume.DirtyBitmapNames;

    public bool GetDirtyExtents(string bitmap, long offset, long length, List<NbdExtent> extents, int maxExtents)
    {
        var runs = new List<(long Length, bool Dirty)>();
        if (!volume.GetDirtyRuns(bitmap, offset, length, runs, maxExtents))
        {
            return false;
        }
        foreach ((long n, bool dirty) in runs)
        {
            extents.Add(new NbdExtent(n, dirty ? NbdDirtyState.Dirty : NbdExtentFlags.None));
        }
        return true;
    }

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

    // While the lease's renewal is late (etcd restarting or out of reach) requests wait for it
    // (VolumeLocks.LeaseWait) instead of failing: nobody can take the lock meanwhile. Once the lock
    // is gone they fail at once. The waits live in their own methods so the usual path allocates nothing.
    private bool Current => lockShare is null or { IsValid: true };

    private ValueTask<bool> WaitCurrentAsync() => lockShare!.WaitValidAsync();

    public ValueTask<NbdError> ReadAsync(long offset, Memory<byte> buffer)
    {
        var started = metrics.Start();
        return metrics.Complete(Current ? Map(volume.ReadAsync(offset, buffer)) : ReadLaterAsync(offset, buffer), VolumeOp.Read, buffer.Length, started);
    }

    private async ValueTask<NbdError> ReadLaterAsync(long offset, Memory<byte> buffer)
        => await WaitCurrentAsync().ConfigureAwait(false) ? ToNbd(await volume.ReadAsync(offset, buffer).ConfigureAwait(false)) : NbdError.EIO;

    public ValueTask<NbdError> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        var started = metrics.Start();
        return metrics.Complete(Current ? Map(volume.WriteAsync(offset, data, fua)) : WriteLaterAsync(offset, data, fua), VolumeOp.Write, data.Length, started);
    }

    private async ValueTask<NbdError> WriteLaterAsync(long offset, ReadOnlyMemory<byte> data, bool fua)
        => await WaitCurrentAsync().ConfigureAwait(false) ? ToNbd(await volume.WriteAsync(offset, data, fua).ConfigureAwait(false)) : NbdError.EIO;

    public ValueTask<NbdError> FlushAsync()
    {
        var started = metrics.Start();
        return metrics.Complete(Current ? Map(volume.FlushAsync()) : FlushLaterAsync(), VolumeOp.Flush, 0, started);
    }

    private async ValueTask<NbdError> FlushLaterAsync()
        => await WaitCurrentAsync().ConfigureAwait(false) ? ToNbd(await volume.FlushAsync().ConfigureAwait(false)) : NbdError.EIO;

    public ValueTask<NbdError> TrimAsync(long offset, long length, bool fua) => ZeroAsync(offset, length, keepAllocated: false, fua);

    // Zeroing is a metadata operation here whatever the flags, so FAST_ZERO never fails.
    public ValueTask<NbdError> WriteZeroesAsync(long offset, long length, bool noHole, bool fastZero, bool fua)
        => ZeroAsync(offset, length, keepAllocated: noHole, fua);

    private ValueTask<NbdError> ZeroAsync(long offset, long length, bool keepAllocated, bool fua)
    {
        var started = metrics.Start();
        return metrics.Complete(Current ? Map(volume.ZeroAsync(offset, length, keepAllocated, fua)) : ZeroLaterAsync(offset, length, keepAllocated, fua), VolumeOp.Zero, length, started);
    }

    private async ValueTask<NbdError> ZeroLaterAsync(long offset, long length, bool keepAllocated, bool fua)
        => await WaitCurrentAsync().ConfigureAwait(false) ? ToNbd(await volume.ZeroAsync(offset, length, keepAllocated, fua).ConfigureAwait(false)) : NbdError.EIO;

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
