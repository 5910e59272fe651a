using System.Buffers;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

[CollectionDefinition(nameof(AllocationTests), DisableParallelization = true)]
public sealed class AllocationCollection;

/// <summary>
/// The transmission hot path must not allocate per request (STYLE.md, hot path #4). Measured
/// process-wide, so this collection runs alone.
/// </summary>
[Collection(nameof(AllocationTests))]
public class AllocationTests
{
    private const int Batches = 200;

    // The client side of the test allocates about 350 bytes per batch (its own async methods),
    // the rest is slack for the runtime. A budget per batch that does not grow with the batch
    // size leaves no room for a cost per request: 6 bytes each would break it at 128 per batch.
    private const int BudgetPerBatch = 1024;

    [Theory]
    [InlineData(false, 16)]
    [InlineData(false, 128)]
    [InlineData(true, 16)]
    [InlineData(true, 128)]
    public async Task SteadyStateRequests_AllocateNothingPerRequest(bool structured, int batchSize)
    {
        var device = new MemoryBlockDevice(1 << 20);
        // Allocated everywhere, so structured reads are one data chunk each, not holes.
        device.Fill(0, TransmissionTests.Pattern(1 << 20, 1));
        await using var client = new NbdTestClient(
            NbdTestClient.Exports(device),
            serverOutputPauseThreshold: 256 << 10,
            bufferPool: new RecyclingPool());
        await client.NegotiateAsync(structured: structured);

        // Half 4 KiB reads (each one data chunk with structured replies), half 512-byte writes.
        byte[] batch = BuildBatch(batchSize);
        int replyBytes = (batchSize / 2 * ((structured ? 28 : 16) + 4096)) + (batchSize / 2 * 16);

        await RunBatchesAsync(client, batch, replyBytes, Batches);

        // The best of three rounds: a cost per request shows in every round, while a one-off
        // (ArrayPool.Shared trimming the pipes' segments after a GC, a new pool thread) does not.
        long allocated = long.MaxValue;
        for (int round = 0; round < 3; round++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            await RunBatchesAsync(client, batch, replyBytes, Batches);
            allocated = Math.Min(allocated, GC.GetTotalAllocatedBytes(precise: true) - before);
        }

        Assert.True(allocated < Batches * BudgetPerBatch, $"{allocated} bytes allocated for {Batches} batches of {batchSize} requests");
    }

    private static async Task RunBatchesAsync(NbdTestClient client, byte[] batch, int replyBytes, int batches)
    {
        // One token for the whole run: a timeout per call would allocate in the measurement.
        using var timeout = new CancellationTokenSource(NbdTestClient.Timeout);
        for (int i = 0; i < batches; i++)
        {
            await client.SendAsync(batch);
            await client.SkipAsync(replyBytes, timeout.Token);
        }
    }

    private static byte[] BuildBatch(int batchSize)
    {
        var parts = new byte[batchSize][];
        for (int i = 0; i < batchSize; i++)
        {
            parts[i] = i % 2 == 0
                ? Wire.Request(Wire.FlagFua, Wire.CmdRead, (ulong)i, (ulong)(i % 128) * 4096, 4096, default)
                : Wire.Request(0, Wire.CmdWrite, (ulong)i, (ulong)(i % 128) * 4096, 512, new byte[512]);
        }

        return Wire.Concat(parts);
    }
}

/// <summary>
/// Keeps every array it gets back, so the measurement sees the connection's own allocations
/// rather than ArrayPool.Shared trimming its per-core caches under a test's burst.
/// </summary>
internal sealed class RecyclingPool : ArrayPool<byte>
{
    private readonly System.Collections.Concurrent.ConcurrentBag<byte[]> _arrays = [];

    public override byte[] Rent(int minimumLength)
        => _arrays.TryTake(out byte[]? array) && array.Length >= minimumLength ? array : new byte[Math.Max(minimumLength, 4096)];

    public override void Return(byte[] array, bool clearArray = false) => _arrays.Add(array);
}
