using Ovis.Cluster.Etcd;
using Ovis.Volumes;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// The volumes' dirty bitmaps in the catalog, one key each:
/// <code>
/// bitmap/&lt;volume&gt;/&lt;bitmap&gt;   the bitmap's saved form (DirtyBitmap)
/// bitmap-released/&lt;volume&gt;      present while the lock's last holder let go with every bitmap saved
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

    private string ReleasedKey(string volume) => catalog.Keys.Root + "bitmap-released/" + volume;

    public async Task<(IReadOnlyDictionary<string, byte[]> Bitmaps, bool Released)> LoadAsync(string volume, CancellationToken cancellationToken)
    {
        string prefix = Prefix(volume);
        var result = await catalog.Client.TxnAsync([], [new EtcdOp.Range(prefix, Prefix: true), new EtcdOp.Range(ReleasedKey(volume))],
            cancellationToken: cancellationToken).ConfigureAwait(false);
        return (result.Reads[0].ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value, StringComparer.Ordinal), result.Reads[1].Count > 0);
    }

    public Task SetReleasedAsync(string volume, bool released, CancellationToken cancellationToken)
        => GuardedAsync(volume, released ? new EtcdOp.Put(ReleasedKey(volume), [1]) : new EtcdOp.Delete(ReleasedKey(volume)), cancellationToken);

    public Task SaveAsync(string volume, string bitmap, byte[] content, CancellationToken cancellationToken)
        => GuardedAsync(volume, new EtcdOp.Put(Prefix(volume) + bitmap, content), cancellationToken);

    public Task DeleteAsync(string volume, string? bitmap, CancellationToken cancellationToken)
        => bitmap is null
            ? GuardedAsync(volume, [new EtcdOp.Delete(Prefix(volume), Prefix: true), new EtcdOp.Delete(ReleasedKey(volume))], cancellationToken)
            : GuardedAsync(volume, new EtcdOp.Delete(Prefix(volume) + bitmap), cancellationToken);

    private Task GuardedAsync(string volume, EtcdOp op, CancellationToken cancellationToken) => GuardedAsync(volume, [op], cancellationToken);

    private async Task GuardedAsync(string volume, EtcdOp[] ops, CancellationToken cancellationToken)
    {
        long generation = volumeHolder(volume)
            ?? throw new CatalogException($"volume {volume}: this node holds no lock on it; its dirty bitmaps are not saved");
        var result = await catalog.Client.TxnAsync([EtcdCompare.CreatedAt(catalog.Keys.Lock(volume), generation)], ops,
            cancellationToken: cancellationToken).ConfigureAwait(false);
        if (!result.Succeeded)
            throw new CatalogException($"volume {volume}: its dirty bitmaps were not saved: another node holds the volume's lock now (this node was fenced)");
    }
}
