using System.Runtime.CompilerServices;
using Ovis.Cluster.Etcd;
using Ovis.Volumes;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// A cluster's volume registry on etcd: one key, <c>/ovis/&lt;cluster&gt;/volumes</c>, holding the
/// <see cref="CatalogState"/> as JSON. The version is the key's mod_revision (0 before the first
/// save); a save is a transaction that puts the new state only if the key's mod_revision is still
/// the version the state was computed from, and otherwise reads what is there instead, so a node
/// that lost a race learns the winner's state in the same round trip. Every node watches the key.
/// </summary>
/// <remarks>
/// One key keeps a change to several layers (a snapshot renames one and adds another) a single
/// atomic write, and keeps the next id with the layers. It holds some hundred bytes per layer,
/// well inside etcd's 1.5 MiB request limit for thousands of layers.
/// </remarks>
public sealed class EtcdVolumeRegistry : IVolumeRegistry
{
    private readonly EtcdClient _client;
    private readonly string _key;
    // The last state seen at a version, to check that a save does not move the next id back.
    private VersionedCatalog? _known;

    /// <summary>The registry of <paramref name="cluster"/>; the client stays the caller's.</summary>
    public EtcdVolumeRegistry(EtcdClient client, string cluster)
    {
        ArgumentNullException.ThrowIfNull(client);
        EtcdCatalog.ValidateName(cluster, "cluster name");
        _client = client;
        _key = new CatalogKeys(cluster).Volumes;
    }

    public async Task<VersionedCatalog> LoadAsync(CancellationToken cancellationToken = default)
        => (await ReadAsync(cancellationToken).ConfigureAwait(false)).Current;

    /// <summary>The registry and the store revision it was read at (watch from the revision after it).</summary>
    private async Task<(VersionedCatalog Current, long Revision)> ReadAsync(CancellationToken cancellationToken)
    {
        EtcdTxnResult read = await _client.TxnAsync([], [new EtcdOp.Range(_key)], cancellationToken: cancellationToken).ConfigureAwait(false);
        return (Remember(ParseRead(read.Reads[0])), read.Revision);
    }

    public async Task<RegistrySaveResult> TrySaveAsync(CatalogState state, long expectedVersion, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentOutOfRangeException.ThrowIfNegative(expectedVersion);
        VersionedCatalog? known = Volatile.Read(ref _known);
        state.ValidateAfter(known?.Version == expectedVersion ? known.State : null);
        EtcdCompare unchanged = expectedVersion == 0 ? EtcdCompare.Absent(_key) : EtcdCompare.ModifiedAt(_key, expectedVersion);
        EtcdTxnResult result = await _client.TxnAsync([unchanged], [new EtcdOp.Put(_key, state.ToUtf8Json())], [new EtcdOp.Range(_key)],
            cancellationToken).ConfigureAwait(false);
        // The put is the transaction's only write: the revision after it is the key's mod_revision.
        return result.Succeeded
            ? new RegistrySaveResult(true, Remember(new VersionedCatalog(state, result.Revision)))
            : new RegistrySaveResult(false, Remember(ParseRead(result.Reads[0])));
    }

    public async IAsyncEnumerable<VersionedCatalog> WatchAsync(long afterVersion, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (true)
        {
            // Read, then watch from the revision after the read: nothing falls in between.
            (VersionedCatalog current, long revision) = await ReadAsync(cancellationToken).ConfigureAwait(false);
            if (current.Version > afterVersion)
            {
                afterVersion = current.Version;
                yield return current;
            }
            await using var events = _client.WatchKeyAsync(_key, revision + 1, cancellationToken).GetAsyncEnumerator(cancellationToken);
            while (true)
            {
                try
                {
                    if (!await events.MoveNextAsync().ConfigureAwait(false))
                    {
                        yield break;
                    }
                }
                catch (EtcdWatchCompactedException)
                {
                    break; // etcd no longer has the changes since: read again
                }
                EtcdWatchEvent e = events.Current;
                // A deleted registry is an operator's doing; the nodes keep the last one they saw.
                if (e.Type == EtcdEventType.Put && e.Kv.ModRevision > afterVersion)
                {
                    afterVersion = e.Kv.ModRevision;
                    yield return Remember(new VersionedCatalog(Parse(e.Kv), e.Kv.ModRevision));
                }
            }
        }
    }

    private VersionedCatalog ParseRead(IReadOnlyList<EtcdKeyValue> read)
        => read is [var kv, ..] ? new VersionedCatalog(Parse(kv), kv.ModRevision) : new VersionedCatalog(CatalogState.Empty, 0);

    private CatalogState Parse(EtcdKeyValue kv)
    {
        try
        {
            return CatalogState.FromUtf8Json(kv.Value);
        }
        catch (InvalidDataException e)
        {
            throw new CatalogException($"etcd key {_key}: {e.Message}", e);
        }
    }

    private VersionedCatalog Remember(VersionedCatalog seen)
    {
        // Only ever forward: concurrent calls may finish out of order.
        VersionedCatalog? known = Volatile.Read(ref _known);
        while (known is null || seen.Version > known.Version)
        {
            VersionedCatalog? previous = Interlocked.CompareExchange(ref _known, seen, known);
            if (ReferenceEquals(previous, known))
            {
                break;
            }
            known = previous;
        }
        return seen;
    }
}
