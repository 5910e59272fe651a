using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>Starting, stopping and sharing a data directory.</summary>
public sealed class DaemonLifecycleTests(ITestOutputHelper output) : InteropTest(null, output)
{
    [Fact]
    public async Task A_second_daemon_on_the_same_data_directory_is_refused()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var vol = await CreateVolume("shared", "8M");
        await QemuIo(daemon.NbdUri(vol), "write -P 0x21 0 1M", "flush");

        // Two processes on one journal would corrupt it: the second must give up, quickly and clearly.
        var second = await ProcessRunner.Run(OvisDaemon.DotnetHost,
            [OvisDaemon.OvisDll, "serve", "--data", daemon.DataDirectory, "--nbd", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
            TimeSpan.FromSeconds(30));
        Log(second.Describe());

        Assert.True(second.ExitCode != 0, $"a second daemon ran on a data directory in use:\n{second.Describe()}");
        Assert.False(string.IsNullOrWhiteSpace(second.Stderr), "the refusal says nothing on stderr");
        daemon.AssertAlive("after a second daemon tried its data directory");
        await QemuIo(daemon.NbdUri(vol), "read -P 0x21 0 1M", "write -P 0x22 1M 1M", "flush");

        await daemon.RestartAfterKillAsync();
        await QemuIo(daemon.NbdUri(vol), "read -P 0x21 0 1M", "read -P 0x22 1M 1M");
    }

    [Fact]
    public async Task Repeated_clean_restarts_keep_every_volume_and_its_data()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        for (var i = 0; i < 3; i++)
        {
            await CreateVolume($"r{i}", "4M");
            // Written without an explicit flush; qemu-io's close and the clean stop must keep it.
            await QemuIo(daemon.NbdUri($"r{i}"), $"write -P 0x{0x40 + i:x2} 0 512k");
            var code = await daemon.StopAsync();
            Assert.True(code == 0, $"ovis serve exited with {code} on SIGTERM\n{daemon.Log}");
            await daemon.StartAsync();
            for (var j = 0; j <= i; j++)
            {
                await QemuIo(daemon.NbdUri($"r{j}"), $"read -P 0x{0x40 + j:x2} 0 512k", "read -P 0 512k 3584k");
            }
        }
        var names = VolumeJson.ListFrom(await CliJson("vdi", "list")).Select(v => v.Name).Order().ToArray();
        Assert.Equal(["r0", "r1", "r2"], names);
    }

    [Fact]
    public async Task Concurrent_creates_writes_and_deletes_are_consistent_and_survive_kill_9()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        var names = Enumerable.Range(1, 8).Select(i => $"c{i}").ToArray();

        var created = await Task.WhenAll(names.Select(n => Cli("vdi", "create", n, "2M")));
        Assert.All(created, r => Assert.True(r.Succeeded, r.Describe()));
        var listed = VolumeJson.ListFrom(await CliJson("vdi", "list"));
        Assert.Equal(names.Order(), listed.Select(v => v.Name).Order());

        await Task.WhenAll(names.Select((n, i) => QemuIo(daemon.NbdUri(n), $"write -P 0x{i + 1:x2} 0 1M", "flush")));
        var deleted = await Task.WhenAll(names.Take(4).Select(n => Cli("vdi", "delete", n)));
        Assert.All(deleted, r => Assert.True(r.Succeeded, r.Describe()));

        await daemon.RestartAfterKillAsync();

        var after = VolumeJson.ListFrom(await CliJson("vdi", "list")).Select(v => v.Name).Order().ToArray();
        Assert.Equal(names.Skip(4).Order(), after);
        for (var i = 4; i < names.Length; i++)
        {
            await QemuIo(daemon.NbdUri(names[i]), $"read -P 0x{i + 1:x2} 0 1M", "read -P 0 1M 1M");
        }
        // A deleted name can be created again, empty.
        await CreateVolume(names[0], "2M");
        await QemuIo(daemon.NbdUri(names[0]), "read -P 0 0 2M");
    }
}
