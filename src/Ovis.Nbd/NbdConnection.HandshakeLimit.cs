using System.Diagnostics;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    private const int HandshakeRunning = 0;
    private const int HandshakeFinished = 1;
    private const int HandshakeExpired = 2;
    private const int HandshakePaused = 3;

    // Closed handshakes are counted for the node's log: a port scan or a flood of silent
    // connections must not write a line each.
    private static readonly LogThrottle<NbdConnection> HandshakeTimeoutLog = new(
        TimeSpan.FromSeconds(1),
        static (connection, count) => NbdLog.HandshakeTimeouts(connection._logger, count, connection._options.HandshakeTimeout.TotalSeconds));

    private int _handshakeState;
    private Timer? _handshakeTimer;

    // Stopwatch ticks: when the limit runs out, and when the current pause began.
    private long _handshakeDeadline;
    private long _handshakePausedAt;

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

        _handshakeDeadline = Stopwatch.GetTimestamp() + (long)(_options.HandshakeTimeout.TotalSeconds * Stopwatch.Frequency);
        _handshakeTimer = new Timer(static state => ((NbdConnection)state!).OnHandshakeExpired(), this, _options.HandshakeTimeout, Timeout.InfiniteTimeSpan);
    }

    /// <summary>
    /// Stops the clock while the server opens an export: the limit is on the client's slowness,
    /// and a cluster node may wait for a volume's lock for longer than the limit (VolumeLocks).
    /// The time paused is added to the deadline by <see cref="ResumeHandshakeLimit"/>.
    /// </summary>
    private void PauseHandshakeLimit()
    {
        if (_handshakeTimer is { } timer
            && Interlocked.CompareExchange(ref _handshakeState, HandshakePaused, HandshakeRunning) == HandshakeRunning)
        {
            _handshakePausedAt = Stopwatch.GetTimestamp();
            timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }
    }

    private void ResumeHandshakeLimit()
    {
        if (_handshakeTimer is { } timer
            && Interlocked.CompareExchange(ref _handshakeState, HandshakeRunning, HandshakePaused) == HandshakePaused)
        {
            long now = Stopwatch.GetTimestamp();
            _handshakeDeadline += now - _handshakePausedAt;
            var due = TimeSpan.FromTicks(Math.Max(1, (_handshakeDeadline - now) * TimeSpan.TicksPerSecond / Stopwatch.Frequency));
            timer.Change(due, Timeout.InfiniteTimeSpan);
        }
    }

    /// <summary>Disarms the limit; false when it had already expired, and then the connection must close.</summary>
    private bool EndHandshakeLimit()
    {
        _handshakeTimer?.Dispose();
        _handshakeTimer = null;
        while (true)
        {
            int state = Volatile.Read(ref _handshakeState);
            if (state is HandshakeExpired or HandshakeFinished)
            {
                return state == HandshakeFinished;
            }

            if (Interlocked.CompareExchange(ref _handshakeState, HandshakeFinished, state) == state)
            {
                return true;
            }
        }
    }

    private void OnHandshakeExpired()
    {
        // Whoever moves the state first wins: a handshake that finished in time keeps its session
        // even if the timer fires a moment later, and a paused limit does not expire.
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
