namespace Ovis.Cluster.Etcd;

/// <summary>
/// etcd refused a request (its gRPC status detail and code), or no endpoint could be reached.
/// </summary>
public class EtcdException : Exception
{
    public EtcdException() { }

    public EtcdException(string message) : base(message) { }

    public EtcdException(string message, Exception innerException) : base(message, innerException) { }

    public EtcdException(string message, int grpcCode, Exception? innerException) : base(message, innerException)
    {
        GrpcCode = grpcCode;
    }

    /// <summary>The gRPC status code etcd answered with (5 = NotFound, 3 = InvalidArgument…); 0 when none.</summary>
    public int GrpcCode { get; }
}

/// <summary>A watch started below etcd's compaction point: the caller must re-read and watch from now.</summary>
public sealed class EtcdWatchCompactedException : EtcdException
{
    public EtcdWatchCompactedException() { }

    public EtcdWatchCompactedException(string message) : base(message) { }

    public EtcdWatchCompactedException(string message, Exception innerException) : base(message, innerException) { }

    public EtcdWatchCompactedException(long compactRevision)
        : base($"etcd compacted its history up to revision {compactRevision}: re-read and watch again")
    {
        CompactRevision = compactRevision;
    }

    /// <summary>The oldest revision etcd still holds.</summary>
    public long CompactRevision { get; }
}
