using System.Net.Http.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// Snapshots under kill -9 (issue: snapshots and clones): a writer does writes, flushes and
/// snapshots; the daemon is killed at a random moment, again and again. After each restart every
/// flushed write and every completed snapshot reads back exactly, and every layer still reads
/// (no layer references data that is gone).
/// </summary>
public sealed class SnapshotCrashTests(ITestOutputHelper output) : InteropTest(null, output)
{
    private const int Block = 4096;
    private const int Size = 8 << 20;

    [Fact]
    public async Task Writes_flushes_and_snapshots_killed_at_random_moments_keep_everything_completed()
    {
        await using var daemon = await OvisDaemon.StartNewAsync();
        Daemon = daemon;
        string vol = await CreateVolume("snapcrash", "8M", "64K");
        var flushed = new byte[Size];                         // the volume as of the last flush
        var snapshots = new Dictionary<string, byte[]>();     // completed snapshots and their content
        // Absolute URLs below: the port changes with every restart, the token (in the data directory) does not.
        using var http = daemon.AdminHttp();

        for (int cycle = 0; cycle < 6; cycle++)
        {
            var rng = new Random(7100 + cycle);
            var model = (byte[])flushed.Clone();              // every acknowledged write
            var sinceFlush = new Dictionary<int, List<byte[]>>(); // block -> contents written after the last flush
            (string Tag, byte[] Content)? attempted = null;   // a snapshot asked for when the kill came
            int snapshotsThisCycle = 0;

            using var killer = new CancellationTokenSource();
            int killAfterMs = rng.Next(150, 1500);
            Task kill = Task.Run(async () =>
            {
                await Task.Delay(killAfterMs);
                await daemon.KillAsync();
            });

            try
            {
                await using var client = await RawNbdClient.ConnectAsync(daemon.NbdPort, vol);
                for (int op = 0; ; op++)
                {
                    int roll = rng.Next(100);
                    if (roll < 75)
                    {
                        int block = rng.Next(Size / Block);
                        var data = new byte[Block];
                        rng.NextBytes(data);
                        var h = await client.SendRequestAsync(RawNbdClient.CmdWrite, (ulong)block * Block, Block, data);
                        var r = await client.ExpectReplyAsync(h);
                        Assert.Equal(0u, r.Error);
                        data.CopyTo(model, block * Block);
                        if (!sinceFlush.TryGetValue(block, out var versions))
                        {
                            sinceFlush[block] = versions = [];
                        }
                        versions.Add(data);
                    }
                    else if (roll < 92)
                    {
                        var h = await client.SendRequestAsync(RawNbdClient.CmdFlush, 0, 0);
                        Assert.Equal(0u, (await client.ExpectReplyAsync(h)).Error);
                        model.CopyTo(flushed, 0);
                        sinceFlush.Clear();
                    }
                    else if (snapshotsThisCycle < 3 && roll >= 98)
                    {
                        snapshotsThisCycle++;
                        // No write is in flight here, so the snapshot must hold exactly the model.
                        string tag = $"c{cycle}o{op}";
                        attempted = (tag, (byte[])model.Clone());
                        var resp = await http.PostAsJsonAsync($"{daemon.AdminUrl}/api/v1/volumes/{vol}/snapshots", new { tag });
                        Assert.True(resp.IsSuccessStatusCode, $"snapshot {tag}: {(int)resp.StatusCode} {await resp.Content.ReadAsStringAsync()}");
                        snapshots[tag] = attempted.Value.Content;
                        attempted = null;
                        // A completed snapshot is durable, and so is everything before it.
                        model.CopyTo(flushed, 0);
                        sinceFlush.Clear();
                    }
                }
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                // The kill is the only way out of the loop; anything else is a failure.
                await kill.WaitAsync(TimeSpan.FromSeconds(30));
                if (daemon.IsRunning)
                {
                    throw;
                }
                Log($"cycle {cycle}: killed after {killAfterMs} ms ({e.GetType().Name})");
            }
            await kill.WaitAsync(TimeSpan.FromSeconds(30));
            await daemon.StartAsync();

            // A snapshot whose reply the kill swallowed may or may not exist; if it does, it is whole.
            if (attempted is { } a && await Exists($"{vol}@{a.Tag}"))
            {
                snapshots[a.Tag] = a.Content;
                a.Content.CopyTo(flushed, 0);
            }

            // The live volume: flushed data exactly; a block written after the last flush is
            // either as flushed or one of the versions written since.
            byte[] live = await Export(daemon.NbdUri(vol), $"live-{cycle}");
            for (int b = 0; b < Size / Block; b++)
            {
                byte[] got = live.AsSpan(b * Block, Block).ToArray();
                bool ok = got.AsSpan().SequenceEqual(flushed.AsSpan(b * Block, Block))
                    || (sinceFlush.TryGetValue(b, out var versions) && versions.Any(v => got.AsSpan().SequenceEqual(v)));
                Assert.True(ok, $"cycle {cycle}: block {b} of the volume is neither flushed nor a later write\n{daemon.Log}");
            }
            // What survived is the baseline of the next cycle.
            live.CopyTo(flushed, 0);

            // Every snapshot after every restart: older ones must not be disturbed by newer layers.
            foreach ((string tag, byte[] content) in snapshots)
            {
                byte[] snap = await Export(daemon.NbdUri($"{vol}@{tag}"), $"snap-{tag}");
                Assert.True(snap.AsSpan().SequenceEqual(content), $"cycle {cycle}: snapshot {tag} does not read back as taken\n{daemon.Log}");
            }
            Log($"cycle {cycle}: {snapshots.Count} snapshots checked");
        }

        // Every layer the catalog names still has its parent.
        var list = await CliJson("vdi", "list");
        var names = list.EnumerateArray().Select(v => v.GetProperty("name").GetString()).ToHashSet();
        foreach (var v in list.EnumerateArray())
        {
            if (v.TryGetProperty("parent", out var p) && p.ValueKind == System.Text.Json.JsonValueKind.String)
            {
                Assert.Contains(p.GetString(), names);
            }
        }
    }

    private async Task<bool> Exists(string name) => (await Cli("vdi", "info", name)).Succeeded;

    private async Task<byte[]> Export(string uri, string label)
    {
        string path = Path.Combine(ScratchDirectory(), label + ".raw");
        await RunOk("nbdcopy", [uri, path], TimeSpan.FromSeconds(60));
        return await File.ReadAllBytesAsync(path);
    }
}
