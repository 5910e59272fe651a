using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Ovis.Cluster.Etcd;

namespace Ovis.Cluster.Tests.Infrastructure;

/// <summary>
/// A real single-member etcd on free loopback ports with a temporary data directory, killed and
/// removed on dispose. Shared by the tests of a collection or a class fixture (this file is also
/// compiled into Ovis.Interop.Tests); tests keep apart by
/// working under their own key prefix (<see cref="NewPrefix"/>).
/// Given a network namespace (the partition tests' <c>PartitionNetwork</c>), it runs in it through
/// <c>ip netns exec</c> and listens on that namespace's address instead.
/// </summary>
public sealed class EtcdCluster : IAsyncLifetime
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(30);
    private readonly StringBuilder _output = new();
    private readonly string _address;
    private readonly string? _namespace;
    private Process? _process;
    private string? _dataDir;
    private int _clientPort, _peerPort;

    public EtcdCluster()
        : this("127.0.0.1", null)
    {
    }

    /// <summary>An etcd in network namespace <paramref name="netns"/> (null: this one) listening on <paramref name="address"/>.</summary>
    internal EtcdCluster(string address, string? netns)
    {
        _address = address;
        _namespace = netns;
    }

    /// <summary>The client URL, <c>http://ADDRESS:PORT</c>.</summary>
    public string ClientUrl { get; private set; } = "";

    /// <summary>A client of this etcd; owned by the fixture. In a network namespace it cannot reach
    /// etcd from the test process.</summary>
    public EtcdClient Client { get; private set; } = null!;

    /// <summary>A key prefix (and catalog cluster name) no other test uses.</summary>
    public static string NewPrefix(string name) => $"{name}-{Guid.NewGuid():N}";

    public async Task InitializeAsync()
    {
        string etcd = FindEtcd() ?? throw new InvalidOperationException(
            "the `etcd` command is missing: install the Debian package etcd-server (./run-tests does)");
        _dataDir = Directory.CreateTempSubdirectory("ovis-etcd-").FullName;
        // A namespace of its own has every port free.
        _clientPort = _namespace is null ? FreePort() : 2379;
        _peerPort = _namespace is null ? FreePort() : 2380;
        ClientUrl = $"http://{_address}:{_clientPort}";
        await StartAsync(etcd);
        Client = new EtcdClient([ClientUrl]);
    }

    /// <summary>Kills etcd (SIGKILL, as a crash or a power cut would); <see cref="RestartAsync"/> brings it back.</summary>
    public async Task KillAsync()
    {
        if (_process is null)
            return;
        _process.Kill(entireProcessTree: true);
        await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        _process.Dispose();
        _process = null;
    }

    /// <summary>Freezes etcd (SIGSTOP, as a long GC pause or a hung VM would): its sockets stay open, nothing answers.</summary>
    public void Pause() => Signal("STOP");

    /// <summary>Lets a paused etcd run again (SIGCONT).</summary>
    public void Resume() => Signal("CONT");

    private void Signal(string signal)
    {
        using var kill = Process.Start("kill", ["-" + signal, _process!.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
    }

    /// <summary>Starts the killed etcd again on its data directory and ports, and waits until it is healthy.</summary>
    public Task RestartAsync() => StartAsync(FindEtcd()!);

    private async Task StartAsync(string etcd)
    {
        string peerUrl = $"http://{_address}:{_peerPort}";
        // `ip netns exec` execs etcd: the process (and its pid) is etcd's own.
        var start = new ProcessStartInfo(_namespace is null ? etcd : "ip")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in (string[])[
            .. _namespace is null ? Array.Empty<string>() : ["netns", "exec", _namespace, etcd],
            "--name", "t", "--data-dir", _dataDir!,
            "--listen-client-urls", ClientUrl, "--advertise-client-urls", ClientUrl,
            "--listen-peer-urls", peerUrl, "--initial-advertise-peer-urls", peerUrl,
            "--initial-cluster", $"t={peerUrl}",
        ])
        {
            start.ArgumentList.Add(arg);
        }
        _process = Process.Start(start) ?? throw new InvalidOperationException("etcd did not start");
        _process.OutputDataReceived += (_, e) => Append(e.Data);
        _process.ErrorDataReceived += (_, e) => Append(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            if (_process.HasExited)
                throw new InvalidOperationException($"etcd exited with {_process.ExitCode}:\n{Output}");
            if (await IsHealthy(http))
                break;
            if (deadline.Elapsed > StartTimeout)
                throw new TimeoutException($"etcd did not become healthy within {StartTimeout}:\n{Output}");
            await Task.Delay(50);
        }
    }

    private async Task<bool> IsHealthy(HttpClient http)
    {
        if (_namespace is not null)
        {
            // Not reachable from this namespace: ask from etcd's own.
            var curl = new ProcessStartInfo("ip", ["netns", "exec", _namespace, "curl", "-s", "--max-time", "2", $"{ClientUrl}/health"])
            {
                RedirectStandardOutput = true,
                UseShellExecute = false,
            };
            using var p = Process.Start(curl) ?? throw new InvalidOperationException("curl did not start");
            string answer = await p.StandardOutput.ReadToEndAsync();
            await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            return answer.Contains("\"true\"", StringComparison.Ordinal);
        }
        try
        {
            string health = await http.GetStringAsync(new Uri($"{ClientUrl}/health"));
            return health.Contains("\"true\"", StringComparison.Ordinal);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            return false;
        }
    }

    public string Output
    {
        get
        {
            lock (_output)
                return _output.ToString();
        }
    }

    private void Append(string? line)
    {
        if (line is null)
            return;
        lock (_output)
        {
            if (_output.Length < 1 << 20)
                _output.AppendLine(line);
        }
    }

    public async Task DisposeAsync()
    {
        Client?.Dispose();
        if (_process is not null)
        {
            try
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }
            catch (InvalidOperationException)
            {
                // already exited
            }
            _process.Dispose();
        }
        if (_dataDir is not null)
        {
            try
            {
                Directory.Delete(_dataDir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    private static string? FindEtcd()
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Append("/usr/bin"))
        {
            string candidate = Path.Combine(dir, "etcd");
            if (File.Exists(candidate))
                return candidate;
        }
        return null;
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
