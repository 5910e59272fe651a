using System.Globalization;
using System.Runtime.InteropServices;
using Ovis.Cluster.Tests.Infrastructure;

namespace Ovis.Interop.Tests.Infrastructure;

/// <summary>
/// A private network for partition tests (docs/partitions.md): Linux network namespaces joined
/// by one bridge, so that a test can cut a node off from etcd, from its peers, or both, and heal
/// it. The class fixture of those tests; it runs the class's etcd in a namespace of its own.
/// <code>
///   ovt-ID-sw:   br0 ── etcd ── n1 ── n2 ── n3        (the switch: one veth end per host)
///   ovt-ID-etcd: v0 10.99.0.2   (etcd on :2379)
///   ovt-ID-n1:   v0 10.99.0.11  ovt-ID-n2: v0 10.99.0.12  ovt-ID-n3: v0 10.99.0.13
/// </code>
/// Every namespace is a world of its own, so parallel test classes (and a leftover of a crashed
/// run) may use the same subnet; only the namespace names must differ: ID is random, and a
/// namespace whose owning test process is gone is deleted when the next fixture starts.
/// A cut is silent, as a real partition is: packets are dropped, nothing is refused.
/// </summary>
public sealed partial class PartitionNetwork : IAsyncLifetime
{
    public const int NodeCount = 3;
    private const string Prefix = "ovt-";
    private const string Subnet = "10.99.0.";
    private const string Device = "v0";
    // A MAC no interface here has: the bridge floods frames for it and every receiver drops them
    // (not addressed to it), so a neighbour entry pointing an address at it makes the address
    // unreachable without a firewall. Locally administered, unicast.
    private const string Nowhere = "02:00:00:00:00:01";
    private const string OwnerDirectory = "/run/ovis-partitions";
    private static readonly TimeSpan IpTimeout = TimeSpan.FromSeconds(30);

    private readonly List<string> _namespaces = [];
    private readonly HashSet<(NetHost, NetHost)> _cuts = [];
    private EtcdCluster? _etcd;

    public PartitionNetwork()
    {
        Id = string.Concat(Enumerable.Range(0, 4).Select(_ => "abcdefghijklmnopqrstuvwxyz0123456789"[Random.Shared.Next(36)]));
        Switch = $"{Prefix}{Id}-sw";
        EtcdHost = new NetHost("etcd", $"{Prefix}{Id}-etcd", Subnet + "2");
        Nodes = [.. Enumerable.Range(1, NodeCount).Select(i => new NetHost($"n{i}", $"{Prefix}{Id}-n{i}", Subnet + (10 + i).ToString(CultureInfo.InvariantCulture)))];
    }

    /// <summary>The random part of every namespace name of this network.</summary>
    public string Id { get; }

    /// <summary>The namespace holding the bridge.</summary>
    public string Switch { get; }

    public NetHost EtcdHost { get; }

    public IReadOnlyList<NetHost> Nodes { get; }

    /// <summary>The etcd in <see cref="EtcdHost"/>, started with the network.</summary>
    public EtcdCluster Etcd => _etcd ?? throw new InvalidOperationException("the network is not up");

    public async Task InitializeAsync()
    {
        if (GetEuid() != 0)
            throw new InvalidOperationException("the partition tests need root: they create network namespaces (ip netns) and veth pairs");
        if (!ProcessRunner.IsOnPath("ip"))
            throw new InvalidOperationException("the partition tests need `ip` (Debian package iproute2)");
        try
        {
            await RemoveLeftovers();
            Directory.CreateDirectory(OwnerDirectory);
            await File.WriteAllTextAsync(OwnerFile(Id), Environment.ProcessId.ToString(CultureInfo.InvariantCulture));

            await AddNamespace(Switch);
            await Ip("-n", Switch, "link", "add", "br0", "type", "bridge");
            await Ip("-n", Switch, "link", "set", "br0", "up");
            foreach (var host in Nodes.Prepend(EtcdHost))
            {
                await AddNamespace(host.Namespace);
                // Both ends are made where they live: nothing is ever created in the test's own
                // namespace, so names there cannot clash.
                await Ip("-n", Switch, "link", "add", host.Name, "type", "veth", "peer", "name", Device, "netns", host.Namespace);
                await Ip("-n", Switch, "link", "set", host.Name, "master", "br0", "up");
                await Ip("-n", host.Namespace, "addr", "add", host.Address + "/24", "dev", Device);
                await Ip("-n", host.Namespace, "link", "set", Device, "up");
            }
            _etcd = new EtcdCluster(EtcdHost.Address, EtcdHost.Namespace);
            await _etcd.InitializeAsync();
        }
        catch
        {
            await DisposeAsync();
            throw;
        }
    }

    /// <summary>Cuts <paramref name="a"/> and <paramref name="b"/> apart, both ways: from then on
    /// nothing either sends reaches the other (connections in use stall, new ones time out).</summary>
    public async Task Cut(NetHost a, NetHost b)
    {
        await Ip("-n", a.Namespace, "neigh", "replace", b.Address, "lladdr", Nowhere, "nud", "permanent", "dev", Device);
        await Ip("-n", b.Namespace, "neigh", "replace", a.Address, "lladdr", Nowhere, "nud", "permanent", "dev", Device);
        _cuts.Add(Ordered(a, b));
    }

    /// <summary>Undoes <see cref="Cut"/>: both look the other up again (ARP) on their next packet.</summary>
    public async Task Heal(NetHost a, NetHost b)
    {
        await Ip("-n", a.Namespace, "neigh", "del", b.Address, "dev", Device);
        await Ip("-n", b.Namespace, "neigh", "del", a.Address, "dev", Device);
        _cuts.Remove(Ordered(a, b));
    }

    /// <summary>Cuts <paramref name="node"/> off from etcd; its peers still reach it.</summary>
    public Task CutFromEtcd(NetHost node) => Cut(node, EtcdHost);

    /// <summary>Cuts <paramref name="node"/> off from every other node; etcd still reaches it.</summary>
    public async Task CutFromPeers(NetHost node)
    {
        foreach (var other in Nodes.Where(n => n != node))
            await Cut(node, other);
    }

    /// <summary>Cuts <paramref name="node"/> off from etcd and from every other node.</summary>
    public async Task Isolate(NetHost node)
    {
        await CutFromEtcd(node);
        await CutFromPeers(node);
    }

    /// <summary>Heals every cut made so far.</summary>
    public async Task HealAll()
    {
        foreach (var (a, b) in _cuts.ToList())
            await Heal(a, b);
    }

    /// <summary>Whether a TCP connection from <paramref name="from"/> to ADDRESS:PORT opens within <paramref name="timeout"/>.</summary>
    public static async Task<bool> CanConnect(NetHost from, string address, int port, TimeSpan timeout)
    {
        var r = await ProcessRunner.Run("ip", ["netns", "exec", from.Namespace, "timeout", timeout.TotalSeconds.ToString("F1", CultureInfo.InvariantCulture),
            "bash", "-c", $"exec 3<>/dev/tcp/{address}/{port}"], timeout + IpTimeout);
        return r.Succeeded;
    }

    public async Task DisposeAsync()
    {
        if (_etcd is not null)
        {
            await _etcd.DisposeAsync();
            _etcd = null;
        }
        foreach (var ns in Enumerable.Reverse(_namespaces).ToList())
            await DeleteNamespace(ns);
        _namespaces.Clear();
        DeleteOwnerFile(Id);
    }

    private async Task AddNamespace(string name)
    {
        await Ip("netns", "add", name);
        _namespaces.Add(name);
        await Ip("-n", name, "link", "set", "lo", "up");
    }

    /// <summary>Kills what still runs in <paramref name="name"/> (a test's daemons are gone by now;
    /// a crashed run's are not) and deletes it: a namespace lives as long as a process in it.</summary>
    private static async Task DeleteNamespace(string name)
    {
        var pids = await ProcessRunner.Run("ip", ["netns", "pids", name], IpTimeout);
        foreach (var line in pids.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (int.TryParse(line, CultureInfo.InvariantCulture, out int pid) && pid != Environment.ProcessId)
                _ = SysKill(pid, 9);
        }
        await ProcessRunner.Run("ip", ["netns", "del", name], IpTimeout);
    }

    /// <summary>Deletes the namespaces of earlier runs whose test process is gone (it crashed or was
    /// killed before it could); those of a test process still running are left alone.</summary>
    private static async Task RemoveLeftovers()
    {
        var list = await ProcessRunner.Run("ip", ["netns", "list"], IpTimeout);
        foreach (var line in list.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            // "ovt-k3f9-n1 (id: 4)" or "ovt-k3f9-n1"
            string name = line.Split(' ')[0];
            if (!name.StartsWith(Prefix, StringComparison.Ordinal) || name.IndexOf('-', Prefix.Length) is not (> 0 and var dash))
                continue;
            string id = name[Prefix.Length..dash];
            if (File.Exists(OwnerFile(id)) && int.TryParse(File.ReadAllText(OwnerFile(id)), CultureInfo.InvariantCulture, out int owner)
                && Directory.Exists($"/proc/{owner}"))
                continue;
            await DeleteNamespace(name);
            DeleteOwnerFile(id);
        }
    }

    private static string OwnerFile(string id) => Path.Combine(OwnerDirectory, id + ".pid");

    // Also when setup failed before the directory was made: the original error must show.
    private static void DeleteOwnerFile(string id)
    {
        if (File.Exists(OwnerFile(id)))
            File.Delete(OwnerFile(id));
    }

    private static (NetHost, NetHost) Ordered(NetHost a, NetHost b) =>
        string.CompareOrdinal(a.Namespace, b.Namespace) <= 0 ? (a, b) : (b, a);

    private static async Task Ip(params string[] args)
    {
        var r = await ProcessRunner.Run("ip", args, IpTimeout);
        if (!r.Succeeded)
            throw new InvalidOperationException($"network setup failed:\n{r.Describe()}");
    }

    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint GetEuid();

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SysKill(int pid, int signal);
}

/// <summary>One host of a <see cref="PartitionNetwork"/>: its network namespace and address.</summary>
public sealed record NetHost(string Name, string Namespace, string Address)
{
    public override string ToString() => $"{Name} ({Address})";
}
