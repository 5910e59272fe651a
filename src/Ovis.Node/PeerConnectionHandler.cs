using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;

namespace Ovis.Node;

/// <summary>Runs the peer protocol on each connection Kestrel accepts on the peer listener.</summary>
internal sealed class PeerConnectionHandler(ClusterRuntime runtime) : ConnectionHandler
{
    public override async Task OnConnectedAsync(ConnectionContext connection)
    {
        // As for NBD: a stopping node lets the requests in flight finish before the socket goes.
        var closeRequested = connection.Features.Get<IConnectionLifetimeNotificationFeature>()?.ConnectionClosedRequested
            ?? CancellationToken.None;
        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(closeRequested, connection.ConnectionClosed);
        try
        {
            await runtime.PeerServer.RunAsync(connection.Transport, stopping.Token);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
        catch (ConnectionResetException)
        {
        }
    }
}
