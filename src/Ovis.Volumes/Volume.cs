using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// An open volume: byte-range I/O mapped onto its objects (object i holds bytes
/// [i × ObjectSize, (i+1) × ObjectSize)). Thread-safe; dispose to close. A request inside one
/// object — the common case — goes straight to the store without an extra await.
/// Bounds are the caller's to check (the NBD front does, against <see cref="Size"/>).
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
    }

    public string Name => _state.Record.Name;

    /// <summary>The size now; it may change by a resize while the volume is open.</summary>
    public long Size => _state.Record.Size;

    public long ObjectSize => _state.Record.ObjectSize;

    public bool IsReadOnly { get; }

    private ObjectId Object(long index) => new(_state.Record.Id, (uint)index);

    public ValueTask<StoreStatus> ReadAsync(long offset, Memory<byte> buffer)
    {
        long os = ObjectSize;
        long inObject = offset % os;
        return inObject + buffer.Length <= os
            ? _store.ReadAsync(Object(offset / os), inObject, buffer)
            : ReadSplitAsync(offset, buffer);
    }

    private async ValueTask<StoreStatus> ReadSplitAsync(long offset, Memory<byte> buffer)
    {
        long os = ObjectSize;
        while (!buffer.IsEmpty)
        {
            long inObject = offset % os;
            int n = (int)Math.Min(buffer.Length, os - inObject);
            StoreStatus s = await _store.ReadAsync(Object(offset / os), inObject, buffer[..n]).ConfigureAwait(false);
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
    {
        long os = ObjectSize;
        long inObject = offset % os;
        return inObject + data.Length <= os
            ? _store.WriteAsync(Object(offset / os), inObject, data, fua)
            : WriteSplitAsync(offset, data, fua);
    }

    private async ValueTask<StoreStatus> WriteSplitAsync(long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        long os = ObjectSize;
        while (!data.IsEmpty)
        {
            long inObject = offset % os;
            int n = (int)Math.Min(data.Length, os - inObject);
            StoreStatus s = await _store.WriteAsync(Object(offset / os), inObject, data[..n], fua: false).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                return s;
            }
            offset += n;
            data = data[n..];
        }
        return fua ? await _store.FlushAsync().ConfigureAwait(false) : StoreStatus.Ok;
    }

    public async ValueTask<StoreStatus> ZeroAsync(long offset, long length, bool keepAllocated, bool fua)
    {
        long os = ObjectSize;
        while (length > 0)
        {
            long inObject = offset % os;
            long n = Math.Min(length, os - inObject);
            var id = Object(offset / os);
            // A whole object that becomes a hole is removed outright.
            StoreStatus s = n == os && !keepAllocated
                ? await _store.DeleteAsync(id).ConfigureAwait(false)
                : await _store.ZeroAsync(id, inObject, n, keepAllocated, fua: false).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                return s;
            }
            offset += n;
            length -= n;
        }
        return fua ? await _store.FlushAsync().ConfigureAwait(false) : StoreStatus.Ok;
    }

    public ValueTask<StoreStatus> FlushAsync() => _store.FlushAsync();

    /// <summary>Fills one state per 4 KiB block of the aligned range starting at <paramref name="offset"/>.</summary>
    public void GetAllocation(long offset, Span<BlockState> states)
    {
        long os = ObjectSize;
        int bs = _store.BlockSize;
        while (!states.IsEmpty)
        {
            long inObject = offset % os;
            int n = (int)Math.Min(states.Length, (os - inObject) / bs);
            _store.GetAllocation(Object(offset / os), inObject, states[..n]);
            offset += (long)n * bs;
            states = states[n..];
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
