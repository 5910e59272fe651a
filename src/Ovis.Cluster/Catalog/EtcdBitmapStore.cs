using Ovis.Cluster.Etcd;
using Ovis.Volumes;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// The volumes' dirty bitmaps in the catalog, one key each:
/// <code>
/// bitmap/&lt;volume&gt;/&lt;bitmap&gt;   the bitmap's saved form (DirtyBitmap)
/// </code>
/// Written like recovery's records (docs/fencing.md): in a transaction on the condition that the
/// writer's lock on the volume is still the one in etcd, so a gateway that lost the lock cannot
/// overwrite what its successor saved — the successor's bits include what it derived from the
/// dirty-region log, which the old gateway's never do.
/// </summary>
public sealed class EtcdBitmapStore(EtcdCatalog catalog, Func<string, long?> volumeHolder) : IBitmapStore
{
    // etcd takes requests of 1.5 MiB by default, and a value travels base64-encoded.
    public long MaxBytes => 1L << 20;

    private string Prefix(string volume) => catalog.Keys.Root + "bitmap/" + volume + "/";

    public async Task<IReadOnlyDictionary<string, byte[]>> LoadAsync(string volume, CancellationToken cancellationToken)
    {
        string prefix = Prefix(volume);
        EtcdRange range = await catalog.Client.RangePrefixAsync(prefix, cancellationToken).ConfigureAwait(false);
        return range.Kvs.ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value, StringComparer.Ordinal);
    }

    public Task SaveAsync(string volume, string bitmap, byte[] content, CancellationToken cancellationToken)
        => GuardedAsync(volume, new EtcdOp.Put(Prefix(volume) + bitmap, content), cancellationToken);

    public Task DeleteAsync(string volume, string? bitmap, CancellationToken cancellationToken)
        => GuardedAsync(volume, bitmap is null ? new EtcdOp.Delete(Prefix(volume), Prefix: true) : new EtcdOp.Delete(Prefix(volume) + bitmap), cancellationToken);

    private async Task GuardedAsync(string volume, EtcdOp op, CancellationToken cancellationToken)
    {
        long generation = volumeHolder(volume)
            ?? throw new CatalogException($"volume {volume}: this node holds no lock on it; its dirty bitmaps are not saved");
        var result = await catalog.Client.TxnAsync([EtcdCompare.CreatedAt(catalog.Keys.Lock(volume), generation)], [op],
            cancellationToken: cancellationToken).ConfigureAwait(false);
        if (!result.Succeeded)
            throw new CatalogException($"volume {volume}: its dirty bitmaps were not saved: another node holds the volume's lock now (this node was fenced)");
    }
}
