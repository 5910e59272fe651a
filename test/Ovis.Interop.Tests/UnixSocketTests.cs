using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>A daemon with --nbd-socket serves the same volumes on the Unix socket as on TCP.</summary>
public sealed class UnixSocketTests(ITestOutputHelper output) : InteropTest(null, output)
{
    [Fact]
    public async Task Unix_socket_and_tcp_serve_the_same_volume()
    {
        await using var daemon = await OvisDaemon.StartNewAsync(unixSocket: true);
        Daemon = daemon;
        var vol = await CreateVolume("unix", "16M");
        var unix = daemon.UnixUri(vol);

        await QemuIo(unix, "write -P 0x3c 1M 512k", "flush");
        await QemuIo(daemon.NbdUri(vol), "read -P 0x3c 1M 512k", "write -P 0x3d 4M 4k");
        await QemuIo(unix, "read -P 0x3d 4M 4k", "read -P 0 0 1M");

        var size = await RunOk("nbdinfo", ["--size", unix]);
        Assert.Equal("16777216", size.Stdout.Trim());
        var list = await RunOk("nbdinfo", ["--list", $"nbd+unix://?socket={daemon.SocketPath}"]);
        Assert.Contains(vol, list.Stdout, StringComparison.Ordinal);
    }
}
