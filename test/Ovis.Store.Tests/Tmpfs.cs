using System.Diagnostics;

namespace Ovis.Store.Tests;

/// <summary>A small tmpfs of its own (the tests run as root), unmounted and removed on dispose
/// whatever the test did; a lazy unmount lets go even of files a failed test left open.</summary>
internal sealed class Tmpfs : IDisposable
{
    public Tmpfs(long bytes)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ovis-tmpfs-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
        try
        {
            Run("mount", "-t", "tmpfs", "-o", $"size={bytes}", "tmpfs", Path);
        }
        catch
        {
            Directory.Delete(Path);
            throw;
        }
    }

    public string Path { get; }

    /// <summary>Fills what is left of the file system with a file of its own (as another program
    /// would); returns the file's path.</summary>
    public string FillUp()
    {
        string path = System.IO.Path.Combine(Path, "ballast-" + Guid.NewGuid().ToString("N"));
        var chunk = new byte[64 << 10];
        using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.None);
        try
        {
            while (true)
            {
                file.Write(chunk);
                file.Flush();
            }
        }
        catch (IOException)
        {
            // Full.
        }
        return path;
    }

    public void Dispose()
    {
        Run("umount", "-l", Path);
        Directory.Delete(Path);
    }

    private static void Run(string command, params string[] args)
    {
        var psi = new ProcessStartInfo(command) { RedirectStandardError = true };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        string error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"{command} {string.Join(' ', args)}: {error.Trim()}");
        }
    }
}
