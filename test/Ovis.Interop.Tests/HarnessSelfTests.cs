using System.Net;
using System.Net.Sockets;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using Xunit.Sdk;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// The harness checked against a reference server (nbdkit's memory plugin) and against itself,
/// so that a failure elsewhere in this project is a finding about Ovis, not about the tools.
/// </summary>
public sealed class HarnessSelfTests(ITestOutputHelper output) : InteropTest(null, output)
{
    [Fact]
    public async Task Raw_client_speaks_nbd_with_the_reference_server()
    {
        await using var nbdkit = await NbdKit.StartAsync(ScratchDirectory(), "memory", "64M");

        await using (var c = await RawNbdClient.ConnectGreetedAsync(nbdkit.Port))
        {
            await c.SendClientFlagsAsync();
            Assert.Contains("", await c.ListAsync());
            Assert.Equal(RawNbdClient.RepAck, await c.GoAsync(""));
            Assert.Equal(64L * MiB, c.ExportSize);
            Assert.True(c.CanMultiConn);

            var data = RandomBytes(128 * KiB, seed: 3);
            await c.WriteOkAsync(MiB + 123, data);
            await c.WriteOkAsync(5 * MiB, data, fua: true);
            Assert.Equal(0u, await c.FlushAsync());
            Assert.Equal(data, await c.ReadOkAsync(MiB + 123, data.Length));
            Assert.Equal(0u, await c.TrimAsync(5 * MiB, 64 * KiB));
            Assert.Equal(0u, await c.WriteZeroesAsync(5 * MiB + 64 * KiB, 64 * KiB));
            Assert.Equal(new byte[128 * KiB], await c.ReadOkAsync(5 * MiB, 128 * KiB));

            var past = await c.ReadAsync(64L * MiB - 4096, 8192);
            Assert.Equal(RawNbdClient.EINVAL, past.Error);
            await c.DisconnectAsync();
            await c.ExpectCloseAsync(TimeSpan.FromSeconds(10), "NBD_CMD_DISC");
        }

        await using (var c = await RawNbdClient.ConnectAsync(nbdkit.Port, ""))
        {
            await c.SendAsync(RawNbdClient.EncodeRequest(RawNbdClient.CmdRead, 1, 0, 512, magic: 0xdeadbeef));
            await c.ExpectCloseAsync(TimeSpan.FromSeconds(10), "bad magic");
        }

        // qemu-io sees what the raw client wrote: both speak the same protocol.
        var r = await RunOk("qemu-io", QemuIoArgs($"nbd://127.0.0.1:{nbdkit.Port}/", ["read -P 0 0 1M"]));
        Assert.Contains("read 1048576/1048576", r.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ExpectClose_fails_when_the_server_keeps_the_connection()
    {
        await using var nbdkit = await NbdKit.StartAsync(ScratchDirectory(), "memory", "1M");
        await using var c = await RawNbdClient.ConnectAsync(nbdkit.Port, "");

        await Assert.ThrowsAsync<FailException>(() => c.ExpectCloseAsync(TimeSpan.FromMilliseconds(300), "an open connection"));
    }

    [Fact]
    public async Task A_hung_command_fails_the_test_with_its_output()
    {
        var ex = await Assert.ThrowsAsync<FailException>(() =>
            ProcessRunner.Run("sh", ["-c", "echo started >&2; exec sleep 60"], TimeSpan.FromMilliseconds(500)));

        Assert.Contains("timed out", ex.Message, StringComparison.Ordinal);
        Assert.Contains("started", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Exit_codes_and_streams_are_reported()
    {
        var r = await ProcessRunner.Run("sh", ["-c", "echo out; echo err >&2; exit 3"], TimeSpan.FromSeconds(10));

        Assert.Equal(3, r.ExitCode);
        Assert.Equal("out", r.Stdout.Trim());
        Assert.Equal("err", r.Stderr.Trim());
    }

    [Fact]
    public void The_daemon_under_test_is_built_next_to_the_tests()
    {
        Assert.True(File.Exists(OvisDaemon.OvisDll), $"ovis.dll not found at {OvisDaemon.OvisDll}");
        Assert.True(File.Exists(Path.ChangeExtension(OvisDaemon.OvisDll, ".runtimeconfig.json")), "ovis.runtimeconfig.json is missing next to ovis.dll");
    }

    /// <summary>nbdkit in the background on a free loopback port; killed on dispose.</summary>
    private sealed class NbdKit : IAsyncDisposable
    {
        private readonly string _pidFile;

        private NbdKit(int port, string pidFile)
        {
            Port = port;
            _pidFile = pidFile;
        }

        public int Port { get; }

        public static async Task<NbdKit> StartAsync(string dir, params string[] plugin)
        {
            int port;
            using (var probe = new TcpListener(IPAddress.Loopback, 0))
            {
                probe.Start();
                port = ((IPEndPoint)probe.LocalEndpoint).Port;
            }
            var pidFile = Path.Combine(dir, "nbdkit.pid");
            // Without -f nbdkit binds its socket before it forks and the parent exits, so the port
            // is listening when this returns. The child writes the pid file before it serves the
            // first connection, so it exists by the time the server is disposed.
            var r = await ProcessRunner.Run("nbdkit",
                ["-P", pidFile, "-i", "127.0.0.1", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), .. plugin],
                TimeSpan.FromSeconds(20));
            Assert.True(r.Succeeded, r.Describe());
            return new NbdKit(port, pidFile);
        }

        public async ValueTask DisposeAsync()
        {
            if (File.Exists(_pidFile))
            {
                await ProcessRunner.Run("kill", [(await File.ReadAllTextAsync(_pidFile)).Trim()], TimeSpan.FromSeconds(10));
            }
        }
    }
}
