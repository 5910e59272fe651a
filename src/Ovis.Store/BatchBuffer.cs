using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Ovis.Store;

/// <summary>
/// One batch of journal records in 4 KiB-aligned memory, so it can be written with O_DIRECT as it
/// is. Until the batch is durable and applied to the object files, it is also where reads find the
/// data it holds (the store's overlay points into it).
/// </summary>
/// <remarks>
/// The memory is a pinned managed array, not native memory: a writer or reader that still holds
/// a span of the batch when the store is torn down (a crash test, a dispose racing I/O) writes or
/// reads memory that stays valid until the last span is gone, instead of memory already freed,
/// which took a whole test host down once.
/// </remarks>
internal sealed class BatchBuffer
{
    private readonly byte[] _array;
    private readonly int _start;

    public BatchBuffer(int capacity)
    {
        Capacity = capacity;
        _array = GC.AllocateUninitializedArray<byte>(capacity + JournalFormat.BlockSize, pinned: true);
        _start = AlignedStart(_array);
    }

    private static unsafe int AlignedStart(byte[] pinned)
    {
        var address = (nuint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));
        return (int)((JournalFormat.BlockSize - address % JournalFormat.BlockSize) % JournalFormat.BlockSize);
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

    /// <summary>Bytes of file-system space the batch's records reserved (<see cref="SpaceAccount"/>),
    /// released once the batch is applied.</summary>
    public long SpaceCharged;

    public Span<byte> Span => _array.AsSpan(_start, Capacity);

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
}
