using System.Buffers;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;

namespace Ovis.Nbd;

/// <summary>
/// The server side of one NBD connection: the fixed-newstyle handshake, then the transmission
/// phase until the client disconnects. Create one per accepted connection and call
/// <see cref="RunAsync"/> once.
/// </summary>
/// <remarks>
/// Transmission runs on <see cref="ConnectionLoops{TOperation}"/>, the skeleton it shares with the
/// peer protocol: a read loop that parses requests, checks them and starts their device calls
/// without waiting for them; replies written in completion order by the thread that finished them
/// when nobody else is writing (the read loop once per batch, a device completion at once), with an
/// output loop only for a flush the client has not drained; and a bound on requests and payload
/// bytes in flight, past which the read loop stops reading and TCP pushes back on the client. This
/// class holds the NBD half: parsing, validation, the commands and the reply encoding.
/// </remarks>
public sealed partial class NbdConnection : IAsyncDisposable
{
    private static long _lastConnectionId;

    private readonly IDuplexPipe _transport;
    private readonly IExportProvider _exports;
    private readonly NbdServerOptions _options;
    private readonly ILogger _logger;
    private readonly long _connectionId;
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConnectionLoops<NbdOperation> _loops;
    private Task? _running;
    private int _started;
    private int _tornDown;
    private int _disposed;

    /// <param name="transport">The connection's byte streams; completed by the connection when it ends.</param>
    /// <param name="exports">Where the handshake looks up the export the client names.</param>
    /// <param name="options">Payload and in-flight limits.</param>
    /// <param name="logger">Receives connection open/close and protocol errors.</param>
    public NbdConnection(IDuplexPipe transport, IExportProvider exports, NbdServerOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(transport);
        ArgumentNullException.ThrowIfNull(exports);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        // 512 is the smallest preferred block size a server may advertise, and the maximum
        // payload must not be below it (doc/proto.md, "Size constraints").
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxPayloadSize, 512, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxInFlightBytes, 1, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxInFlightRequests, 1, nameof(options));
        if (options.HandshakeTimeout <= TimeSpan.Zero && options.HandshakeTimeout != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.HandshakeTimeout, "The handshake timeout must be positive or infinite.");
        }

        _transport = transport;
        _exports = exports;
        _options = options;
        _logger = logger;
        _connectionId = Interlocked.Increment(ref _lastConnectionId);
        _maxSkippedPayload = Math.Max(NbdLimits.SkippedPayloadFactor * (long)options.MaxPayloadSize, NbdLimits.MinSkippedPayloadLength);
        _loops = new ConnectionLoops<NbdOperation>(transport, this, options.MaxInFlightRequests, options.MaxInFlightBytes);
    }

    /// <summary>Where payload buffers come from; tests swap in a counting pool.</summary>
    internal ArrayPool<byte> BufferPool { get; init; } = ArrayPool<byte>.Shared;

    /// <summary>
    /// Runs the handshake and then serves requests. Completes when the client disconnects (after
    /// the replies to requests already in flight have been written), when the client breaks the
    /// protocol, or when <paramref name="cancellationToken"/> asks the connection to stop; in every
    /// case the transport is completed and the export's device disposed. Client misbehaviour never
    /// surfaces as an exception.
    /// </summary>
    public Task RunAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("An NbdConnection runs once.");
        }

        _running = RunCoreAsync(cancellationToken);
        return _running;
    }

    /// <summary>
    /// Stops a running connection and waits for it to end, or releases everything if it never ran.
    /// Not needed after <see cref="RunAsync"/> has completed: that already tore the connection down.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        if (Interlocked.Exchange(ref _started, 1) == 0)
        {
            await TeardownAsync();
        }
        else if (_running is { } running)
        {
            await _stopping.CancelAsync();
            await running.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        _stopping.Dispose();
    }

    private async Task RunCoreAsync(CancellationToken cancellationToken)
    {
        using CancellationTokenRegistration registration = cancellationToken.UnsafeRegister(
            static state => ((CancellationTokenSource)state!).Cancel(), _stopping);
        CancellationToken stopping = _stopping.Token;
        NbdLog.ConnectionOpened(_logger, _connectionId);
        try
        {
            StartHandshakeLimit();
            bool selected = await HandshakeAsync(stopping);
            if (!EndHandshakeLimit())
            {
                LogHandshakeTimeout();
            }
            else if (selected)
            {
                await TransmitAsync(stopping);
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            // Asked to stop: requests already started were finished on the way out.
            NbdLog.Stopped(_logger, _connectionId);
        }
        catch (Exception ex) when (IsTransportFailure(ex))
        {
            NbdLog.TransportClosed(_logger, _connectionId, ex);
        }
        finally
        {
            await TeardownAsync();
            NbdLog.ConnectionClosed(_logger, _connectionId);
        }
    }

    private static bool IsTransportFailure(Exception ex) => ConnectionLoops<NbdOperation>.IsTransportFailure(ex);

    /// <summary>The one teardown path: runs after the loops have finished and nothing is in flight.</summary>
    private async ValueTask TeardownAsync()
    {
        if (Interlocked.Exchange(ref _tornDown, 1) != 0)
        {
            return;
        }

        // A handshake cut short by a stop request or a reset still has its timer armed.
        EndHandshakeLimit();

        try
        {
            await _transport.Output.CompleteAsync();
            await _transport.Input.CompleteAsync();
        }
        catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
        {
            NbdLog.TransportClosed(_logger, _connectionId, ex);
        }
        finally
        {
            ReleaseCandidateExport();
            _device?.Dispose();
            _device = null;
        }
    }
}
