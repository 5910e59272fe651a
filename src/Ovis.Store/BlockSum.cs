namespace Ovis.Store;

/// <summary>
/// One block of an object copy in brief, so copies on different nodes can be compared without
/// moving their data: its allocation and, for a data block, the CRC32C of its content. Holes and
/// allocated zeroes carry 0. Copies with equal sums hold the same blocks, but for a CRC collision.
/// </summary>
public readonly record struct BlockSum(BlockState State, uint Crc);
