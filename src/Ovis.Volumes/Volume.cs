using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// An open volume or snapshot: byte-range I/O mapped onto its objects (object i holds bytes
/// [i × ObjectSize, (i+1) × ObjectSize)). Thread-safe; dispose to close. A request inside one
/// object of a volume without parent layers — the common case — goes straight to the store
/// without an extra await. Bounds are the caller's to check (the NBD front does, against
/// <see cref="Size"/>).
/// </summary>
public sealed class Volume : IDisposable
{
    private readonly VolumeState _state;
    private readonly IObjectStore _store;
    private readonly VolumeManager _owner;
    private int _disposed;

    internal Volume(VolumeState state, IObjectStore store, VolumeManager owner)
    {
        _state = state;
        _store = store;
        _owner = owner;
        IsReadOnly = state.Record.IsSnapshot;
    }

    /// <summary>The export name: the volume's, or <c>NAME@TAG</c> for a snapshot.</summary>
    public string Name => _state.Record.DisplayName;

    /// <summary>The size now; it may change by a resize while the volume is open.</summary>
    public long Size => _state.Record.Size;

    public long ObjectSize => _state.Record.ObjectSize;

    /// <summary>Snapshots are read-only.</summary>
    public bool IsReadOnly { get; }

    public ValueTask<StoreStatus> ReadAsync(long offset, Memory<byte> buffer)
    {
        uint[] chain = _state.Chain;
        if (chain.Length > 1)
        {
            return ReadLayeredAsync(chain, offset, buffer);
        }
        long os = ObjectSize;
        long inObject = offset % os;
        return inObject + buffer.Length <= os
            ? _store.ReadAsync(new ObjectId(chain[0], (uint)(offset / os)), inObject, buffer)
            : ReadSplitAsync(chain, offset, buffer);
    }

    /// <summary>A read through parent layers, counted for a merge's grace period (<see cref="ReadGrace"/>).</summary>
    private async ValueTask<StoreStatus> ReadLayeredAsync(uint[] chain, long offset, Memory<byte> buffer)
    {
        int epoch = _owner.Grace.Enter();
        try
        {
            return await ReadSplitAsync(chain, offset, buffer).ConfigureAwait(false);
        }
        finally
        {
            _owner.Grace.Exit(epoch);
        }
    }

    private async ValueTask<StoreStatus> ReadSplitAsync(uint[] chain, long offset, Memory<byte> buffer)
    {
        long os = ObjectSize;
        while (!buffer.IsEmpty)
        {
            long inObject = offset % os;
            int n = (int)Math.Min(buffer.Length, os - inObject);
            StoreStatus s = await Layers.ReadAsync(_store, chain, (uint)(offset / os), inObject, buffer[..n]).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                return s;
            }
            offset += n;
            buffer = buffer[n..];
        }
        return StoreStatus.Ok;
    }

    public ValueTask<StoreStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua)
        => _state.Gate.TryEnter() ? Leave(WriteOp(_state.Chain, offset, data, fua)) : WriteWhenOpenAsync(offset, data, fua);

    private async ValueTask<StoreStatus> WriteWhenOpenAsync(long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        await EnterAsync().ConfigureAwait(false);
        return await Leave(WriteOp(_state.Chain, offset, data, fua)).ConfigureAwait(false);
    }

    private ValueTask<StoreStatus> WriteOp(uint[] chain, long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        MarkDirty(offset, data.Length);
        long os = ObjectSize;
        long inObject = offset % os;
        return inObject + data.Length <= os
            ? WriteObject(chain, (uint)(offset / os), inObject, data, fua)
            : WriteSplitAsync(chain, offset, data, fua);
    }

    private ValueTask<StoreStatus> WriteObject(uint[] chain, uint index, long inObject, ReadOnlyMemory<byte> data, bool fua)
    {
        // Only a partial block that this layer has never written needs the parents' content:
        // whole blocks are written as they are, so copy-on-write copies nothing for them.
        int bs = _store.BlockSize;
        IBlockSource? underlay = chain.Length > 1 && (inObject % bs != 0 || data.Length % bs != 0)
            ? new ParentBlocks(_store, chain, index, _owner)
            : null;
        return _store.WriteAsync(new ObjectId(chain[0], index), inObject, data, fua, underlay);
    }

    private async ValueTask<StoreStatus> WriteSplitAsync(uint[] chain, long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        long os = ObjectSize;
        while (!data.IsEmpty)
        {
            long inObject = offset % os;
            int n = (int)Math.Min(data.Length, os - inObject);
            StoreStatus s = await WriteObject(chain, (uint)(offset / os), inObject, data[..n], fua: false).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                return s;
            }
            offset += n;
            data = data[n..];
        }
        return fua ? await _store.FlushAsync(chain[0]).ConfigureAwait(false) : StoreStatus.Ok;
    }

    public ValueTask<StoreStatus> ZeroAsync(long offset, long length, bool keepAllocated, bool fua)
        => _state.Gate.TryEnter() ? Leave(ZeroOp(_state.Chain, offset, length, keepAllocated, fua)) : ZeroWhenOpenAsync(offset, length, keepAllocated, fua);

    private async ValueTask<StoreStatus> ZeroWhenOpenAsync(long offset, long length, bool keepAllocated, bool fua)
    {
        await EnterAsync().ConfigureAwait(false);
        return await Leave(ZeroOp(_state.Chain, offset, length, keepAllocated, fua)).ConfigureAwait(false);
    }

    private async ValueTask<StoreStatus> ZeroOp(uint[] chain, long offset, long length, bool keepAllocated, bool fua)
    {
        MarkDirty(offset, length);
        long os = ObjectSize;
        // Over a parent a hole would show the parent's data again: zeroes stay allocated.
        bool layered = chain.Length > 1;
        while (length > 0)
        {
            long inObject = offset % os;
            long n = Math.Min(length, os - inObject);
            var id = new ObjectId(chain[0], (uint)(offset / os));
            // A whole object that becomes a hole is removed outright.
            StoreStatus s = n == os && !keepAllocated && !layered
                ? await _store.DeleteAsync(id).ConfigureAwait(false)
                : await _store.ZeroAsync(id, inObject, n, keepAllocated || layered, fua: false).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                return s;
            }
            offset += n;
            length -= n;
        }
        return fua ? await _store.FlushAsync(chain[0]).ConfigureAwait(false) : StoreStatus.Ok;
    }

    /// <summary>The names of the volume's dirty bitmaps (none for a snapshot).</summary>
    public IReadOnlyList<string> DirtyBitmapNames => IsReadOnly ? [] : [.. _state.Bitmaps.Select(b => b.Name)];

    /// <summary>
    /// Appends (length, dirty) runs from <paramref name="offset"/> covering at most
    /// <paramref name="length"/> bytes, at most <paramref name="maxRuns"/> of them, adjacent ones
    /// different; a granule is dirty as a whole (rounded outward). False when there is no such bitmap.
    /// </summary>
    public bool GetDirtyRuns(string bitmap, long offset, long length, List<(long Length, bool Dirty)> runs, int maxRuns)
    {
        DirtyBitmap? b = IsReadOnly ? null : _state.Bitmaps.FirstOrDefault(x => x.Name == bitmap);
        if (b is null)
        {
            return false;
        }
        DirtyRuns.Collect(b.Active, b.Granularity, offset, length, runs, maxRuns);
        return true;
    }

    // Inside the gate and before the store call: the bit is set before the write's journal record
    // exists, so a checkpoint that forgets the record has saved the bit (docs/backup.md).
    private void MarkDirty(long offset, long length)
    {
        DirtyBitmap[] bitmaps = _state.Bitmaps;
        for (int i = 0; i < bitmaps.Length; i++)
        {
            bitmaps[i].Mark(offset, length);
        }
    }

    // Only the top layer takes writes: a snapshot flushes before it freezes the layer, so no layer
    // below holds a completed write that is not durable yet.
    public ValueTask<StoreStatus> FlushAsync() => _store.FlushAsync(_state.Chain[0]);

    /// <summary>Fills one state per 4 KiB block of the aligned range starting at <paramref name="offset"/>,
    /// looking through to parent layers where this one has holes.</summary>
    public ValueTask<StoreStatus> GetAllocationAsync(long offset, Memory<BlockState> states)
    {
        uint[] chain = _state.Chain;
        long os = ObjectSize;
        long inObject = offset % os;
        return inObject + ((long)states.Length * _store.BlockSize) <= os
            ? Layers.GetAllocationAsync(_store, chain, (uint)(offset / os), inObject, states)
            : GetSplitAllocationAsync(chain, offset, states);
    }

    private async ValueTask<StoreStatus> GetSplitAllocationAsync(uint[] chain, long offset, Memory<BlockState> states)
    {
        long os = ObjectSize;
        int bs = _store.BlockSize;
        while (!states.IsEmpty)
        {
            long inObject = offset % os;
            int n = (int)Math.Min(states.Length, (os - inObject) / bs);
            StoreStatus s = await Layers.GetAllocationAsync(_store, chain, (uint)(offset / os), inObject, states[..n]).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                return s;
            }
            offset += (long)n * bs;
            states = states[n..];
        }
        return StoreStatus.Ok;
    }

    // Writes run inside the volume's gate, so that a snapshot holds either all of a write or
    // none of it; the chain is read once, inside the gate. A write is started (and its
    // store call made) inside the gate and leaves it when it completes.
    private ValueTask<StoreStatus> Leave(ValueTask<StoreStatus> pending)
    {
        if (pending.IsCompleted)
        {
            _state.Gate.Exit();
            return pending;
        }
        return ExitWhenDoneAsync(pending);
    }

    private async ValueTask<StoreStatus> ExitWhenDoneAsync(ValueTask<StoreStatus> pending)
    {
        try
        {
            return await pending.ConfigureAwait(false);
        }
        finally
        {
            _state.Gate.Exit();
        }
    }

    private async Task EnterAsync()
    {
        while (!_state.Gate.TryEnter())
        {
            await _state.Gate.WhenOpen.ConfigureAwait(false);
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _owner.Close(_state);
        }
    }
}
