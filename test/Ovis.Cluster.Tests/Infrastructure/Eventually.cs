using System.Diagnostics;

namespace Ovis.Cluster.Tests.Infrastructure;

/// <summary>Bounded waits: a condition polled until it holds or a deadline passes, never a bare sleep.</summary>
public static class Eventually
{
    /// <summary>A default bound for one await in a test.</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    /// <summary>Polls <paramref name="condition"/> every <paramref name="interval"/> until true; fails after <paramref name="within"/>.</summary>
    public static async Task TrueAsync(Func<Task<bool>> condition, TimeSpan within, string what, TimeSpan? interval = null)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (await condition().WaitAsync(within))
                return;
            if (clock.Elapsed > within)
                throw new TimeoutException($"{what}: not true within {within}");
            await Task.Delay(interval ?? TimeSpan.FromMilliseconds(100));
        }
    }

    /// <summary>Polls until <paramref name="attempt"/> returns non-null and returns it.</summary>
    public static async Task<T> ValueAsync<T>(Func<Task<T?>> attempt, TimeSpan within, string what, TimeSpan? interval = null)
        where T : class
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var value = await attempt().WaitAsync(within);
            if (value is not null)
                return value;
            if (clock.Elapsed > within)
                throw new TimeoutException($"{what}: nothing within {within}");
            await Task.Delay(interval ?? TimeSpan.FromMilliseconds(100));
        }
    }

    /// <summary>The next item of a watch, bounded.</summary>
    public static async Task<T> NextAsync<T>(this IAsyncEnumerator<T> items, TimeSpan within, string what)
    {
        bool more;
        try
        {
            more = await items.MoveNextAsync().AsTask().WaitAsync(within);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"{what}: nothing within {within}");
        }
        return more ? items.Current : throw new InvalidOperationException($"{what}: the stream ended");
    }
}
