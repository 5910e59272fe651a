using System.Buffers.Binary;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

/// <summary>Many requests in flight: out-of-order completion, budgets, batching and orderly shutdown.</summary>
public class ConcurrencyTests
{
    private const int Size = 1 << 20;

    [Fact]
    public async Task SlowFlush_DoesNotHoldBackALaterRead()
    {
        var device = new MemoryBlockDevice(Size) { FlushGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        device.Fill(0, TransmissionTests.Pattern(4096, 1));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdFlush, 1, 0, 0);
        await client.SendRequestAsync(Wire.CmdRead, 2, 0, 4096);

        SimpleReply first = await client.ReadSimpleReplyAsync(4096);
        Assert.Equal(2ul, first.Cookie);
        Assert.Equal(TransmissionTests.Pattern(4096, 1), first.Data);

        device.FlushGate.SetResult();
        Assert.Equal(new SimpleReply(0, 1, []), await client.ReadSimpleReplyAsync());
    }

    [Fact]
    public async Task SlowBlockStatus_DoesNotHoldBackALaterRead()
    {
        var device = new MemoryBlockDevice(Size) { AllocationGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        device.Fill(8192, TransmissionTests.Pattern(8192, 1));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(baseAllocation: true);

        await client.SendRequestAsync(Wire.CmdBlockStatus, 1, 4096, 5 * 4096);
        // DF: one data chunk whatever the allocation, so this read does not ask for it.
        await client.SendRequestAsync(Wire.CmdRead, 2, 8192, 4096, Wire.FlagDf);

        Chunk first = await client.ReadChunkAsync();
        Assert.Equal(2ul, first.Cookie);
        Assert.Equal(device.Snapshot(8192, 4096), first.Payload[8..]);

        device.AllocationGate.SetResult();
        Chunk status = await client.ReadChunkAsync();
        Assert.Equal((1ul, Wire.ReplyTypeBlockStatus), (status.Cookie, status.Type));
        Assert.Equal(Wire.Hex("00000001 00001000 00000003 00002000 00000000 00002000 00000003"), status.Payload);
    }

    [Fact]
    public async Task AsynchronousAllocation_StructuredReadsAndBlockStatus_GetTheirOwnAnswers()
    {
        const int Span = 3 * 4096;
        var device = new MemoryBlockDevice(Size) { CompleteAsynchronously = true };
        for (int i = 0; i < 16; i++)
        {
            // The middle block of each request's range holds data; the blocks around it are holes.
            device.Fill((i * Span) + 4096, TransmissionTests.Pattern(4096, i));
        }

        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(baseAllocation: true);

        var requests = new List<byte[]>();
        for (int i = 0; i < 16; i++)
        {
            requests.Add(Wire.Request(0, Wire.CmdRead, (ulong)i, (ulong)(i * Span), Span));
            requests.Add(Wire.Request(0, Wire.CmdBlockStatus, (ulong)(100 + i), (ulong)(i * Span), Span));
        }

        await client.SendAsync(Wire.Concat([.. requests]));
        var cookies = new HashSet<ulong>();
        for (int r = 0; r < 32; r++)
        {
            List<Chunk> reply = await client.ReadStructuredReplyAsync();
            ulong cookie = reply[0].Cookie;
            Assert.True(cookies.Add(cookie));
            if (cookie >= 100)
            {
                Chunk status = Assert.Single(reply);
                Assert.Equal(Wire.Hex("00000001 00001000 00000003 00001000 00000000 00001000 00000003"), status.Payload);
                continue;
            }

            int i = (int)cookie;
            Assert.Equal(
                [Wire.ReplyTypeOffsetHole, Wire.ReplyTypeOffsetData, Wire.ReplyTypeOffsetHole],
                reply.Select(c => c.Type));
            Assert.Equal((ulong)((i * Span) + 4096), reply[1].Offset);
            Assert.Equal(TransmissionTests.Pattern(4096, i), reply[1].Payload[8..]);
        }

        // The holes were never read.
        Assert.Equal(16, device.ReadCalls);
    }

    [Fact]
    public async Task AsynchronousDevice_AnswersEveryRequest_WithItsOwnData()
    {
        var device = new MemoryBlockDevice(Size) { CompleteAsynchronously = true };
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();

        var requests = new List<byte[]>();
        for (int i = 0; i < 32; i++)
        {
            requests.Add(Wire.Request(0, Wire.CmdWrite, (ulong)i, (ulong)i * 4096, 4096, TransmissionTests.Pattern(4096, i)));
        }

        await client.SendAsync(Wire.Concat([.. requests]));
        var cookies = new HashSet<ulong>();
        for (int i = 0; i < 32; i++)
        {
            (uint error, ulong cookie) = await client.ReadPayloadlessReplyAsync();
            Assert.Equal(0u, error);
            Assert.True(cookies.Add(cookie));
        }

        for (int i = 0; i < 32; i++)
        {
            await client.SendRequestAsync(Wire.CmdRead, (ulong)(100 + i), (ulong)i * 4096, 4096, Wire.FlagDf);
        }

        for (int i = 0; i < 32; i++)
        {
            Chunk chunk = await client.ReadChunkAsync();
            int index = (int)chunk.Cookie - 100;
            Assert.Equal((ulong)index * 4096, chunk.Offset);
            Assert.Equal(TransmissionTests.Pattern(4096, index), chunk.Payload[8..]);
        }
    }

    [Fact]
    public async Task InFlightRequests_AreBounded()
    {
        var device = new MemoryBlockDevice(Size)
        {
            CallGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously),
            ConcurrencyTarget = 2,
        };
        await using var client = new NbdTestClient(NbdTestClient.Exports(device), new NbdServerOptions { MaxInFlightRequests = 2 });
        await client.NegotiateAsync(structured: false);

        var requests = new List<byte[]>();
        for (int i = 0; i < 6; i++)
        {
            requests.Add(Wire.Request(0, Wire.CmdWrite, (ulong)i, 0, 512, new byte[512]));
        }

        await client.SendAsync(Wire.Concat([.. requests]));
        await device.ConcurrencyReached.Task.WaitAsync(NbdTestClient.Timeout);
        device.CallGate.SetResult();

        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(0u, (await client.ReadSimpleReplyAsync()).Error);
        }

        Assert.Equal(2, device.MaxConcurrent);
    }

    [Fact]
    public async Task InFlightBytes_AreBounded_ButOneOversizedRequestIsAdmittedAlone()
    {
        var device = new MemoryBlockDevice(Size) { CompleteAsynchronously = true };
        await using var client = new NbdTestClient(
            NbdTestClient.Exports(device),
            new NbdServerOptions { MaxInFlightBytes = 8192 });
        await client.NegotiateAsync(structured: false);

        var requests = new List<byte[]>();
        for (int i = 0; i < 16; i++)
        {
            requests.Add(Wire.Request(0, Wire.CmdRead, (ulong)i, (ulong)i * 4096, 4096));
        }

        // Larger than the whole budget: must still be served, on its own.
        requests.Add(Wire.Request(0, Wire.CmdRead, 99, 0, 65536));
        await client.SendAsync(Wire.Concat([.. requests]));

        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(0u, (await client.ReadSimpleReplyAsync(4096)).Error);
        }

        Assert.Equal(0u, (await client.ReadSimpleReplyAsync(65536)).Error);
        Assert.True(device.MaxConcurrent <= 2, $"{device.MaxConcurrent} reads of 4 KiB ran at once under an 8 KiB budget");
        Assert.True(client.Pool.MaxOutstanding <= 2, $"{client.Pool.MaxOutstanding} payload buffers were out at once");
    }

    [Fact]
    public async Task PipelinedRequests_ShareOneFlush()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);
        int flushesBefore = client.ServerOutput.Flushes;

        var requests = new List<byte[]>();
        for (int i = 0; i < 64; i++)
        {
            requests.Add(Wire.Request(0, Wire.CmdRead, (ulong)i, 0, 512));
        }

        await client.SendAsync(Wire.Concat([.. requests]));
        for (int i = 0; i < 64; i++)
        {
            Assert.Equal((ulong)i, (await client.ReadSimpleReplyAsync(512)).Cookie);
        }

        Assert.InRange(client.ServerOutput.Flushes - flushesBefore, 1, 2);
    }

    [Fact]
    public async Task SlowClient_BackPressure_DeliversEverythingWithBoundedBuffers()
    {
        var device = new MemoryBlockDevice(Size);
        await using var client = new NbdTestClient(
            NbdTestClient.Exports(device),
            new NbdServerOptions { MaxInFlightBytes = 64 << 10, MaxInFlightRequests = 8 },
            serverOutputPauseThreshold: 16 << 10);
        await client.NegotiateAsync(structured: false);

        var requests = new List<byte[]>();
        for (int i = 0; i < 100; i++)
        {
            requests.Add(Wire.Request(0, Wire.CmdRead, (ulong)i, (ulong)(i % 64) * 16384, 16384));
        }

        // All requests are sent before a single reply is read.
        await client.SendAsync(Wire.Concat([.. requests]));
        for (int i = 0; i < 100; i++)
        {
            SimpleReply reply = await client.ReadSimpleReplyAsync(16384);
            Assert.Equal(((ulong)i, 0u), (reply.Cookie, reply.Error));
        }

        Assert.True(client.Pool.MaxOutstanding <= 4, $"{client.Pool.MaxOutstanding} buffers of 16 KiB under a 64 KiB budget");
    }

    [Fact]
    public async Task RepliesWrittenByCompletingThreads_AndByTheReadLoop_UnderBackPressure_EachArriveOnce()
    {
        // Half the requests complete on the read loop (reads: the device answers at once, the loop
        // writes their replies), half on pool threads (writes, asynchronously), all racing for the
        // writer while a small output pipe makes flushes wait and hand the writer to the output loop.
        var device = new MemoryBlockDevice(Size) { CompleteWritesAsynchronously = true };
        device.Fill(0, TransmissionTests.Pattern(64 * 4096, 9));
        await using var client = new NbdTestClient(NbdTestClient.Exports(device), serverOutputPauseThreshold: 8 << 10);
        await client.NegotiateAsync(structured: false);

        const int Rounds = 20, PerRound = 64;
        for (int round = 0; round < Rounds; round++)
        {
            var requests = new List<byte[]>();
            for (int i = 0; i < PerRound; i++)
            {
                ulong cookie = (ulong)((round * PerRound) + i);
                requests.Add(i % 2 == 0
                    ? Wire.Request(0, Wire.CmdRead, cookie, (ulong)(i % 64) * 4096, 4096)
                    : Wire.Request(0, Wire.CmdWrite, cookie, (ulong)(64 + (i % 64)) * 4096, 4096, TransmissionTests.Pattern(4096, i)));
            }

            await client.SendAsync(Wire.Concat([.. requests]));
            var seen = new HashSet<ulong>();
            for (int i = 0; i < PerRound; i++)
            {
                byte[] header = await client.ReadExactAsync(16);
                uint error = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
                ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
                Assert.Equal(0u, error);
                byte[] data = (cookie % PerRound) % 2 == 0 ? await client.ReadExactAsync(4096) : [];
                Assert.True(seen.Add(cookie), $"cookie {cookie} answered twice");
                if ((cookie % PerRound) % 2 == 0)
                {
                    int index = (int)(cookie % PerRound) % 64;
                    Assert.Equal(TransmissionTests.Pattern(64 * 4096, 9).AsSpan(index * 4096, 4096).ToArray(), data);
                }
            }
        }
    }

    [Fact]
    public async Task Disconnect_WaitsForInFlightReplies()
    {
        var device = new MemoryBlockDevice(Size) { FlushGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync();

        await client.SendAsync(Wire.Concat(Wire.Request(0, Wire.CmdFlush, 1, 0, 0), Wire.Request(0, Wire.CmdDisc, 2, 0, 0)));
        await device.FlushStarted.Task.WaitAsync(NbdTestClient.Timeout);
        Assert.False(client.Run.IsCompleted);
        Assert.False(device.Disposed);

        device.FlushGate.SetResult();
        Assert.Equal(new SimpleReply(0, 1, []), await client.ReadSimpleReplyAsync());
        await client.AssertClosedAsync();
        Assert.True(device.Disposed);
    }

    [Fact]
    public async Task StopRequest_FinishesInFlightRequests_ThenCloses()
    {
        var device = new MemoryBlockDevice(Size) { FlushGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);

        await client.SendRequestAsync(Wire.CmdFlush, 1, 0, 0);
        await device.FlushStarted.Task.WaitAsync(NbdTestClient.Timeout);
        await client.Stopping.CancelAsync().WaitAsync(NbdTestClient.Timeout);
        Assert.False(client.Run.IsCompleted);

        device.FlushGate.SetResult();
        Assert.Equal(new SimpleReply(0, 1, []), await client.ReadSimpleReplyAsync());
        await client.AssertClosedAsync();
    }

    [Fact]
    public async Task ClientGoneWhileRepliesPending_RunEndsAndBuffersComeBack()
    {
        var device = new MemoryBlockDevice(Size)
        {
            CallGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously),
            ConcurrencyTarget = 3,
        };
        await using var client = new NbdTestClient(NbdTestClient.Exports(device));
        await client.NegotiateAsync(structured: false);

        await client.SendAsync(Wire.Concat(
            Wire.Request(0, Wire.CmdRead, 1, 0, 4096),
            Wire.Request(0, Wire.CmdRead, 2, 4096, 4096),
            Wire.Request(0, Wire.CmdWrite, 3, 0, 4096, new byte[4096])));
        await device.ConcurrencyReached.Task.WaitAsync(NbdTestClient.Timeout);
        await client.VanishAsync();

        device.CallGate.SetResult();
        await client.Run.WaitAsync(NbdTestClient.Timeout);
        Assert.Equal(0, client.Pool.Outstanding);
        Assert.Equal(0, client.Pool.BadReturns);
        Assert.True(device.Disposed);
    }
}
