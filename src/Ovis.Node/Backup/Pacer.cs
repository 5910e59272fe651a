using System.Diagnostics;

namespace Ovis.Node.Backup;

/// <summary>
/// Keeps a copy at or under a byte rate: before each chunk it waits until the bytes so far are
/// within the rate since the start. Pacing the copy paces its reads of the snapshot too, so a
/// backup takes only the share of the disk it was given.
/// </summary>
internal sealed class Pacer(long? bytesPerSecond)
{
    private readonly long _started = Stopwatch.GetTimestamp();
    private long _bytes;

    public async Task WaitAsync(long nextChunk, CancellationToken ct)
    {
        if (bytesPerSecond is not long rate)
        {
            return;
        }
        _bytes += nextChunk;
        // The chunk may start once the bytes before it fit in the time elapsed.
        TimeSpan due = TimeSpan.FromSeconds((double)(_bytes - nextChunk) / rate);
        TimeSpan wait = due - Stopwatch.GetElapsedTime(_started);
        if (wait > TimeSpan.Zero)
        {
            await Task.Delay(wait, ct).ConfigureAwait(false);
        }
    }
}
