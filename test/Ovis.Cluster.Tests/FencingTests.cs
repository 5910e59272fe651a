using System.Net;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Fencing;
using Ovis.Cluster.Peer;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Store;

namespace Ovis.Cluster.Tests;

/// <summary>
/// A replica's fences (docs/fencing.md): changes from an older lock generation than the newest
/// a replica has seen for the layer are refused and never applied, over the real peer protocol,
/// and the fence outlives the process. The end-to-end race with paused daemons is in the
/// interop tests (FencingTests there).
/// </summary>
public sealed class FencingTests : IDisposable
{
    private static readonly TimeSpan Timeout = PeerFixture.Timeout;
    private static readonly ObjectId A = new(7, 1);
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "ovis-fence-" + Guid.NewGuid().ToString("N"));

    public FencingTests() => Directory.CreateDirectory(_directory);

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string FencesPath => Path.Combine(_directory, "fences");

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static async Task<PeerResult> Result(ValueTask<PeerResult> call) => await call.AsTask().WaitAsync(Timeout);

    private static async Task<byte[]> ReadAsync(PeerFixture f, ObjectId id, int length)
    {
        var buffer = new byte[length];
        Assert.Equal(PeerStatus.Ok, (await Result(f.Client.ReadAsync(f.Epoch, id, 0, buffer))).Status);
        return buffer;
    }

    [Fact]
    public async Task A_fence_refuses_older_generations_admits_its_own_and_says_when_a_newer_one_needs_raising()
    {
        var fences = FenceTable.Open(FencesPath);
        Assert.Equal(FenceVerdict.Admitted, fences.TryEnter(7, 0));
        fences.Exit(7, 0);
        Assert.True(await fences.RaiseAsync(7, 5).AsTask().WaitAsync(Timeout));
        Assert.Equal(FenceVerdict.Fenced, fences.TryEnter(7, 4));
        Assert.Equal(FenceVerdict.Newer, fences.TryEnter(7, 6));
        Assert.Equal(FenceVerdict.Admitted, fences.TryEnter(7, 5));
        fences.Exit(7, 5);
        // Other layers are not touched; a raise to an older generation is refused.
        Assert.Equal(FenceVerdict.Admitted, fences.TryEnter(8, 0));
        fences.Exit(8, 0);
        Assert.False(await fences.RaiseAsync(7, 3).AsTask().WaitAsync(Timeout));
        Assert.Equal(5, fences.GenerationOf(7));
    }

    [Fact]
    public async Task A_raised_fence_is_on_disk_before_the_raise_completes()
    {
        var fences = FenceTable.Open(FencesPath);
        Assert.True(await fences.RaiseAsync(7, 41).AsTask().WaitAsync(Timeout));
        Assert.True(await fences.RaiseAsync(9, 3).AsTask().WaitAsync(Timeout));
        var reopened = FenceTable.Open(FencesPath);
        Assert.Equal(41, reopened.GenerationOf(7));
        Assert.Equal(3, reopened.GenerationOf(9));
        Assert.Equal(FenceVerdict.Fenced, reopened.TryEnter(7, 40));
    }

    [Fact]
    public async Task A_raise_waits_for_the_changes_admitted_under_the_older_generation()
    {
        var fences = FenceTable.Open(FencesPath);
        Assert.Equal(FenceVerdict.Admitted, fences.TryEnter(7, 0));
        Task<bool> raise = fences.RaiseAsync(7, 2).AsTask();
        // The old holder's change is still being applied: the new holder must not write yet.
        await Task.Delay(200);
        Assert.False(raise.IsCompleted);
        Assert.Equal(FenceVerdict.Fenced, fences.TryEnter(7, 0));
        fences.Exit(7, 0);
        Assert.True(await raise.WaitAsync(Timeout));
    }

    [Fact]
    public void A_damaged_fence_file_stops_the_node_rather_than_forgetting_its_fences()
    {
        File.WriteAllText(FencesPath, "7 12\nnot a fence\n");
        Assert.Throws<InvalidDataException>(() => FenceTable.Open(FencesPath));
    }

    [Fact]
    public async Task Over_the_wire_a_fenced_layer_refuses_older_changes_and_applies_none_of_them()
    {
        await using var f = new PeerFixture();
        byte[] old = RandomBytes(4096, 1);
        Assert.Equal(PeerStatus.Ok, (await Result(f.Client.WriteAsync(f.Epoch, 1, A, 0, old, fua: false))).Status);

        Assert.Equal(PeerStatus.Ok, (await Result(f.Client.FenceAsync(f.Epoch, A.Volume, 2))).Status);
        byte[] other = RandomBytes(4096, 2);
        Assert.Equal(PeerStatus.Fenced, (await Result(f.Client.WriteAsync(f.Epoch, 1, A, 0, other, fua: true))).Status);
        Assert.Equal(PeerStatus.Fenced, (await Result(f.Client.ZeroAsync(f.Epoch, 1, A, 0, 4096, keepAllocated: false, fua: false))).Status);
        Assert.Equal(PeerStatus.Fenced, (await Result(f.Client.FillHolesAsync(f.Epoch, 1, A, 8192, other, zeroes: false))).Status);
        Assert.Equal(PeerStatus.Fenced, (await Result(f.Client.DeleteAsync(f.Epoch, 1, A))).Status);
        Assert.Equal(old, await ReadAsync(f, A, 4096));

        // The new holder writes; a FENCE from an older holder is refused too.
        byte[] theirs = RandomBytes(4096, 3);
        Assert.Equal(PeerStatus.Ok, (await Result(f.Client.WriteAsync(f.Epoch, 2, A, 0, theirs, fua: false))).Status);
        Assert.Equal(PeerStatus.Fenced, (await Result(f.Client.FenceAsync(f.Epoch, A.Volume, 1))).Status);
        Assert.Equal(theirs, await ReadAsync(f, A, 4096));
    }

    [Fact]
    public async Task A_change_from_a_newer_holder_raises_the_fence_itself_and_the_fence_outlives_a_restart()
    {
        await using var f = new PeerFixture();
        Assert.Equal(PeerStatus.Ok, (await Result(f.Client.WriteAsync(f.Epoch, 9, A, 0, RandomBytes(4096, 4), fua: false))).Status);
        Assert.Equal(9, f.Fences.GenerationOf(A.Volume));

        // As after a restart of the replica: its fences are read back, a new server serves them.
        var reopened = FenceTable.Open(Path.Combine(f.StoreDirectory, "fences"));
        var server = new PeerServer(f.Store, f.Epochs, reopened, new PeerServerOptions(), NullLogger.Instance);
        await using PeerListener listener = PeerListener.Start(server, new IPEndPoint(IPAddress.Loopback, 0), NullLogger.Instance);
        await using var client = new PeerClient(listener.LocalEndPoint, new PeerClientOptions(), NullLogger.Instance);
        Assert.Equal(PeerStatus.Fenced, (await Result(client.WriteAsync(f.Epoch, 8, A, 0, RandomBytes(4096, 5), fua: false))).Status);
    }

    [Fact]
    public async Task A_generation_on_a_request_that_changes_nothing_and_a_fence_of_an_object_are_invalid()
    {
        await using var f = new PeerFixture();
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);
        await raw.SendAsync(RawPeer.Request(PeerOpcode.Read, PeerRequestFlags.None, 1, 1, A.Packed, 0, 4096, generation: 3));
        Assert.Equal(new PeerReplyHeader(PeerStatus.Invalid, 1, 1, 0), (await raw.ReceiveAsync()).Header);
        await raw.SendAsync(RawPeer.Request(PeerOpcode.Fence, PeerRequestFlags.None, 1, 2, A.Packed, 0, 0, generation: 3));
        Assert.Equal(new PeerReplyHeader(PeerStatus.Invalid, 1, 2, 0), (await raw.ReceiveAsync()).Header);
        await raw.SendAsync(RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.None, 1, 3, A.Packed, 0, 0, generation: (ulong)long.MaxValue + 1));
        Assert.Equal(new PeerReplyHeader(PeerStatus.Invalid, 1, 3, 0), (await raw.ReceiveAsync()).Header);
        Assert.Equal(0, f.Fences.GenerationOf(A.Volume));
        await raw.SendAsync(RawPeer.Request(PeerOpcode.Ping, PeerRequestFlags.None, 0, 4, 0, 0, 0));
        Assert.Equal(new PeerReplyHeader(PeerStatus.Ok, 1, 4, 0), (await raw.ReceiveAsync()).Header);
    }
}
