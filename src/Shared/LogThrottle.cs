using System.Diagnostics;

namespace Ovis;

/// <summary>
/// Writes at most one log line per interval for an event that may come in floods (3000 refused
/// connections, a port scan). The first event of a quiet spell is written at once; the ones after
/// it are counted and written as one line ("N more") when the interval ends, by a one-shot timer,
/// so none is lost and a flood costs a line a second. Thread-safe.
/// One source file, compiled into the NBD front, the peer protocol and the node.
/// </summary>
/// <typeparam name="TState">What the line is written with (a logger); the latest one is used for the counted line.</typeparam>
internal sealed class LogThrottle<TState>
    where TState : class
{
    private readonly long _intervalTicks;
    private readonly Action<TState, long> _write;
    private readonly Lock _lock = new();

    // Guarded by _lock.
    private long _quietFrom = long.MinValue;
    private long _pending;
    private TState? _pendingState;
    private Timer? _timer;
    private bool _flushScheduled;

    /// <param name="interval">The least time between two lines.</param>
    /// <param name="write">Writes one line for <c>count</c> events; called outside any lock.</param>
    public LogThrottle(TimeSpan interval, Action<TState, long> write)
    {
        _intervalTicks = (long)(interval.TotalSeconds * Stopwatch.Frequency);
        _write = write;
    }

    /// <summary>Records one event; writes it now or counts it for the line at the end of the interval.</summary>
    public void Record(TState state)
    {
        long now = Stopwatch.GetTimestamp();
        lock (_lock)
        {
            if (_flushScheduled || now < _quietFrom)
            {
                _pending++;
                _pendingState = state;
                if (!_flushScheduled)
                {
                    _flushScheduled = true;
                    _timer ??= new Timer(static s => ((LogThrottle<TState>)s!).Flush(), this, Timeout.Infinite, Timeout.Infinite);
                    // The counted line goes out when the quiet spell would have begun.
                    var due = TimeSpan.FromTicks(Math.Max(1, (_quietFrom - now) * TimeSpan.TicksPerSecond / Stopwatch.Frequency));
                    _timer.Change(due, Timeout.InfiniteTimeSpan);
                }

                return;
            }

            _quietFrom = now + _intervalTicks;
        }

        _write(state, 1);
    }

    private void Flush()
    {
        long count;
        TState? state;
        lock (_lock)
        {
            count = _pending;
            state = _pendingState;
            _pending = 0;
            _pendingState = null;
            _flushScheduled = false;
            _quietFrom = Stopwatch.GetTimestamp() + _intervalTicks;
        }

        if (count > 0 && state is not null)
        {
            _write(state, count);
        }
    }
}
