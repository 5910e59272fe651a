using System.Diagnostics;

namespace Ovis;

/// <summary>
/// A cap on the connections one listener (or group of listeners) serves at once. Each accepted
/// connection calls <see cref="TryEnter"/> first and, when admitted, <see cref="Exit"/> once at its
/// end; a refused one is closed by its host without a word, since neither NBD nor the peer protocol
/// has a way to say "busy" before the greeting. Refusals are counted so that a flood of them writes
/// one log line a second. Thread-safe, lock-free.
/// One source file, compiled into the peer protocol and the node.
/// </summary>
internal sealed class ConnectionLimit
{
    private readonly LogThrottle _refusalLog = new(TimeSpan.FromSeconds(1));
    private int _open;

    public ConnectionLimit(int max)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(max, 1);
        Max = max;
    }

    public int Max { get; }

    /// <summary>Connections admitted and not yet ended.</summary>
    public int Open => Volatile.Read(ref _open);

    /// <summary>
    /// Admits a connection, or refuses it when <see cref="Max"/> are open. A refusal sets
    /// <paramref name="refusalsToLog"/> to the refusals since the last log line when this one
    /// should write it, else to 0.
    /// </summary>
    public bool TryEnter(out long refusalsToLog)
    {
        if (Interlocked.Increment(ref _open) <= Max)
        {
            refusalsToLog = 0;
            return true;
        }

        Interlocked.Decrement(ref _open);
        if (!_refusalLog.TryEnter(Stopwatch.GetTimestamp(), out refusalsToLog))
        {
            refusalsToLog = 0;
        }

        return false;
    }

    /// <summary>Ends a connection <see cref="TryEnter"/> admitted.</summary>
    public void Exit() => Interlocked.Decrement(ref _open);
}
