using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Ovis.Cluster.Peer;

/// <summary>
/// One TCP connection of a <see cref="PeerClient"/>: a send loop that batches queued requests into
/// the socket, a receive loop that matches replies to requests by handle, and a table of the
/// requests in flight.
/// </summary>
/// <remarks>
/// The receive loop's end is the connection's only teardown path: anything that finds the
/// connection broken (a send failure, a request timeout, disposal) aborts the socket, which ends
/// the receive loop, which fails every pending request with Unreachable exactly once.
/// </remarks>
internal sealed partial class PeerClientConnection : IAsyncDisposable
{
    private readonly PeerClient _client;
    private readonly ILogger _logger;
    private readonly NetworkStream _stream;
    private readonly PipeReader _input;
    private readonly PipeWriter _output;

    // Guarded by _pendingLock: the requests sent or queued and not yet finished, and whether the
    // connection has failed (after which nothing is added).
    private readonly Lock _pendingLock = new();
    private readonly Dictionary<ulong, PeerRequest> _pending = [];
    private ulong _lastHandle;
    private bool _failed;

    private readonly ConcurrentQueue<PeerRequest> _sendQueue = new();
    private readonly AsyncSignal _sendReady = new();
    private int _aborted;
    private Task _sendLoop = Task.CompletedTask;
    private Task _receiveLoop = Task.CompletedTask;

    public PeerClientConnection(PeerClient client, Socket socket, ILogger logger)
    {
        _client = client;
        _logger = logger;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _input = PipeReader.Create(_stream, new StreamPipeReaderOptions(bufferSize: 64 << 10, leaveOpen: true));
        _output = PipeWriter.Create(_stream, new StreamPipeWriterOptions(minimumBufferSize: 64 << 10, leaveOpen: true));
    }

    public bool IsFailed
    {
        get
        {
            lock (_pendingLock)
            {
                return _failed;
            }
        }
    }

    /// <summary>Completes when both loops have ended.</summary>
    public Task Completion => Task.WhenAll(_sendLoop, _receiveLoop);

    public void Start()
    {
        _sendLoop = SendLoopAsync();
        _receiveLoop = ReceiveLoopAsync();
    }

    /// <summary>
    /// Registers <paramref name="request"/> and queues it for sending; false (the request untouched)
    /// when the connection has failed.
    /// </summary>
    public bool TrySend(PeerRequest request, CancellationToken cancellationToken)
    {
        request.Connection = this;
        // Registered before the request is published, so that whoever finishes it sees the
        // registration; a cancel that fires before publication is caught by the check below.
        if (cancellationToken.CanBeCanceled)
        {
            request.Registration = cancellationToken.UnsafeRegister(
                static (state, token) => ((PeerRequest)state!).Connection!.Cancel((PeerRequest)state!, token), request);
        }

        lock (_pendingLock)
        {
            if (_failed)
            {
                request.Registration.Unregister();
                request.Registration = default;
                return false;
            }

            request.Handle = ++_lastHandle;
            request.QueuedAt = Environment.TickCount64;
            _pending.Add(request.Handle, request);
        }

        if (cancellationToken.IsCancellationRequested)
        {
            Cancel(request, cancellationToken);
        }

        _sendQueue.Enqueue(request);
        _sendReady.Set();
        return true;
    }

    private void Cancel(PeerRequest request, CancellationToken token)
    {
        lock (_pendingLock)
        {
            if (!_pending.Remove(request.Handle))
            {
                // A reply or the teardown has it already.
                return;
            }
        }

        // A reply that comes later finds no request and is skipped.
        request.FinishCanceled(token);
    }

    /// <summary>Heartbeat: drops the connection when a request has waited longer than <paramref name="timeoutMs"/>.</summary>
    /// <summary>Aborts the connection when a request waited longer than <paramref name="timeoutMs"/>; true when it did.</summary>
    public bool CheckTimeouts(long now, long timeoutMs)
    {
        if (!HasExpired(now, timeoutMs))
        {
            return false;
        }

        PeerLog.RequestTimedOut(_logger, _client.Peer, TimeSpan.FromMilliseconds(timeoutMs));
        Abort();
        return true;
    }

    private bool HasExpired(long now, long timeoutMs)
    {
        lock (_pendingLock)
        {
            if (_failed)
            {
                return false;
            }

            if (_receiving is { } receiving && now - receiving.QueuedAt > timeoutMs)
            {
                return true;
            }

            foreach (PeerRequest request in _pending.Values)
            {
                if (now - request.QueuedAt > timeoutMs)
                {
                    return true;
                }
            }

            return false;
        }
    }

    /// <summary>
    /// Breaks the connection from any thread: the receive loop ends and fails whatever is pending.
    /// Idempotent.
    /// </summary>
    public void Abort()
    {
        if (Interlocked.Exchange(ref _aborted, 1) != 0)
        {
            return;
        }

        _input.CancelPendingRead();
        try
        {
            // Shutdown ends a receive blocked in the socket and tells the peer at once.
            _stream.Socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already closed.
        }
    }

    /// <summary>Aborts the connection and waits for its loops; the receive loop disposes the stream.</summary>
    public async ValueTask DisposeAsync()
    {
        Abort();
        await Completion;
    }

    /// <summary>The teardown path, run once by the receive loop as it ends.</summary>
    private void Fail(Exception? exception)
    {
        List<PeerRequest> orphans;
        lock (_pendingLock)
        {
            _failed = true;
            orphans = [.. _pending.Values];
            _pending.Clear();
        }

        // Removed from the table when its header arrived; its payload never finished.
        if (_receiving is { } receiving)
        {
            _receiving = null;
            orphans.Add(receiving);
        }

        _client.OnConnectionFailed(this);
        PeerLog.ConnectionLost(_logger, _client.Peer, orphans.Count, exception);
        foreach (PeerRequest request in orphans)
        {
            request.Finish(PeerResult.Unreachable);
        }

        Abort();
        // Wakes the send loop so it sees _failed and ends; queued requests were failed above.
        _sendReady.Set();
    }
}
