using System.Runtime.InteropServices;

namespace Ovis.Store;

/// <summary>
/// One batch of journal records in 4 KiB-aligned native memory, so it can be written with
/// O_DIRECT as it is. Until the batch is durable and applied to the object files, it is also
/// where reads find the data it holds (the store's overlay points into it).
/// </summary>
internal sealed unsafe class BatchBuffer : IDisposable
{
    private byte* _memory;

    public BatchBuffer(int capacity)
    {
        Capacity = capacity;
        _memory = (byte*)NativeMemory.AlignedAlloc((nuint)capacity, JournalFormat.BlockSize);
    }

    public int Capacity { get; }

    /// <summary>Sequence number of the batch using this buffer; 0 when the buffer is free.</summary>
    public long Seq { get; set; }

    /// <summary>Where the batch goes in the journal; set when it is sealed.</summary>
    public long Lsn { get; set; }

    /// <summary>Bytes used, header included.</summary>
    public int Length { get; set; }

    public int RecordCount { get; set; }

    /// <summary>Reservations handed out and not yet filled; the batch is written only at zero.</summary>
    public int Outstanding;

    public Span<byte> Span => new(_memory, Capacity);

    /// <summary>The bytes to write: the used length rounded up to 4 KiB, the padding zeroed.</summary>
    public ReadOnlySpan<byte> Padded
    {
        get
        {
            int padded = (int)JournalFormat.Align4K(Length);
            Span[Length..padded].Clear();
            return Span[..padded];
        }
    }

    public void Dispose()
    {
        if (_memory != null)
        {
            NativeMemory.AlignedFree(_memory);
            _memory = null;
        }
    }
}
