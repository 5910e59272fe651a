using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

/// <summary>
/// Sends object operations to one peer over the peer protocol (PeerProtocol.cs). Safe for
/// concurrent use: many requests travel at once on one TCP connection and are matched to their
/// replies by handle.
/// </summary>
/// <remarks>
/// The connection is opened by the first call and reopened by the first call after it failed.
/// A peer that went silent — a connect or a reply that timed out, as in a partition — is probed
/// instead: calls get Unreachable at once while one connect attempt at a time goes out (every
/// <see cref="PeerClientOptions.ProbeInterval"/>, whether calls come or not), until one succeeds. Without that, every
/// write to a copy cut off from its gateway waited a connect timeout. Failures are results, not exceptions: a peer that cannot be reached, a connection that breaks
/// and a request that gets no reply within <see cref="PeerClientOptions.RequestTimeout"/> all give
/// <see cref="PeerStatus.Unreachable"/> (and a broken connection gives it to every request on
/// it). Argument errors throw; a canceled token throws <see cref="OperationCanceledException"/>.
/// Buffers passed in must stay untouched until the call completes.
/// </remarks>
public sealed class PeerClient : IAsyncDisposable
{
    private readonly PeerClientOptions _options;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _disposing = new();
    private readonly Timer _heartbeat;
    private readonly long _timeoutMs;
    // A dead peer refuses every connect at once, and each write tries again: one line per interval.
    private readonly LogThrottle<FailedConnect> _connectFailedLog = new(TimeSpan.FromSeconds(5), static (f, count) =>
    {
        if (count == 1)
            PeerLog.ConnectFailed(f.Logger, f.Peer, f.Error);
        else
            PeerLog.ConnectsFailed(f.Logger, f.Peer, count, f.Error.Message);
    });

    // Guarded by _lock for writes; read without it on the fast path.
    private volatile PeerClientConnection? _connection;
    private Task<PeerClientConnection?>? _connecting;
    private int _disposed;
    // Guarded by _lock: the peer went silent (a timeout); calls do not wait for it until a probe connects.
    private bool _silent;
    private long _nextProbe;

    /// <param name="peer">The peer's peer-protocol address (an <see cref="IPEndPoint"/> or <see cref="DnsEndPoint"/>).</param>
    /// <param name="options">Connect and request timeouts.</param>
    /// <param name="logger">Receives connects, connection losses and timeouts.</param>
    public PeerClient(EndPoint peer, PeerClientOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(peer);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        Peer = peer;
        _options = options;
        _logger = logger;
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.ProbeInterval, TimeSpan.Zero, nameof(options));
        TimeSpan period = options.ProbeInterval;
        if (options.RequestTimeout != Timeout.InfiniteTimeSpan)
        {
            ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.RequestTimeout, TimeSpan.Zero, nameof(options));
            _timeoutMs = (long)options.RequestTimeout.TotalMilliseconds;
            // It checks the oldest waits a few times per timeout.
            period = TimeSpan.FromMilliseconds(Math.Min(Math.Clamp(_timeoutMs / 4, 10, 1000), period.TotalMilliseconds));
        }

        // One timer per client, not per request. It also probes a silent peer when no call comes:
        // else the first call after a long quiet (a check run after a partition healed) got
        // Unreachable from a peer that had been back for minutes.
        _heartbeat = new Timer(static state => ((PeerClient)state!).OnHeartbeat(), this, period, period);
    }

    /// <summary>The address requests go to.</summary>
    public EndPoint Peer { get; }

    /// <summary>Whether a connection is open now (the next call may still find it broken).</summary>
    public bool IsConnected => _connection is { IsFailed: false };

    /// <summary>Reads <c>buffer.Length</c> bytes at <paramref name="offset"/> of an object; holes read as zeroes.</summary>
    public ValueTask<PeerResult> ReadAsync(long epoch, ObjectId id, long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        CheckRange(epoch, offset, buffer.Length);
        return SendAsync(
            new PeerRequest(PeerOpcode.Read, PeerRequestFlags.None, epoch, id.Packed, offset, (uint)buffer.Length) { ReadBuffer = buffer },
            cancellationToken);
    }

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>; with <paramref name="fua"/> it is durable before the reply.</summary>
    public ValueTask<PeerResult> WriteAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken = default)
    {
        CheckRange(epoch, offset, data.Length);
        return SendAsync(
            new PeerRequest(PeerOpcode.Write, fua ? PeerRequestFlags.Fua : PeerRequestFlags.None, epoch, id.Packed, offset, (uint)data.Length, generation) { Payload = data },
            cancellationToken);
    }

    /// <summary>Zeroes a range; <paramref name="keepAllocated"/> leaves its blocks allocated (<see cref="BlockState.Zero"/>) rather than holes.</summary>
    public ValueTask<PeerResult> ZeroAsync(long epoch, long generation, ObjectId id, long offset, long length, bool keepAllocated, bool fua, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, uint.MaxValue);
        PeerRequestFlags flags = (keepAllocated ? PeerRequestFlags.KeepAllocated : PeerRequestFlags.None) | (fua ? PeerRequestFlags.Fua : PeerRequestFlags.None);
        return SendAsync(new PeerRequest(PeerOpcode.Zero, flags, epoch, id.Packed, offset, (uint)length, generation), cancellationToken);
    }

    /// <summary>
    /// Copies whole blocks into the object only where it has holes (IObjectStore.FillHolesAsync).
    /// With <paramref name="zeroes"/> the holes become allocated zeroes, the content of
    /// <paramref name="data"/> is not sent and only its length counts.
    /// </summary>
    public ValueTask<PeerResult> FillHolesAsync(long epoch, long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes,
        bool fromReserve = false, CancellationToken cancellationToken = default)
    {
        CheckRange(epoch, offset, data.Length);
        PeerRequestFlags reserve = fromReserve ? PeerRequestFlags.FromReserve : PeerRequestFlags.None;
        PeerRequest request = zeroes
            ? new PeerRequest(PeerOpcode.FillHoles, PeerRequestFlags.Zeroes | reserve, epoch, id.Packed, offset, (uint)data.Length, generation)
            : new PeerRequest(PeerOpcode.FillHoles, reserve, epoch, id.Packed, offset, (uint)data.Length, generation) { Payload = data };
        return SendAsync(request, cancellationToken);
    }

    /// <summary>Removes an object (durable at the peer's next flush).</summary>
    public ValueTask<PeerResult> DeleteAsync(long epoch, long generation, ObjectId id, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        return SendAsync(new PeerRequest(PeerOpcode.Delete, PeerRequestFlags.None, epoch, id.Packed, 0, 0, generation), cancellationToken);
    }

    /// <summary>Raises the peer's fence of <paramref name="layer"/> to <paramref name="generation"/>
    /// (PeerProtocol.cs, fencing): OK once it is on the peer's disk, FENCED when it has seen a newer one.</summary>
    public ValueTask<PeerResult> FenceAsync(long epoch, uint layer, long generation, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        ArgumentOutOfRangeException.ThrowIfNegative(generation);
        return SendAsync(new PeerRequest(PeerOpcode.Fence, PeerRequestFlags.None, epoch, new ObjectId(layer, 0).Packed, 0, 0, generation), cancellationToken);
    }

    /// <summary>One journal sync on the peer: every write answered before the flush arrived is then durable.</summary>
    public ValueTask<PeerResult> FlushAsync(long epoch, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        return SendAsync(new PeerRequest(PeerOpcode.Flush, PeerRequestFlags.None, epoch, 0, 0, 0), cancellationToken);
    }

    /// <summary>Fills one state per block of the block-aligned range starting at <paramref name="offset"/>.</summary>
    public ValueTask<PeerResult> GetAllocationAsync(long epoch, ObjectId id, long offset, Memory<BlockState> states, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        return SendAsync(
            new PeerRequest(PeerOpcode.Allocation, PeerRequestFlags.None, epoch, id.Packed, offset, (uint)states.Length) { States = states },
            cancellationToken);
    }

    /// <summary>
    /// Fills one <see cref="BlockSum"/> per block of the block-aligned range starting at
    /// <paramref name="offset"/>, without moving the data. With <paramref name="verify"/> the peer
    /// reads its data blocks and checks their checksums (a failure is <see cref="PeerStatus.IoError"/>).
    /// </summary>
    public ValueTask<PeerResult> GetBlockSumsAsync(long epoch, ObjectId id, long offset, Memory<BlockSum> sums, bool verify, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(sums.Length, PeerProtocol.MaxPayloadLength / PeerProtocol.BlockSumSize);
        return SendAsync(
            new PeerRequest(PeerOpcode.BlockSums, verify ? PeerRequestFlags.Verify : PeerRequestFlags.None, epoch, id.Packed, offset, (uint)sums.Length) { Sums = sums },
            cancellationToken);
    }

    /// <summary>The peer's space and journal figures. Served at any epoch.</summary>
    public async ValueTask<PeerStatsResult> StatsAsync(CancellationToken cancellationToken = default)
    {
        var request = new PeerRequest(PeerOpcode.Stats, PeerRequestFlags.None, 0, 0, 0, 0);
        PeerResult result = await SendAsync(request, cancellationToken);
        return new PeerStatsResult(result.Status, result.Epoch, result.IsOk ? request.Stats : default);
    }

    /// <summary>A round trip that touches nothing; the result carries the peer's epoch. Served at any epoch.</summary>
    public ValueTask<PeerResult> PingAsync(CancellationToken cancellationToken = default)
        => SendAsync(new PeerRequest(PeerOpcode.Ping, PeerRequestFlags.None, 0, 0, 0, 0), cancellationToken);

    private static void CheckRange(long epoch, long offset, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, PeerProtocol.MaxPayloadLength);
    }

    private ValueTask<PeerResult> SendAsync(PeerRequest request, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled<PeerResult>(cancellationToken);
        }

        // Fast path: an open connection; the request itself is the awaitable.
        if (_connection is { } connection && connection.TrySend(request, cancellationToken))
        {
            return request.AsValueTask();
        }

        return ConnectAndSendAsync(request, cancellationToken);
    }

    private async ValueTask<PeerResult> ConnectAndSendAsync(PeerRequest request, CancellationToken cancellationToken)
    {
        Task<PeerClientConnection?> connecting;
        lock (_lock)
        {
            if (_connection is { IsFailed: false } open)
            {
                connecting = Task.FromResult<PeerClientConnection?>(open);
            }
            else if (_silent)
            {
                StartProbeIfDue();
                return PeerResult.Unreachable;
            }
            else
            {
                connecting = _connecting ??= Task.Run(ConnectAsync, CancellationToken.None);
            }
        }

        // Everyone waiting shares one attempt; a caller's token ends only its own wait.
        PeerClientConnection? connection = await connecting.WaitAsync(cancellationToken);
        if (connection is null || !connection.TrySend(request, cancellationToken))
        {
            return PeerResult.Unreachable;
        }

        return await request.AsValueTask();
    }

    private async Task<PeerClientConnection?> ConnectAsync()
    {
        Socket socket = Peer is IPEndPoint ip
            ? new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
            : new Socket(SocketType.Stream, ProtocolType.Tcp);
        PeerClientConnection? connection = null;
        try
        {
            socket.NoDelay = true;
            using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(_disposing.Token))
            {
                timeout.CancelAfter(_options.ConnectTimeout);
                await socket.ConnectAsync(Peer, timeout.Token);
            }

            connection = new PeerClientConnection(this, socket, _logger);
            PeerLog.Connected(_logger, Peer);
        }
        catch (Exception ex)
        {
            // Refused, timed out, an unresolvable name, disposal: for the callers all the same.
            if (!_silent)
            {
                _connectFailedLog.Record(new FailedConnect(_logger, Peer, ex));
            }
            if (ex is OperationCanceledException && !_disposing.IsCancellationRequested)
            {
                BecomeSilent();
            }
            socket.Dispose();
        }

        lock (_lock)
        {
            _connecting = null;
            if (connection is null)
            {
                return null;
            }

            _silent = false;

            if (_disposed != 0)
            {
                // Never started: no loop will dispose it.
                socket.Dispose();
                return null;
            }

            _connection = connection;
            connection.Start();
        }

        return connection;
    }

    /// <summary>Called by a connection as it fails, so the next call opens a new one.</summary>
    internal void OnConnectionFailed(PeerClientConnection connection)
    {
        lock (_lock)
        {
            if (_connection == connection)
            {
                _connection = null;
            }
        }
    }

    private void OnHeartbeat()
    {
        if (_timeoutMs > 0 && _connection?.CheckTimeouts(Environment.TickCount64, _timeoutMs) == true)
        {
            BecomeSilent();
        }

        lock (_lock)
        {
            StartProbeIfDue();
        }
    }

    // Guarded by _lock.
    private void StartProbeIfDue()
    {
        long now = Environment.TickCount64;
        if (_silent && _disposed == 0 && _connecting is null && now >= _nextProbe)
        {
            _nextProbe = now + (long)_options.ProbeInterval.TotalMilliseconds;
            _connecting = Task.Run(ConnectAsync, CancellationToken.None);
        }
    }

    private void BecomeSilent()
    {
        lock (_lock)
        {
            if (!_silent)
            {
                _silent = true;
                _nextProbe = Environment.TickCount64 + (long)_options.ProbeInterval.TotalMilliseconds;
                PeerLog.Silent(_logger, Peer, _options.ProbeInterval);
            }
        }
    }

    /// <summary>Closes the connection; requests still in flight get <see cref="PeerStatus.Unreachable"/>.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _disposing.CancelAsync();
        await _heartbeat.DisposeAsync();

        Task<PeerClientConnection?>? connecting;
        PeerClientConnection? connection;
        lock (_lock)
        {
            connecting = _connecting;
            connection = _connection;
        }

        if (connecting is not null)
        {
            await connecting;
        }

        if (connection is not null)
        {
            await connection.DisposeAsync();
        }

        _disposing.Dispose();
    }

    private sealed record FailedConnect(ILogger Logger, EndPoint Peer, Exception Error);
}
