using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace Ovis.Interop.Tests.Infrastructure;

/// <summary>
/// One `ovis serve` process on loopback with its own data directory in /tmp. Listens on port 0
/// and learns the real ports from the daemon's "… listening on …" lines. Usable as an xunit class
/// fixture (started in <see cref="InitializeAsync"/>) or on its own through <see cref="StartNewAsync"/>.
/// The daemon can be killed (SIGKILL), stopped (SIGTERM) and started again on the same data
/// directory; the directory is deleted on dispose. With <see cref="Namespace"/> set (the partition
/// tests) it runs in that network namespace through `ip netns exec`, which execs: <see cref="ProcessId"/>
/// is the daemon's own, so pause and kill reach it.
/// </summary>
public sealed partial class OvisDaemon : IAsyncLifetime, IAsyncDisposable
{
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);
    public static readonly TimeSpan CliTimeout = TimeSpan.FromSeconds(30);

    private readonly bool _unixSocket;
    private readonly LogBuffer _log = new(600);
    private Process? _process;
    private int _generation;
    private int _peerPort;
    private bool _tmpfs;

    public OvisDaemon() : this(unixSocket: false)
    {
    }

    private OvisDaemon(bool unixSocket)
    {
        _unixSocket = unixSocket;
        Root = Directory.CreateTempSubdirectory("ovis-interop-").FullName;
        DataDirectory = Path.Combine(Root, "data");
        Directory.CreateDirectory(DataDirectory);
    }

    /// <summary>Scratch directory of this daemon: data/, the socket and any files a test makes.</summary>
    public string Root { get; }

    public string DataDirectory { get; }

    public int NbdPort { get; private set; }

    public string AdminUrl { get; private set; } = "";

    public string? SocketPath { get; private set; }

    public int ProcessId => _process?.Id ?? 0;

    public bool IsRunning => _process is { HasExited: false };

    /// <summary>The last few hundred lines the daemon printed, stdout and stderr interleaved.</summary>
    public string Log => _log.ToString();

    /// <summary>The dotnet host running the tests (dotnet test sets DOTNET_HOST_PATH), else dotnet on PATH.</summary>
    public static string DotnetHost { get; } =
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    /// <summary>Path of ovis.dll: next to the test assembly (the project references Ovis.Cli), else artifacts/bin.</summary>
    public static string OvisDll { get; } = FindOvisDll();

    /// <summary>Network namespace to run in (null: the test's own); its clients and the CLI run there too.</summary>
    public string? Namespace { get; init; }

    /// <summary>The address every listener binds (NBD, admin and, clustered, peer).</summary>
    public string Address { get; init; } = "127.0.0.1";

    public string NbdUri(string export) => $"nbd://{Address}:{NbdPort}/{export}";

    /// <summary>
    /// The command line that runs <paramref name="command"/> in this daemon's network namespace
    /// (as is, without one): for clients that must reach it from there.
    /// </summary>
    public (string Command, string[] Arguments) InNamespace(string command, IEnumerable<string> args) =>
        Namespace is null ? (command, [.. args]) : ("ip", ["netns", "exec", Namespace, command, .. args]);

    public string UnixUri(string export) =>
        SocketPath is null ? throw new InvalidOperationException("started without --nbd-socket") : $"nbd+unix:///{export}?socket={SocketPath}";

    /// <summary>More arguments for `ovis serve` (e.g. --cluster URI --zone Z), used on every (re)start.</summary>
    public IReadOnlyList<string> ExtraArguments { get; init; } = [];

    /// <summary>
    /// Restarts bind the ports of the first start (NBD, admin and, clustered, peer), as a node with
    /// fixed addresses in its service file would; otherwise every start picks free ones.
    /// </summary>
    public bool KeepPorts { get; init; }

    public static async Task<OvisDaemon> StartNewAsync(bool unixSocket = false, IEnumerable<string>? extraArguments = null)
    {
        var d = new OvisDaemon(unixSocket) { ExtraArguments = [.. extraArguments ?? []] };
        await d.StartAsync();
        return d;
    }

    public Task InitializeAsync() => StartAsync();

    /// <summary>Starts the daemon on <see cref="DataDirectory"/> and waits until every listener is reported.</summary>
    public async Task StartAsync()
    {
        if (IsRunning)
        {
            throw new InvalidOperationException("already running");
        }
        _generation++;
        var gen = _generation;
        var psi = new ProcessStartInfo(Namespace is null ? DotnetHost : "ip")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = Root,
        };
        var nbdPort = KeepPorts ? NbdPort : 0;
        var adminPort = KeepPorts && AdminUrl.Length > 0 ? new Uri(AdminUrl).Port : 0;
        if (Namespace is not null)
        {
            foreach (var a in new[] { "netns", "exec", Namespace, DotnetHost })
            {
                psi.ArgumentList.Add(a);
            }
        }
        foreach (var a in new[] { OvisDll, "serve", "--data", DataDirectory, "--nbd", $"{Address}:{nbdPort}", "--admin", $"{Address}:{adminPort}" })
        {
            psi.ArgumentList.Add(a);
        }
        foreach (var a in ExtraArguments)
        {
            psi.ArgumentList.Add(a);
        }
        // Clustered daemons share this machine: each gets a free peer port, as for NBD and admin.
        if (ExtraArguments.Contains("--cluster") && !ExtraArguments.Contains("--peer"))
        {
            // The daemon does not print its peer port: one kept across restarts is picked here.
            if (KeepPorts && _peerPort == 0)
            {
                _peerPort = FreePort();
            }
            psi.ArgumentList.Add("--peer");
            psi.ArgumentList.Add($"{Address}:{_peerPort}");
        }
        if (_unixSocket)
        {
            psi.ArgumentList.Add("--nbd-socket");
            psi.ArgumentList.Add(Path.Combine(Root, "nbd.sock"));
        }
        psi.Environment["DOTNET_NOLOGO"] = "1";

        var nbd = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var admin = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var unix = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                return;
            }
            _log.Add($"[{gen} out] {e.Data}");
            var m = NbdTcpLine().Match(e.Data);
            if (m.Success)
            {
                nbd.TrySetResult(int.Parse(m.Groups["port"].Value, System.Globalization.CultureInfo.InvariantCulture));
            }
            m = NbdUnixLine().Match(e.Data);
            if (m.Success)
            {
                unix.TrySetResult(m.Groups["path"].Value);
            }
            m = AdminLine().Match(e.Data);
            if (m.Success)
            {
                admin.TrySetResult(m.Groups["url"].Value.TrimEnd('/'));
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                _log.Add($"[{gen} err] {e.Data}");
            }
        };
        _log.Add($"[{gen}] $ {(Namespace is null ? "dotnet" : "ip")} {string.Join(' ', psi.ArgumentList)}");
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        process.StandardInput.Close();
        _process = process;

        var listeners = new List<Task> { nbd.Task, admin.Task };
        if (_unixSocket)
        {
            listeners.Add(unix.Task);
        }
        var all = Task.WhenAll(listeners);
        var exited = process.WaitForExitAsync();
        Task first;
        try
        {
            first = await Task.WhenAny(all, exited).WaitAsync(StartTimeout);
        }
        catch (TimeoutException)
        {
            first = Task.CompletedTask;
        }
        if (first != all)
        {
            var why = first == exited ? $"exited with code {process.ExitCode} before reporting its listeners" : $"did not report all its listeners within {StartTimeout.TotalSeconds:F0}s";
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
            Assert.Fail($"ovis serve {why} (expected lines 'nbd listening on {Address}:PORT', 'admin listening on http://{Address}:PORT'{(_unixSocket ? ", 'nbd listening on unix:PATH'" : "")}).\n{Log}");
        }
        NbdPort = nbd.Task.Result;
        AdminUrl = admin.Task.Result;
        SocketPath = _unixSocket ? unix.Task.Result : null;
    }

    /// <summary>
    /// Puts <see cref="DataDirectory"/> on a tmpfs of its own of <paramref name="bytes"/> (the tests
    /// run as root), before the first start: a disk the daemon can fill. Unmounted on dispose,
    /// after the daemon is gone, whatever the test did.
    /// </summary>
    public async Task MountDataTmpfsAsync(long bytes)
    {
        var r = await ProcessRunner.Run("mount", ["-t", "tmpfs", "-o", $"size={bytes}", "tmpfs", DataDirectory], CliTimeout);
        Assert.True(r.Succeeded, r.Describe());
        _tmpfs = true;
    }

    /// <summary>Fills what is left of the data directory's file system with a file of its own, as
    /// another program would; returns its path.</summary>
    public string FillDataFileSystem()
    {
        var path = Path.Combine(DataDirectory, "ballast");
        var chunk = new byte[64 << 10];
        using var file = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.None, 1);
        try
        {
            while (true)
            {
                file.Write(chunk);
            }
        }
        catch (IOException)
        {
            // Full.
        }
        return path;
    }

    /// <summary>SIGKILL: the crash test. Returns when the process is gone.</summary>
    public async Task KillAsync()
    {
        var p = _process ?? throw new InvalidOperationException("not started");
        _log.Add($"[{_generation}] kill -9 {p.Id}");
        if (!p.HasExited)
        {
            p.Kill(entireProcessTree: true);
        }
        await WaitExit(p, TimeSpan.FromSeconds(30), "after SIGKILL");
    }

    /// <summary>SIGSTOP: the process freezes as in a long GC pause or a stalled host; its sockets
    /// stay open and the kernel keeps queueing what clients send it.
    /// Returns once every thread is stopped: kill() only queues the signal, and a thread that is
    /// running meanwhile could still serve what a test sends right after.</summary>
    public void Pause()
    {
        Signal(19, "STOP");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!AllThreadsStopped(ProcessId))
        {
            if (DateTime.UtcNow > deadline)
                throw new InvalidOperationException($"process {ProcessId} did not stop within 10 s of SIGSTOP");
            Thread.Sleep(1);
        }
    }

    // /proc/PID/task/TID/stat: "TID (comm) STATE ..."; T is stopped by a signal.
    private static bool AllThreadsStopped(int pid)
    {
        foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
        {
            try
            {
                var stat = File.ReadAllText(Path.Combine(task, "stat"));
                if (stat[(stat.LastIndexOf(')') + 2)..].FirstOrDefault() != 'T')
                    return false;
            }
            catch (IOException)
            {
                // the thread ended
            }
        }
        return true;
    }

    /// <summary>SIGCONT after <see cref="Pause"/>.</summary>
    public void Resume() => Signal(18, "CONT");

    private void Signal(int signal, string name)
    {
        var p = _process ?? throw new InvalidOperationException("not started");
        _log.Add($"[{_generation}] kill -{name} {p.Id}");
        if (!p.HasExited && SysKill(p.Id, signal) != 0)
        {
            throw new InvalidOperationException($"kill(SIG{name}) failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    /// <summary>SIGTERM and wait for a clean exit; returns the exit code.</summary>
    public async Task<int> StopAsync(TimeSpan? timeout = null)
    {
        var p = _process ?? throw new InvalidOperationException("not started");
        _log.Add($"[{_generation}] kill -TERM {p.Id}");
        if (!p.HasExited && SysKill(p.Id, 15) != 0)
        {
            throw new InvalidOperationException($"kill(SIGTERM) failed: errno {Marshal.GetLastPInvokeError()}");
        }
        await WaitExit(p, timeout ?? TimeSpan.FromSeconds(30), "after SIGTERM");
        return p.ExitCode;
    }

    public async Task RestartAfterKillAsync()
    {
        await KillAsync();
        await StartAsync();
    }

    /// <summary>Fails the test with the log when the daemon has died under it.</summary>
    public void AssertAlive(string when)
    {
        if (_process is null || _process.HasExited)
        {
            Assert.Fail($"the daemon is not running {when} (exit code {(_process is null ? "-" : _process.ExitCode.ToString(System.Globalization.CultureInfo.InvariantCulture))}).\n{Log}");
        }
    }

    /// <summary>The admin token's file, which the daemon creates at its first start (a clustered one copies the cluster's there).</summary>
    public string TokenFile => Path.Combine(DataDirectory, "admin-token");

    /// <summary>The admin token, once the daemon has created it.</summary>
    public string? Token => File.Exists(TokenFile) ? File.ReadAllText(TokenFile).Trim() : null;

    /// <summary>
    /// Runs `dotnet ovis.dll ARGS --admin URL --token-file FILE` against this daemon. The token is
    /// passed rather than found: a daemon off loopback (in a namespace) names a file the CLI only
    /// reads for nodes on loopback.
    /// </summary>
    public Task<ProcessResult> Cli(params string[] args)
    {
        string[] token = File.Exists(TokenFile) ? ["--token-file", TokenFile] : [];
        var (command, arguments) = InNamespace(DotnetHost, new[] { OvisDll }.Concat(args).Concat(["--admin", AdminUrl, .. token]));
        return ProcessRunner.Run(command, arguments, CliTimeout);
    }

    /// <summary>An HTTP client for the admin API that sends the admin token.</summary>
    public HttpClient AdminHttp(TimeSpan? timeout = null)
    {
        var http = new HttpClient { BaseAddress = new Uri(AdminUrl + "/"), Timeout = timeout ?? TimeSpan.FromSeconds(30) };
        if (Token is { } token)
        {
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        }
        return http;
    }

    public async Task DisposeAsync()
    {
        if (_process is { } p)
        {
            if (!p.HasExited)
            {
                try
                {
                    p.Kill(entireProcessTree: true);
                }
                catch (InvalidOperationException)
                {
                }
                await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            }
            p.Dispose();
        }
        if (_tmpfs)
        {
            // Lazy: lets go even of a file something still holds open.
            await ProcessRunner.Run("umount", ["-l", DataDirectory], CliTimeout);
        }
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    ValueTask IAsyncDisposable.DisposeAsync() => new(DisposeAsync());

    private async Task WaitExit(Process p, TimeSpan timeout, string when)
    {
        try
        {
            await p.WaitForExitAsync().WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"the daemon did not exit within {timeout.TotalSeconds:F0}s {when}.\n{Log}");
        }
        _log.Add($"[{_generation}] exited with code {p.ExitCode}");
    }

    internal static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string FindOvisDll()
    {
        var env = Environment.GetEnvironmentVariable("OVIS_DLL");
        if (!string.IsNullOrEmpty(env))
        {
            return env;
        }
        var local = Path.Combine(AppContext.BaseDirectory, "ovis.dll");
        if (File.Exists(local))
        {
            return local;
        }
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "artifacts", "bin", "ovis.dll");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        return local;
    }

    [GeneratedRegex(@"nbd listening on (?:tcp://)?(?<host>[0-9.]+):(?<port>\d+)")]
    private static partial Regex NbdTcpLine();

    [GeneratedRegex(@"nbd listening on unix:(?<path>\S+)")]
    private static partial Regex NbdUnixLine();

    [GeneratedRegex(@"admin listening on (?<url>https?://\S+)")]
    private static partial Regex AdminLine();

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SysKill(int pid, int signal);

    /// <summary>A bounded, thread-safe tail of log lines.</summary>
    private sealed class LogBuffer(int capacity)
    {
        // OVIS_TEST_LOG_DIR=dir keeps every line of every daemon, one file each, for a failure
        // whose cause scrolled out of the tail.
        private static readonly string? KeepDirectory = Environment.GetEnvironmentVariable("OVIS_TEST_LOG_DIR") is { Length: > 0 } d ? d : null;
        private readonly Queue<string> _lines = new();
        private readonly string? _file = KeepDirectory is null ? null : Path.Combine(KeepDirectory, $"daemon-{Guid.NewGuid():N}.log");
        private int _dropped;

        public void Add(string line)
        {
            lock (_lines)
            {
                if (_file is not null)
                {
                    Directory.CreateDirectory(KeepDirectory!);
                    File.AppendAllText(_file, line + "\n");
                }
                _lines.Enqueue(line);
                while (_lines.Count > capacity)
                {
                    _lines.Dequeue();
                    _dropped++;
                }
            }
        }

        public override string ToString()
        {
            lock (_lines)
            {
                var head = _dropped > 0 ? $"--- daemon log ({_dropped} earlier lines dropped) ---\n" : "--- daemon log ---\n";
                return head + string.Join('\n', _lines);
            }
        }
    }
}
