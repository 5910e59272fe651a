namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    private readonly Lock _sync = new();

    // Guarded by _sync: the in-flight budget, finished operations waiting for the output loop,
    // and idle operation objects.
    private readonly Queue<NbdOperation> _completed;
    private readonly Stack<NbdOperation> _operationPool;
    private int _inFlightRequests;
    private long _inFlightBytes;
    private bool _writerBusy;       // someone is writing replies into the transport (see WriteRepliesIfIdle)

    // The output loop waits for work handed to it; the read loop (and the final drain) for budget.
    private readonly AsyncSignal _repliesReady = new();
    private readonly AsyncSignal _capacityFreed = new();

    /// <summary>Takes a request slot and <paramref name="bytes"/> of budget, or says to wait for a reply to free some.</summary>
    private bool TryAdmit(in NbdRequest request, long bytes, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out NbdOperation? operation)
    {
        lock (_sync)
        {
            // A request larger than the whole byte budget is admitted alone rather than never.
            if (_inFlightRequests >= _options.MaxInFlightRequests
                || (_inFlightBytes != 0 && _inFlightBytes + bytes > _options.MaxInFlightBytes))
            {
                operation = null;
                return false;
            }

            _inFlightRequests++;
            _inFlightBytes += bytes;
            _operationPool.TryPop(out operation);
        }

        operation ??= new NbdOperation(this);
        operation.Initialize(request, bytes);
        return true;
    }

    /// <summary>Returns an operation's buffer and budget; called once per operation, after its reply is written or abandoned.</summary>
    private void ReleaseOperation(NbdOperation operation)
    {
        if (operation.Buffer is { } buffer)
        {
            operation.Buffer = null;
            BufferPool.Return(buffer);
        }

        long bytes = operation.ChargedBytes;
        operation.Reset();
        lock (_sync)
        {
            _inFlightRequests--;
            _inFlightBytes -= bytes;
            _operationPool.Push(operation);
        }

        _capacityFreed.Set();
    }

    /// <summary>Hands a finished operation to the output loop.</summary>
    private void Complete(NbdOperation operation, bool onReadLoop)
    {
        lock (_sync)
        {
            _completed.Enqueue(operation);
        }

        // The read loop writes once per batch (so its replies share a flush); a device
        // completion writes its reply at once unless someone is writing already.
        if (onReadLoop)
        {
            _replySignalPending = true;
        }
        else
        {
            WriteRepliesIfIdle();
        }
    }

    private async ValueTask DrainAsync()
    {
        while (true)
        {
            lock (_sync)
            {
                if (_inFlightRequests == 0)
                {
                    return;
                }
            }

            await _capacityFreed.WaitAsync();
        }
    }
}
