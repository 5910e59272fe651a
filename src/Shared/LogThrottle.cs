using System.Diagnostics;

namespace Ovis;

/// <summary>
/// Lets one log line through per interval and counts the events in between, so a flood (3000
/// refused connections, a port scan) costs a line a second instead of a line an event. The line
/// that gets through reports how many events it stands for. Thread-safe and lock-free.
/// One source file, compiled into the NBD front, the peer protocol and the node.
/// </summary>
internal sealed class LogThrottle(TimeSpan interval)
{
    private readonly long _intervalTicks = (long)(interval.TotalSeconds * Stopwatch.Frequency);
    private long _count;
    private long _nextLogAt = long.MinValue;

    /// <summary>
    /// Counts one event at <paramref name="now"/> (<see cref="Stopwatch.GetTimestamp"/>); true when
    /// the caller should log, with <paramref name="count"/> the events since the last line, this one included.
    /// </summary>
    public bool TryEnter(long now, out long count)
    {
        Interlocked.Increment(ref _count);
        long next = Volatile.Read(ref _nextLogAt);
        if (now < next || Interlocked.CompareExchange(ref _nextLogAt, now + _intervalTicks, next) != next)
        {
            count = 0;
            return false;
        }

        count = Interlocked.Exchange(ref _count, 0);
        return true;
    }
}
