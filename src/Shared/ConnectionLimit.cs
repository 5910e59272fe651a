namespace Ovis;

/// <summary>
/// A cap on the connections one listener (or group of listeners) serves at once. Each accepted
/// connection calls <see cref="TryEnter"/> first and, when admitted, <see cref="Exit"/> once at its
/// end; a refused one is closed by its host without a word, since neither NBD nor the peer protocol
/// has a way to say "busy" before the greeting. Refusals are logged through a
/// <see cref="LogThrottle{TState}"/>, so a flood of them writes a line a second. Thread-safe.
/// One source file, compiled into the peer protocol and the node.
/// </summary>
internal sealed class ConnectionLimit<TState>
    where TState : class
{
    private readonly LogThrottle<TState> _refusalLog;
    private int _open;

    /// <param name="max">Connections admitted at once.</param>
    /// <param name="logRefusals">Writes one line for <c>count</c> refusals.</param>
    public ConnectionLimit(int max, Action<TState, long> logRefusals)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(max, 1);
        Max = max;
        _refusalLog = new LogThrottle<TState>(TimeSpan.FromSeconds(1), logRefusals);
    }

    public int Max { get; }

    /// <summary>Connections admitted and not yet ended.</summary>
    public int Open => Volatile.Read(ref _open);

    /// <summary>Admits a connection, or counts a refusal (logged with <paramref name="state"/>) when <see cref="Max"/> are open.</summary>
    public bool TryEnter(TState state)
    {
        if (Interlocked.Increment(ref _open) <= Max)
        {
            return true;
        }

        Interlocked.Decrement(ref _open);
        _refusalLog.Record(state);
        return false;
    }

    /// <summary>Ends a connection <see cref="TryEnter"/> admitted.</summary>
    public void Exit() => Interlocked.Decrement(ref _open);
}
