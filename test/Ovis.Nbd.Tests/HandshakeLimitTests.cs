using Microsoft.Extensions.Logging;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

/// <summary>The handshake time limit (<see cref="NbdServerOptions.HandshakeTimeout"/>).</summary>
public class HandshakeLimitTests
{
    private static readonly NbdServerOptions ShortLimit = new() { HandshakeTimeout = TimeSpan.FromMilliseconds(200) };

    [Fact]
    public void Default_IsTenSeconds_LikeQemuNbd()
        => Assert.Equal(TimeSpan.FromSeconds(10), new NbdServerOptions().HandshakeTimeout);

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void ZeroOrNegativeLimit_IsRefused(int milliseconds)
        => Assert.Throws<ArgumentOutOfRangeException>(() => new NbdTestClient(
            NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)),
            new NbdServerOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(milliseconds) }));

    [Fact]
    public async Task SilentClient_IsClosedAfterTheLimit_WithALogLine()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)), ShortLimit);

        // It reads the greeting and then says nothing at all.
        await client.ReadExactAsync(18);

        await client.AssertClosedAsync();
        Assert.Contains(client.Logger.Entries, e => e.EventId.Id == 13 && e.Message.Contains("handshake", StringComparison.Ordinal));
    }

    [Fact]
    public async Task SilentClient_HoldsNoPooledBuffer()
    {
        // Thousands of silent connections must cost a socket each, not a 64 KiB option buffer.
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)));

        await client.ReadExactAsync(18);

        Assert.Equal(0, client.Pool.Outstanding);
    }

    [Fact]
    public async Task ClientHagglingPastTheLimit_IsClosed()
    {
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)), ShortLimit);
        await client.GreetAsync();

        // A whole option (whose replies it leaves unread), half an option header, and then nothing.
        await client.SendOptionAsync(Wire.OptList);
        await client.SendAsync(new byte[7]);

        await client.Run.WaitAsync(NbdTestClient.Timeout);
        Assert.Contains(client.Logger.Entries, e => e.EventId.Id == 13);
    }

    [Fact]
    public async Task ClientNotReadingTheHandshakeReplies_IsClosed()
    {
        // The server's output pauses after 64 bytes, so its flush of the LIST replies waits for
        // a client that never reads: the limit must end that wait too.
        await using var client = new NbdTestClient(NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)), ShortLimit, serverOutputPauseThreshold: 64);
        await client.SendUInt32Async(3);
        for (int i = 0; i < 16; i++)
        {
            await client.SendOptionAsync(Wire.OptList);
        }

        await client.Run.WaitAsync(NbdTestClient.Timeout);
        Assert.Contains(client.Logger.Entries, e => e.EventId.Id == 13);
    }

    [Fact]
    public async Task FinishedHandshake_OutlivesTheLimit()
    {
        var device = new MemoryBlockDevice(1 << 20);
        device.Fill(0, TransmissionTests.Pattern(4096, 8));
        // Long enough for the handshake on a loaded machine; the test then waits it out.
        await using var client = new NbdTestClient(NbdTestClient.Exports(device), new NbdServerOptions { HandshakeTimeout = TimeSpan.FromSeconds(1) });
        await client.NegotiateAsync(structured: false);

        // Let the limit pass (a wait for time itself, not for another task), then use the session.
        await Task.Delay(TimeSpan.FromMilliseconds(1500));
        await client.SendRequestAsync(Wire.CmdRead, 1, 0, 4096);

        Assert.Equal(TransmissionTests.Pattern(4096, 8), (await client.ReadSimpleReplyAsync(4096)).Data);
        Assert.DoesNotContain(client.Logger.Entries, e => e.EventId.Id == 13);
    }

    [Fact]
    public async Task TheServersOwnWaitToOpenTheExport_DoesNotCount()
    {
        // A cluster node may wait for a volume's lock longer than the limit: that is not the
        // client's slowness, so the clock stops while the export opens.
        var device = new MemoryBlockDevice(1 << 20);
        device.Fill(0, TransmissionTests.Pattern(4096, 4));
        MemoryExportProvider exports = NbdTestClient.Exports(device);
        exports.OpenDelay = TimeSpan.FromMilliseconds(1200);
        await using var client = new NbdTestClient(exports, new NbdServerOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(600) });

        await client.NegotiateAsync(structured: false);
        await client.SendRequestAsync(Wire.CmdRead, 1, 0, 4096);

        Assert.Equal(TransmissionTests.Pattern(4096, 4), (await client.ReadSimpleReplyAsync(4096)).Data);
        Assert.DoesNotContain(client.Logger.Entries, e => e.EventId.Id == 13);
    }

    [Fact]
    public async Task InfiniteLimit_NeverCloses()
    {
        await using var client = new NbdTestClient(
            NbdTestClient.Exports(new MemoryBlockDevice(1 << 20)),
            new NbdServerOptions { HandshakeTimeout = Timeout.InfiniteTimeSpan });
        await client.ReadExactAsync(18);

        await client.AssertSilentAsync(TimeSpan.FromMilliseconds(300));
        Assert.False(client.Run.IsCompleted);
    }
}
