using System.Text.Json;
using Ovis.Cluster.Recovery;

namespace Ovis.Cluster.Catalog;

/// <summary>Who paused recovery and when: the value of <c>recovery/paused</c>.</summary>
public sealed record RecoveryPause(string By, DateTimeOffset At);

/// <summary>
/// The recovery keys of a cluster's catalog: the operator's switch <c>recovery/paused</c> (present
/// while paused; every node's recovery waits) and each node's figures under
/// <c>recovery/progress/</c>, put on the node's lease so that a node that dies takes its figures
/// with it and sums over the keys count only live nodes.
/// </summary>
public sealed class RecoveryCatalog
{
    private readonly EtcdCatalog _catalog;

    public RecoveryCatalog(EtcdCatalog catalog)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        _catalog = catalog;
    }

    /// <summary>Pauses (on behalf of <paramref name="by"/>) or resumes recovery on every node.</summary>
    public async Task SetPausedAsync(bool paused, string by, CancellationToken cancellationToken = default)
    {
        string key = _catalog.Keys.RecoveryPaused;
        if (!paused)
        {
            await _catalog.Client.DeleteAsync(key, cancellationToken).ConfigureAwait(false);
            return;
        }
        ArgumentException.ThrowIfNullOrEmpty(by);
        byte[] value = JsonSerializer.SerializeToUtf8Bytes(new RecoveryPause(by, DateTimeOffset.UtcNow), CatalogJson.Default.RecoveryPause);
        // Only the first pause is written: the record says who stopped recovery and since when.
        await _catalog.Client.CreateAsync(key, value, cancellationToken: cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Who paused recovery; null while it runs.</summary>
    public async Task<RecoveryPause?> ReadPausedAsync(CancellationToken cancellationToken = default)
    {
        var kv = await _catalog.Client.GetAsync(_catalog.Keys.RecoveryPaused, cancellationToken).ConfigureAwait(false);
        return kv is null ? null : JsonSerializer.Deserialize(kv.Value, CatalogJson.Default.RecoveryPause);
    }

    /// <summary>Replaces the figures of <see cref="RecoveryProgress.Node"/>, attached to that node's lease.</summary>
    public async Task PublishProgressAsync(RecoveryProgress progress, long leaseId, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(progress);
        EtcdCatalog.ValidateName(progress.Node, "node id");
        byte[] value = JsonSerializer.SerializeToUtf8Bytes(progress, CatalogJson.Default.RecoveryProgress);
        await _catalog.Client.PutAsync(_catalog.Keys.Progress(progress.Node), value, leaseId, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The figures of every live node that published some, by node id.</summary>
    public async Task<IReadOnlyList<RecoveryProgress>> ReadProgressAsync(CancellationToken cancellationToken = default)
    {
        var range = await _catalog.Client.RangePrefixAsync(_catalog.Keys.RecoveryProgress, cancellationToken).ConfigureAwait(false);
        return [.. range.Kvs.Select(kv => JsonSerializer.Deserialize(kv.Value, CatalogJson.Default.RecoveryProgress)!)];
    }
}
