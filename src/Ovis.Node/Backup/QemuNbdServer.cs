using System.ComponentModel;
using System.Diagnostics;
using Ovis.Nbd;
using Ovis.Node.Admin;

namespace Ovis.Node.Backup;

/// <summary>
/// A qcow2 image behind a private <c>qemu-nbd</c> on a Unix socket, and the NBD client connected
/// to it: how a backup writes qcow2 (and a restore reads it, backing chain and all) without
/// Ovis parsing the format — QEMU's own code allocates clusters, writes L2 tables and follows
/// backing files. qemu-nbd serves this one client and exits when it disconnects.
/// </summary>
internal sealed class QemuNbdServer : IAsyncDisposable
{
    private readonly Process _process;
    private readonly string _socket;

    private QemuNbdServer(Process process, string socket, NbdClient client)
    {
        _process = process;
        _socket = socket;
        Client = client;
    }

    public NbdClient Client { get; }

    /// <summary>True when <paramref name="path"/> names a qcow2 file: by its name alone, never by its
    /// first bytes — a raw backup of a volume that holds a qcow2 image starts with qcow2's magic,
    /// and reading it as qcow2 would restore the image inside instead of the volume.</summary>
    public static bool IsQcow2(string path)
        => !NbdClient.IsNbdUri(path) && path.EndsWith(".qcow2", StringComparison.OrdinalIgnoreCase);

    /// <summary>Creates a qcow2 image of <paramref name="size"/> bytes, reading through <paramref name="backing"/> (a qcow2 file) where it has not been written.</summary>
    public static async Task CreateAsync(string path, long size, string? backing, CancellationToken ct)
    {
        string[] args = backing is null
            ? ["create", "-q", "-f", "qcow2", path, size.ToString(System.Globalization.CultureInfo.InvariantCulture)]
            : ["create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", path, size.ToString(System.Globalization.CultureInfo.InvariantCulture)];
        using var process = Start("qemu-img", args);
        string error = await process.StandardError.ReadToEndAsync(ct).ConfigureAwait(false);
        await process.WaitForExitAsync(ct).ConfigureAwait(false);
        if (process.ExitCode != 0)
        {
            throw new AdminRequestException($"qemu-img could not create '{path}': {AdminErrorMiddleware.OneLine(error)}");
        }
    }

    /// <summary>Serves <paramref name="path"/> and connects to it.</summary>
    public static async Task<QemuNbdServer> StartAsync(string path, bool readOnly, CancellationToken ct)
    {
        // The socket path is short (108 bytes at most): in /tmp, not in a deep data directory.
        string socket = Path.Combine(Path.GetTempPath(), $"ovis-qnbd-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6))}.sock");
        // cache=writeback: NBD_CMD_FLUSH becomes fsync of the image, so a confirmed byte is durable.
        string[] args = ["--format=qcow2", "--cache=writeback", $"--socket={socket}", .. readOnly ? (string[])["--read-only"] : [], path];
        var process = Start("qemu-nbd", args);
        try
        {
            var deadline = Stopwatch.StartNew();
            while (!File.Exists(socket))
            {
                if (process.HasExited)
                {
                    string error = await process.StandardError.ReadToEndAsync(ct).ConfigureAwait(false);
                    throw new AdminRequestException($"qemu-nbd could not serve '{path}': {AdminErrorMiddleware.OneLine(error)}");
                }
                if (deadline.Elapsed > TimeSpan.FromSeconds(10))
                {
                    throw new AdminRequestException($"qemu-nbd did not start serving '{path}' within 10 s");
                }
                await Task.Delay(20, ct).ConfigureAwait(false);
            }
            var client = await NbdClient.ConnectAsync($"nbd+unix:///?socket={socket}", ct).ConfigureAwait(false);
            return new QemuNbdServer(process, socket, client);
        }
        catch
        {
            Stop(process);
            File.Delete(socket);
            throw;
        }
    }

    private static Process Start(string tool, string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        try
        {
            return Process.Start(psi)!;
        }
        catch (Win32Exception)
        {
            throw new AdminRequestException($"qcow2 needs {tool} on the node: apt-get install qemu-utils");
        }
    }

    private static void Stop(Process process)
    {
        try
        {
            process.Kill();
        }
        catch (InvalidOperationException)
        {
            // Exited already.
        }
        process.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        await Client.DisposeAsync().ConfigureAwait(false);
        // Without its client qemu-nbd exits by itself, once the image is closed; a hung one is killed.
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await _process.WaitForExitAsync(wait.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        Stop(_process);
        File.Delete(_socket);
    }
}
