using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>An open volume: byte-range I/O mapped onto its objects. Thread-safe; dispose to close.</summary>
public sealed class Volume : IDisposable
{
    public string Name => throw new NotImplementedException();
    public long Size => throw new NotImplementedException();
    public bool IsReadOnly { get; }

    public ValueTask<StoreStatus> ReadAsync(long offset, Memory<byte> buffer) => throw new NotImplementedException();
    public ValueTask<StoreStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua) => throw new NotImplementedException();
    public ValueTask<StoreStatus> ZeroAsync(long offset, long length, bool keepAllocated, bool fua) => throw new NotImplementedException();
    public ValueTask<StoreStatus> FlushAsync() => throw new NotImplementedException();

    /// <summary>Fills one state per 4 KiB block of the aligned range starting at <paramref name="offset"/>.</summary>
    public void GetAllocation(long offset, Span<BlockState> states) => throw new NotImplementedException();

    public void Dispose() => throw new NotImplementedException();
}
