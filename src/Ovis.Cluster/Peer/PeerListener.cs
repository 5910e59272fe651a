using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Ovis.Cluster.Peer;

/// <summary>
/// A minimal TCP host for a <see cref="PeerServer"/>: accepts connections and serves each with
/// <see cref="PeerServer.RunAsync"/>. The node hosts the server in Kestrel; this is for tests,
/// benchmarks and tools that have no Kestrel.
/// </summary>
public sealed class PeerListener : IAsyncDisposable
{
    private readonly PeerServer _server;
    private readonly Socket _socket;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<Socket, Task> _connections = new();
    private Task? _acceptLoop;
    private int _disposed;

    private PeerListener(PeerServer server, Socket socket, ILogger logger)
    {
        _server = server;
        _socket = socket;
        _logger = logger;
        LocalEndPoint = (IPEndPoint)socket.LocalEndPoint!;
    }

    /// <summary>Where the listener accepts connections (the port is chosen when binding to port 0).</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>Binds <paramref name="endPoint"/> and starts accepting connections.</summary>
    public static PeerListener Start(PeerServer server, IPEndPoint endPoint, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(endPoint);
        ArgumentNullException.ThrowIfNull(logger);
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endPoint);
            socket.Listen(128);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        var listener = new PeerListener(server, socket, logger);
        listener._acceptLoop = listener.AcceptLoopAsync();
        return listener;
    }

    private async Task AcceptLoopAsync()
    {
        while (true)
        {
            Socket accepted;
            try
            {
                accepted = await _socket.AcceptAsync(_stopping.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            accepted.NoDelay = true;
            _connections[accepted] = ServeAsync(accepted);
        }
    }

    private async Task ServeAsync(Socket socket)
    {
        // Let the accept loop record the connection before it can end and remove itself.
        await Task.Yield();
        var stream = new NetworkStream(socket, ownsSocket: true);
        try
        {
            var transport = new StreamDuplexPipe(
                PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 64 << 10, leaveOpen: true)),
                PipeWriter.Create(stream, new StreamPipeWriterOptions(minimumBufferSize: 64 << 10, leaveOpen: true)));
            await _server.RunAsync(transport, _stopping.Token);
        }
        catch (Exception ex)
        {
            // RunAsync does not throw for a misbehaving peer; anything here is a server bug.
            _logger.LogError(ex, "Peer connection failed");
        }
        finally
        {
            await stream.DisposeAsync();
            _connections.TryRemove(socket, out _);
        }
    }

    /// <summary>
    /// Stops at once, as a killed process would: stops accepting and resets every connection
    /// (requests in flight get no reply), then waits for the connections to wind down.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _socket.Dispose();
        foreach (Socket connection in _connections.Keys)
        {
            try
            {
                // Linger 0: close with a reset, so the peer learns at once rather than at its next write.
                connection.LingerState = new LingerOption(true, 0);
                connection.Dispose();
            }
            catch (ObjectDisposedException)
            {
                // It ended by itself meanwhile.
            }
        }

        // Only now are the connections asked to stop: with their sockets gone, whatever they
        // finish on the way out is never sent.
        await _stopping.CancelAsync();
        if (_acceptLoop is not null)
        {
            await _acceptLoop;
        }

        await Task.WhenAll(_connections.Values);
        _stopping.Dispose();
    }

    private sealed class StreamDuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }
}
