using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// Rejected writes through libnbd (python3-libnbd, scripts/nbd-hostile-writes.py): the server
/// reads a refused write's payload before it answers, or libnbd, which files a request as in
/// flight only once all of it is sent, drops the session on the early reply ("no matching cookie
/// found for server reply").
/// </summary>
public sealed class LibnbdTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Fact]
    public async Task Rejected_writes_get_their_errors_and_the_connection_stays_usable()
    {
        var vol = await CreateVolume(UniqueName("libnbd"), "64M");
        await QemuIo(Daemon.NbdUri(vol), "write -P 0x5a 0 4k");
        var snapshot = await Cli("vdi", "snapshot", vol, "s1");
        Assert.True(snapshot.Succeeded, snapshot.Describe());

        var python = await PythonWithLibnbd();
        var r = await Run(python, [RepoFile("scripts/nbd-hostile-writes.py"), Daemon.NbdUri(vol), Daemon.NbdUri($"{vol}@s1")], TimeSpan.FromSeconds(120));
        if (!r.Succeeded || !r.Stdout.Contains("all passed", StringComparison.Ordinal))
        {
            Assert.Fail($"nbd-hostile-writes.py failed:\n{r.Describe()}\n{DaemonState()}");
        }

        // Nothing of the refused writes landed: the volume and its snapshot still hold 0x5a, and the rest is zero.
        await QemuIo(Daemon.NbdUri(vol), "read -P 0x5a 0 4k", "read -P 0 4k 60M", "read -P 0 60M 4M");
        await QemuIoReadOnly(Daemon.NbdUri($"{vol}@s1"), "read -P 0x5a 0 4k", "read -P 0 4k 4M");
        Daemon.AssertAlive("after the rejected writes");
    }

    /// <summary>The Python that has the nbd module: Debian's python3-libnbd installs into the system Python, which a pyenv or venv python3 on PATH does not see.</summary>
    private async Task<string> PythonWithLibnbd()
    {
        foreach (var candidate in new[] { "/usr/bin/python3", "python3" })
        {
            if (candidate.StartsWith('/') && !File.Exists(candidate))
            {
                continue;
            }
            var probe = await Run(candidate, ["-c", "import nbd"], TimeSpan.FromSeconds(30));
            if (probe.Succeeded)
            {
                return candidate;
            }
        }
        Assert.Fail("no python3 can import nbd: install python3-libnbd (./run-tests does)");
        throw new InvalidOperationException();
    }

    /// <summary>A file of the repository, found by walking up from the test assembly to Ovis.slnx.</summary>
    private static string RepoFile(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ovis.slnx")))
            {
                return Path.Combine(dir.FullName, relative);
            }
        }
        throw new FileNotFoundException($"no Ovis.slnx above {AppContext.BaseDirectory}", relative);
    }
}
