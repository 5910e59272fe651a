namespace Ovis.Nbd;

public sealed partial class NbdConnection : IRequestProtocol<NbdOperation>
{
    /// <summary>Takes a request slot and <paramref name="bytes"/> of budget, or says to wait for a reply to free some.</summary>
    private bool TryAdmit(in NbdRequest request, long bytes, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out NbdOperation? operation)
    {
        if (!_loops.TryAdmit(bytes, out operation))
        {
            return false;
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
        _loops.Release(operation, bytes);
    }

    /// <summary>Hands a finished operation's reply to the writer.</summary>
    private void Complete(NbdOperation operation, bool onReadLoop) => _loops.Complete(operation, onReadLoop);

    void IRequestProtocol<NbdOperation>.ReleaseOperation(NbdOperation operation) => ReleaseOperation(operation);

    void IRequestProtocol<NbdOperation>.OutputClosed(Exception? exception) => NbdLog.OutputClosed(_logger, _connectionId, exception);
}
