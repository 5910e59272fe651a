using System.Buffers;
using System.Runtime.CompilerServices;
using Ovis.Cluster.Fencing;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

internal sealed partial class PeerServerConnection
{
    /// <summary>Starts a valid request whose payload has arrived; on the read loop.</summary>
    private void Start(PeerOperation operation)
    {
        PeerRequestHeader request = operation.Request;
        if (IsEpochChecked(request.Opcode))
        {
            // Checked again now that the payload is in: the epoch may have moved meanwhile.
            long current = _epochs.Current;
            var epoch = (long)request.Epoch;
            if (epoch < current)
            {
                operation.Status = PeerStatus.StaleEpoch;
                Complete(operation, onReadLoop: true);
                return;
            }

            if (epoch > current)
            {
                // Rare: off the read loop, so requests behind this one are not held up.
                _ = CatchUpThenIssueAsync(operation);
                return;
            }
        }

        Admit(operation, onReadLoop: true);
    }

    /// <summary>Passes a request whose epoch is current through the node's fences (changes and
    /// FENCE only; the rest go straight to the store).</summary>
    private void Admit(PeerOperation operation, bool onReadLoop)
    {
        PeerRequestHeader request = operation.Request;
        if (request.Opcode == PeerOpcode.Fence)
        {
            _ = RaiseFenceAsync(operation, thenIssue: false);
            return;
        }

        if (!request.IsChange)
        {
            Issue(operation, onReadLoop);
            return;
        }

        switch (_fences.TryEnter(ObjectId.FromPacked(request.ObjectId).Volume, (long)request.Generation))
        {
            case FenceVerdict.Admitted:
                operation.FenceHeld = true;
                Issue(operation, onReadLoop);
                break;
            case FenceVerdict.Fenced:
                operation.Status = PeerStatus.Fenced;
                Complete(operation, onReadLoop);
                break;
            default:
                // From a holder newer than any this node has seen (it missed the FENCE): raise
                // first, off the read loop, then serve it.
                _ = RaiseFenceAsync(operation, thenIssue: true);
                break;
        }
    }

    /// <summary>Raises the layer's fence to the request's generation (a FENCE, or a change from a
    /// newer holder, which is then admitted and served). Never throws.</summary>
    private async Task RaiseFenceAsync(PeerOperation operation, bool thenIssue)
    {
        PeerRequestHeader request = operation.Request;
        uint layer = ObjectId.FromPacked(request.ObjectId).Volume;
        var generation = (long)request.Generation;
        try
        {
            if (!await _fences.RaiseAsync(layer, generation, _stopping))
            {
                operation.Status = PeerStatus.Fenced;
            }
            else if (thenIssue)
            {
                // Another raise may have come in between: check again.
                Admit(operation, onReadLoop: false);
                return;
            }
        }
        catch (Exception ex)
        {
            if (ex is not OperationCanceledException)
            {
                PeerLog.StoreFault(_logger, _connectionId, ex);
            }

            operation.Status = PeerStatus.IoError;
        }

        Complete(operation, onReadLoop: false);
    }

    /// <summary>
    /// The sender has seen a newer epoch than ours: our membership view may lag the catalog. Catch
    /// up, then serve the request if the epochs now agree and refuse it otherwise. Never throws.
    /// </summary>
    private async Task CatchUpThenIssueAsync(PeerOperation operation)
    {
        var seen = (long)operation.Request.Epoch;
        long now;
        try
        {
            now = await _epochs.CatchUpAsync(seen, _stopping);
        }
        catch (Exception ex)
        {
            if (ex is not OperationCanceledException)
            {
                PeerLog.CatchUpFailed(_logger, _connectionId, seen, ex);
            }

            now = _epochs.Current;
        }

        if (now != seen)
        {
            operation.Status = PeerStatus.StaleEpoch;
            Complete(operation, onReadLoop: false);
            return;
        }

        Admit(operation, onReadLoop: false);
    }

    /// <summary>
    /// Calls the store. A call that completes synchronously (most writes: a copy into the journal's
    /// open batch) is finished here without a thread hop; the others are awaited through the
    /// operation's cached continuation.
    /// </summary>
    private void Issue(PeerOperation operation, bool onReadLoop)
    {
        StoreStatus status;
        try
        {
            ValueTask<StoreStatus> pending = CallStore(operation);
            if (!pending.IsCompleted)
            {
                operation.AwaitStore(pending);
                return;
            }

            status = pending.Result;
        }
        catch (Exception ex)
        {
            // Requests were checked against the store's limits: an exception is a store bug or
            // fault, answered as IO_ERROR rather than taking the connection down.
            PeerLog.StoreFault(_logger, _connectionId, ex);
            status = StoreStatus.IoError;
        }

        operation.Status = ToPeerStatus(status);
        Complete(operation, onReadLoop);
    }

    internal void OnStoreCompleted(PeerOperation operation, ValueTaskAwaiter<StoreStatus> awaiter)
    {
        StoreStatus status;
        try
        {
            status = awaiter.GetResult();
        }
        catch (Exception ex)
        {
            PeerLog.StoreFault(_logger, _connectionId, ex);
            status = StoreStatus.IoError;
        }

        operation.Status = ToPeerStatus(status);
        Complete(operation, onReadLoop: false);
    }

    private ValueTask<StoreStatus> CallStore(PeerOperation operation)
    {
        PeerRequestHeader request = operation.Request;
        var id = ObjectId.FromPacked(request.ObjectId);
        var offset = (long)request.Offset;
        var length = (int)request.Length;
        bool fua = (request.Flags & PeerRequestFlags.Fua) != 0;
        switch (request.Opcode)
        {
            case PeerOpcode.Read:
                if (length == 0)
                {
                    return new(StoreStatus.Ok);
                }

                operation.Buffer = _bufferPool.Rent(length);
                return _store.ReadAsync(id, offset, operation.Buffer.AsMemory(0, length));

            case PeerOpcode.Write:
                return _store.WriteAsync(id, offset, operation.Buffer.AsMemory(0, length), fua);

            case PeerOpcode.Zero:
                return _store.ZeroAsync(id, offset, request.Length, (request.Flags & PeerRequestFlags.KeepAllocated) != 0, fua);

            case PeerOpcode.FillHoles:
                bool zeroes = (request.Flags & PeerRequestFlags.Zeroes) != 0;
                return _store.FillHolesAsync(id, offset, zeroes ? PeerServer.Zeroes(length) : operation.Buffer.AsMemory(0, length), zeroes,
                    fromReserve: (request.Flags & PeerRequestFlags.FromReserve) != 0);

            case PeerOpcode.Delete:
                return _store.DeleteAsync(id);

            case PeerOpcode.Flush:
                return _store.FlushAsync();

            case PeerOpcode.Allocation:
                if (length == 0)
                {
                    return new(StoreStatus.Ok);
                }

                operation.States = ArrayPool<BlockState>.Shared.Rent(length);
                return _server.Store.GetAllocationAsync(id, offset, operation.States.AsMemory(0, length));

            case PeerOpcode.BlockSums:
                if (length == 0)
                {
                    return new(StoreStatus.Ok);
                }

                // Validate admits BLOCKSUMS only when the store keeps checksums.
                operation.Sums = ArrayPool<BlockSum>.Shared.Rent(length);
                return _sums!.GetBlockSumsAsync(id, offset, operation.Sums.AsMemory(0, length), (request.Flags & PeerRequestFlags.Verify) != 0);

            case PeerOpcode.Stats:
                operation.Stats = _server.CollectStats();
                return new(StoreStatus.Ok);

            case PeerOpcode.Ping:
                return new(StoreStatus.Ok);

            default:
                // Validate admits only the opcodes above.
                throw new InvalidOperationException($"opcode {request.Opcode} passed validation");
        }
    }

    // StoreStatus values are the first PeerStatus values (PeerProtocol.cs); anything else a
    // store might invent is an I/O error as far as the sender is concerned.
    private static PeerStatus ToPeerStatus(StoreStatus status)
        => status is StoreStatus.Ok or StoreStatus.IoError or StoreStatus.NoSpace or StoreStatus.Closed
            ? (PeerStatus)status
            : PeerStatus.IoError;
}
