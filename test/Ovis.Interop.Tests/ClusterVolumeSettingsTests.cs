using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// <c>ovis vdi set</c> in a cluster: a volume's cache mode lives in the registry in etcd, so every
/// node shows what one node set, also after a restart. The cache itself is docs/writeback-cache.md.
/// </summary>
public sealed class ClusterVolumeSettingsTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    [Fact]
    public async Task A_cache_mode_set_on_one_node_shows_on_every_node_and_outlives_a_restart()
    {
        // The cache options are accepted.
        await using var nodes = await StartCluster(copies: 2, nodes: 2, extra: ["--cache-size", "64M"]);
        await Create(nodes[0], "v", "32M");
        Assert.Equal("writethrough", await CacheOf(nodes[1], "v"));

        var set = await Json(nodes[0], "vdi", "set", "v", "cache=writeback");
        Assert.Equal("writeback", set.GetProperty("cache").GetString());
        foreach (var node in nodes)
        {
            await Eventually(async () => await CacheOf(node, "v") == "writeback", LeaseMargin, $"{node} shows v in writeback");
        }
        var text = await nodes[1].Cli("vdi", "info", "v");
        Assert.True(text.Succeeded, text.Describe());
        Assert.Matches(@"(?m)^Cache:\s+writeback\b", text.Stdout);

        // The restarted node reads the mode back from etcd.
        Assert.Equal(0, await nodes[1].StopAsync());
        await nodes[1].StartAsync();
        await Eventually(async () => (await nodes[1].Cli("vdi", "info", "v", "--json")).Succeeded, LeaseMargin, "the restarted node answers");
        Assert.Equal("writeback", await CacheOf(nodes[1], "v"));

        var back = await Json(nodes[1], "vdi", "set", "v", "cache=writethrough");
        Assert.Equal("writethrough", back.GetProperty("cache").GetString());
        await Eventually(async () => await CacheOf(nodes[0], "v") == "writethrough", LeaseMargin, "node a shows v in writethrough again");

        // A snapshot is read-only: the node refuses (1). The rest is the command line's (2).
        var snapshot = await nodes[0].Cli("vdi", "snapshot", "v", "s1");
        Assert.True(snapshot.Succeeded, snapshot.Describe());
        AssertOneLine(await nodes[0].Cli("vdi", "set", "v@s1", "cache=writeback"), 1, "'v@s1' is a snapshot, which is read-only");
        AssertOneLine(await nodes[0].Cli("vdi", "set", "v", "speed=fast"), 2, "unknown setting 'speed': the only one is cache=writeback|writethrough");
        AssertOneLine(await nodes[0].Cli("vdi", "set", "v", "cache=fast"), 2, "cache: 'fast' is neither writeback nor writethrough");
        AssertOneLine(await nodes[0].Cli("vdi", "set", "v", "cache"), 2, "'cache' is not KEY=VALUE: use cache=writeback|writethrough");
        AssertOneLine(await nodes[0].Cli("vdi", "set", "v", "cache=writeback", "cache=writethrough"), 2, "cache is given twice");
        Assert.Equal("writethrough", await CacheOf(nodes[0], "v"));
        Assert.Equal("writethrough", await CacheOf(nodes[0], "v@s1"));
    }

    private static async Task<string?> CacheOf(OvisDaemon node, string volume)
        => (await Json(node, "vdi", "info", volume)).GetProperty("cache").GetString();

    private static void AssertOneLine(ProcessResult r, int exitCode, string message)
    {
        Assert.True(r.ExitCode == exitCode, $"expected exit code {exitCode}:\n{r.Describe()}");
        Assert.Single(r.Stderr.Trim().Split('\n'));
        Assert.Contains(message, r.Stderr, StringComparison.Ordinal);
    }
}
