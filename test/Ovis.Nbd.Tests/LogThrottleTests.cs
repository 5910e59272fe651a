namespace Ovis.Nbd.Tests;

/// <summary>The throttle behind the handshake-timeout and refused-connection log lines.</summary>
public class LogThrottleTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task AFlood_IsOneLineNow_AndOneCountedLineAtTheEndOfTheInterval()
    {
        var lines = new List<long>();
        var counted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var throttle = new LogThrottle<object>(TimeSpan.FromMilliseconds(200), (_, count) =>
        {
            lock (lines)
            {
                lines.Add(count);
                if (lines.Sum() == 3000)
                {
                    counted.TrySetResult();
                }
            }
        });

        for (int i = 0; i < 3000; i++)
        {
            throttle.Record(lines);
        }

        // The first is written at once; the other 2999 wait for the timer, not for another event.
        await counted.Task.WaitAsync(Timeout);
        lock (lines)
        {
            Assert.Equal([1L, 2999L], lines);
        }
    }

    [Fact]
    public async Task ConcurrentEvents_AreAllCounted()
    {
        long total = 0;
        var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var throttle = new LogThrottle<object>(TimeSpan.FromMilliseconds(50), (_, count) =>
        {
            if (Interlocked.Add(ref total, count) == 10_000)
            {
                all.TrySetResult();
            }
        });

        object state = new();
        Parallel.For(0, 10_000, _ => throttle.Record(state));

        await all.Task.WaitAsync(Timeout);
        Assert.Equal(10_000, Interlocked.Read(ref total));
    }
}
