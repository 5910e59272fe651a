using System.Threading.Tasks.Sources;

namespace Ovis;

/// <summary>
/// An auto-reset event with one waiter, reused for the life of a connection so waiting does not
/// allocate. <see cref="Set"/> may be called from any thread, any number of times; a set that
/// finds no waiter is remembered and satisfies the next <see cref="WaitAsync"/> at once.
/// One source file, compiled into the NBD front and the peer protocol: both wake their
/// connections' loops with it.
/// </summary>
internal sealed class AsyncSignal : IValueTaskSource
{
    // Continuations run on the thread pool: the setter is a store or device completion, a caller
    // or another loop, and none of them should end up running the waiter's loop on its own stack.
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private readonly Lock _lock = new();
    private bool _isSet;
    private bool _hasWaiter;

    /// <summary>Waits for the next <see cref="Set"/>. The caller awaits each result before waiting again.</summary>
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
