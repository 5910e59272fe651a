using System.Net;
using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// <c>ovis node drain</c> with a real etcd, real daemons and qemu-io: a live node is drained while
/// its volume is written, every object ends with all its copies on the other nodes and none on it,
/// and it is then stopped and removed with the data intact; a drain that would leave too few zones,
/// or names no member, is refused in one line; <c>--cancel</c> puts a node back.
/// </summary>
public sealed class ClusterDrainTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private static readonly TimeSpan RecoveryTimeout = TimeSpan.FromSeconds(90);

    private static async Task<JsonElement> Member(OvisDaemon asked, string id)
        => (await Json(asked, "node", "list")).EnumerateArray().Single(n => n.GetProperty("id").GetString() == id);

    private static async Task<string?> Drain(OvisDaemon asked, string id)
        => (await Member(asked, id)).GetProperty("drain").GetString();

    private static async Task<long> Objects(OvisDaemon asked, string id)
        => (await Member(asked, id)).GetProperty("objects").GetInt64();

    private static async Task<bool> CheckClean(OvisDaemon d, string volume)
    {
        var r = await d.Cli("cluster", "check", volume);
        return r.Succeeded && r.Stdout.Contains("0 copies differ", StringComparison.Ordinal);
    }

    private static async Task SetPaused(OvisDaemon d, bool paused)
    {
        var r = await d.Cli("cluster", "recover", paused ? "pause" : "resume");
        Assert.True(r.Succeeded, r.Describe());
        await Eventually(async () => (await Json(d, "cluster", "recovery")).GetProperty("nodes").EnumerateArray()
            .All(n => n.GetProperty("paused").GetBoolean() == paused), LeaseMargin, paused ? "every node is paused" : "every node runs");
    }

    /// <summary>A refusal: exit code 1 and one line on stderr that contains <paramref name="message"/>.</summary>
    private static void AssertRefused(ProcessResult r, string message)
    {
        Assert.Equal(1, r.ExitCode);
        Assert.Single(r.Stderr.Trim().Split('\n'));
        Assert.Contains(message, r.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_drained_node_hands_every_object_to_the_others_while_writes_go_on_and_is_then_removed_with_the_data_intact()
    {
        // Four zones, three copies: without node b, a, c and d hold every object.
        await using var nodes = await StartCluster(copies: 3, nodes: 4, extra: ["--down-out-interval", "0"]);
        await Create(nodes[0], "v", "32M");
        var r = await nodes[0].Cli("vdi", "create", "w", "32M", "--object-size", "2M");
        Assert.True(r.Succeeded, r.Describe());
        await QemuIo(nodes[0].NbdUri("v"), "write -P 0x5a 0 32M", "flush");
        await QemuIo(nodes[0].NbdUri("w"), "write -P 0x3c 0 32M", "flush");
        await Eventually(async () => await CheckClean(nodes[0], "v") && await CheckClean(nodes[0], "w"), RecoveryTimeout, "the copies agree");
        Assert.True(await Objects(nodes[0], "n-b") > 0);

        // Paused, the drain has started and cannot finish: writes and reads go on meanwhile.
        await SetPaused(nodes[0], true);
        var drained = await Json(nodes[0], "node", "drain", "n-b");
        Assert.Equal("draining", drained.EnumerateArray().Single(n => n.GetProperty("id").GetString() == "n-b").GetProperty("drain").GetString());
        await Eventually(async () => await Drain(nodes[2], "n-b") == "draining", LeaseMargin, "every node sees the drain");
        await QemuIo(nodes[0].NbdUri("v"), "write -P 0x77 8M 4M", "flush", "read -P 0x5a 0 8M", "read -P 0x77 8M 4M", "read -P 0x5a 12M 20M");
        await QemuIo(nodes[3].NbdUri("w"), "write -P 0x78 30M 2M", "flush", "read -P 0x3c 0 30M", "read -P 0x78 30M 2M");
        Assert.Equal("draining", await Drain(nodes[0], "n-b"));

        // Two zones (a, d) would be left for three copies with c drained too.
        AssertRefused(await nodes[0].Cli("node", "drain", "n-c"), "draining node 'n-c' would leave 2 zone(s) (a, d) for the 3 copies");
        // A drained node that is up is not removed: taking out is for nodes that are down.
        AssertRefused(await nodes[0].Cli("node", "remove", "n-b"), "node 'n-b' is up: stop it first");

        await SetPaused(nodes[0], false);
        await Eventually(async () => await Drain(nodes[0], "n-b") == "drained", RecoveryTimeout, "node b is drained");
        var list = await nodes[0].Cli("node", "list");
        Assert.True(list.Succeeded, list.Describe());
        Assert.Contains("up, drained", list.Stdout.Split('\n').Single(l => l.StartsWith("n-b", StringComparison.Ordinal)), StringComparison.Ordinal);

        // Every object of both volumes (8 of 4 MiB, 16 of 2 MiB) has its three copies on a, c and d, none on b.
        var files = Path.Combine(nodes[1].DataDirectory, "store", "objects");
        await Eventually(async () => await Objects(nodes[0], "n-b") == 0 && !Directory.EnumerateFiles(files, "*", SearchOption.AllDirectories).Any(),
            LeaseMargin, "node b dropped its copies, object files included");
        foreach (var id in new[] { "n-a", "n-c", "n-d" })
        {
            Assert.Equal(24, await Objects(nodes[0], id));
        }
        Assert.True(await CheckClean(nodes[2], "v"));
        Assert.True(await CheckClean(nodes[2], "w"));

        // Stopped, the drained node is removed at once; nothing has to move.
        await nodes[1].StopAsync();
        await Eventually(async () => (await Member(nodes[0], "n-b")).GetProperty("state").GetString() == "down", LeaseMargin, "node b is down");
        var removed = await Json(nodes[0], "node", "remove", "n-b");
        Assert.Equal(["n-a", "n-c", "n-d"], removed.EnumerateArray().Select(n => n.GetProperty("id").GetString()));
        await QemuIoReadOnly(nodes[2].NbdUri("v"), "read -P 0x5a 0 8M", "read -P 0x77 8M 4M", "read -P 0x5a 12M 20M");
        await QemuIoReadOnly(nodes[2].NbdUri("w"), "read -P 0x3c 0 30M", "read -P 0x78 30M 2M");
        Assert.True(await CheckClean(nodes[3], "v"));
    }

    [Fact]
    public async Task A_drain_is_refused_for_no_member_or_without_the_token_and_cancelled_puts_the_node_back()
    {
        await using var nodes = await StartCluster(copies: 2, nodes: 3);
        await Create(nodes[0], "c", "16M");
        await QemuIo(nodes[0].NbdUri("c"), "write -P 0x42 0 16M", "flush");

        AssertRefused(await nodes[0].Cli("node", "drain", "n-x"), "node 'n-x' is not a member of cluster");
        AssertRefused(await nodes[0].Cli("node", "drain", "n-x", "--cancel"), "node 'n-x' is not a member of cluster");
        using (var anonymous = new HttpClient { Timeout = TimeSpan.FromSeconds(15) })
        {
            var response = await anonymous.PostAsync(new Uri($"{nodes[0].AdminUrl}/api/v1/nodes/n-c/drain"), null);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        }
        Assert.Null(await Drain(nodes[0], "n-c"));

        var r = await nodes[1].Cli("node", "drain", "n-c");
        Assert.True(r.Succeeded, r.Describe());
        AssertRefused(await nodes[1].Cli("node", "drain", "n-b"), "draining node 'n-b' would leave 1 zone(s) (a) for the 2 copies");
        await Eventually(async () => await Drain(nodes[0], "n-c") == "drained", RecoveryTimeout, "node c is drained");
        await Eventually(async () => await Objects(nodes[0], "n-c") == 0, LeaseMargin, "node c dropped its copies");

        // Cancelled: a normal member again, and its objects come back to it.
        r = await nodes[0].Cli("node", "drain", "n-c", "--cancel");
        Assert.True(r.Succeeded, r.Describe());
        var row = r.Stdout.Split('\n').Single(l => l.StartsWith("n-c", StringComparison.Ordinal));
        Assert.DoesNotContain("drain", row, StringComparison.Ordinal);
        Assert.Contains(" up ", row, StringComparison.Ordinal);
        await Eventually(async () => await Drain(nodes[2], "n-c") is null, LeaseMargin, "every node sees the cancel");
        await Eventually(async () => await Objects(nodes[0], "n-c") > 0 && await CheckClean(nodes[0], "c"), RecoveryTimeout,
            "node c holds copies again, equal to the others");
        await QemuIoReadOnly(nodes[2].NbdUri("c"), "read -P 0x42 0 16M");
    }
}
