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

    private VolumeLock(EtcdCatalog catalog, string volume, NodeRegistration holder, long createRevision, bool lastServedHere)
    {
        _catalog = catalog;
        Volume = volume;
        Holder = holder;
        CreateRevision = createRevision;
        LastServedHere = lastServedHere;
    }

    public string Volume { get; }

    public NodeRegistration Holder { get; }

    /// <summary>The etcd revision that created the lock key: identifies this tenure of the lock.</summary>
    public long CreateRevision { get; }

    /// <summary>Whether the tenure before this one that served the volume (not one that only
    /// recovered it) was this same node's: then nothing but this node's own writes can have landed
    /// since, and what its writeback cache still holds of the volume may go out under this lock.</summary>
    public bool LastServedHere { get; }

    /// <summary>Cancelled when the holder's lease is lost (and with it this lock).</summary>
    public CancellationToken Lost => Holder.Lost;

    internal static async Task<VolumeLock?> TryAcquireAsync(EtcdCatalog catalog, string volume, NodeRegistration holder, string? purpose,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(holder);
        EtcdCatalog.ValidateName(volume, "volume name");
        string key = catalog.Keys.Lock(volume);
        byte[] value = JsonSerializer.SerializeToUtf8Bytes(new LockRecord(holder.Node.Id, DateTimeOffset.UtcNow) { Purpose = purpose }, CatalogJson.Default.LockRecord);
        // A serving tenure also records itself as the volume's last server, reading who that was
        // before, in the same transaction; a recovery's tenure writes no data of its own and leaves it.
        string served = catalog.Keys.Served(volume);
        EtcdOp[] ops = purpose is null
            ? [new EtcdOp.Range(served), new EtcdOp.Put(key, value, holder.LeaseId), new EtcdOp.Put(served, System.Text.Encoding.UTF8.GetBytes(holder.Node.Id))]
            : [new EtcdOp.Put(key, value, holder.LeaseId)];
        var result = await catalog.Client.TxnAsync([EtcdCompare.Absent(key)], ops, cancellationToken: cancellationToken).ConfigureAwait(false);
        if (!result.Succeeded)
            return null;
        bool lastServedHere = purpose is null && result.Reads[0] is [var last, ..]
            && System.Text.Encoding.UTF8.GetString(last.Value) == holder.Node.Id;
        // One transaction is one revision: the revision after it is the lock key's create revision.
        return new VolumeLock(catalog, volume, holder, result.Revision, lastServedHere);
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
