using Ovis.Cluster.Tests.Infrastructure;
using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// Cluster membership with a real etcd and real daemons: format, join in three zones, a killed
/// node leaves when its lease runs out (the epoch goes up), a restarted one rejoins; a node down
/// longer than the down-out interval is taken out, unless too few zones would remain; bad input.
/// </summary>
public sealed class ClusterMembershipTests(EtcdCluster etcd, ITestOutputHelper output)
    : InteropTest(null, output), IClassFixture<EtcdCluster>
{
    private const int LeaseTtl = 3;
    private const int DownOut = 2;
    private static readonly TimeSpan LeaseMargin = TimeSpan.FromSeconds(LeaseTtl + 10);
    private static readonly TimeSpan DownOutMargin = TimeSpan.FromSeconds(LeaseTtl + DownOut + 15);

    private string EtcdHostPort => etcd.ClientUrl["http://".Length..];

    private string ClusterUri(string name) => $"etcd://{EtcdHostPort}/{name}";

    private Task<ProcessResult> Ovis(params string[] args) =>
        Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, .. args], OvisDaemon.CliTimeout);

    private async Task<string> Format(int copies = 3)
    {
        var name = EtcdCluster.NewPrefix("c");
        var r = await Ovis("cluster", "format", "--copies", copies.ToString(System.Globalization.CultureInfo.InvariantCulture), "--etcd", ClusterUri(name));
        Assert.True(r.Succeeded, r.Describe());
        return name;
    }

    private static async Task<JsonElement> Json(OvisDaemon d, params string[] args)
    {
        var r = await d.Cli([.. args, "--json"]);
        Assert.True(r.Succeeded, r.Describe());
        using var doc = JsonDocument.Parse(r.Stdout);
        return doc.RootElement.Clone();
    }

    [Fact]
    public async Task Three_nodes_join_a_killed_one_goes_down_with_its_lease_and_rejoins()
    {
        var name = await Format();
        var daemons = new List<OvisDaemon>();
        try
        {
            foreach (var zone in new[] { "a", "b", "c" })
            {
                daemons.Add(await OvisDaemon.StartNewAsync(extraArguments:
                    ["--cluster", ClusterUri(name), "--zone", zone, "--node-id", $"n-{zone}", "--lease-ttl", $"{LeaseTtl}"]));
            }

            foreach (var d in daemons)
            {
                var nodes = await Json(d, "node", "list");
                Assert.Equal(["a", "b", "c"], nodes.EnumerateArray().Select(n => n.GetProperty("zone").GetString()).Order());
                Assert.All(nodes.EnumerateArray(), n => Assert.Equal("up", n.GetProperty("state").GetString()));
                Assert.Contains(nodes.EnumerateArray(), n => n.GetProperty("address").GetString() == $"127.0.0.1:{d.NbdPort}");
            }

            var info = await Json(daemons[1], "cluster", "info");
            Assert.Equal(3, info.GetProperty("epoch").GetInt64());
            Assert.Equal(3, info.GetProperty("copies").GetInt32());
            Assert.Equal(name, info.GetProperty("name").GetString());

            await daemons[2].KillAsync();
            await Eventually(async () =>
            {
                var now = await Json(daemons[0], "cluster", "info");
                var down = now.GetProperty("nodes").EnumerateArray().Where(n => n.GetProperty("state").GetString() == "down").Select(n => n.GetProperty("id").GetString());
                return down.SequenceEqual(["n-c"]) && now.GetProperty("epoch").GetInt64() > 3;
            }, LeaseMargin, "the killed node is down (still a member: it keeps its objects) and the epoch went up");

            await daemons[2].StartAsync();
            await Eventually(async () => (await Json(daemons[0], "node", "list")).EnumerateArray()
                .All(n => n.GetProperty("state").GetString() == "up"), LeaseMargin, "node c is up again");
            Assert.Equal(3, (await Json(daemons[0], "node", "list")).GetArrayLength());
        }
        finally
        {
            foreach (var d in daemons)
            {
                await d.DisposeAsync();
            }
        }
    }

    /// <summary>Three daemons in zones a, b, c with a short lease and <c>--down-out-interval 2</c>.</summary>
    private static async Task<List<OvisDaemon>> StartDownOutCluster(string uri)
    {
        var daemons = new List<OvisDaemon>();
        try
        {
            foreach (var zone in new[] { "a", "b", "c" })
            {
                daemons.Add(await OvisDaemon.StartNewAsync(extraArguments:
                    ["--cluster", uri, "--zone", zone, "--node-id", $"n-{zone}", "--lease-ttl", $"{LeaseTtl}", "--down-out-interval", $"{DownOut}"]));
            }
            return daemons;
        }
        catch
        {
            await DisposeAll(daemons);
            throw;
        }
    }

    private static async Task DisposeAll(List<OvisDaemon> daemons)
    {
        foreach (var d in daemons)
        {
            await d.DisposeAsync();
        }
    }

    /// <summary>GET /api/v1/nodes straight from the admin API: polled often while a member is down, a CLI per poll would be too slow.</summary>
    private static async Task<JsonElement[]> Members(HttpClient http, OvisDaemon d)
    {
        using var doc = JsonDocument.Parse(await http.GetStringAsync(new Uri($"{d.AdminUrl}/api/v1/nodes")));
        return [.. doc.RootElement.Clone().EnumerateArray()];
    }

    private static JsonElement? Member(JsonElement[] members, string id) =>
        members.Where(m => m.GetProperty("id").GetString() == id).Select(m => (JsonElement?)m).FirstOrDefault();

    [Fact]
    public async Task A_node_down_longer_than_the_down_out_interval_is_taken_out_and_joins_again_as_a_new_member()
    {
        var name = await Format(2);
        var daemons = await StartDownOutCluster(ClusterUri(name));
        try
        {
            // A volume, so that the node back after it was taken out joins stale.
            var created = await daemons[0].Cli("vdi", "create", "v", "16M");
            Assert.True(created.Succeeded, created.Describe());
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };

            await daemons[2].KillAsync();
            JsonElement down = default;
            await Eventually(async () =>
            {
                down = Member(await Members(http, daemons[0]), "n-c") ?? default;
                return down.ValueKind == JsonValueKind.Object && down.GetProperty("state").GetString() == "down"
                    && down.GetProperty("downSince").ValueKind == JsonValueKind.String;
            }, DownOutMargin, "the killed node is listed down, with the time it went down");
            Assert.InRange(down.GetProperty("outIn").GetInt64(), 0, DownOut);
            var downEpoch = (await Json(daemons[0], "cluster", "info")).GetProperty("epoch").GetInt64();

            await Eventually(async () => Member(await Members(http, daemons[1]), "n-c") is null, DownOutMargin, "the down node is taken out");
            var info = await Json(daemons[0], "cluster", "info");
            Assert.Equal(["n-a", "n-b"], info.GetProperty("nodes").EnumerateArray().Select(n => n.GetProperty("id").GetString()));
            Assert.True(info.GetProperty("epoch").GetInt64() > downEpoch, info.ToString());
            Assert.Contains(daemons.Take(2), d => d.Log.Contains("Node n-c down since", StringComparison.Ordinal)
                && d.Log.Contains("taken out after", StringComparison.Ordinal));

            await daemons[2].StartAsync();
            await Eventually(async () => (await Members(http, daemons[0])) is { Length: 3 } all
                && all.All(n => n.GetProperty("state").GetString() == "up"), LeaseMargin, "node c joins again");
            var back = Member(await Members(http, daemons[0]), "n-c")!.Value;
            Assert.True(back.GetProperty("stale").GetBoolean(), "a node back after it was taken out is new: stale while volumes exist");
            Assert.Equal(JsonValueKind.Null, back.GetProperty("downSince").ValueKind);
        }
        finally
        {
            await DisposeAll(daemons);
        }
    }

    [Fact]
    public async Task A_down_node_is_not_taken_out_when_the_others_would_span_fewer_zones_than_copies()
    {
        var name = await Format(3);
        var daemons = await StartDownOutCluster(ClusterUri(name));
        try
        {
            await daemons[2].KillAsync();
            await Eventually(() => Task.FromResult(daemons.Take(2).Any(d => d.Log.Contains("Node n-c stays down", StringComparison.Ordinal))),
                DownOutMargin, "a survivor refuses to take the down node out");

            var nodes = await Json(daemons[0], "node", "list");
            var c = nodes.EnumerateArray().Single(n => n.GetProperty("id").GetString() == "n-c");
            Assert.Equal("down", c.GetProperty("state").GetString());
            Assert.Equal(JsonValueKind.String, c.GetProperty("downSince").ValueKind);
            Assert.Equal(JsonValueKind.Null, c.GetProperty("outIn").ValueKind);
            var text = await daemons[1].Cli("node", "list");
            Assert.True(text.Succeeded, text.Describe());
            Assert.Matches(@"n-c\s.*\sdown\s", text.Stdout);
            Assert.DoesNotContain("out in", text.Stdout, StringComparison.Ordinal);
        }
        finally
        {
            await DisposeAll(daemons);
        }
    }

    [Fact]
    public async Task An_operator_removes_a_down_node_at_once_and_a_live_one_or_the_last_of_a_zone_never()
    {
        var name = await Format(2);
        var daemons = new List<OvisDaemon>();
        try
        {
            // No down-out interval: only the operator takes a node out.
            foreach (var zone in new[] { "a", "b", "c" })
            {
                daemons.Add(await OvisDaemon.StartNewAsync(extraArguments:
                    ["--cluster", ClusterUri(name), "--zone", zone, "--node-id", $"n-{zone}", "--lease-ttl", $"{LeaseTtl}", "--down-out-interval", "0"]));
            }
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };

            var live = await daemons[0].Cli("node", "remove", "n-b");
            Assert.False(live.Succeeded, live.Describe());
            Assert.Contains("node 'n-b' is up: stop it first", live.Stderr, StringComparison.Ordinal);
            var unknown = await daemons[0].Cli("node", "remove", "n-x");
            Assert.False(unknown.Succeeded, unknown.Describe());
            Assert.Contains("node 'n-x' is not a member", unknown.Stderr, StringComparison.Ordinal);

            await daemons[2].KillAsync();
            await Eventually(async () => Member(await Members(http, daemons[0]), "n-c") is { } c && c.GetProperty("state").GetString() == "down",
                LeaseMargin, "the killed node is down");
            long before = (await Json(daemons[0], "cluster", "info")).GetProperty("epoch").GetInt64();
            var removed = await Json(daemons[0], "node", "remove", "n-c");
            Assert.Equal(["n-a", "n-b"], removed.EnumerateArray().Select(n => n.GetProperty("id").GetString()));
            var info = await Json(daemons[1], "cluster", "info");
            Assert.Equal(["n-a", "n-b"], info.GetProperty("nodes").EnumerateArray().Select(n => n.GetProperty("id").GetString()));
            Assert.True(info.GetProperty("epoch").GetInt64() > before, info.ToString());

            // Two zones left for two copies: the last node of a zone stays, down.
            await daemons[1].KillAsync();
            await Eventually(async () => Member(await Members(http, daemons[0]), "n-b") is { } b && b.GetProperty("state").GetString() == "down",
                LeaseMargin, "node b is down");
            var last = await daemons[0].Cli("node", "remove", "n-b");
            Assert.False(last.Succeeded, last.Describe());
            Assert.Contains("node 'n-b' cannot be removed: the other members span 1 zone(s), fewer than the 2 copies", last.Stderr, StringComparison.Ordinal);
            Assert.NotNull(Member(await Members(http, daemons[0]), "n-b"));
        }
        finally
        {
            await DisposeAll(daemons);
        }
    }

    [Theory]
    [InlineData("-1", "--down-out-interval: -1 is out of range")]
    [InlineData("soon", "--down-out-interval")]
    public async Task A_bad_down_out_interval_is_a_usage_error(string interval, string error)
    {
        var r = await Ovis("serve", "--data", ScratchDirectory(), "--nbd", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--cluster", ClusterUri("x"), "--zone", "a", "--down-out-interval", interval);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(error, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Trim().Split('\n'));
    }

    [Theory]
    [InlineData("peer.example:0", "--advertise-peer: 'peer.example:0' is not HOST:PORT with a port from 1 to 65535")]
    [InlineData("10.0.0.7", "--advertise-peer: '10.0.0.7' is not HOST:PORT")]
    [InlineData("bad_host!:7071", "--advertise-peer: 'bad_host!' is not a host name or IP address")]
    public async Task A_bad_advertised_peer_address_is_a_usage_error(string address, string error)
    {
        var r = await Ovis("serve", "--data", ScratchDirectory(), "--nbd", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--cluster", ClusterUri("x"), "--zone", "a", "--advertise-peer", address);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(error, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Trim().Split('\n'));
    }

    [Fact]
    public async Task A_node_keeps_its_generated_id_and_leaves_on_a_clean_stop()
    {
        var name = await Format(1);
        await using var d = await OvisDaemon.StartNewAsync(extraArguments: ["--cluster", ClusterUri(name), "--zone", "z", "--lease-ttl", $"{LeaseTtl}"]);
        var id = File.ReadAllText(Path.Combine(d.DataDirectory, "node-id")).Trim();
        Assert.Equal(id, (await Json(d, "node", "list"))[0].GetProperty("id").GetString());

        Assert.Equal(0, await d.StopAsync());
        await d.StartAsync();
        var nodes = await Json(d, "cluster", "info");
        Assert.Equal(id, nodes.GetProperty("nodes")[0].GetProperty("id").GetString());
        Assert.Equal(3, nodes.GetProperty("epoch").GetInt64()); // join, leave, join: no lease had to run out
    }

    [Fact]
    public async Task Joining_a_cluster_that_was_never_formatted_fails_with_one_line()
    {
        await Format();
        var data = ScratchDirectory();
        var r = await Ovis("serve", "--data", data, "--nbd", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--cluster", ClusterUri("no-such-cluster"), "--zone", "a");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("cluster 'no-such-cluster' is not formatted", r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Trim().Split('\n'), l => l.StartsWith("ovis:", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Formatting_twice_is_refused()
    {
        var name = await Format();
        var r = await Ovis("cluster", "format", "--copies", "2", "--etcd", ClusterUri(name));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("is already formatted", r.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("0", "etcd://127.0.0.1:2379/x", "--copies: 0 is out of range")]
    [InlineData("17", "etcd://127.0.0.1:2379/x", "--copies: 17 is out of range")]
    [InlineData("3", "http://127.0.0.1:2379/x", "is not a cluster URI")]
    [InlineData("3", "etcd://127.0.0.1/x", "is not HOST:PORT")]
    [InlineData("3", "etcd://127.0.0.1:2379/", "names no cluster")]
    public async Task Bad_format_arguments_are_usage_errors(string copies, string uri, string error)
    {
        var r = await Ovis("cluster", "format", "--copies", copies, "--etcd", uri);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(error, r.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_embedded_node_says_it_is_not_in_a_cluster()
    {
        await using var d = await OvisDaemon.StartNewAsync();
        foreach (var command in new[] { new[] { "node", "list" }, ["cluster", "info"] })
        {
            var r = await d.Cli(command);
            Assert.Equal(1, r.ExitCode);
            Assert.Contains("this node is not in a cluster (start it with --cluster)", r.Stderr, StringComparison.Ordinal);
        }
    }
}
