using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Ovis.Node;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// Recovery's status and pause switch with a real etcd and real daemons: a pause asked of one node
/// reaches every node within seconds and shows in every node's figures, a resume undoes it, each
/// live node has figures (a dead one's go with its lease), and an embedded node says it is not in
/// a cluster. Also the node's publisher on its own.
/// </summary>
public sealed class ClusterRecoveryStatusTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    // Nodes read the switch and publish their figures every second.
    private static readonly TimeSpan Propagation = TimeSpan.FromSeconds(5);

    private static readonly string[] Ids = ["n-a", "n-b", "n-c"];

    [Fact]
    public async Task A_pause_on_one_node_reaches_every_node_and_a_resume_undoes_it()
    {
        await using var nodes = await StartCluster(copies: 3);
        // Every live node publishes its figures once it has joined; nothing to recover here.
        await Eventually(async () => NodeIds(await Status(nodes[1])).SequenceEqual(Ids), Propagation, "every node has figures");
        var first = await Status(nodes[1]);
        Assert.False(first.GetProperty("paused").GetBoolean());
        Assert.Equal(0, first.GetProperty("objectsQueued").GetInt64());
        Assert.All(first.GetProperty("nodes").EnumerateArray(), n => Assert.False(n.GetProperty("paused").GetBoolean()));

        var pause = await nodes[0].Cli("cluster", "recover", "pause");
        Assert.True(pause.Succeeded, pause.Describe());
        Assert.Contains("recovery paused on every node", pause.Stdout, StringComparison.Ordinal);
        var clock = Stopwatch.StartNew();
        await Eventually(async () => AllNodes(await Status(nodes[1]), paused: true), Propagation, "node b reports every node paused");
        Output.WriteLine($"every node paused {clock.Elapsed.TotalSeconds:F1} s after the request");
        Assert.Equal("n-a", (await Status(nodes[2])).GetProperty("pausedBy").GetString());
        var text = await nodes[2].Cli("cluster", "recovery");
        Assert.True(text.Succeeded, text.Describe());
        Assert.Contains("paused by n-a", text.Stdout, StringComparison.Ordinal);

        var resume = await nodes[2].Cli("cluster", "recover", "resume", "--json");
        Assert.True(resume.Succeeded, resume.Describe());
        using (var doc = JsonDocument.Parse(resume.Stdout))
        {
            Assert.False(doc.RootElement.GetProperty("paused").GetBoolean());
        }
        await Eventually(async () => AllNodes(await Status(nodes[0]), paused: false), Propagation, "node a reports every node running");

        // Nothing queued: --wait is done at once.
        var waited = await nodes[0].Cli("cluster", "recovery", "--wait");
        Assert.True(waited.Succeeded, waited.Describe());
        Assert.Contains("0 of 0 done", waited.Stdout, StringComparison.Ordinal);

        // A node that dies takes its figures with its lease.
        await nodes[2].KillAsync();
        await Eventually(async () => NodeIds(await Status(nodes[0])).SequenceEqual(Ids.Take(2)), LeaseMargin, "node c's figures are gone");
    }

    [Fact]
    public async Task An_embedded_node_says_it_is_not_in_a_cluster_and_an_unknown_verb_is_a_usage_error()
    {
        await using var d = await OvisDaemon.StartNewAsync();
        foreach (string[] args in (string[][])[["cluster", "recovery"], ["cluster", "recovery", "--json"], ["cluster", "recover", "pause"], ["cluster", "recover", "resume"]])
        {
            var r = await d.Cli(args);
            Assert.True(r.ExitCode == 1, r.Describe());
            Assert.Equal("ovis: this node is not in a cluster (start it with --cluster)", r.Stderr.Trim());
        }

        var bad = await d.Cli("cluster", "recover", "stop");
        Assert.True(bad.ExitCode == 2, bad.Describe());
        Assert.Single(bad.Stderr.Trim().Split('\n'));
        Assert.StartsWith("ovis: unrecognized command or argument 'stop'", bad.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_control_follows_the_switch_and_publishes_only_changes()
    {
        var cluster = EtcdCluster.NewPrefix("rc");
        var catalog = new EtcdCatalog(Etcd.Client, cluster);
        await catalog.FormatAsync(1);
        var registration = await catalog.JoinAsync(new NodeInfo("n1", "127.0.0.1:1", "z"), ttlSeconds: 3);
        var recovery = new RecoveryCatalog(catalog);
        await recovery.SetPausedAsync(true, "op");
        await using (var control = new RecoveryControl(recovery, "n1", NullLogger.Instance))
        {
            // Read at start: recovery never begins while paused.
            await control.StartAsync(registration.LeaseId, CancellationToken.None);
            Assert.True(control.Paused);
            var waiting = control.WaitWhilePausedAsync(CancellationToken.None);
            Assert.False(waiting.IsCompleted);
            await Eventually(async () => await recovery.ReadProgressAsync() is [{ Node: "n1", Paused: true, ObjectsQueued: 0 }], Propagation, "first figures published");

            control.Counters.Queued(5);
            control.Counters.Done(2);
            control.Counters.Moved(4096);
            await Eventually(async () => await recovery.ReadProgressAsync() is [{ ObjectsQueued: 5, ObjectsDone: 2, BytesMoved: 4096 }], Propagation, "changed figures published");

            // Unchanged figures are not written again.
            var key = $"/ovis/{cluster}/recovery/progress/n1";
            var written = (await Etcd.Client.GetAsync(key))!.ModRevision;
            await Task.Delay(RecoveryControl.Interval * 2.5);
            Assert.Equal(written, (await Etcd.Client.GetAsync(key))!.ModRevision);

            await recovery.SetPausedAsync(false, "op");
            await waiting.WaitAsync(Propagation);
            Assert.False(control.Paused);
            await Eventually(async () => await recovery.ReadProgressAsync() is [{ Paused: false }], Propagation, "figures say running");

            // Paused again, then stopped: a waiter learns that no resume will come.
            await recovery.SetPausedAsync(true, "op");
            await Eventually(() => Task.FromResult(control.Paused), Propagation, "paused again");
            waiting = control.WaitWhilePausedAsync(CancellationToken.None);
            await control.DisposeAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
        }

        // The figures hang on the node's lease: a leave takes them.
        await registration.DisposeAsync();
        Assert.Empty(await recovery.ReadProgressAsync());
    }

    private static async Task<JsonElement> Status(OvisDaemon d)
    {
        var r = await d.Cli("cluster", "recovery", "--json");
        Assert.True(r.Succeeded, $"{r.Describe()}\n{d.Log}");
        using var doc = JsonDocument.Parse(r.Stdout);
        return doc.RootElement.Clone();
    }

    private static string?[] NodeIds(JsonElement status) =>
        [.. status.GetProperty("nodes").EnumerateArray().Select(n => n.GetProperty("node").GetString())];

    private static bool AllNodes(JsonElement status, bool paused) =>
        status.GetProperty("paused").GetBoolean() == paused
        && NodeIds(status).SequenceEqual(Ids)
        && status.GetProperty("nodes").EnumerateArray().All(n => n.GetProperty("paused").GetBoolean() == paused);
}
