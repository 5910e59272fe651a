using System.Buffers.Binary;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

/// <summary>
/// Seeded random input at each stage of the protocol. Whatever arrives, RunAsync must end
/// without throwing once the client goes away, every pooled buffer must come back exactly
/// once, and the device must be disposed.
/// </summary>
public class FuzzTests
{
    private const int Size = 256 << 10;
    private const int Iterations = 150;

    private static readonly NbdServerOptions SmallLimits = new()
    {
        MaxPayloadSize = 64 << 10,
        MaxInFlightBytes = 128 << 10,
        MaxInFlightRequests = 4,
    };

    public static TheoryData<int> Seeds()
    {
        var seeds = new TheoryData<int>();
        for (int seed = 0; seed < 4; seed++)
        {
            seeds.Add(seed);
        }

        return seeds;
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public async Task RandomBytesAfterHandshake_NeverThrow(int seed)
    {
        var random = new Random(seed);
        for (int i = 0; i < Iterations; i++)
        {
            byte[] garbage = new byte[random.Next(0, 600)];
            random.NextBytes(garbage);
            await RunAfterGoAsync(random, garbage);
        }
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public async Task RandomRequests_NeverThrow(int seed)
    {
        var random = new Random(1000 + seed);
        for (int i = 0; i < Iterations; i++)
        {
            var stream = new List<byte>();
            int count = random.Next(1, 12);
            for (int r = 0; r < count; r++)
            {
                stream.AddRange(RandomRequest(random));
            }

            await RunAfterGoAsync(random, [.. stream]);
        }
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public async Task RandomOptions_NeverThrow(int seed)
    {
        var random = new Random(2000 + seed);
        for (int i = 0; i < Iterations; i++)
        {
            var device = new MemoryBlockDevice(Size);
            MemoryExportProvider exports = NbdTestClient.Exports(device);
            await using var client = new NbdTestClient(exports, SmallLimits);
            Task<byte[]> drained = client.ReadToEndAsync();
            await client.SendUInt32Async((uint)random.Next(0, 4));
            int count = random.Next(1, 8);
            for (int o = 0; o < count; o++)
            {
                await client.SendAsync(RandomOption(random));
            }

            await client.CloseSendAsync();
            await drained.WaitAsync(NbdTestClient.Timeout);
            await client.AssertRunCompletedAsync();
            Assert.True(exports.Opened == 0 || device.Disposed);
        }
    }

    private static async Task RunAfterGoAsync(Random random, byte[] input)
    {
        var device = new MemoryBlockDevice(Size) { CompleteAsynchronously = random.Next(2) == 0 };
        device.Fill(random.Next(0, Size - 8192), TransmissionTests.Pattern(8192, random.Next()));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device), SmallLimits);
        bool structured = random.Next(2) == 0;
        await client.NegotiateAsync(structured: structured, baseAllocation: structured && random.Next(2) == 0);

        // Read replies concurrently, as a real client would, so output never backs up.
        Task<byte[]> drained = client.ReadToEndAsync();
        await client.SendAsync(input);
        await client.CloseSendAsync();
        await drained.WaitAsync(NbdTestClient.Timeout);
        await client.AssertRunCompletedAsync();
        Assert.True(device.Disposed);
    }

    private static byte[] RandomRequest(Random random)
    {
        ushort type = (ushort)(random.Next(10) == 0 ? random.Next(0, 0x10000) : random.Next(0, 9));
        if (type == Wire.CmdDisc && random.Next(4) != 0)
        {
            type = Wire.CmdRead;
        }

        ushort flags = (ushort)(random.Next(3) == 0 ? random.Next(0, 0x10000) : random.Next(0, 32));
        ulong offset = random.Next(4) switch
        {
            0 => (ulong)random.NextInt64(),
            1 => (ulong)(Size - random.Next(0, 4096)),
            _ => (ulong)random.Next(0, Size),
        };
        uint length = random.Next(4) switch
        {
            0 => (uint)random.NextInt64(0, uint.MaxValue + 1L),
            1 => 0,
            _ => (uint)random.Next(0, 70 << 10),
        };

        // Writes carry a payload, sometimes shorter than announced.
        byte[] payload = type == Wire.CmdWrite
            ? new byte[random.Next(4) == 0 ? random.Next(0, 1000) : (int)Math.Min(length, 70u << 10)]
            : [];
        byte[] request = Wire.Request(flags, type, (ulong)random.NextInt64(), offset, length, payload);
        if (random.Next(25) == 0)
        {
            request[random.Next(0, 4)] ^= 0x5a;
        }

        return request;
    }

    private static byte[] RandomOption(Random random)
    {
        uint option = (uint)(random.Next(6) == 0 ? random.NextInt64(0, uint.MaxValue + 1L) : random.Next(0, 13));
        byte[] data;
        switch (random.Next(5))
        {
            case 0:
                data = Wire.InfoData(random.Next(2) == 0 ? "disk" : "nope", (ushort)random.Next(0, 5));
                break;
            case 1:
                data = Wire.MetaContextData("disk", random.Next(2) == 0 ? "base:allocation" : "base:");
                break;
            default:
                data = new byte[random.Next(0, 64)];
                random.NextBytes(data);
                break;
        }

        byte[] bytes = Wire.Option(option, data);
        switch (random.Next(12))
        {
            case 0:
                BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(12), (uint)random.NextInt64(0, uint.MaxValue + 1L));
                break;
            case 1:
                bytes[random.Next(0, 8)] ^= 0x20;
                break;
        }

        return bytes;
    }
}
