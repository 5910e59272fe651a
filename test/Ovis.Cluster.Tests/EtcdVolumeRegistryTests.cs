using Ovis.Cluster.Catalog;
using Ovis.Cluster.Etcd;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Volumes;
using Ovis.Volumes.Tests;

namespace Ovis.Cluster.Tests;

/// <summary>The registry conformance suite on etcd; each test under a cluster name of its own.</summary>
[Collection(EtcdCollection.Name)]
public sealed class EtcdVolumeRegistryTests(EtcdCluster etcd) : RegistryConformanceTests
{
    private readonly string _cluster = EtcdCluster.NewPrefix("registry");
    private readonly List<EtcdClient> _clients = [];
    private EtcdVolumeRegistry? _registry;

    protected override IVolumeRegistry Registry => _registry ??= new EtcdVolumeRegistry(etcd.Client, _cluster);

    protected override bool IsShared => true;

    /// <summary>Another node's: its own client.</summary>
    protected override Task<IVolumeRegistry> OpenAnotherAsync()
    {
        var client = new EtcdClient([etcd.ClientUrl]);
        _clients.Add(client);
        return Task.FromResult<IVolumeRegistry>(new EtcdVolumeRegistry(client, _cluster));
    }

    public override Task DisposeAsync()
    {
        foreach (EtcdClient client in _clients)
        {
            client.Dispose();
        }
        return Task.CompletedTask;
    }

    [Fact]
    public async Task The_registry_is_one_key_under_the_cluster()
    {
        VersionedCatalog empty = await Registry.LoadAsync().WaitAsync(T);
        Assert.Equal(0, empty.Version);
        var state = CatalogState.Empty.With([new VolumeRecord(1, "vm", 1L << 20, 4L << 20, DateTimeOffset.UnixEpoch)]);
        RegistrySaveResult saved = await Registry.TrySaveAsync(state, empty.Version).WaitAsync(T);
        Assert.True(saved.Saved);

        EtcdKeyValue? kv = await etcd.Client.GetAsync($"/ovis/{_cluster}/volumes").WaitAsync(T);
        Assert.NotNull(kv);
        Assert.Equal(saved.Current.Version, kv.ModRevision);
        Assert.Equal("vm", Assert.Single(CatalogState.FromUtf8Json(kv.Value).Volumes).Name);
    }

    [Fact]
    public void A_bad_cluster_name_is_refused()
        => Assert.Throws<ArgumentException>(() => new EtcdVolumeRegistry(etcd.Client, "a/b"));
}
