using Ovis.Cluster.Peer;
using Ovis.Cluster.Tests.Infrastructure;

namespace Ovis.Cluster.Tests;

/// <summary>The cap on peer connections (<see cref="PeerServerOptions.MaxConnections"/>).</summary>
public class PeerLimitTests
{
    [Fact]
    public void Default_is_1024() => Assert.Equal(1024, new PeerServerOptions().MaxConnections);

    [Fact]
    public async Task Connections_beyond_the_cap_are_closed_unanswered_and_served_again_once_one_ends()
    {
        await using var f = new PeerFixture(serverOptions: new PeerServerOptions { MaxConnections = 2 });
        var a = await RawPeer.ConnectAsync(f.EndPoint);
        await using var b = await RawPeer.ConnectAsync(f.EndPoint);
        await PingAsync(a, 1);
        await PingAsync(b, 2);

        for (int i = 0; i < 20; i++)
        {
            await using var refused = await RawPeer.ConnectAsync(f.EndPoint);
            await refused.SendAsync(Ping(3));
            Assert.True(await refused.IsClosedAsync(), $"connection {i} over the cap was served");
        }

        // One admitted connection ends: its slot comes back.
        await a.DisposeAsync();
        await Eventually.TrueAsync(() => Task.FromResult(f.Server.OpenConnections < 2), Eventually.Timeout, "the closed connection's slot is released");
        await using var again = await RawPeer.ConnectAsync(f.EndPoint);
        await PingAsync(again, 4);
        await PingAsync(b, 5);
    }

    private static byte[] Ping(ulong handle) => RawPeer.Request(PeerOpcode.Ping, PeerRequestFlags.None, 0, handle, 0, 0, 0);

    private static async Task PingAsync(RawPeer peer, ulong handle)
    {
        await peer.SendAsync(Ping(handle));
        var (header, _) = await peer.ReceiveAsync();
        Assert.Equal((PeerStatus.Ok, handle), (header.Status, header.Handle));
    }
}
