using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Fencing;
using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Tests.Infrastructure;

/// <summary>
/// A real <see cref="LocalStore"/> in a temporary directory, served by a <see cref="PeerServer"/>
/// on a loopback port, and a <see cref="PeerClient"/> pointed at it. The server can be killed and
/// started again on the same port.
/// </summary>
internal sealed class PeerFixture : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    // A long commit interval and checkpoint interval keep background syncs out of the counts.
    public static readonly LocalStoreOptions StoreOptions = new()
    {
        JournalSize = 64L << 20,
        BatchSize = 4 << 20,
        BatchCount = 8,
        CommitInterval = TimeSpan.FromMinutes(10),
        CheckpointInterval = TimeSpan.FromMinutes(10),
    };

    private readonly string _directory;

    public PeerFixture(long epoch = 1, PeerClientOptions? clientOptions = null, PeerServerOptions? serverOptions = null)
    {
        _directory = Path.Combine(Path.GetTempPath(), "ovis-peer-" + Guid.NewGuid().ToString("N"));
        Store = LocalStore.Open(_directory, StoreOptions, NullLogger.Instance);
        Epochs = new TestEpochs(epoch);
        Fences = FenceTable.Open(Path.Combine(_directory, "fences"));
        Server = new PeerServer(Store, Epochs, Fences, serverOptions ?? new PeerServerOptions(), NullLogger.Instance);
        Listener = PeerListener.Start(Server, new IPEndPoint(IPAddress.Loopback, 0), NullLogger.Instance);
        EndPoint = Listener.LocalEndPoint;
        Client = new PeerClient(EndPoint, clientOptions ?? new PeerClientOptions(), NullLogger.Instance);
    }

    public LocalStore Store { get; }

    /// <summary>Where the store keeps its files, for tests that damage them by hand.</summary>
    public string StoreDirectory => _directory;

    public TestEpochs Epochs { get; }

    /// <summary>The server's fences, kept in the store's directory as a node keeps them in its data directory.</summary>
    public FenceTable Fences { get; }

    public PeerServer Server { get; }

    public PeerListener? Listener { get; private set; }

    public IPEndPoint EndPoint { get; }

    public PeerClient Client { get; }

    public long Epoch => Epochs.Current;

    /// <summary>Stops the server as a killed process would: every connection reset, no replies.</summary>
    public ValueTask KillServerAsync()
    {
        PeerListener listener = Listener ?? throw new InvalidOperationException("not running");
        Listener = null;
        return listener.DisposeAsync();
    }

    /// <summary>Serves again on the same port.</summary>
    public void StartServer() => Listener = PeerListener.Start(Server, EndPoint, NullLogger.Instance);

    public async ValueTask DisposeAsync()
    {
        await Client.DisposeAsync().AsTask().WaitAsync(Timeout);
        if (Listener is not null)
        {
            await Listener.DisposeAsync().AsTask().WaitAsync(Timeout);
        }

        await Store.DisposeAsync().AsTask().WaitAsync(Timeout);
        Directory.Delete(_directory, recursive: true);
    }
}

/// <summary>An epoch that tests set, with a catch-up hook that records what it was asked.</summary>
internal sealed class TestEpochs(long current) : IEpochSource
{
    private long _current = current;

    public long Current
    {
        get => Volatile.Read(ref _current);
        set => Volatile.Write(ref _current, value);
    }

    /// <summary>The epochs catch-up was asked to reach, in order.</summary>
    public ConcurrentQueue<long> CatchUps { get; } = new();

    /// <summary>What a catch-up does; by default nothing (the view was not behind after all).</summary>
    public Func<long, CancellationToken, ValueTask<long>>? OnCatchUp { get; set; }

    public ValueTask<long> CatchUpAsync(long seen, CancellationToken cancellationToken)
    {
        CatchUps.Enqueue(seen);
        return OnCatchUp is { } hook ? hook(seen, cancellationToken) : new(Current);
    }
}

/// <summary>A peer connection driven by raw bytes, for what a well-behaved client never sends.</summary>
internal sealed class RawPeer : IAsyncDisposable
{
    private readonly Socket _socket;

    private RawPeer(Socket socket) => _socket = socket;

    public static async Task<RawPeer> ConnectAsync(IPEndPoint endPoint)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(endPoint).WaitAsync(PeerFixture.Timeout);
        return new RawPeer(socket);
    }

    public static byte[] Request(PeerOpcode opcode, PeerRequestFlags flags, ulong epoch, ulong handle, ulong objectId, ulong offset, uint length, ulong generation = 0)
    {
        var bytes = new byte[PeerProtocol.RequestHeaderSize];
        new PeerRequestHeader(opcode, flags, epoch, handle, objectId, offset, length, generation).Write(bytes);
        return bytes;
    }

    public async Task SendAsync(byte[] bytes)
    {
        int sent = 0;
        while (sent < bytes.Length)
        {
            sent += await _socket.SendAsync(bytes.AsMemory(sent)).AsTask().WaitAsync(PeerFixture.Timeout);
        }
    }

    /// <summary>Reads one reply: its header and payload.</summary>
    public async Task<(PeerReplyHeader Header, byte[] Payload)> ReceiveAsync()
    {
        byte[] header = await ReceiveExactlyAsync(PeerProtocol.ReplyHeaderSize);
        Assert.Equal(PeerProtocol.ReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(header));
        PeerReplyHeader reply = PeerReplyHeader.Read(header);
        byte[] payload = await ReceiveExactlyAsync((int)reply.Length);
        return (reply, payload);
    }

    /// <summary>Says the sender is done (a FIN); the server may still reply.</summary>
    public void ShutdownSend() => _socket.Shutdown(SocketShutdown.Send);

    /// <summary>Everything the server sends until it closes the connection (EOF or reset).</summary>
    public async Task<byte[]> ReceiveToEndAsync()
    {
        var all = new MemoryStream();
        var chunk = new byte[64 << 10];
        try
        {
            while (true)
            {
                int n = await _socket.ReceiveAsync(chunk.AsMemory()).AsTask().WaitAsync(PeerFixture.Timeout);
                if (n == 0)
                {
                    break;
                }

                all.Write(chunk, 0, n);
            }
        }
        catch (SocketException)
        {
        }

        return all.ToArray();
    }

    /// <summary>True when the server closed the connection (EOF or reset) before sending anything more.</summary>
    public async Task<bool> IsClosedAsync()
    {
        var one = new byte[1];
        try
        {
            int n = await _socket.ReceiveAsync(one.AsMemory()).AsTask().WaitAsync(PeerFixture.Timeout);
            return n == 0;
        }
        catch (SocketException)
        {
            return true;
        }
    }

    private async Task<byte[]> ReceiveExactlyAsync(int length)
    {
        var bytes = new byte[length];
        int received = 0;
        while (received < length)
        {
            int n = await _socket.ReceiveAsync(bytes.AsMemory(received)).AsTask().WaitAsync(PeerFixture.Timeout);
            if (n == 0)
            {
                throw new IOException("the server closed the connection");
            }

            received += n;
        }

        return bytes;
    }

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
