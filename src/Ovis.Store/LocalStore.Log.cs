using Microsoft.Extensions.Logging;

namespace Ovis.Store;

public sealed partial class LocalStore
{
    [LoggerMessage(Level = LogLevel.Error, Message = "Checksum mismatch in object {Object} block {Block}: reporting EIO")]
    private static partial void LogChecksumMismatch(ILogger logger, string @object, int block);

    [LoggerMessage(Level = LogLevel.Error, Message = "Object {Object} has data blocks but no file: reporting EIO")]
    private static partial void LogMissingObjectFile(ILogger logger, string @object);

    [LoggerMessage(Level = LogLevel.Information, Message = "Store recovered: {Objects} objects, {Batches} journal batches replayed")]
    private static partial void LogRecovered(ILogger logger, int objects, int batches);

    [LoggerMessage(Level = LogLevel.Error, Message = "Checkpoint failed; will retry")]
    private static partial void LogCheckpointFailed(ILogger logger, Exception e);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cannot read the file system's free space")]
    private static partial void LogSpaceProbeFailed(ILogger logger, Exception e);

    [LoggerMessage(Level = LogLevel.Warning, Message = "No room to save the {Count} changes replayed for the dirty bitmaps: their journal records are kept until a checkpoint has room")]
    private static partial void LogReplayedNotSaved(ILogger logger, int count, Exception exception);
}
