using Microsoft.Extensions.Logging;

namespace Ovis.Store;

public sealed partial class CacheLog
{
    [LoggerMessage(Level = LogLevel.Information, Message = "Created cache log {Path} with room for {Capacity} bytes of records")]
    private static partial void LogCreated(ILogger logger, string path, long capacity);

    [LoggerMessage(Level = LogLevel.Information, Message = "Made cache log {Path} again, with room for {Capacity} bytes: it held no record")]
    private static partial void LogRecreated(ILogger logger, string path, long capacity);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cache log {Path} keeps its capacity of {Capacity} bytes, not {Requested}: it holds {Records} records")]
    private static partial void LogCapacityKept(ILogger logger, string path, long capacity, long requested, int records);

    [LoggerMessage(Level = LogLevel.Information, Message = "Opened cache log {Path}: {Records} records ({LiveBytes} bytes) recovered, capacity {Capacity} bytes")]
    private static partial void LogOpened(ILogger logger, string path, int records, long liveBytes, long capacity);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cache log {Path}: header slot {Slot} is unreadable")]
    private static partial void LogHeaderUnreadable(ILogger logger, string path, int slot);

    [LoggerMessage(Level = LogLevel.Critical, Message = "Cache log {Path} failed; every append fails until it is opened again")]
    private static partial void LogFailed(ILogger logger, string path, Exception e);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cache log {Path}: the checkpoint at close failed; the next open returns released records again")]
    private static partial void LogCloseCheckpointFailed(ILogger logger, string path, Exception e);

    [LoggerMessage(Level = LogLevel.Error, Message = "Cache log {Path}: a SpaceWanted handler threw")]
    private static partial void LogSpaceWantedFault(ILogger logger, string path, Exception e);
}
