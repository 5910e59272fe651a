using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// Nodes whose peer links have latency, from a <see cref="DelayProxy"/> in front of each node's
/// peer port: every node publishes the proxy as its <c>--advertise-peer</c> address, so the
/// others' copies cross the delay (as behind NAT or across sites).
/// </summary>
public sealed class ClusterLatencyTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private static readonly TimeSpan OneWay = TimeSpan.FromMilliseconds(2);
    private static readonly string[] Others = ["n-b", "n-c"];

    [Fact]
    public async Task Copies_travel_through_each_nodes_advertised_peer_address()
    {
        await using var nodes = await StartDelayedCluster(copies: 3, OneWay);
        var proxies = nodes.Proxies;
        var members = await Json(nodes[0], "node", "list");
        for (int i = 0; i < 3; i++)
            Assert.Equal(proxies[i].EndPoint.ToString(), Member(members, $"n-{Zones[i]}").GetProperty("peer").GetString());

        await Create(nodes[0], "v", "16M");
        await Eventually(async () => (await Json(nodes[1], "vdi", "list")).GetArrayLength() == 1, LeaseMargin, "the volume is known to node b");
        long[] before = [.. proxies.Select(p => p.Bytes)];
        await QemuIo(nodes[0].NbdUri("v"), "write -P 0x5a 0 4M", "write -P 0xa5 9M 4k", "flush");
        // Node a is the gateway: the copies on b and c crossed their proxies.
        for (int i = 1; i < 3; i++)
            Assert.True(proxies[i].Bytes - before[i] >= 4 * MiB, $"node {Zones[i]}'s proxy carried {proxies[i].Bytes - before[i]} bytes of a 4 MiB write");
        await QemuIo(nodes[1].NbdUri("v"), "read -P 0x5a 0 4M", "read -P 0xa5 9M 4k", "read -P 0 4M 5M");

        // The round trip a node measures to the others holds the proxy's delay both ways.
        await Eventually(async () =>
        {
            var list = await Json(nodes[0], "node", "list");
            return Others.All(id => Member(list, id).GetProperty("roundTripMs") is { ValueKind: JsonValueKind.Number } rtt
                && rtt.GetDouble() >= 2 * OneWay.TotalMilliseconds);
        }, TimeSpan.FromSeconds(30), "node a measures at least twice the one-way delay to b and c");
    }

    private static JsonElement Member(JsonElement list, string id) =>
        list.EnumerateArray().Single(m => m.GetProperty("id").GetString() == id);
}
