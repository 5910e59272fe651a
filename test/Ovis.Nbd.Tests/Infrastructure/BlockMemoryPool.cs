using System.Buffers;
using System.Collections.Concurrent;

namespace Ovis.Nbd.Tests.Infrastructure;

/// <summary>
/// The test pipes' memory, 4 KiB blocks kept in one shared queue, as Kestrel's transport pools its
/// blocks (PinnedBlockMemoryPool). ArrayPool.Shared keeps a few arrays per thread and per core and
/// drops the rest, so a pipe whose segments are rented on one thread and returned on another
/// allocates whenever more of them are in flight than those caches hold: an artefact of the test
/// pipes that would hide (or fake) a cost per request in the allocation tests.
/// </summary>
internal sealed class BlockMemoryPool : MemoryPool<byte>
{
    private const int BlockSize = 4096;
    private readonly ConcurrentQueue<Block> _free = new();

    public override int MaxBufferSize => BlockSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(minBufferSize, BlockSize);
        return _free.TryDequeue(out Block? block) ? block : new Block(this);
    }

    protected override void Dispose(bool disposing)
    {
    }

    private sealed class Block(BlockMemoryPool pool) : IMemoryOwner<byte>
    {
        public Memory<byte> Memory { get; } = new byte[BlockSize];

        public void Dispose() => pool._free.Enqueue(this);
    }
}
