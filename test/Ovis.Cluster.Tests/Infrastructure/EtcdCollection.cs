namespace Ovis.Cluster.Tests.Infrastructure;

/// <summary>Tests that share one <see cref="EtcdCluster"/>.</summary>
[CollectionDefinition(Name)]
public sealed class EtcdCollection : ICollectionFixture<EtcdCluster>
{
    public const string Name = "etcd";
}
