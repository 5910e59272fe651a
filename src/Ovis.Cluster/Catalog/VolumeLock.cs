using System.Text.Json;
using Ovis.Cluster.Etcd;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// The right to write one volume: its key under <c>locks/</c>, created only if absent and
/// attached to the holder node's lease. Dispose to release; a holder that dies loses it when
/// its lease runs out (<see cref="Lost"/>).
/// </summary>
public sealed class VolumeLock : IAsyncDisposable
{
    private readonly EtcdCatalog _catalog;
    private int _disposed;

    private VolumeLock(EtcdCatalog catalog, string volume, NodeRegistration holder, long createRevision)
    {
        _catalog = catalog;
        Volume = volume;
        Holder = holder;
        CreateRevision = createRevision;
    }

    public string Volume { get; }

    public NodeRegistration Holder { get; }

    /// <summary>The etcd revision that created the lock key: identifies this tenure of the lock.</summary>
    public long CreateRevision { get; }

    /// <summary>Cancelled when the holder's lease is lost (and with it this lock).</summary>
    public CancellationToken Lost => Holder.Lost;

    internal static async Task<VolumeLock?> TryAcquireAsync(EtcdCatalog catalog, string volume, NodeRegistration holder, string? purpose,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(holder);
        EtcdCatalog.ValidateName(volume, "volume name");
        string key = catalog.Keys.Lock(volume);
        byte[] value = JsonSerializer.SerializeToUtf8Bytes(new LockRecord(holder.Node.Id, DateTimeOffset.UtcNow) { Purpose = purpose }, CatalogJson.Default.LockRecord);
        var result = await catalog.Client.TxnAsync([EtcdCompare.Absent(key)], [new EtcdOp.Put(key, value, holder.LeaseId)],
            cancellationToken: cancellationToken).ConfigureAwait(false);
        // The put is the transaction's only write: the revision after it is the key's create revision.
        return result.Succeeded ? new VolumeLock(catalog, volume, holder, result.Revision) : null;
    }

    /// <summary>Releases the lock, only if it is still this tenure (never a successor's after a takeover).</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        string key = _catalog.Keys.Lock(Volume);
        await _catalog.Client.TxnAsync([EtcdCompare.CreatedAt(key, CreateRevision)], [new EtcdOp.Delete(key)],
            cancellationToken: CancellationToken.None).ConfigureAwait(false);
    }
}
