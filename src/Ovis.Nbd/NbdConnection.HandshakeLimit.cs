namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    private const int HandshakeRunning = 0;
    private const int HandshakeFinished = 1;
    private const int HandshakeExpired = 2;

    // Closed handshakes are counted for the node's log: a port scan or a flood of silent
    // connections must not write a line each.
    private static readonly LogThrottle<NbdConnection> HandshakeTimeoutLog = new(
        TimeSpan.FromSeconds(1),
        static (connection, count) => NbdLog.HandshakeTimeouts(connection._logger, count, connection._options.HandshakeTimeout.TotalSeconds));

    private int _handshakeState;
    private Timer? _handshakeTimer;

    /// <summary>
    /// Arms the handshake limit: one timer per connection, disarmed when the handshake ends. A
    /// client that connects and says nothing (or haggles forever) would otherwise hold a socket
    /// and a handshake buffer for as long as it likes.
    /// </summary>
    private void StartHandshakeLimit()
    {
        if (_options.HandshakeTimeout == Timeout.InfiniteTimeSpan)
        {
            return;
        }

        _handshakeTimer = new Timer(static state => ((NbdConnection)state!).OnHandshakeExpired(), this, _options.HandshakeTimeout, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Disarms the limit; false when it had already expired, and then the connection must close.</summary>
    private bool EndHandshakeLimit()
    {
        _handshakeTimer?.Dispose();
        _handshakeTimer = null;
        return Interlocked.CompareExchange(ref _handshakeState, HandshakeFinished, HandshakeRunning) != HandshakeExpired;
    }

    private void OnHandshakeExpired()
    {
        // Whoever moves the state first wins: a handshake that finished in time keeps its session
        // even if the timer fires a moment later.
        if (Interlocked.CompareExchange(ref _handshakeState, HandshakeExpired, HandshakeRunning) != HandshakeRunning)
        {
            return;
        }

        // The handshake's reads and flushes then return canceled and it ends. An export being
        // opened is let finish; teardown releases it. CancelPending* on a pipe the teardown has
        // already completed is harmless, but a transport may still object.
        try
        {
            _transport.Input.CancelPendingRead();
            _transport.Output.CancelPendingFlush();
        }
        catch (InvalidOperationException)
        {
        }
    }

    private void LogHandshakeTimeout()
    {
        NbdLog.HandshakeTimedOut(_logger, _connectionId, _options.HandshakeTimeout.TotalSeconds);
        HandshakeTimeoutLog.Record(this);
    }
}
