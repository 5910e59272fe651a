using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

internal sealed partial class PeerServerConnection : IRequestProtocol<PeerOperation>
{
    /// <summary>Takes a request slot and <paramref name="bytes"/> of budget, or says to wait for a reply to free some.</summary>
    private bool TryAdmit(in PeerRequestHeader request, long bytes, [NotNullWhen(true)] out PeerOperation? operation)
    {
        if (!_loops.TryAdmit(bytes, out operation))
        {
            return false;
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
        _loops.Release(operation, bytes);
    }

    /// <summary>Hands a finished operation's reply to the writer.</summary>
    private void Complete(PeerOperation operation, bool onReadLoop)
    {
        // The change is applied (or failed): a raise of its layer's fence need not wait for it any more.
        if (operation.FenceHeld)
        {
            operation.FenceHeld = false;
            _fences.Exit(ObjectId.FromPacked(operation.Request.ObjectId).Volume, (long)operation.Request.Generation);
        }

        _loops.Complete(operation, onReadLoop);
    }

    void IRequestProtocol<PeerOperation>.ReleaseOperation(PeerOperation operation) => ReleaseOperation(operation);

    void IRequestProtocol<PeerOperation>.OutputClosed(Exception? exception) => PeerLog.TransportClosed(_logger, _connectionId, exception);
}
