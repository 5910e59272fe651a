using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Logging;
using Ovis.Nbd;

namespace Ovis.Node;

/// <summary>
/// Runs the NBD protocol on each connection Kestrel accepts on an NBD listener (TCP or Unix
/// socket). Kestrel owns the socket, its pipes and its shutdown; this class only bridges them.
/// </summary>
internal sealed partial class NbdConnectionHandler(
    IExportProvider exports,
    NbdServerOptions options,
    NbdConnectionLimit limit,
    ILoggerFactory loggerFactory) : ConnectionHandler
{
    private readonly ILogger _logger = loggerFactory.CreateLogger<NbdConnectionHandler>();

    // One logger for every connection; Kestrel already puts the connection id in the scope.
    private readonly ILogger _connectionLogger = loggerFactory.CreateLogger<NbdConnection>();

    public override async Task OnConnectedAsync(ConnectionContext connection)
    {
        // Checked before anything is allocated for the connection. Returning closes it (FIN, no
        // greeting): NBD has no way to say "busy", and a client retries or reports the EOF.
        if (!limit.Connections.TryEnter(_logger))
        {
            return;
        }

        try
        {
            await ServeAsync(connection);
        }
        finally
        {
            limit.Connections.Exit();
        }
    }

    private async Task ServeAsync(ConnectionContext connection)
    {
        // When the node stops, Kestrel first stops accepting, then asks each connection to
        // close (ConnectionClosedRequested) and only cuts the ones still open after the
        // shutdown timeout. Passing that request on lets NbdConnection finish the requests in
        // flight and end cleanly; ConnectionClosed fires when the client has gone.
        var closeRequested = connection.Features.Get<IConnectionLifetimeNotificationFeature>()?.ConnectionClosedRequested
            ?? CancellationToken.None;
        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(closeRequested, connection.ConnectionClosed);

        LogConnected(_logger, connection.ConnectionId, connection.RemoteEndPoint?.ToString() ?? "unix socket");
        try
        {
            await new NbdConnection(connection.Transport, exports, options, _connectionLogger).RunAsync(stopping.Token);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            // Stopping or the client left: an ordinary end, not a failure.
        }
        catch (ConnectionResetException)
        {
        }
        catch (Exception ex)
        {
            // Kestrel would log this too, with a less useful message; handle it here once.
            LogFailed(_logger, connection.ConnectionId, ex);
        }
        finally
        {
            LogDisconnected(_logger, connection.ConnectionId);
        }
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} from {Remote}")]
    private static partial void LogConnected(ILogger logger, string connectionId, string remote);

    [LoggerMessage(EventId = 2, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} closed")]
    private static partial void LogDisconnected(ILogger logger, string connectionId);

    [LoggerMessage(EventId = 3, Level = LogLevel.Error, Message = "NBD connection {ConnectionId} failed")]
    private static partial void LogFailed(ILogger logger, string connectionId, Exception exception);

    [LoggerMessage(EventId = 4, Level = LogLevel.Warning, Message = "Refused {Count} NBD connection(s): {Max} are open, the limit (--max-connections); counted, at most one such line a second")]
    internal static partial void LogRefused(ILogger logger, long count, int max);
}

/// <summary>The node's cap on NBD connections, shared by all its NBD listeners (TCP and Unix socket).</summary>
internal sealed class NbdConnectionLimit
{
    public NbdConnectionLimit(int max)
        => Connections = new ConnectionLimit<ILogger>(max, (logger, count) => NbdConnectionHandler.LogRefused(logger, count, max));

    public ConnectionLimit<ILogger> Connections { get; }
}
