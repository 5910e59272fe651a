namespace Ovis.Volumes;

/// <summary>
/// Lets a control operation (a snapshot) wait for a volume's writes in flight and hold back new
/// ones for a moment, without a lock on the data path: a write costs two interlocked operations.
/// </summary>
internal sealed class IoGate
{
    private int _active;
    private volatile TaskCompletionSource? _frozen;
    private TaskCompletionSource? _drained;

    /// <summary>True if the write may go ahead (call <see cref="Exit"/> after it); false while frozen.</summary>
    public bool TryEnter()
    {
        Interlocked.Increment(ref _active);
        if (_frozen is null)
        {
            return true;
        }
        Exit();
        return false;
    }

    /// <summary>Completes when the gate opens again.</summary>
    public Task WhenOpen => _frozen?.Task ?? Task.CompletedTask;

    public void Exit()
    {
        if (Interlocked.Decrement(ref _active) == 0 && _frozen is not null)
        {
            _drained?.TrySetResult();
        }
    }

    /// <summary>Holds back new writes and waits for those in flight.</summary>
    public Task FreezeAsync()
    {
        _drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _frozen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (Volatile.Read(ref _active) == 0)
        {
            _drained.TrySetResult();
        }
        return _drained.Task;
    }

    public void Thaw()
    {
        TaskCompletionSource? frozen = _frozen;
        _frozen = null;
        frozen?.TrySetResult();
    }
}
