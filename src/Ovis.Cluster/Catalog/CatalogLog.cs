using Microsoft.Extensions.Logging;

namespace Ovis.Cluster.Catalog;

internal static partial class CatalogLog
{
    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "Node {Node} joined cluster {Cluster} at epoch {Epoch}")]
    public static partial void Joined(ILogger logger, string node, string cluster, long epoch);

    [LoggerMessage(EventId = 2, Level = LogLevel.Warning, Message = "Node {Node} could not renew its lease; trying again every third of its TTL (its volumes' requests wait meanwhile)")]
    public static partial void KeepAliveFailed(ILogger logger, string node, Exception exception);

    [LoggerMessage(EventId = 3, Level = LogLevel.Error, Message = "Node {Node} lost its lease: it is no longer a member of cluster {Cluster}")]
    public static partial void LeaseLost(ILogger logger, string node, string cluster);

    [LoggerMessage(EventId = 6, Level = LogLevel.Information, Message = "Node {Node} renewed its lease again")]
    public static partial void KeepAliveBack(ILogger logger, string node);

    [LoggerMessage(EventId = 4, Level = LogLevel.Information, Message = "Cluster {Cluster}: epoch {Epoch} for members [{Members}]")]
    public static partial void EpochBumped(ILogger logger, string cluster, long epoch, string members);

    [LoggerMessage(EventId = 5, Level = LogLevel.Warning, Message = "Node {Node} stays down in cluster {Cluster}, not taken out: {Reason}")]
    public static partial void TakeOutRefused(ILogger logger, string node, string cluster, string reason);

    [LoggerMessage(EventId = 7, Level = LogLevel.Information, Message = "Cluster {Cluster}: node {Node} {Change} at epoch {Epoch}")]
    public static partial void DrainChanged(ILogger logger, string cluster, string node, string change, long epoch);
}
