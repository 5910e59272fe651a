using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;

namespace Ovis.Interop.Tests.Infrastructure;

/// <summary>What a finished child process left behind.</summary>
public sealed record ProcessResult(string CommandLine, int ExitCode, string Stdout, string Stderr, TimeSpan Elapsed)
{
    public bool Succeeded => ExitCode == 0;

    /// <summary>The command, its exit code and both streams, trimmed to a readable size for a failure message.</summary>
    public string Describe() =>
        $"$ {CommandLine}\nexit code {ExitCode} after {Elapsed.TotalSeconds:F1}s\n" +
        $"--- stdout ---\n{Tail(Stdout)}\n--- stderr ---\n{Tail(Stderr)}";

    internal static string Tail(string text, int max = 6000) =>
        text.Length <= max ? text : "…" + text[^max..];
}

/// <summary>
/// Runs a command to completion with a hard timeout. A timeout kills the whole process tree and
/// fails the test with what the command printed so far, so a hung client never hangs the suite.
/// </summary>
public static class ProcessRunner
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    // Commands still running when the test host exits (a test failed before awaiting one): killed
    // then, so that no orphaned fio spins against a daemon that is gone while later tests run.
    private static readonly ConcurrentDictionary<Process, byte> Running = new();

    static ProcessRunner() => AppDomain.CurrentDomain.ProcessExit += (_, _) =>
    {
        foreach (var process in Running.Keys)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
            {
                // Exited meanwhile.
            }
        }
    };

    public static async Task<ProcessResult> Run(
        string command,
        IEnumerable<string> args,
        TimeSpan? timeout = null,
        IDictionary<string, string>? environment = null,
        string? workingDirectory = null)
    {
        var limit = timeout ?? DefaultTimeout;
        var psi = new ProcessStartInfo(command)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        if (environment is not null)
        {
            foreach (var (k, v) in environment)
            {
                psi.Environment[k] = v;
            }
        }
        var commandLine = Quote(command, psi.ArgumentList);

        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        var sw = Stopwatch.StartNew();
        using var process = new Process { StartInfo = psi };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (stdout) { stdout.AppendLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (stderr) { stderr.AppendLine(e.Data); } } };
        try
        {
            process.Start();
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            Assert.Fail($"cannot start `{commandLine}`: {ex.Message} (is the tool installed? ./run-tests installs it)");
            throw; // unreachable
        }
        Running.TryAdd(process, 0);
        using var untrack = new Untrack(process);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        // No tool we run reads stdin; closing it makes one that tries fail fast instead of hanging.
        process.StandardInput.Close();

        using var cts = new CancellationTokenSource(limit);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
                // Exited between the timeout and the kill.
            }
            await process.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
            string outText, errText;
            lock (stdout) { outText = stdout.ToString(); }
            lock (stderr) { errText = stderr.ToString(); }
            Assert.Fail($"timed out after {limit.TotalSeconds:F0}s: $ {commandLine}\n--- stderr ---\n{ProcessResult.Tail(errText)}\n--- stdout ---\n{ProcessResult.Tail(outText)}");
        }
        // WaitForExitAsync returns after the redirected streams reached EOF, so the builders are complete.
        sw.Stop();
        string o, e2;
        lock (stdout) { o = stdout.ToString(); }
        lock (stderr) { e2 = stderr.ToString(); }
        return new ProcessResult(commandLine, process.ExitCode, o, e2, sw.Elapsed);
    }

    private readonly struct Untrack(Process process) : IDisposable
    {
        public void Dispose() => Running.TryRemove(process, out _);
    }

    public static Task<ProcessResult> Run(string command, params string[] args) => Run(command, args, null);

    /// <summary>True when <paramref name="command"/> resolves on PATH.</summary>
    public static bool IsOnPath(string command) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(dir => File.Exists(Path.Combine(dir, command)));

    private static string Quote(string command, IEnumerable<string> args) =>
        string.Join(' ', new[] { command }.Concat(args).Select(a =>
            a.Length > 0 && a.All(c => char.IsAsciiLetterOrDigit(c) || "-_./:=,+@%".Contains(c, StringComparison.Ordinal))
                ? a
                : "'" + a.Replace("'", "'\\''", StringComparison.Ordinal) + "'"));
}
