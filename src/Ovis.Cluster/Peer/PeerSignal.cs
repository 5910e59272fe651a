using System.Threading.Tasks.Sources;

namespace Ovis.Cluster.Peer;

/// <summary>
/// An auto-reset event with a single waiter, reused for the life of a connection so that waiting
/// does not allocate. <see cref="Set"/> may be called from any thread any number of times; a set
/// that finds no waiter is remembered and satisfies the next <see cref="WaitAsync"/> at once.
/// </summary>
internal sealed class PeerSignal : IValueTaskSource
{
    // The setter is a store completion, a caller or another loop; none of them should end up
    // running the waiter's loop on its own stack.
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private readonly Lock _lock = new();
    private bool _isSet;
    private bool _hasWaiter;

    /// <summary>Waits for the next <see cref="Set"/>. The one waiter awaits each result before waiting again.</summary>
    public ValueTask WaitAsync()
    {
        lock (_lock)
        {
            if (_isSet)
            {
                _isSet = false;
                return default;
            }

            _core.Reset();
            _hasWaiter = true;
            return new ValueTask(this, _core.Version);
        }
    }

    public void Set()
    {
        lock (_lock)
        {
            if (!_hasWaiter)
            {
                _isSet = true;
                return;
            }

            _hasWaiter = false;
        }

        _core.SetResult(true);
    }

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
