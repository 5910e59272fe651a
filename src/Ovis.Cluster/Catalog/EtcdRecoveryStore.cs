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
public sealed class EtcdRecoveryStore(EtcdCatalog catalog) : IDirtyLogStore
{
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

    public async Task SaveAsync(IReadOnlyDictionary<uint, uint[]> layers, CancellationToken cancellationToken)
    {
        if (layers.Count == 0)
            return;
        EtcdOp[] ops = [.. layers.Select(l => l.Value.Length == 0
            ? (EtcdOp)new EtcdOp.Delete(DirtyKey(l.Key))
            : new EtcdOp.Put(DirtyKey(l.Key), JsonSerializer.SerializeToUtf8Bytes(l.Value, RecoveryJson.Default.UInt32Array)))];
        await catalog.Client.TxnAsync([], ops, cancellationToken: cancellationToken).ConfigureAwait(false);
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

    public Task WriteBaselineAsync(string volume, RecoveryBaseline baseline, CancellationToken cancellationToken) =>
        catalog.Client.PutAsync(BaselineKey(volume), JsonSerializer.SerializeToUtf8Bytes(baseline, RecoveryJson.Default.RecoveryBaseline),
            cancellationToken: cancellationToken);

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
