using System.Net;
using System.Globalization;
using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests.Infrastructure;

/// <summary>
/// Base of the tests that run a cluster: a real etcd (the class fixture) and real daemons on
/// loopback, one per zone, with a short lease so deaths are noticed within seconds.
/// </summary>
public abstract class ClusterTest(EtcdCluster etcd, ITestOutputHelper output) : InteropTest(null, output)
{
    protected const int LeaseTtl = 3;
    protected static readonly TimeSpan LeaseMargin = TimeSpan.FromSeconds(LeaseTtl + 10);
    protected static readonly string[] Zones = ["a", "b", "c", "d"];

    protected EtcdCluster Etcd { get; } = etcd;

    protected string ClusterUri(string name) => $"etcd://{Etcd.ClientUrl["http://".Length..]}/{name}";

    protected async Task<string> Format(int copies, int minCopies = 0)
    {
        var name = EtcdCluster.NewPrefix("d");
        string[] min = minCopies > 0 ? ["--min-copies", minCopies.ToString(CultureInfo.InvariantCulture)] : [];
        var r = await RunCatalogCli(["cluster", "format", "--copies",
            copies.ToString(CultureInfo.InvariantCulture), .. min, "--etcd", ClusterUri(name)]);
        Assert.True(r.Succeeded, r.Describe());
        return name;
    }

    /// <summary>`dotnet ovis.dll ARGS` for commands that talk to etcd itself (cluster format), from where etcd is reachable.</summary>
    protected virtual Task<ProcessResult> RunCatalogCli(string[] args) =>
        Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, .. args], OvisDaemon.CliTimeout);

    /// <summary>The (not yet started) daemon of the <paramref name="index"/>th node of <see cref="StartCluster"/>.</summary>
    protected virtual OvisDaemon NewNode(int index, string[] arguments) => new() { ExtraArguments = arguments };

    protected string[] NodeArguments(string cluster, string zone, params string[] extra) =>
        ["--cluster", ClusterUri(cluster), "--zone", zone, "--node-id", $"n-{zone}", "--lease-ttl", $"{LeaseTtl}", .. extra];

    /// <summary>A formatted cluster with one node per zone, all up before it returns.</summary>
    protected async Task<ClusterNodes> StartCluster(int copies, int nodes = 3, int minCopies = 0, params string[] extra)
    {
        var name = await Format(copies, minCopies);
        var started = new ClusterNodes(name);
        try
        {
            for (int i = 0; i < nodes; i++)
            {
                var node = NewNode(i, NodeArguments(name, Zones[i], extra));
                started.Add(node);
                await node.StartAsync();
            }
            await Eventually(async () => (await Json(started[0], "node", "list")).GetArrayLength() == nodes,
                LeaseMargin, "every node is up");
            return started;
        }
        catch
        {
            await started.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// A formatted cluster whose peer links have latency: a <see cref="DelayProxy"/> in front of each
    /// node's peer port, published as its <c>--advertise-peer</c> address, so copies to it cross the
    /// delay (as behind NAT or across sites). The proxies stop with the returned nodes.
    /// </summary>
    protected async Task<ClusterNodes> StartDelayedCluster(int copies, TimeSpan oneWay, int nodes = 3, params string[] extra)
    {
        var name = await Format(copies);
        var started = new ClusterNodes(name);
        try
        {
            for (int i = 0; i < nodes; i++)
            {
                int port = OvisDaemon.FreePort();
                var proxy = new DelayProxy(new IPEndPoint(IPAddress.Loopback, port), oneWay);
                started.Proxies.Add(proxy);
                var node = NewNode(i, NodeArguments(name, Zones[i], ["--peer", $"127.0.0.1:{port}", "--advertise-peer", proxy.EndPoint.ToString(), .. extra]));
                started.Add(node);
                await node.StartAsync();
            }
            await Eventually(async () => (await Json(started[0], "node", "list")).GetArrayLength() == nodes, LeaseMargin, "every node is up");
            return started;
        }
        catch
        {
            await started.DisposeAsync();
            throw;
        }
    }

    /// <summary>Connects to <paramref name="node"/> for <paramref name="volume"/> once its lock is free (the last holder gone or its lease lapsed).</summary>
    protected async Task<Ovis.Nbd.NbdClient> ConnectWhenFree(OvisDaemon node, string volume = "v")
    {
        var deadline = DateTime.UtcNow + LeaseMargin + TimeSpan.FromSeconds(10);
        while (true)
        {
            try
            {
                return await Ovis.Nbd.NbdClient.ConnectAsync(node.NbdUri(volume), CancellationToken.None);
            }
            catch (Exception ex) when (DateTime.UtcNow < deadline)
            {
                Output.WriteLine($"not yet: {ex.Message}");
                await Task.Delay(500);
            }
        }
    }

    protected static async Task<JsonElement> Json(OvisDaemon d, params string[] args)
    {
        var r = await d.Cli([.. args, "--json"]);
        Assert.True(r.Succeeded, $"{r.Describe()}\n{d.Log}");
        using var doc = JsonDocument.Parse(r.Stdout);
        return doc.RootElement.Clone();
    }

    protected static async Task Create(OvisDaemon d, string name, string size)
    {
        var r = await d.Cli("vdi", "create", name, size);
        Assert.True(r.Succeeded, $"{r.Describe()}\n{d.Log}");
    }

    /// <summary>
    /// Flips one byte of an object's file on <paramref name="node"/>, behind its store's back, once
    /// the journal has applied a full 4 MiB object there: the copy then fails its checksum.
    /// </summary>
    protected static async Task CorruptObjectFile(OvisDaemon node, uint layer, uint index, long offset)
    {
        var file = Path.Combine(node.DataDirectory, "store", "objects", layer.ToString("x8", CultureInfo.InvariantCulture),
            index.ToString("x8", CultureInfo.InvariantCulture));
        await Eventually(() => Task.FromResult(File.Exists(file) && new FileInfo(file).Length == 4 * TestData.MiB), LeaseMargin, $"{node} applied object {index}");
        await Task.Delay(500);
        using var f = File.Open(file, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        f.Position = offset;
        var b = f.ReadByte();
        f.Position = offset;
        f.WriteByte((byte)(b ^ 0xff));
    }

    /// <summary>Whether <paramref name="node"/> is listed stale by <paramref name="asked"/>.</summary>
    protected static async Task<bool> IsStale(OvisDaemon asked, string node)
        => (await Json(asked, "node", "list")).EnumerateArray().Single(n => n.GetProperty("id").GetString() == node).GetProperty("stale").GetBoolean();
}

/// <summary>The daemons of one cluster, stopped together.</summary>
public sealed class ClusterNodes(string cluster) : List<OvisDaemon>, IAsyncDisposable
{
    public string Cluster { get; } = cluster;

    /// <summary>Delaying proxies in front of the nodes' peer ports, stopped after the nodes.</summary>
    public List<DelayProxy> Proxies { get; } = [];

    public async ValueTask DisposeAsync()
    {
        foreach (var d in this)
        {
            await d.DisposeAsync();
        }
        foreach (var p in Proxies)
        {
            await p.DisposeAsync();
        }
    }
}
