using System.Globalization;
using System.Text.Json;
using Ovis.Cluster.Etcd;
using Ovis.Cluster.Recovery;
using Ovis.Store;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// Recovery's records in the catalog:
/// <code>
/// dirty/&lt;layer&gt;       uint[]             the dirty-region log of one layer (object indexes)
/// baseline/&lt;volume&gt;   RecoveryBaseline   where the volume's copies are known complete
/// </code>
/// and the one decision that needs them all at once: lifting a node's stale mark.
/// </summary>
/// <remarks>
/// Writes to these records are fenced like writes to the copies (docs/fencing.md): each is a
/// transaction on the condition that the writer's lock on the volume is still the one in etcd
/// (the lock key's create revision is its generation). A gateway that lost the lock — paused
/// while its lease ran out — can then neither clear the dirty-region log its successor relies on
/// nor rewrite a baseline; the save fails and the change that needed it is refused.
/// </remarks>
public sealed class EtcdRecoveryStore(EtcdCatalog catalog) : IDirtyLogStore
{
    /// <summary>The volume a layer belongs to and the generation of this node's lock on it, or null
    /// when this node holds no valid lock on it (then nothing of it is saved). Unset, saves are
    /// unconditional (tests of the records alone).</summary>
    public Func<uint, (string Volume, long Generation)?>? LayerHolder { get; set; }

    /// <summary>The generation of this node's lock on a volume, or null (see <see cref="LayerHolder"/>).</summary>
    public Func<string, long?>? VolumeHolder { get; set; }

    private string Dirty => catalog.Keys.Root + "dirty/";

    private string Baselines => catalog.Keys.Root + "baseline/";

    private string DirtyKey(uint layer) => Dirty + layer.ToString("x8", CultureInfo.InvariantCulture);

    private string BaselineKey(string volume) => Baselines + volume;

    public async Task<IReadOnlyDictionary<uint, uint[]>> LoadAsync(IReadOnlyCollection<uint> layers, CancellationToken cancellationToken)
    {
        var result = await catalog.Client.TxnAsync([], [.. layers.Select(l => new EtcdOp.Range(DirtyKey(l)))],
            cancellationToken: cancellationToken).ConfigureAwait(false);
        var loaded = new Dictionary<uint, uint[]>();
        int i = 0;
        foreach (uint layer in layers)
        {
            if (result.Reads[i++] is [var kv, ..])
                loaded[layer] = JsonSerializer.Deserialize(kv.Value, RecoveryJson.Default.UInt32Array) ?? [];
        }
        return loaded;
    }

    /// <summary>The generation of this node's lock on the volume a layer belongs to while the lock
    /// stands — valid or only waiting for a late renewal — and 0 without one.</summary>
    public Func<uint, long>? LayerTenure { get; set; }

    public long TenureOf(uint layer) => LayerTenure?.Invoke(layer) ?? 0;

    public async Task SaveAsync(IReadOnlyDictionary<uint, uint[]> layers, CancellationToken cancellationToken)
    {
        var guards = new List<EtcdCompare>();
        var saved = new List<KeyValuePair<uint, uint[]>>();
        foreach (var layer in layers)
        {
            if (LayerHolder is { } holderOf)
            {
                // Without the lock this node sends no change of the layer (the gateway refuses it
                // first), so a mark it does not save covers nothing; a clear it does not save
                // leaves the object logged, which costs the next holder a compare, never a write.
                if (holderOf(layer.Key) is not { } holder)
                    continue;
                guards.Add(EtcdCompare.CreatedAt(catalog.Keys.Lock(holder.Volume), holder.Generation));
            }
            saved.Add(layer);
        }
        if (saved.Count == 0)
            return;
        EtcdOp[] ops = [.. saved.Select(l => l.Value.Length == 0
            ? (EtcdOp)new EtcdOp.Delete(DirtyKey(l.Key))
            : new EtcdOp.Put(DirtyKey(l.Key), JsonSerializer.SerializeToUtf8Bytes(l.Value, RecoveryJson.Default.UInt32Array)))];
        await SaveGuardedAsync(guards, ops, "dirty-region log", cancellationToken).ConfigureAwait(false);
    }

    private async Task SaveGuardedAsync(List<EtcdCompare> guards, EtcdOp[] ops, string what, CancellationToken cancellationToken)
    {
        var result = await catalog.Client.TxnAsync(guards, ops, cancellationToken: cancellationToken).ConfigureAwait(false);
        if (!result.Succeeded)
            throw new CatalogException($"the {what} was not saved: another node holds the volume's lock now (this node was fenced)");
    }

    /// <summary>Every layer's log, for a node deciding whether any logged object involves it.</summary>
    private static Dictionary<uint, uint[]> ParseDirty(IReadOnlyList<EtcdKeyValue> kvs, int prefixLength) =>
        kvs.ToDictionary(kv => uint.Parse(kv.Key.AsSpan(prefixLength), NumberStyles.HexNumber, CultureInfo.InvariantCulture),
            kv => JsonSerializer.Deserialize(kv.Value, RecoveryJson.Default.UInt32Array) ?? []);

    public async Task<RecoveryBaseline?> ReadBaselineAsync(string volume, CancellationToken cancellationToken)
    {
        var kv = await catalog.Client.GetAsync(BaselineKey(volume), cancellationToken).ConfigureAwait(false);
        return kv is null ? null : JsonSerializer.Deserialize(kv.Value, RecoveryJson.Default.RecoveryBaseline);
    }

    public Task WriteBaselineAsync(string volume, RecoveryBaseline baseline, CancellationToken cancellationToken)
    {
        var guards = new List<EtcdCompare>();
        if (VolumeHolder is { } holderOf)
        {
            long generation = holderOf(volume)
                ?? throw new CatalogException($"volume {volume}: this node holds no lock on it; its recovery baseline is not saved");
            guards.Add(EtcdCompare.CreatedAt(catalog.Keys.Lock(volume), generation));
        }
        return SaveGuardedAsync(guards,
            [new EtcdOp.Put(BaselineKey(volume), JsonSerializer.SerializeToUtf8Bytes(baseline, RecoveryJson.Default.RecoveryBaseline))],
            "recovery baseline", cancellationToken);
    }

    /// <summary>
    /// Whether every volume in <paramref name="volumes"/> has its copies known complete where
    /// <paramref name="placement"/> puts them: its baseline is over the same members with the same
    /// weights. A volume without a baseline does not count as complete (its first pass, which the
    /// node recovering idle volumes also runs, has not finished). This is what makes a draining
    /// member drained: no volume still needs a copy from it.
    /// </summary>
    public async Task<bool> CompleteOverAsync(IReadOnlyCollection<string> volumes, Placement placement, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(volumes);
        ArgumentNullException.ThrowIfNull(placement);
        var range = await catalog.Client.RangePrefixAsync(Baselines, cancellationToken).ConfigureAwait(false);
        var baselines = range.Kvs.ToDictionary(kv => kv.Key[Baselines.Length..],
            kv => JsonSerializer.Deserialize(kv.Value, RecoveryJson.Default.RecoveryBaseline)!, StringComparer.Ordinal);
        return volumes.All(v => baselines.TryGetValue(v, out RecoveryBaseline? b) && b.Placement().SameAs(placement));
    }

    /// <summary>
    /// A node's store came back empty: no baseline may count it as holding its copies any more,
    /// so the next pass of every volume fills it.
    /// </summary>
    public async Task UnsyncAsync(string node, CancellationToken cancellationToken)
    {
        var range = await catalog.Client.RangePrefixAsync(Baselines, cancellationToken).ConfigureAwait(false);
        foreach (var kv in range.Kvs)
        {
            var baseline = JsonSerializer.Deserialize(kv.Value, RecoveryJson.Default.RecoveryBaseline)!;
            if (!baseline.Synced.Contains(node, StringComparer.Ordinal))
                continue;
            var next = baseline with { Synced = [.. baseline.Synced.Where(s => s != node)] };
            await catalog.Client.TxnAsync([EtcdCompare.ModifiedAt(kv.Key, kv.ModRevision)],
                [new EtcdOp.Put(kv.Key, JsonSerializer.SerializeToUtf8Bytes(next, RecoveryJson.Default.RecoveryBaseline))],
                cancellationToken: cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Lifts <paramref name="node"/>'s stale mark when nothing it may have missed is left: every
    /// volume in <paramref name="volumes"/> has a baseline over the current members that counts the
    /// node synced (a volume without a baseline has had no membership change to recover from), and
    /// no logged object has a copy on it (<paramref name="holds"/>). One transaction decides, on
    /// the condition that no log, baseline or member changed since they were read — a write that
    /// missed the node after the read logs its object first, and so stops the lift. True when lifted.
    /// </summary>
    public async Task<bool> TryClearStaleAsync(string node, IReadOnlyCollection<string> volumes, Func<ObjectId, bool> holds,
        CancellationToken cancellationToken)
    {
        var keys = catalog.Keys;
        var read = await catalog.Client.TxnAsync([],
            [new EtcdOp.Range(keys.StaleMark(node)), new EtcdOp.Range(Dirty, Prefix: true), new EtcdOp.Range(Baselines, Prefix: true),
             new EtcdOp.Range(keys.Members, Prefix: true)],
            cancellationToken: cancellationToken).ConfigureAwait(false);
        if (read.Reads[0] is not [var mark, ..])
            return true;
        string[] members = [.. read.Reads[3].Select(kv => kv.Key[keys.Members.Length..]).Order(StringComparer.Ordinal)];
        var baselines = read.Reads[2].ToDictionary(kv => kv.Key[Baselines.Length..],
            kv => JsonSerializer.Deserialize(kv.Value, RecoveryJson.Default.RecoveryBaseline)!, StringComparer.Ordinal);
        foreach (string volume in volumes)
        {
            if (!baselines.TryGetValue(volume, out RecoveryBaseline? b))
                continue;
            if (!b.Synced.Contains(node, StringComparer.Ordinal)
                || !b.Members.Select(m => m.Id).Order(StringComparer.Ordinal).SequenceEqual(members, StringComparer.Ordinal))
                return false;
        }
        foreach (var (layer, indexes) in ParseDirty(read.Reads[1], Dirty.Length))
        {
            if (indexes.Any(i => holds(new ObjectId(layer, i))))
                return false;
        }
        long next = read.Revision + 1;
        var cleared = await catalog.Client.TxnAsync(
            [EtcdCompare.ModifiedAt(mark.Key, mark.ModRevision), EtcdCompare.NoneModifiedSince(Dirty, next),
             EtcdCompare.NoneModifiedSince(Baselines, next), EtcdCompare.NoneModifiedSince(keys.Members, next)],
            [new EtcdOp.Delete(mark.Key)], cancellationToken: cancellationToken).ConfigureAwait(false);
        return cleared.Succeeded;
    }
}
