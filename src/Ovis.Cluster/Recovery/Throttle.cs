namespace Ovis.Cluster.Recovery;

/// <summary>
/// A token bucket for background recovery bytes, so that moving a node's worth of objects never
/// takes the bandwidth clients need. Zero or less means unlimited. Work a client waits for does
/// not pass through it.
/// </summary>
public sealed class Throttle(long bytesPerSecond)
{
    private readonly Lock _lock = new();
    private double _tokens = bytesPerSecond;
    private long _last = Environment.TickCount64;

    public long BytesPerSecond { get; set; } = bytesPerSecond;

    public async ValueTask WaitAsync(long bytes, CancellationToken cancellationToken)
    {
        while (true)
        {
            TimeSpan wait;
            lock (_lock)
            {
                long rate = BytesPerSecond;
                if (rate <= 0)
                    return;
                long now = Environment.TickCount64;
                // At most one second's worth builds up while idle.
                _tokens = Math.Min(rate, _tokens + (now - _last) * rate / 1000.0);
                _last = now;
                if (_tokens >= bytes || _tokens >= rate)
                {
                    _tokens -= bytes;
                    return;
                }
                wait = TimeSpan.FromMilliseconds(Math.Max(1, (bytes - _tokens) * 1000.0 / rate));
            }
            await Task.Delay(wait, cancellationToken).ConfigureAwait(false);
        }
    }
}
