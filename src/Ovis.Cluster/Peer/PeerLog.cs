using System.Net;
using Microsoft.Extensions.Logging;

namespace Ovis.Cluster.Peer;

internal static partial class PeerLog
{
    [LoggerMessage(EventId = 100, Level = LogLevel.Debug, Message = "Peer connection {Connection} opened")]
    public static partial void ConnectionOpened(ILogger logger, long connection);

    [LoggerMessage(EventId = 101, Level = LogLevel.Debug, Message = "Peer connection {Connection} closed")]
    public static partial void ConnectionClosed(ILogger logger, long connection);

    [LoggerMessage(EventId = 102, Level = LogLevel.Warning, Message = "Peer connection {Connection}: {Problem}; closing it")]
    public static partial void ProtocolError(ILogger logger, long connection, string problem);

    [LoggerMessage(EventId = 103, Level = LogLevel.Debug, Message = "Peer connection {Connection}: transport closed")]
    public static partial void TransportClosed(ILogger logger, long connection, Exception? exception);

    [LoggerMessage(EventId = 104, Level = LogLevel.Error, Message = "Peer connection {Connection}: the store threw; answering IO_ERROR")]
    public static partial void StoreFault(ILogger logger, long connection, Exception exception);

    [LoggerMessage(EventId = 105, Level = LogLevel.Warning, Message = "Peer connection {Connection}: catching up to epoch {Epoch} failed")]
    public static partial void CatchUpFailed(ILogger logger, long connection, long epoch, Exception exception);

    [LoggerMessage(EventId = 106, Level = LogLevel.Debug, Message = "Peer connection {Connection}: the other end stopped mid-request")]
    public static partial void SenderVanished(ILogger logger, long connection);

    [LoggerMessage(EventId = 110, Level = LogLevel.Debug, Message = "Connected to peer {Peer}")]
    public static partial void Connected(ILogger logger, EndPoint peer);

    [LoggerMessage(EventId = 111, Level = LogLevel.Information, Message = "Cannot connect to peer {Peer}")]
    public static partial void ConnectFailed(ILogger logger, EndPoint peer, Exception exception);

    [LoggerMessage(EventId = 114, Level = LogLevel.Information, Message = "Cannot connect to peer {Peer}: {Count} more attempts failed ({Reason})")]
    public static partial void ConnectsFailed(ILogger logger, EndPoint peer, long count, string reason);

    [LoggerMessage(EventId = 112, Level = LogLevel.Information, Message = "Connection to peer {Peer} lost; {Pending} requests failed")]
    public static partial void ConnectionLost(ILogger logger, EndPoint peer, int pending, Exception? exception);

    [LoggerMessage(EventId = 113, Level = LogLevel.Warning, Message = "Peer {Peer} did not answer within {Timeout}; dropping the connection")]
    public static partial void RequestTimedOut(ILogger logger, EndPoint peer, TimeSpan timeout);

    [LoggerMessage(EventId = 118, Level = LogLevel.Warning, Message = "Peer {Peer} is silent (a connect or a reply timed out): requests to it fail at once while a connect probes it every {Interval}")]
    public static partial void Silent(ILogger logger, EndPoint peer, TimeSpan interval);

    [LoggerMessage(EventId = 114, Level = LogLevel.Warning, Message = "Peer {Peer} broke the protocol: {Problem}; dropping the connection")]
    public static partial void ReplyProtocolError(ILogger logger, EndPoint peer, string problem);

    [LoggerMessage(EventId = 115, Level = LogLevel.Warning, Message = "Refused {Count} peer connection(s): {Max} are open, the limit; counted, at most one such line a second")]
    public static partial void ConnectionsRefused(ILogger logger, long count, int max);
}
