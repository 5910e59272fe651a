using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Ovis.Nbd;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// The crash oracle of the writeback cache (docs/writeback-cache.md, in the style of
/// dm-log-writes): a writer records every write and flush it issued and which were acknowledged;
/// the caching gateway, and in other cycles a replica, is killed at random points while it
/// writes — with acknowledged writes still in the gateway's cache, a push on one replica and
/// not yet on the other behind a slower link, a request in flight. After each kill every 4 KiB
/// block is read and must be a state the contract allows: flushed writes exact, every block one
/// whole write (never torn, never from nowhere), the volume a prefix in flush order when the
/// gateway's cache is lost.
/// </summary>
public sealed class ClusterCacheCrashTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private const int BlockSize = 4096;
    // Small, so a whole read after every kill is quick: 1024 blocks.
    private const int Blocks = 1024;
    private const string VolumeSize = "4M";
    // 52 kills in 4 segments of 13 cycles: every 4th cycle a replica, the others the gateway.
    private const int Segments = 4;
    private const int CyclesPerSegment = 13;
    // Odd segments write through this many connections at once, even ones through one: queue
    // depth 1 gives FUA pushes and one epoch in flight, several writers overlap pushes, flushes
    // and epochs (the pusher's epoch barrier) and test that a flush covers other connections' writes.
    private const int Connections = 4;
    private static readonly TimeSpan OneWay = TimeSpan.FromMilliseconds(2);

    /// <summary>One write the writer issued: which block, its unique number (the block's content
    /// names it), the bounds of its flush epoch and whether its reply came; one without a reply
    /// (the gateway died under it) is in doubt. Its epoch is at least <paramref name="EMin"/>, the
    /// flushes completed before it was issued, and at most <paramref name="EMax"/>, the flushes
    /// issued before its reply came (the next one covers it); equal when nothing ran beside it.</summary>
    internal sealed record Write(int Seq, int Block, int EMin, int EMax, int Cycle, bool Acked);

    /// <summary>What the oracle found: the flush epoch the volume is a prefix up to, or the
    /// blocks no such epoch explains (what each read as, what was allowed for k = F).</summary>
    internal sealed record Verdict(int? K, IReadOnlyList<(int Block, int Read, int[] Allowed)> Bad);

    [Fact]
    public async Task Killed_gateways_and_replicas_leave_every_block_a_state_the_contract_allows()
    {
        int seed = Environment.GetEnvironmentVariable("OVIS_ORACLE_SEED") is { Length: > 0 } s
            ? int.Parse(s, CultureInfo.InvariantCulture) : 20261204;
        Output.WriteLine($"seed {seed} (OVIS_ORACLE_SEED={seed} repeats the writer's and killer's choices)");
        var clock = Stopwatch.StartNew();

        await using var nodes = await StartDelayedCluster(copies: 3, OneWay, extra: ["--cache-size", "16M"]);
        await Create(nodes[0], "v", VolumeSize);
        await Json(nodes[0], "vdi", "set", "v", "cache=writeback");
        foreach (var node in nodes)
            await Eventually(async () => (await Json(node, "vdi", "info", "v")).GetProperty("cache").GetString() == "writeback", LeaseMargin, $"{Name(nodes, node)} has v in writeback");

        var writes = new Dictionary<int, Write>();     // every write of the test, by its number
        int seq = 0;
        int flushes = 0;                                // completed, over the whole test
        int gateway = 0;
        Task restarted = Task.CompletedTask;            // the one node down, coming back
        int gatewayKills = 0, replicaKills = 0;
        int nearWithAround = 0;                         // cycles with near links whose gateway wrote around its cache

        var clients = await ConnectAll(nodes[gateway]);
        var baseline = Identify(await ReadVolume(clients[0]), writes, seed, out _);
        try
        {
            for (int segment = 0; segment < Segments; segment++)
            {
                // A takeover marks the dead gateway's copy stale, and the mark stays while its
                // object is logged: until no write touched it for 10 s (DirtyLog's clear), which a
                // busy writer never allows. Two stale copies and a third killed would leave no
                // copy a read may use — two faults, not one. So within a segment the kills go to
                // two nodes only, the anchor always current; between segments the writer rests
                // until no node is stale, and the anchor moves on.
                int anchor = (segment + 2) % 3;
                if (segment > 0)
                {
                    await restarted;
                    var rest = Stopwatch.StartNew();
                    await Eventually(async () => await AllCurrent(nodes), 3 * LeaseMargin, "every node is up and none is stale");
                    Output.WriteLine($"segment {segment}: every node current after {rest.Elapsed.TotalSeconds:F1} s without writes; anchor {Name(nodes, nodes[anchor])}");
                }
                if (gateway == anchor)
                {
                    await DisposeAll(clients);
                    gateway = (anchor + 1) % 3;
                    clients = await ConnectAll(nodes[gateway]);
                }
                int writers = segment % 2 == 1 ? Connections : 1;
                for (int i = 0; i < CyclesPerSegment; i++)
                {
                    int cycle = segment * CyclesPerSegment + i;
                    var rng = new Random(seed * 1000 + cycle);
                    bool replicaCycle = i % 4 == 3;
                    int partner = 3 - anchor - gateway;
                    // One replica's link fast, the other's slower by a varying amount: at a kill a
                    // push may have reached one and not the other. Half the cycles of the
                    // several-writer segments have near links (0 ms, the slower one 0–3 ms), where
                    // the gateway sends writes around its cache while that is quicker: the kills
                    // meet writes around it and the switches either way.
                    bool near = writers > 1 && rng.Next(2) == 0;
                    int slow = rng.Next(2) == 0 ? partner : anchor;
                    foreach (int n in (int[])[gateway, partner, anchor])
                        nodes.Proxies[n].Delay = n == slow ? TimeSpan.FromMilliseconds(near ? rng.Next(0, 4) : rng.Next(5, 31)) : near ? TimeSpan.Zero : OneWay;

                    int killAfter = rng.Next(5, 120);
                    int sleepMs = rng.Next(0, 31);
                    int victim = replicaCycle ? partner : gateway;
                    var cycleWrites = new List<Write>();
                    // A replica cycle's writer goes on for a few writes after the kill, then flushes.
                    int afterKill = replicaCycle ? rng.Next(10, 60) : 0;
                    var run = new Writer(clients[..writers], rng.Next(), seed, cycle, writes, cycleWrites, seq, flushes, killAfter);
                    // The node killed last comes back while the writer runs (two copies take a
                    // write meanwhile, and its joining changes the epoch under pushes waiting for
                    // their objects' recovery); it is up before the next kill, so at most one node
                    // is ever down.
                    var writing = Task.Run(run.RunAsync);
                    await Task.WhenAny(run.Reached.Task, writing);
                    await restarted;
                    if (writing.IsFaulted)
                        Assert.Fail($"seed {seed}, cycle {cycle}: the writer failed before the kill: {writing.Exception}\n{NodeLogs(nodes)}");
                    if (sleepMs > 0)
                        await Task.Delay(sleepMs);
                    long around = await AroundWrites(nodes[gateway]);
                    if (near && around > 0)
                        nearWithAround++;
                    // Only a dead gateway may fail a request: a dead replica is the cluster's business.
                    run.Killing = !replicaCycle;
                    if (replicaCycle)
                        run.StopAfter = run.Issued + afterKill;
                    await nodes[victim].KillAsync();
                    string killed = $"{Name(nodes, nodes[victim])} ({(replicaCycle ? "replica" : "gateway")}) killed after {run.Issued} writes + {sleepMs} ms, "
                        + $"slow link to {Name(nodes, nodes[slow])} {nodes.Proxies[slow].Delay.TotalMilliseconds:F0} ms{(near ? ", the others 0 ms" : "")}, "
                        + $"{around} writes around the cache so far on the gateway";
                    try
                    {
                        await writing;
                    }
                    catch (Exception e)
                    {
                        Assert.Fail($"seed {seed}, cycle {cycle}: {killed}: the writer failed: {e}\n{NodeLogs(nodes)}");
                    }
                    seq = run.Seq;
                    flushes = run.Flushes;
                    foreach (var p in nodes.Proxies)
                        p.Delay = OneWay;

                    int highest = flushes;
                    if (replicaCycle)
                    {
                        // The writer saw no error and ended with a flush: every block exactly its last write.
                        replicaKills++;
                    }
                    else
                    {
                        // The partner takes over once the dead gateway's lease is gone; it has not
                        // got the cache, so what was acknowledged and unflushed may be lost.
                        gatewayKills++;
                        await DisposeAll(clients);
                        gateway = partner;
                        clients = await ConnectAll(nodes[gateway]);
                        // A flush without its reply may have closed its epoch: the prefix may end one later.
                        if (run.FlushInDoubt)
                            highest++;
                    }
                    var read = Identify(await ReadVolume(clients[0]), writes, seed, out var unknown);
                    var verdict = Check(read, baseline, cycleWrites, flushes, highest);
                    if (verdict.K is not { } k)
                    {
                        Assert.Fail($"seed {seed}, cycle {cycle}: {killed}; read through {Name(nodes, nodes[gateway])}: {verdict.Bad.Count} blocks no flush-order prefix explains "
                            + $"(F = {flushes} flushes completed, in doubt: {run.InDoubt ?? "nothing"}):\n"
                            + string.Join('\n', verdict.Bad.Take(20).Select(b => $"  block {b.Block} reads as {Describe(b.Read, writes, unknown.GetValueOrDefault(b.Block))}; "
                                + $"allowed: {string.Join(", ", b.Allowed.Select(a => Describe(a, writes, null)))}"))
                            + $"\n{NodeLogs(nodes)}");
                        return;
                    }
                    var unflushed = cycleWrites.Where(w => w.EMax >= flushes).Select(w => w.Block).ToHashSet();
                    int landed = unflushed.Count(b => cycleWrites.Any(w => w.Block == b && w.EMax >= flushes && w.Seq == read[b]));
                    Output.WriteLine($"cycle {cycle}: {writers} writer(s), {killed}; {cycleWrites.Count} writes, F = {flushes}, in doubt: {run.InDoubt ?? "nothing"}; "
                        + $"prefix k = {k}, {landed} of {unflushed.Count} unflushed blocks landed ({clock.Elapsed.TotalSeconds:F0} s)");
                    baseline = read;

                    var back = nodes[victim];
                    restarted = Task.Run(async () =>
                    {
                        await back.StartAsync();
                        await Eventually(async () => (await Json(back, "node", "list")).EnumerateArray().All(n => n.GetProperty("state").GetString() == "up"),
                            LeaseMargin, $"{Name(nodes, back)} is up");
                    });
                }
            }
            await restarted;
        }
        finally
        {
            await DisposeAll(clients);
        }
        Output.WriteLine($"{gatewayKills} gateway kills, {replicaKills} replica kills in {clock.Elapsed.TotalSeconds:F0} s; "
            + $"{nearWithAround} cycles with near links met a gateway that had written around its cache");
        Assert.True(nearWithAround > 0, "no cycle with near links met a gateway that had written around its cache: they tested nothing of write-around");
    }

    private async Task<NbdClient[]> ConnectAll(OvisDaemon node)
    {
        var clients = new NbdClient[Connections];
        clients[0] = await ConnectWhenFree(node);
        for (int i = 1; i < clients.Length; i++)
            clients[i] = await NbdClient.ConnectAsync(node.NbdUri("v"), CancellationToken.None);
        return clients;
    }

    private static async Task DisposeAll(NbdClient[] clients)
    {
        foreach (var client in clients)
            await client.DisposeAsync();
    }

    private static async Task<long> AroundWrites(OvisDaemon gateway)
    {
        using var http = gateway.AdminHttp();
        using var doc = JsonDocument.Parse(await http.GetStringAsync(new Uri(gateway.AdminUrl + "/api/v1/volumes/v")));
        return doc.RootElement.TryGetProperty("cacheStats", out var stats) && stats.ValueKind == JsonValueKind.Object
            ? stats.GetProperty("aroundWrites").GetInt64() : 0;
    }

    private static async Task<bool> AllCurrent(ClusterNodes nodes)
    {
        var list = await Json(nodes[0], "node", "list");
        return list.GetArrayLength() == nodes.Count
            && list.EnumerateArray().All(n => n.GetProperty("state").GetString() == "up" && !n.GetProperty("stale").GetBoolean());
    }

    /// <summary>
    /// The oracle. A block may read as, for some flush epoch k from <paramref name="completed"/>
    /// (F, the flushes that were acknowledged) up to <paramref name="highest"/> (F + 1 when a
    /// flush was in flight): the last write to it that is surely of an epoch before k (acknowledged
    /// before flush k was issued), else the baseline (what it held before the cycle) — or any later
    /// write to it that may be of epoch k or before (the one being pushed: overwrites within an
    /// epoch merge, a push may have reached some copies only; and a write that ran beside a flush
    /// may be on either side of it). The same k for every block: a prefix in flush order. For
    /// k = F this is "flushed data exact". Returns the largest k that fits, or the blocks k = F
    /// (which allows the most) does not explain. Each block is written by one writer at a time,
    /// so its writes are ordered by number.
    /// </summary>
    internal static Verdict Check(int[] read, int[] baseline, IReadOnlyList<Write> cycleWrites, int completed, int highest)
    {
        var byBlock = cycleWrites.GroupBy(w => w.Block).ToDictionary(g => g.Key, g => g.OrderBy(w => w.Seq).ToList());
        var bad = new List<(int, int, int[])>();
        for (int k = highest; k >= completed; k--)
        {
            bad.Clear();
            for (int b = 0; b < read.Length; b++)
            {
                var allowed = Allowed(baseline[b], byBlock.GetValueOrDefault(b) ?? [], k);
                if (!allowed.Contains(read[b]))
                    bad.Add((b, read[b], [.. allowed.Order()]));
            }
            if (bad.Count == 0)
                return new Verdict(k, []);
        }
        return new Verdict(null, bad);
    }

    private static HashSet<int> Allowed(int baseline, List<Write> writes, int k)
    {
        int last = baseline;
        var allowed = new HashSet<int>();
        foreach (var w in writes)
        {
            if (w.Acked && w.EMax < k)
            {
                last = w.Seq;       // covered by a flush of the prefix: what came before it is gone
                allowed.Clear();
            }
            else if (w.EMin <= k)
            {
                allowed.Add(w.Seq); // of epoch k, or in doubt: there or not
            }
        }
        allowed.Add(last);
        return allowed;
    }

    /// <summary>The writer: one request at a time on each of its connections, a flush every 5 to
    /// 30 writes on the first (one flush at a time, so flushes are ordered), half the writes on 32
    /// hot blocks (overwrites within an epoch, which the pusher merges). Each connection writes its
    /// own share of the blocks (block mod connections), so a block's writes never race. It runs
    /// until a request fails once <see cref="Killing"/> is set (that request is in doubt), or to
    /// its end.</summary>
    private sealed class Writer(NbdClient[] clients, int rngSeed, int seed, int cycle, Dictionary<int, Write> all, List<Write> mine,
        int seq, int flushes, int reachAfter)
    {
        private readonly Lock _lock = new();
        private int _stopAfter = int.MaxValue;
        private int _issued;
        private int _flushesIssued = flushes;
        private int _flushesCompleted = flushes;
        private readonly List<string> _inDoubt = [];

        public TaskCompletionSource Reached { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>Once this many writes are issued, a flush, and the writer ends (set at a replica's kill).</summary>
        public int StopAfter
        {
            get => Volatile.Read(ref _stopAfter);
            set => Volatile.Write(ref _stopAfter, value);
        }

        public volatile bool Killing;

        public int Seq => Volatile.Read(ref seq);

        public int Flushes => Volatile.Read(ref _flushesCompleted);

        public int Issued => Volatile.Read(ref _issued);

        public bool FlushInDoubt { get; private set; }

        /// <summary>Null, or what was in flight when the gateway died.</summary>
        public string? InDoubt
        {
            get
            {
                lock (_lock)
                    return _inDoubt.Count == 0 ? null : string.Join(", ", _inDoubt);
            }
        }

        public async Task RunAsync()
        {
            await Task.WhenAll(clients.Select((_, i) => Task.Run(() => WriteAsync(i))));
            if (Issued >= StopAfter)
            {
                Interlocked.Increment(ref _flushesIssued);
                await clients[0].FlushAsync(CancellationToken.None);
                Interlocked.Increment(ref _flushesCompleted);
            }
        }

        private async Task WriteAsync(int connection)
        {
            var rng = new Random(rngSeed + connection);
            NbdClient client = clients[connection];
            int share = clients.Length;
            int untilFlush = rng.Next(5, 31);
            while (true)
            {
                if (Issued >= StopAfter)
                    return;
                if (connection == 0 && untilFlush-- == 0)
                {
                    untilFlush = rng.Next(5, 31);
                    Interlocked.Increment(ref _flushesIssued);
                    try
                    {
                        await client.FlushAsync(CancellationToken.None);
                    }
                    catch (Exception e) when (Killing && IsLost(e))
                    {
                        FlushInDoubt = true;
                        lock (_lock)
                            _inDoubt.Add("flush");
                        return;
                    }
                    Interlocked.Increment(ref _flushesCompleted);
                    continue;
                }
                int block = (rng.Next(2) == 0 ? rng.Next(32 / share) : rng.Next(Blocks / share)) * share + connection;
                var w = new Write(Interlocked.Increment(ref seq), block, EMin: Flushes, EMax: int.MaxValue, cycle, Acked: false);
                lock (_lock)
                {
                    all[w.Seq] = w;
                    mine.Add(w);
                }
                if (Interlocked.Increment(ref _issued) == reachAfter)
                    Reached.TrySetResult();
                try
                {
                    await client.WriteAsync(block * (long)BlockSize, Content(seed, block, w.Seq), CancellationToken.None);
                }
                catch (Exception e) when (Killing && IsLost(e))
                {
                    lock (_lock)
                        _inDoubt.Add($"write #{w.Seq} to block {block}");
                    return;
                }
                var acked = w with { EMax = Volatile.Read(ref _flushesIssued), Acked = true };
                lock (_lock)
                {
                    all[w.Seq] = acked;
                    mine[mine.IndexOf(w)] = acked;
                }
            }
        }

        private static bool IsLost(Exception e) => e is IOException or SocketException or EndOfStreamException or ObjectDisposedException;
    }

    /// <summary>Write number <paramref name="seq"/> to <paramref name="block"/>: its block, number and the
    /// seed first, then bytes from a generator seeded with all three, so a block that reads back names
    /// exactly one write (and a torn one names none).</summary>
    private static byte[] Content(int seed, int block, int seq)
    {
        var data = TestData.RandomBytes(BlockSize, seed: unchecked((seed * 1_000_003) + seq));
        BinaryPrimitives.WriteInt32LittleEndian(data, block);
        BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(4), seq);
        BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(8), seed);
        return data;
    }

    /// <summary>Which write each block shows: 0 for zeros (never written), -1 for anything that is
    /// no write of this test to that block (described in <paramref name="unknown"/>).</summary>
    private static int[] Identify(byte[] data, Dictionary<int, Write> writes, int seed, out Dictionary<int, string> unknown)
    {
        var seqs = new int[Blocks];
        unknown = [];
        for (int b = 0; b < Blocks; b++)
        {
            var block = data.AsSpan(b * BlockSize, BlockSize);
            if (!block.ContainsAnyExcept((byte)0))
                continue;
            int named = BinaryPrimitives.ReadInt32LittleEndian(block[4..]);
            if (writes.TryGetValue(named, out var w) && block.SequenceEqual(Content(seed, w.Block, named)))
            {
                seqs[b] = w.Block == b ? named : -1;
                if (w.Block != b)
                    unknown[b] = $"write #{named}, which went to block {w.Block}";
            }
            else
            {
                seqs[b] = -1;
                unknown[b] = $"no write of this test (torn or from nowhere; header {Convert.ToHexString(block[..16])}, names write #{named})";
            }
        }
        return seqs;
    }

    private static string Describe(int seq, Dictionary<int, Write> writes, string? unknown) => seq switch
    {
        0 => "zeros (never written)",
        -1 => unknown ?? "unidentified",
        _ => $"write #{seq} (cycle {writes[seq].Cycle}, epoch {Epochs(writes[seq])}{(writes[seq].Acked ? "" : ", in doubt")})",
    };

    private static string Epochs(Write w) => w.EMin == w.EMax ? $"{w.EMin}" : w.Acked ? $"{w.EMin}..{w.EMax}" : $"{w.EMin} or later";

    private static async Task<byte[]> ReadVolume(NbdClient client)
    {
        var data = new byte[Blocks * BlockSize];
        for (int off = 0; off < data.Length; off += TestData.MiB)
            await client.ReadAsync(off, data.AsMemory(off, TestData.MiB), CancellationToken.None);
        return data;
    }

    private static string Name(ClusterNodes nodes, OvisDaemon node) => $"node {Zones[nodes.IndexOf(node)]}";

    private static string NodeLogs(ClusterNodes nodes) =>
        string.Join('\n', nodes.Select(n => $"=== {Name(nodes, n)}: {(n.IsRunning ? "running" : "NOT RUNNING")}\n{n.Log}"));
}
