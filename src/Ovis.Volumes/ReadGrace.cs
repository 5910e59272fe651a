namespace Ovis.Volumes;

/// <summary>
/// Lets a snapshot merge wait until every read through parent layers that began before a point
/// has finished (a grace period, as RCU's). A read of a layered volume looks up which layer holds
/// a block and then reads it there; the merge copies a parent's blocks into the child and then
/// trims them from the parent, so a read that looked up "parent" before the copy must be done
/// before the trim, or it would read the trimmed block's zeroes. Reads cost two interlocked
/// operations; volumes without parents never come here.
/// </summary>
internal sealed class ReadGrace : IDisposable
{
    private readonly int[] _inside = new int[2];
    private readonly SemaphoreSlim _waiter = new(1, 1);
    private int _epoch;

    /// <summary>Counts a read in; pass the result to <see cref="Exit"/>.</summary>
    public int Enter()
    {
        while (true)
        {
            int epoch = Volatile.Read(ref _epoch);
            Interlocked.Increment(ref _inside[epoch & 1]);
            // The increment is a full fence: a waiter that flipped the epoch before it either sees
            // this count or we see its flip and count ourselves in the new epoch instead.
            if (Volatile.Read(ref _epoch) == epoch)
            {
                return epoch;
            }
            Interlocked.Decrement(ref _inside[epoch & 1]);
        }
    }

    public void Exit(int epoch) => Interlocked.Decrement(ref _inside[epoch & 1]);

    /// <summary>Completes once every read that entered before the call has left.</summary>
    public async Task WaitAsync(CancellationToken cancellationToken = default)
    {
        await _waiter.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // Readers of the epoch before this one all left when the last wait returned, so the
            // slot being drained holds only readers that came before this flip.
            int old = Interlocked.Increment(ref _epoch) - 1;
            int delay = 0;
            while (Volatile.Read(ref _inside[old & 1]) > 0)
            {
                await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
                delay = Math.Min(delay + 1, 10);
            }
        }
        finally
        {
            _waiter.Release();
        }
    }

    public void Dispose() => _waiter.Dispose();
}
