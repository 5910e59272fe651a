using System.Buffers.Binary;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Peer;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Store;

namespace Ovis.Cluster.Tests;

/// <summary>
/// Seeded hostile input to a real <see cref="PeerServer"/> over a socket: random bytes, random
/// headers with extreme fields, and valid requests with bytes flipped. Whatever arrives, every
/// reply must be well framed, the server must go on serving valid requests, and the store must
/// keep the data written before, also after it is closed and opened again.
/// </summary>
public class PeerFuzzTests
{
    // The fuzzer never names this layer, so what the test wrote there must survive untouched.
    private const uint KeptLayer = 7;
    private const int Connections = 60;

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
    public async Task Hostile_frames_never_take_the_server_down_and_the_store_stays_intact(int seed)
    {
        await using var f = new PeerFixture();
        var kept = new Dictionary<ObjectId, byte[]>();
        for (uint i = 0; i < 4; i++)
        {
            var id = new ObjectId(KeptLayer, i);
            kept[id] = Pattern(64 << 10, (int)i + 1);
            Assert.Equal(PeerStatus.Ok, (await f.Client.WriteAsync(f.Epoch, 1, id, 4096, kept[id], fua: true)).Status);
        }

        var random = new Random(seed);
        for (int c = 0; c < Connections; c++)
        {
            await using var raw = await RawPeer.ConnectAsync(f.EndPoint);
            byte[] stream = HostileStream(random, f.Epoch);
            try
            {
                await raw.SendAsync(stream);
                raw.ShutdownSend();
            }
            catch (SocketException)
            {
                // The server closed first (a bad magic, an oversize payload): allowed.
            }

            AssertWellFramed(await raw.ReceiveToEndAsync(), $"seed {seed}, connection {c}");
        }

        // Still serving: a ping, and the kept objects read back.
        Assert.Equal(PeerStatus.Ok, (await f.Client.PingAsync()).Status);
        foreach (var (id, data) in kept)
        {
            var back = new byte[data.Length];
            Assert.Equal(PeerStatus.Ok, (await f.Client.ReadAsync(f.Epoch, id, 4096, back)).Status);
            Assert.Equal(data, back);
        }

        // And the store closes (a checkpoint of everything the fuzzer wrote) and opens again intact.
        await f.KillServerAsync();
        await f.Store.DisposeAsync().AsTask().WaitAsync(PeerFixture.Timeout);
        await using var reopened = LocalStore.Open(f.StoreDirectory, PeerFixture.StoreOptions, NullLogger.Instance);
        foreach (var (id, data) in kept)
        {
            var back = new byte[data.Length];
            Assert.Equal(StoreStatus.Ok, await reopened.ReadAsync(id, 4096, back));
            Assert.Equal(data, back);
        }
    }

    /// <summary>Replies one after another, each with the reply magic and a payload only when OK; a cut-off last one is allowed.</summary>
    private static void AssertWellFramed(byte[] replies, string where)
    {
        int at = 0;
        while (replies.Length - at >= PeerProtocol.ReplyHeaderSize)
        {
            ReadOnlySpan<byte> header = replies.AsSpan(at, PeerProtocol.ReplyHeaderSize);
            Assert.True(BinaryPrimitives.ReadUInt32BigEndian(header) == PeerProtocol.ReplyMagic, $"{where}: no reply magic at byte {at}");
            PeerReplyHeader reply = PeerReplyHeader.Read(header);
            Assert.True(reply.Status is PeerStatus.Ok or PeerStatus.IoError or PeerStatus.NoSpace or PeerStatus.StaleEpoch or PeerStatus.Invalid or PeerStatus.Fenced,
                $"{where}: status {reply.Status}");
            Assert.True(reply.Status == PeerStatus.Ok || reply.Length == 0, $"{where}: an error reply with a payload");
            at += PeerProtocol.ReplyHeaderSize + (int)reply.Length;
        }
    }

    private static byte[] HostileStream(Random random, long epoch)
    {
        var stream = new MemoryStream();
        int frames = random.Next(1, 10);
        for (int i = 0; i < frames; i++)
        {
            switch (random.Next(4))
            {
                case 0:
                    stream.Write(RandomBytes(random, random.Next(0, 120)));
                    break;
                case 1:
                    WriteFrame(stream, random, RandomHeader(random, epoch));
                    break;
                default:
                    // A valid request with a few bytes flipped (the magic only now and then).
                    byte[] header = RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.None, (ulong)epoch, (ulong)i, new ObjectId(1, (uint)random.Next(8)).Packed, 4096, 4096, 1);
                    int flips = random.Next(1, 4);
                    for (int b = 0; b < flips; b++)
                    {
                        int at = random.Next(random.Next(10) == 0 ? 0 : 4, header.Length);
                        header[at] ^= (byte)(1 << random.Next(8));
                    }

                    WriteFrame(stream, random, header);
                    break;
            }
        }

        return stream.ToArray();
    }

    /// <summary>A header, then (for opcodes that carry one) its payload, whole if it is small, cut short otherwise.</summary>
    private static void WriteFrame(MemoryStream stream, Random random, byte[] header)
    {
        stream.Write(header);
        PeerRequestHeader parsed = PeerRequestHeader.Read(header);
        if (parsed.HasPayload)
        {
            int sent = parsed.Length <= 256 << 10 && random.Next(8) != 0 ? (int)parsed.Length : random.Next(0, 4096);
            stream.Write(RandomBytes(random, sent));
        }
    }

    /// <summary>
    /// A request that is valid for its opcode (so it reaches the store), aimed at any object, with
    /// up to three fields then replaced by extreme values.
    /// </summary>
    private static byte[] RandomHeader(Random random, long epoch)
    {
        var opcode = (PeerOpcode)random.Next(1, 12);
        bool change = opcode is PeerOpcode.Write or PeerOpcode.Zero or PeerOpcode.FillHoles or PeerOpcode.Delete;
        bool blocks = opcode is PeerOpcode.FillHoles or PeerOpcode.Allocation or PeerOpcode.BlockSums;
        bool ranged = opcode is PeerOpcode.Read or PeerOpcode.Write or PeerOpcode.Zero or PeerOpcode.FillHoles or PeerOpcode.Allocation or PeerOpcode.BlockSums;
        var flags = opcode switch
        {
            PeerOpcode.Write => Pick(random, PeerRequestFlags.None, PeerRequestFlags.Fua),
            PeerOpcode.Zero => Pick(random, PeerRequestFlags.None, PeerRequestFlags.Fua, PeerRequestFlags.KeepAllocated),
            PeerOpcode.FillHoles => Pick(random, PeerRequestFlags.None, PeerRequestFlags.Zeroes),
            PeerOpcode.BlockSums => Pick(random, PeerRequestFlags.None, PeerRequestFlags.Verify),
            _ => PeerRequestFlags.None,
        };
        uint layer = Pick(random, 1u, 2u, (uint)random.Next(), uint.MaxValue);
        uint index = Pick(random, 0u, 1u, (uint)random.Next(1 << 16), (uint)random.Next(), 0x7FFF_FFFFu, uint.MaxValue - 1, uint.MaxValue);
        if (layer == KeptLayer)
        {
            layer++;
        }

        ulong objectId = opcode is PeerOpcode.Flush or PeerOpcode.Stats or PeerOpcode.Ping ? 0
            : opcode == PeerOpcode.Fence ? new ObjectId(layer, 0).Packed
            : new ObjectId(layer, index).Packed;
        ulong offset = !ranged ? 0 : (ulong)random.Next(0, 64) * 4096;
        uint length = !ranged ? 0 : blocks && opcode != PeerOpcode.FillHoles ? (uint)random.Next(0, 64) : (uint)random.Next(0, 17) * 4096;
        ulong generation = change || opcode == PeerOpcode.Fence ? (ulong)random.Next(1, 4) : 0;
        ulong epochField = (ulong)epoch;

        for (int m = random.Next(0, 4); m > 0; m--)
        {
            switch (random.Next(7))
            {
                case 0: opcode = (PeerOpcode)Pick(random, 0, 12, 0xFFFF, random.Next(0, 0x10000)); break;
                case 1: flags = (PeerRequestFlags)random.Next(0, 0x10000); break;
                case 2: epochField = Pick<ulong>(random, (ulong)epoch + 1, 0, (ulong)long.MaxValue, ulong.MaxValue); break;
                case 3: objectId = (ulong)random.NextInt64() | (random.Next(2) == 0 ? 0 : 1ul << 63); break;
                case 4: offset = Pick<ulong>(random, (ulong)random.Next(0, 16 << 20), 16ul << 20, (16ul << 20) + 1, long.MaxValue, ulong.MaxValue - 4095); break;
                case 5: length = Pick<uint>(random, 1u, (uint)random.Next(), PeerProtocol.MaxPayloadLength, PeerProtocol.MaxPayloadLength + 1, uint.MaxValue); break;
                default: generation = Pick<ulong>(random, 0, (ulong)random.NextInt64(), (ulong)long.MaxValue, (ulong)long.MaxValue + 1, ulong.MaxValue); break;
            }
        }

        return RawPeer.Request(opcode, flags, epochField, (ulong)random.NextInt64(), objectId, offset, length, generation);
    }

    private static T Pick<T>(Random random, params T[] choices) => choices[random.Next(choices.Length)];

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    private static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
