using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// Clients that hold connections without using them: the handshake time limit and the cap on
/// NBD connections (docs/limits.md). Each test starts its own daemon with its own limits.
/// </summary>
public sealed partial class HostileClientTests(ITestOutputHelper output) : InteropTest(null, output)
{
    private const int SilentConnections = 3000;
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(2);

    [Fact]
    public async Task Silent_connections_are_closed_after_the_handshake_limit_while_a_real_client_is_served()
    {
        // Client and server sockets, both in processes with this limit, plus the daemon's own files.
        var fds = FileDescriptorLimit.EnsureAtLeast(SilentConnections + 2048);
        Assert.True(fds >= SilentConnections + 1024, $"RLIMIT_NOFILE is {fds}: too low for {SilentConnections} connections (raise the hard limit)");
        await using var daemon = await OvisDaemon.StartNewAsync(extraArguments:
            ["--handshake-timeout", $"{Limit.TotalSeconds}", "--max-connections", $"{SilentConnections + 100}"]);
        Daemon = daemon;
        var vol = await CreateVolume(UniqueName("silent"), "16M");
        await QemuIo(Daemon.NbdUri(vol), "write -P 0x5a 0 1M");

        var sockets = new List<(Socket Socket, long ConnectedAt)>(SilentConnections);
        try
        {
            // 64 connects at a time keep within the listen backlog.
            using var connecting = new SemaphoreSlim(64);
            var connects = Enumerable.Range(0, SilentConnections).Select(async _ =>
            {
                await connecting.WaitAsync();
                try
                {
                    var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                    // Taken before the connect: the server cannot accept (and start its clock) earlier,
                    // while the connect's continuation may run long after the accept on a loaded machine
                    // (a close then looked early by the time it took to get here).
                    var startedAt = Stopwatch.GetTimestamp();
                    await s.ConnectAsync(new IPEndPoint(IPAddress.Loopback, Daemon.NbdPort), cts.Token);
                    lock (sockets)
                    {
                        sockets.Add((s, startedAt));
                    }
                }
                finally
                {
                    connecting.Release();
                }
            });
            await Task.WhenAll(connects);
            Log($"{sockets.Count} silent connections open");

            // Each one reads until the server closes it; none sends a byte.
            var closes = sockets.Select(c => WaitForCloseAsync(c.Socket, c.ConnectedAt, TimeSpan.FromSeconds(90))).ToList();

            // Meanwhile a real client is served: a whole qemu-io session and an nbdinfo.
            await QemuIo(Daemon.NbdUri(vol), "read -P 0x5a 0 1M", "write -P 0xa5 1M 1M", "read -P 0xa5 1M 1M");
            await RunOk("nbdinfo", [Daemon.NbdUri(vol)]);

            var results = await Task.WhenAll(closes);
            var greeted = results.Count(r => r.Received == 18);
            var clean = results.Count(r => r.Outcome == "eof");
            var early = results.Count(r => r.Outcome == "eof" && r.After < Limit - TimeSpan.FromMilliseconds(100));
            var slowest = results.Max(r => r.After);
            Log($"{greeted} greeted, {clean} closed cleanly, {early} before the limit, slowest close {slowest.TotalSeconds:F1}s; "
                + string.Join(", ", results.GroupBy(r => r.Outcome).Select(g => $"{g.Key}: {g.Count()}")));
            Assert.True(clean == SilentConnections, $"{SilentConnections - clean} of {SilentConnections} silent connections were not closed cleanly by the server\n{DaemonState()}");
            Assert.True(greeted == SilentConnections, $"{SilentConnections - greeted} silent connections did not get the greeting (refused instead of timed out?)");
            Assert.True(early == 0, $"{early} silent connections were closed before the {Limit.TotalSeconds} s limit");

            // The closes were logged, counted: a handful of lines, not thousands.
            await Eventually(() => Task.FromResult(Counted(HandshakeTimeoutLine()) >= SilentConnections),
                TimeSpan.FromSeconds(10), "the daemon's log counts every handshake timeout");
            var lines = HandshakeTimeoutLine().Count(Daemon.Log);
            Log($"{lines} log lines counted {Counted(HandshakeTimeoutLine())} handshake timeouts");
            Assert.True(lines < 100, $"{SilentConnections} handshake timeouts took {lines} log lines");
        }
        finally
        {
            foreach (var (s, _) in sockets)
            {
                s.Dispose();
            }
        }

        Daemon.AssertAlive("after the silent connections");
        await QemuIo(Daemon.NbdUri(vol), "read -P 0x5a 0 1M", "read -P 0xa5 1M 1M");
    }

    [Fact]
    public async Task The_connection_cap_refuses_cleanly_and_serves_again_once_connections_close()
    {
        const int Cap = 4;
        await using var daemon = await OvisDaemon.StartNewAsync(extraArguments: ["--max-connections", $"{Cap}", "--handshake-timeout", "120"]);
        Daemon = daemon;
        var vol = await CreateVolume(UniqueName("cap"), "16M");
        await QemuIo(Daemon.NbdUri(vol), "write -P 0x5a 0 1M");

        var held = new List<RawNbdClient>();
        try
        {
            // Cap connections that sit in the handshake: each was admitted (it got the greeting).
            // The qemu-io above has exited, but its connection's slot comes back only once the
            // server has finished closing it: a refusal before then is retried.
            var admitUntil = Stopwatch.GetTimestamp() + (10 * Stopwatch.Frequency);
            while (held.Count < Cap)
            {
                try
                {
                    held.Add(await RawNbdClient.ConnectGreetedAsync(Daemon.NbdPort));
                }
                catch (EndOfStreamException) when (Stopwatch.GetTimestamp() < admitUntil)
                {
                    await Task.Delay(100);
                }
            }

            // Every further one is accepted by TCP and closed at once with a FIN: no greeting, no reset.
            const int Refused = 200;
            for (var i = 0; i < Refused; i++)
            {
                using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await s.ConnectAsync(new IPEndPoint(IPAddress.Loopback, Daemon.NbdPort));
                var r = await WaitForCloseAsync(s, Stopwatch.GetTimestamp(), TimeSpan.FromSeconds(15));
                Assert.True(r is { Outcome: "eof", Received: 0 }, $"refused connection {i}: {r.Outcome} after {r.Received} bytes, expected a clean close without a greeting");
            }

            var refusedClient = await Run("qemu-img", ["info", Daemon.NbdUri(vol)], TimeSpan.FromSeconds(60));
            Assert.NotEqual(0, refusedClient.ExitCode);

            // Logged, counted, at most a line a second: the refusals took a few seconds at most.
            await Eventually(() => Task.FromResult(Counted(RefusedLine()) >= Refused), TimeSpan.FromSeconds(10), "the daemon's log counts every refusal");
            var lines = RefusedLine().Count(Daemon.Log);
            Log($"{lines} log lines counted {Counted(RefusedLine())} refusals");
            Assert.True(lines < Refused / 4, $"{Refused} refusals took {lines} log lines");
        }
        finally
        {
            foreach (var c in held)
            {
                await c.DisposeAsync();
            }
        }

        // The held connections closed; their slots come back and a real client is served again.
        await Eventually(async () => (await Run("qemu-io", QemuIoArgs(Daemon.NbdUri(vol), ["read -P 0x5a 0 1M"]))).Succeeded,
            TimeSpan.FromSeconds(30), "qemu-io is served again once the held connections are closed");
        await RunOk("nbdinfo", [Daemon.NbdUri(vol)]);
        Daemon.AssertAlive("after the refusals");
    }

    [Theory]
    [InlineData("--handshake-timeout", "-1", "--handshake-timeout: -1 is out of range")]
    [InlineData("--handshake-timeout", "3601", "--handshake-timeout: 3601 is out of range")]
    [InlineData("--handshake-timeout", "soon", "--handshake-timeout")]
    [InlineData("--max-connections", "0", "--max-connections: 0 is out of range")]
    [InlineData("--max-connections", "-3", "--max-connections: -3 is out of range")]
    public async Task A_bad_limit_is_a_one_line_usage_error(string option, string value, string error)
    {
        var r = await Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, "serve", "--data", ScratchDirectory(), "--nbd", "127.0.0.1:0", "--admin", "127.0.0.1:0", option, value]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(error, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Trim().Split('\n'));
    }

    /// <summary>The events the daemon's counted log lines of one kind add up to.</summary>
    private int Counted(Regex line) => line.Matches(Daemon.Log).Sum(m => int.Parse(m.Groups["count"].Value, System.Globalization.CultureInfo.InvariantCulture));

    /// <summary>Reads until the server closes: "eof" (a FIN), "reset", or "timeout"; with the bytes received and when.</summary>
    private static async Task<(string Outcome, int Received, TimeSpan After)> WaitForCloseAsync(Socket socket, long connectedAt, TimeSpan timeout)
    {
        var buffer = new byte[256];
        var received = 0;
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            while (true)
            {
                var n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                if (n == 0)
                {
                    return ("eof", received, Stopwatch.GetElapsedTime(connectedAt));
                }
                received += n;
            }
        }
        catch (OperationCanceledException)
        {
            return ("timeout", received, Stopwatch.GetElapsedTime(connectedAt));
        }
        catch (SocketException ex)
        {
            return ($"reset ({ex.SocketErrorCode})", received, Stopwatch.GetElapsedTime(connectedAt));
        }
    }

    [GeneratedRegex(@"Closed (?<count>\d+) NBD connection\(s\) that did not finish the handshake")]
    private static partial Regex HandshakeTimeoutLine();

    [GeneratedRegex(@"Refused (?<count>\d+) NBD connection\(s\)")]
    private static partial Regex RefusedLine();
}
