using System.Diagnostics;

namespace Ovis.Nbd.Tests;

/// <summary>The throttle behind the handshake-timeout and refused-connection log lines.</summary>
public class LogThrottleTests
{
    [Fact]
    public void AFloodCostsOneLineAnInterval_AndTheNextLineCountsTheFlood()
    {
        var throttle = new LogThrottle(TimeSpan.FromSeconds(1));
        long start = 1_000_000;

        Assert.True(throttle.TryEnter(start, out long first));
        Assert.Equal(1, first);
        int lines = 0;
        for (int i = 0; i < 2999; i++)
        {
            lines += throttle.TryEnter(start + i, out _) ? 1 : 0;
        }

        Assert.Equal(0, lines);
        Assert.True(throttle.TryEnter(start + Stopwatch.Frequency, out long counted));
        Assert.Equal(3000, counted);
    }

    [Fact]
    public void ConcurrentEvents_AreAllCounted()
    {
        var throttle = new LogThrottle(TimeSpan.FromHours(1));
        long logged = 0;
        Parallel.For(0, 10_000, _ =>
        {
            if (throttle.TryEnter(Stopwatch.GetTimestamp(), out long count))
            {
                Interlocked.Add(ref logged, count);
            }
        });

        // One line got through; everything else waits for the next one.
        Assert.True(throttle.TryEnter(long.MaxValue - 1, out long rest));
        Assert.Equal(10_001, logged + rest);
    }
}
