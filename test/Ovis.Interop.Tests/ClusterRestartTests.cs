using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// A whole cluster stopped (SIGTERM) or killed (SIGKILL) at once and started again at once, as
/// an operator's init system would after a power cut: it comes back by itself — every node
/// joins, none is left stale, the data reads back through every node, the copies agree, and a
/// new gateway can write.
/// </summary>
public sealed class ClusterRestartTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private static readonly string[] Patterns = ["write -P 0x5a 0 1M", "write -P 0xa5 33M 4k", "write -P 0x11 63M 1M"];
    private static readonly string[] Reads = ["read -P 0x5a 0 1M", "read -P 0xa5 33M 4k", "read -P 0x11 63M 1M", "read -P 0 1M 32M"];

    // With 2 copies on 3 nodes a node may hold no object of the volume at all: it must not come
    // back stale for that (it did, and stayed so).
    [Theory]
    [InlineData(3)]
    [InlineData(2)]
    public Task A_cluster_stopped_at_once_comes_back_by_itself(int copies) => StopAllAndStartAll(copies, kill: false);

    [Theory]
    [InlineData(3)]
    [InlineData(2)]
    public Task A_cluster_killed_at_once_comes_back_by_itself(int copies) => StopAllAndStartAll(copies, kill: true);

    private async Task StopAllAndStartAll(int copies, bool kill)
    {
        var name = await Format(copies);
        var nodes = Zones.Take(3).Select(zone => new OvisDaemon
        {
            ExtraArguments = NodeArguments(name, zone),
            KeepPorts = true,
        }).ToList();
        try
        {
            foreach (var d in nodes)
            {
                await d.StartAsync();
            }
            await AllUpAndCurrent(nodes);
            var r = await nodes[0].Cli("vdi", "create", "v", "64M");
            Assert.True(r.Succeeded, $"{r.Describe()}\n{nodes[0].Log}");
            await QemuIo(nodes[0].NbdUri("v"), [.. Patterns, "flush"]);

            if (kill)
            {
                await Task.WhenAll(nodes.Select(d => d.KillAsync()));
            }
            else
            {
                Assert.All(await Task.WhenAll(nodes.Select(d => d.StopAsync())), code => Assert.Equal(0, code));
            }

            // All at once, on the same directories, ids and ports; nothing else is done by hand.
            var clock = Stopwatch.StartNew();
            await Task.WhenAll(nodes.Select(d => d.StartAsync()));
            await AllUpAndCurrent(nodes);
            Output.WriteLine($"all three up and current {clock.Elapsed.TotalSeconds:F1} s after the start (lease {LeaseTtl} s)");

            await QemuIo(nodes[0].NbdUri("v"), Reads);
            // Read-only: no lock to wait for, whoever served the volume last.
            await QemuIoReadOnly(nodes[1].NbdUri("v"), Reads);
            await QemuIoReadOnly(nodes[2].NbdUri("v"), Reads);
            var check = await nodes[2].Cli("cluster", "check", "v");
            Assert.True(check.Succeeded, $"{check.Describe()}\n{nodes[2].Log}");
            Assert.Contains("v: 16 objects checked, 0 copies differ", check.Stdout, StringComparison.Ordinal);

            // A new gateway: node b takes the volume once node a's lock is gone (at once after a
            // clean close; a killed node's old lock went with its old lease before it rejoined).
            await Eventually(async () => (await Run("qemu-io", QemuIoArgs(nodes[1].NbdUri("v"), ["write -P 0x77 2M 1M", "flush"]))).Succeeded,
                LeaseMargin, "node b writes the volume");
            await QemuIoReadOnly(nodes[2].NbdUri("v"), "read -P 0x77 2M 1M", "read -P 0x5a 0 1M");
        }
        catch
        {
            foreach (var d in nodes)
            {
                Log($"node {d.AdminUrl}:\n{d.Log}");
            }
            throw;
        }
        finally
        {
            foreach (var d in nodes)
            {
                await d.DisposeAsync();
            }
        }
    }

    /// <summary>Every node is up in every node's view, and none is stale (a stale node would stay so: nothing clears the mark yet).</summary>
    private static async Task AllUpAndCurrent(List<OvisDaemon> nodes)
    {
        foreach (var d in nodes)
        {
            await Eventually(async () =>
            {
                var r = await d.Cli("node", "list", "--json");
                if (!r.Succeeded)
                {
                    return false;
                }
                using var doc = JsonDocument.Parse(r.Stdout);
                var list = doc.RootElement.EnumerateArray().ToList();
                return list.Count == nodes.Count && list.All(n => n.GetProperty("state").GetString() == "up");
            }, LeaseMargin, $"every node is up as {d.AdminUrl} sees it");
        }
        var last = await nodes[0].Cli("node", "list", "--json");
        using var stale = JsonDocument.Parse(last.Stdout);
        Assert.True(stale.RootElement.EnumerateArray().All(n => !n.GetProperty("stale").GetBoolean()), last.Stdout);
    }
}
