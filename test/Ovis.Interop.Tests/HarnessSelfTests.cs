using System.Diagnostics;
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
        await using var nbdkit = await NbdKit.StartAsync("memory", "64M");

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
        await using var nbdkit = await NbdKit.StartAsync("memory", "1M");
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

    /// <summary>
    /// nbdkit in the foreground (-f) on a free loopback port, killed on dispose. nbdkit sets
    /// PR_SET_PDEATHSIG, and that signal follows the *thread* that forked it — here a pool thread
    /// that may end at any time — so it runs under a shell that outlives it.
    /// </summary>
    private sealed class NbdKit : IAsyncDisposable
    {
        private readonly Process _process;
        private readonly string _pid;

        private NbdKit(int port, Process process, string pid)
        {
            Port = port;
            _process = process;
            _pid = pid;
        }

        public int Port { get; }

        public static async Task<NbdKit> StartAsync(params string[] plugin)
        {
            int port;
            using (var probe = new TcpListener(IPAddress.Loopback, 0))
            {
                probe.Start();
                port = ((IPEndPoint)probe.LocalEndpoint).Port;
            }
            var psi = new ProcessStartInfo("sh") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            // The shell prints nbdkit's pid and waits for it, so that nbdkit can be stopped on its
            // own and reaped by the shell (a container's pid 1 may not reap orphans).
            foreach (var a in new[] { "-c", "nbdkit \"$@\" & echo $!; wait $!", "sh", "-f", "-v", "-i", "127.0.0.1", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture) }.Concat(plugin))
            {
                psi.ArgumentList.Add(a);
            }
            var bound = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var pid = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
            var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
            var p = new Process { StartInfo = psi };
            p.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is null)
                {
                    return;
                }
                log.Enqueue(e.Data);
                // Printed once the listening socket exists; connections queue from then on.
                if (e.Data.Contains("bound to", StringComparison.Ordinal))
                {
                    bound.TrySetResult();
                }
            };
            p.OutputDataReceived += (_, e) =>
            {
                if (e.Data is not null)
                {
                    pid.TrySetResult(e.Data.Trim());
                }
            };
            p.Start();
            p.BeginErrorReadLine();
            p.BeginOutputReadLine();
            var done = await Task.WhenAny(bound.Task, p.WaitForExitAsync()).WaitAsync(TimeSpan.FromSeconds(20));
            if (done != bound.Task)
            {
                Assert.Fail($"nbdkit did not start:\n{string.Join('\n', log)}");
            }
            return new NbdKit(port, p, await pid.Task.WaitAsync(TimeSpan.FromSeconds(20)));
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                await ProcessRunner.Run("kill", [_pid], TimeSpan.FromSeconds(10));
                try
                {
                    await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
                }
                catch (TimeoutException)
                {
                    _process.Kill(entireProcessTree: true);
                }
            }
            _process.Dispose();
        }
    }
}
