using Microsoft.Extensions.Logging;

namespace Ovis.Nbd;

internal static partial class NbdLog
{
    [LoggerMessage(EventId = 1, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} opened")]
    public static partial void ConnectionOpened(ILogger logger, long connectionId);

    [LoggerMessage(EventId = 2, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} closed")]
    public static partial void ConnectionClosed(ILogger logger, long connectionId);

    [LoggerMessage(EventId = 3, Level = LogLevel.Information, Message = "NBD connection {ConnectionId} serving export '{ExportName}' ({Size} bytes, transmission flags 0x{Flags:x4})")]
    public static partial void ExportSelected(ILogger logger, long connectionId, string exportName, long size, ushort flags);

    [LoggerMessage(EventId = 4, Level = LogLevel.Information, Message = "NBD connection {ConnectionId} asked for unknown export '{ExportName}'")]
    public static partial void ExportNotFound(ILogger logger, long connectionId, string exportName);

    [LoggerMessage(EventId = 5, Level = LogLevel.Warning, Message = "NBD connection {ConnectionId} protocol error: {Detail}; disconnecting")]
    public static partial void ProtocolError(ILogger logger, long connectionId, string detail);

    [LoggerMessage(EventId = 6, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} client went away in the middle of a request")]
    public static partial void ClientVanished(ILogger logger, long connectionId);

    [LoggerMessage(EventId = 7, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} transport closed")]
    public static partial void TransportClosed(ILogger logger, long connectionId, Exception exception);

    [LoggerMessage(EventId = 8, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} client stopped taking replies")]
    public static partial void OutputClosed(ILogger logger, long connectionId, Exception? exception);

    [LoggerMessage(EventId = 10, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} stopped on request")]
    public static partial void Stopped(ILogger logger, long connectionId);

    [LoggerMessage(EventId = 9, Level = LogLevel.Error, Message = "NBD connection {ConnectionId} block device threw; replying EIO")]
    public static partial void DeviceFault(ILogger logger, long connectionId, Exception exception);

    [LoggerMessage(EventId = 11, Level = LogLevel.Information, Message = "NBD connection {ConnectionId} refused export '{ExportName}': {Reason}")]
    public static partial void ExportUnavailable(ILogger logger, long connectionId, string exportName, string reason);

    [LoggerMessage(EventId = 12, Level = LogLevel.Error, Message = "NBD connection {ConnectionId} could not open export '{ExportName}': the export provider threw; refusing the export")]
    public static partial void ExportOpenFault(ILogger logger, long connectionId, string exportName, Exception exception);

    [LoggerMessage(EventId = 13, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} did not finish the handshake within {Seconds} s; closing")]
    public static partial void HandshakeTimedOut(ILogger logger, long connectionId, double seconds);

    [LoggerMessage(EventId = 14, Level = LogLevel.Warning, Message = "Closed {Count} NBD connection(s) that did not finish the handshake within {Seconds} s (counted; at most one such line a second)")]
    public static partial void HandshakeTimeouts(ILogger logger, long count, double seconds);
}
