using System.Globalization;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>
/// The volume lock really excludes (docs/fencing.md), with real etcd and three real daemons: a
/// gateway frozen with writes queued on its NBD socket, whose lease runs out while another node
/// takes the volume and writes and flushes, never changes a copy when it wakes — and its client
/// is told so with errors, not silent success.
/// </summary>
public sealed class FencingTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    private const int Rounds = 3;
    private const int QueuedWrites = 32;
    private const int WriteSize = 64 * KiB;
    private const int Span = QueuedWrites / 2 * WriteSize;
    // In another object (4 MiB each) than the one the next holder writes.
    private const long Far = 8L * MiB;

    [Fact]
    public async Task A_paused_gateway_whose_lease_ran_out_never_overwrites_the_next_holders_data()
    {
        await using var nodes = await StartCluster(copies: 3);
        for (int round = 0; round < Rounds; round++)
        {
            // The old gateway is a different node each round, restarted after it was frozen.
            OvisDaemon old = nodes[round % 3];
            OvisDaemon next = nodes[(round + 1) % 3];
            string volume = "p" + round.ToString(CultureInfo.InvariantCulture);
            await Create(old, volume, "16M");
            await Eventually(async () => (await Json(next, "vdi", "list")).EnumerateArray().Any(v => v.GetProperty("name").GetString() == volume),
                LeaseMargin, "the volume is known to the next holder");

            await using (var client = await RawNbdClient.ConnectAsync(old.NbdPort, volume))
            {
                await client.WriteOkAsync(0, Pattern(0x11, Span));
                await client.WriteOkAsync(Far, Pattern(0x11, Span));
                Assert.Equal(0u, await client.FlushAsync());

                // Frozen with writes queued on its socket: they reach it only when it wakes. Half
                // go where the next holder writes, half to an object it never touches.
                old.Pause();
                var handles = new List<ulong>();
                for (int i = 0; i < QueuedWrites; i++)
                {
                    long offset = (i % 2 == 0 ? 0 : Far) + (i / 2 * WriteSize);
                    handles.Add(await client.SendRequestAsync(RawNbdClient.CmdWrite, (ulong)offset, WriteSize, Pattern(0x66, WriteSize)));
                }
                handles.Add(await client.SendRequestAsync(RawNbdClient.CmdFlush, 0, 0));

                // Its lease runs out; the next node takes the volume over, writes and flushes.
                await Eventually(async () => (await Run("qemu-io", QemuIoArgs(next.NbdUri(volume),
                    [$"write -P 0x99 0 {Span}", "flush"]))).Succeeded, LeaseMargin + LeaseMargin, "the next node takes the volume");

                old.Resume();
                int succeeded = 0;
                for (int i = 0; i < handles.Count; i++)
                {
                    var reply = await client.ReadReplyAsync(timeout: LeaseMargin);
                    if (reply is null)
                        break; // the gateway closed the connection: an error too, not a success
                    Assert.Contains(reply.Handle, handles);
                    if (reply.Error == 0)
                        succeeded++;
                }
                Assert.True(succeeded == 0, $"round {round}: {succeeded} queued requests of the frozen gateway were acknowledged\n{old.Log}\n--- next ---\n{next.Log}");
            }

            await QemuIoReadOnly(next.NbdUri(volume), $"read -P 0x99 0 {Span}", $"read -P 0x11 {Far} {Span}");

            // Back by itself (its lease ran out while it was frozen: it rejoins) and resynced: the
            // next holder's data stands on every copy, the old gateway's own included.
            await Eventually(async () => (await Json(next, "node", "list")).EnumerateArray()
                .All(n => n.GetProperty("state").GetString() == "up" && !n.GetProperty("stale").GetBoolean()), LeaseMargin * 4, "every node is up and current again");
            old.AssertAlive("after it was fenced");
            var check = await next.Cli("cluster", "check", volume);
            Assert.True(check.Succeeded, $"round {round}: {check.Describe()}\n{old.Log}\n--- next ---\n{next.Log}");
            Assert.Contains(", 0 copies differ", check.Stdout, StringComparison.Ordinal);
            await QemuIoReadOnly(old.NbdUri(volume), $"read -P 0x99 0 {Span}", $"read -P 0x11 {Far} {Span}");
        }
    }

    private static byte[] Pattern(byte value, int length) => Enumerable.Repeat(value, length).ToArray();
}
