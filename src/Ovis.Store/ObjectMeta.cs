using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>
/// What the store knows of one object, guarded by <see cref="Lock"/>: per block its state and
/// checksum as applied to the object file, and where a newer, not yet applied version of the
/// block waits in the journal's memory (the overlay).
/// </summary>
internal sealed class ObjectMeta(ObjectId id)
{
    /// <summary>Pending value meaning "no newer version in the journal".</summary>
    public const long NotPending = 0;
    /// <summary>Low-word bit of a pending value set by a zeroing record (its offset in the batch
    /// is in the bits below, so every record's marker is its own).</summary>
    public const uint ZeroBit = 0x8000_0000;
    /// <summary>With <see cref="ZeroBit"/>: the zeroed blocks stay allocated.</summary>
    public const uint AllocatedBit = 0x4000_0000;
    /// <summary>Low-word bit of a pending value set by a direct record (its offset in the batch
    /// below): the block's data is in the object file already and <see cref="Crcs"/> holds its
    /// checksum; the record makes it applied state once durable.</summary>
    public const uint DirectBit = 0x2000_0000;

    public ObjectId Id { get; } = id;

    public Lock Lock { get; } = new();

    public uint[] Crcs = [];
    public BlockState[] States = [];

    /// <summary>(batch seq &lt;&lt; 32) | offset of the block's data in that batch, or of the zeroing
    /// record with <see cref="ZeroBit"/> set; 0 if none. Unique per record, so applying one record
    /// never clears an entry that a later record of the same batch set.</summary>
    public long[] Pending = [];

    /// <summary>Blocks in use (the arrays may be longer).</summary>
    public int Blocks;

    /// <summary>The space of the object's meta slot has been reserved (or the object was on disk at start).</summary>
    public bool SlotCharged;

    /// <summary>The object's meta slot has been allocated in the meta file (or the object was on disk at start).</summary>
    public bool SlotAllocated;

    /// <summary>The object file, opened (created) on first apply; null after a delete.</summary>
    public SafeFileHandle? File;

    public static long PendingValue(long seq, uint offset) => (seq << 32) | offset;

    public static long PendingZeroValue(long seq, int recordOffset, bool allocated)
        => PendingValue(seq, (uint)recordOffset | ZeroBit | (allocated ? AllocatedBit : 0));

    public static long PendingDirectValue(long seq, int recordOffset) => PendingValue(seq, (uint)recordOffset | DirectBit);

    /// <summary>The pending value of a direct record: the block reads from the object file.</summary>
    public static bool IsDirect(long pending) => ((uint)pending & (ZeroBit | DirectBit)) == DirectBit;

    public void EnsureBlocks(int blocks)
    {
        if (blocks > Crcs.Length)
        {
            int n = Math.Max(64, (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)blocks));
            Array.Resize(ref Crcs, n);
            Array.Resize(ref States, n);
            Array.Resize(ref Pending, n);
        }
        Blocks = Math.Max(Blocks, blocks);
    }

    /// <summary>The state a reader sees, counting the overlay.</summary>
    public BlockState EffectiveState(int block)
    {
        if (block >= Blocks)
        {
            return BlockState.Hole;
        }
        long p = Pending[block];
        return p == NotPending ? States[block]
            : ((uint)p & ZeroBit) == 0 ? BlockState.Data
            : ((uint)p & AllocatedBit) != 0 ? BlockState.Zero
            : BlockState.Hole;
    }
}
