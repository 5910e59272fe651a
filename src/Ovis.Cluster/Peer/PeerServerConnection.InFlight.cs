using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

internal sealed partial class PeerServerConnection
{
    private readonly Lock _sync = new();

    // Guarded by _sync: the in-flight budget, finished operations waiting for the output loop,
    // and idle operation objects.
    private readonly Queue<PeerOperation> _completed;
    private readonly Stack<PeerOperation> _operationPool;
    private int _inFlightRequests;
    private long _inFlightBytes;

    // The output loop waits for replies; the read loop (and the final drain) for budget.
    private readonly AsyncSignal _repliesReady = new();
    private readonly AsyncSignal _capacityFreed = new();

    /// <summary>Takes a request slot and <paramref name="bytes"/> of budget, or says to wait for a reply to free some.</summary>
    private bool TryAdmit(in PeerRequestHeader request, long bytes, [NotNullWhen(true)] out PeerOperation? operation)
    {
        PeerServerOptions options = _server.Options;
        lock (_sync)
        {
            // A request larger than the whole byte budget is admitted alone rather than never.
            if (_inFlightRequests >= options.MaxInFlightRequests
                || (_inFlightBytes != 0 && _inFlightBytes + bytes > options.MaxInFlightBytes))
            {
                operation = null;
                return false;
            }

            _inFlightRequests++;
            _inFlightBytes += bytes;
            _operationPool.TryPop(out operation);
        }

        operation ??= new PeerOperation(this);
        operation.Initialize(request, bytes);
        return true;
    }

    /// <summary>Returns an operation's buffers and budget; once per operation, after its reply is written or abandoned.</summary>
    private void ReleaseOperation(PeerOperation operation)
    {
        if (operation.Buffer is { } buffer)
        {
            _bufferPool.Return(buffer);
        }

        if (operation.States is { } states)
        {
            ArrayPool<BlockState>.Shared.Return(states);
        }

        if (operation.Sums is { } sums)
        {
            ArrayPool<BlockSum>.Shared.Return(sums);
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
    private void Complete(PeerOperation operation, bool onReadLoop)
    {
        // The change is applied (or failed): a raise of its layer's fence need not wait for it any more.
        if (operation.FenceHeld)
        {
            operation.FenceHeld = false;
            _fences.Exit(ObjectId.FromPacked(operation.Request.ObjectId).Volume, (long)operation.Request.Generation);
        }

        lock (_sync)
        {
            _completed.Enqueue(operation);
        }

        // The read loop wakes the output loop once per batch of input; store completions at once.
        if (onReadLoop)
        {
            _replySignalPending = true;
        }
        else
        {
            _repliesReady.Set();
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
