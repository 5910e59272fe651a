using System.Text.Json;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests.Infrastructure;

/// <summary>
/// Base of the tests that drive a daemon with real clients: runs commands with timeouts, logs
/// every command to the test output, and puts the daemon's log into every failure message.
/// </summary>
public abstract class InteropTest : IDisposable
{
    private static int _counter;
    private readonly List<string> _scratch = [];

    protected InteropTest(OvisDaemon? daemon, ITestOutputHelper output)
    {
        DaemonOrNull = daemon;
        Output = output;
    }

    protected ITestOutputHelper Output { get; }

    /// <summary>The daemon of the test class (or the one a test started itself).</summary>
    protected OvisDaemon Daemon
    {
        get => DaemonOrNull ?? throw new InvalidOperationException("no daemon");
        set => DaemonOrNull = value;
    }

    protected OvisDaemon? DaemonOrNull { get; private set; }

    /// <summary>A volume name no other test uses.</summary>
    protected static string UniqueName(string prefix) => $"{prefix}-{Interlocked.Increment(ref _counter)}";

    /// <summary>A fresh directory deleted when the test ends.</summary>
    protected string ScratchDirectory()
    {
        var d = Directory.CreateTempSubdirectory("ovis-interop-files-").FullName;
        _scratch.Add(d);
        return d;
    }

    protected async Task<ProcessResult> Run(string command, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var r = await ProcessRunner.Run(command, args, timeout);
        Log(r.Describe());
        return r;
    }

    /// <summary>Runs a command and fails the test, with the daemon's log, unless it exits 0.</summary>
    protected async Task<ProcessResult> RunOk(string command, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var r = await Run(command, args, timeout);
        if (!r.Succeeded)
        {
            Assert.Fail($"command failed:\n{r.Describe()}\n{DaemonState()}");
        }
        return r;
    }

    /// <summary>`qemu-io -f raw -c CMD … URI`; fails on a non-zero exit or a pattern mismatch.</summary>
    protected async Task<ProcessResult> QemuIo(string uri, params string[] commands)
    {
        var r = await Run("qemu-io", QemuIoArgs(uri, commands), TimeSpan.FromSeconds(120));
        if (!r.Succeeded || r.Stdout.Contains("verification failed", StringComparison.OrdinalIgnoreCase)
            || r.Stdout.Contains("failed:", StringComparison.OrdinalIgnoreCase))
        {
            Assert.Fail($"qemu-io failed:\n{r.Describe()}\n{DaemonState()}");
        }
        return r;
    }

    /// <summary>Like <see cref="QemuIo"/>, opened read-only (-r): qemu will not open a read-only export otherwise.</summary>
    protected async Task QemuIoReadOnly(string uri, params string[] commands)
    {
        var r = await Run("qemu-io", ["-r", .. QemuIoArgs(uri, commands)], TimeSpan.FromSeconds(120));
        if (!r.Succeeded || r.Stdout.Contains("verification failed", StringComparison.OrdinalIgnoreCase)
            || r.Stdout.Contains("failed:", StringComparison.OrdinalIgnoreCase))
        {
            Assert.Fail($"qemu-io -r failed:\n{r.Describe()}\n{DaemonState()}");
        }
    }

    protected static List<string> QemuIoArgs(string uri, IEnumerable<string> commands)
    {
        var args = new List<string> { "-f", "raw" };
        foreach (var c in commands)
        {
            args.Add("-c");
            args.Add(c);
        }
        args.Add(uri);
        return args;
    }

    /// <summary>Runs the CLI against the daemon and returns the result without judging it.</summary>
    protected async Task<ProcessResult> Cli(params string[] args)
    {
        var r = await Daemon.Cli(args);
        Log(r.Describe());
        return r;
    }

    /// <summary>Runs the CLI with --json; fails unless it exits 0, and returns the parsed output.</summary>
    protected async Task<JsonElement> CliJson(params string[] args)
    {
        var r = await Cli([.. args, "--json"]);
        if (!r.Succeeded)
        {
            Assert.Fail($"ovis {string.Join(' ', args)} failed:\n{r.Describe()}\n{DaemonState()}");
        }
        try
        {
            using var doc = JsonDocument.Parse(r.Stdout);
            return doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            Assert.Fail($"ovis {string.Join(' ', args)} --json printed no valid JSON ({ex.Message}):\n{r.Describe()}");
            throw;
        }
    }

    protected Task<JsonElement> BackupJson(string vol, string dest, params string[] options) => JobJson(["vdi", "backup", vol, dest, .. options]);

    /// <summary>A command that follows a job on the test's daemon, with --json; returns the finished job.</summary>
    protected Task<JsonElement> JobJson(params string[] args) => JobJson(Daemon, args);

    /// <summary>A command that follows a job on <paramref name="daemon"/>, with --json; returns the finished job (its last line).</summary>
    protected async Task<JsonElement> JobJson(OvisDaemon daemon, string[] args)
    {
        var r = await daemon.Cli([.. args, "--json"]);
        Log(r.Describe());
        Assert.True(r.Succeeded, $"ovis {string.Join(' ', args)} failed:\n{r.Describe()}\n{DaemonState(daemon)}");
        // --json prints the job once per poll; the last line is the finished job.
        using var doc = JsonDocument.Parse(r.Stdout.Trim().Split('\n')[^1]);
        Assert.Equal("done", doc.RootElement.GetProperty("state").GetString());
        return doc.RootElement.Clone();
    }

    /// <summary>`ovis vdi create NAME SIZE`, checked; returns the name.</summary>
    protected async Task<string> CreateVolume(string name, string size, string? objectSize = null)
    {
        var args = new List<string> { "vdi", "create", name, size };
        if (objectSize is not null)
        {
            args.Add("--object-size");
            args.Add(objectSize);
        }
        var r = await Cli([.. args]);
        if (!r.Succeeded)
        {
            Assert.Fail($"cannot create volume {name} ({size}):\n{r.Describe()}\n{DaemonState()}");
        }
        return name;
    }

    /// <summary>`ovis vdi info NAME --json` as a <see cref="VolumeJson"/>.</summary>
    protected async Task<VolumeJson> VolumeInfo(string name) => VolumeJson.From(await CliJson("vdi", "info", name));

    /// <summary>
    /// `nbdinfo --map --json`: base:allocation extents with adjacent extents of one type merged
    /// (a server may split them anywhere). Types: 0 data, 2 zero, 3 hole+zero.
    /// </summary>
    protected async Task<List<(long Offset, long Length, int Type)>> NbdMap(string uri)
    {
        var r = await RunOk("nbdinfo", ["--map", "--json", uri]);
        using var doc = JsonDocument.Parse(r.Stdout);
        var merged = new List<(long Offset, long Length, int Type)>();
        long expectedOffset = 0;
        foreach (var e in doc.RootElement.EnumerateArray())
        {
            var offset = e.GetProperty("offset").GetInt64();
            var length = e.GetProperty("length").GetInt64();
            var type = e.GetProperty("type").GetInt32();
            Assert.True(offset == expectedOffset, $"map has a gap or overlap at {expectedOffset}:\n{r.Stdout}");
            expectedOffset = offset + length;
            if (merged.Count > 0 && merged[^1].Type == type)
            {
                merged[^1] = (merged[^1].Offset, merged[^1].Length + length, type);
            }
            else
            {
                merged.Add((offset, length, type));
            }
        }
        return merged;
    }

    /// <summary>
    /// Re-checks a condition that becomes true asynchronously (e.g. the daemon noticing a closed
    /// socket) every 50 ms until it holds; fails the test with <paramref name="what"/> after <paramref name="timeout"/>.
    /// </summary>
    protected static async Task Eventually(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        using var cts = new CancellationTokenSource(timeout);
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(50));
        while (!await condition())
        {
            try
            {
                await timer.WaitForNextTickAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                Assert.Fail($"{what}: still not true after {timeout.TotalSeconds:F0}s");
            }
        }
    }

    protected void Log(string text)
    {
        try
        {
            Output.WriteLine(text);
        }
        catch (InvalidOperationException)
        {
            // Output after the test finished (a background task); nothing to attach it to.
        }
    }

    protected string DaemonState() => DaemonOrNull is { } d ? DaemonState(d) : "";

    private static string DaemonState(OvisDaemon d) => (d.IsRunning ? "daemon: running\n" : "daemon: NOT RUNNING\n") + d.Log;

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (!disposing)
        {
            return;
        }
        if (DaemonOrNull is { } d)
        {
            Log(d.Log);
        }
        foreach (var dir in _scratch)
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}

/// <summary>A volume as the CLI prints it with --json (camelCase names of VolumeInfo).</summary>
public sealed record VolumeJson(string Name, long Size, long ObjectSize, long UsedBytes, int Connections)
{
    public static VolumeJson From(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object)
        {
            Assert.Fail($"expected a JSON object for a volume, got {e}");
        }
        return new VolumeJson(
            GetString(e, "name") ?? throw new InvalidDataException($"volume without a name: {e}"),
            GetInt64(e, "size") ?? throw new InvalidDataException($"volume without a size: {e}"),
            GetInt64(e, "objectSize") ?? -1,
            GetInt64(e, "usedBytes") ?? -1,
            (int)(GetInt64(e, "connections") ?? -1));
    }

    /// <summary>The volumes of a `vdi list --json`: a bare array, or an object with a "volumes" array.</summary>
    public static List<VolumeJson> ListFrom(JsonElement e)
    {
        var array = e;
        if (e.ValueKind == JsonValueKind.Object && TryGet(e, "volumes", out var v))
        {
            array = v;
        }
        if (array.ValueKind != JsonValueKind.Array)
        {
            Assert.Fail($"expected a JSON array of volumes, got {e}");
        }
        return [.. array.EnumerateArray().Select(From)];
    }

    private static bool TryGet(JsonElement e, string name, out JsonElement value)
    {
        foreach (var p in e.EnumerateObject())
        {
            if (string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase))
            {
                value = p.Value;
                return true;
            }
        }
        value = default;
        return false;
    }

    private static string? GetString(JsonElement e, string name) =>
        TryGet(e, name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static long? GetInt64(JsonElement e, string name) =>
        TryGet(e, name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt64() : null;
}
