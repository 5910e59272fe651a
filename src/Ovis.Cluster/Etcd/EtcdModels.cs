using System.Text;
using Etcdserverpb;
using Google.Protobuf;

namespace Ovis.Cluster.Etcd;

/// <summary>A key as etcd stores it. Revisions are etcd's global revisions; <see cref="Lease"/> is 0 without a lease.</summary>
public sealed record EtcdKeyValue(string Key, byte[] Value, long CreateRevision, long ModRevision, long Version, long Lease)
{
    /// <summary>The value as UTF-8 text.</summary>
    public string ValueText => Encoding.UTF8.GetString(Value);
}

/// <summary>The keys of a range and the store revision they were read at (watch from <c>Revision + 1</c>).</summary>
public sealed record EtcdRange(IReadOnlyList<EtcdKeyValue> Kvs, long Revision);

/// <summary>A lease: keys put with it disappear when it runs out or is revoked.</summary>
public readonly record struct EtcdLease(long Id, long TtlSeconds);

/// <summary>One condition of a transaction; build with the factories.</summary>
public sealed record EtcdCompare
{
    private EtcdCompare(string key, Compare.Types.CompareTarget target, Compare.Types.CompareResult result, long revision, byte[]? value = null)
    {
        Key = key;
        Target = target;
        Result = result;
        Revision = revision;
        Value = value;
    }

    public string Key { get; }

    /// <summary>The comparison holds for every key under <see cref="Key"/>.</summary>
    public bool Prefix { get; private init; }

    private Compare.Types.CompareTarget Target { get; }

    private Compare.Types.CompareResult Result { get; }

    /// <summary>The create or mod revision compared with (unused for a value).</summary>
    private long Revision { get; }

    private byte[]? Value { get; }

    /// <summary>The key does not exist (its create revision is 0).</summary>
    public static EtcdCompare Absent(string key) => new(key, Compare.Types.CompareTarget.Create, Compare.Types.CompareResult.Equal, 0);

    /// <summary>The key exists (its create revision is not 0).</summary>
    public static EtcdCompare Present(string key) => new(key, Compare.Types.CompareTarget.Create, Compare.Types.CompareResult.Greater, 0);

    /// <summary>The key was created at <paramref name="revision"/> (it is still the same incarnation).</summary>
    public static EtcdCompare CreatedAt(string key, long revision) => new(key, Compare.Types.CompareTarget.Create, Compare.Types.CompareResult.Equal, revision);

    /// <summary>The key was last modified at <paramref name="revision"/> (nobody wrote it since it was read).</summary>
    public static EtcdCompare ModifiedAt(string key, long revision) => new(key, Compare.Types.CompareTarget.Mod, Compare.Types.CompareResult.Equal, revision);

    /// <summary>The key was last modified before <paramref name="revision"/> (0 when absent, so an absent key passes).</summary>
    public static EtcdCompare ModifiedBefore(string key, long revision) => new(key, Compare.Types.CompareTarget.Mod, Compare.Types.CompareResult.Less, revision);

    /// <summary>No key under <paramref name="prefix"/> was written (or created) at or after <paramref name="revision"/>.</summary>
    public static EtcdCompare NoneModifiedSince(string prefix, long revision) =>
        new(prefix, Compare.Types.CompareTarget.Mod, Compare.Types.CompareResult.Less, revision) { Prefix = true };

    /// <summary>The key's value equals <paramref name="value"/>.</summary>
    public static EtcdCompare ValueEquals(string key, byte[] value) =>
        new(key, Compare.Types.CompareTarget.Value, Compare.Types.CompareResult.Equal, 0, value);

    internal Compare ToProto()
    {
        var compare = new Compare { Key = EtcdClient.Key(Key), Target = Target, Result = Result };
        if (Prefix)
            compare.RangeEnd = EtcdClient.RangeEnd(Key);
        switch (Target)
        {
            case Compare.Types.CompareTarget.Create:
                compare.CreateRevision = Revision;
                break;
            case Compare.Types.CompareTarget.Mod:
                compare.ModRevision = Revision;
                break;
            default:
                compare.Value = ByteString.CopyFrom(Value);
                break;
        }
        return compare;
    }
}

/// <summary>One operation of a transaction branch.</summary>
public abstract record EtcdOp(string Key)
{
    /// <summary>Put <paramref name="Value"/>, attached to <paramref name="LeaseId"/> when non-zero.</summary>
    public sealed record Put(string Key, byte[] Value, long LeaseId = 0) : EtcdOp(Key);

    /// <summary>Read the key, or every key under it when <paramref name="Prefix"/>.</summary>
    public sealed record Range(string Key, bool Prefix = false) : EtcdOp(Key);

    /// <summary>Delete the key, or every key under it when <paramref name="Prefix"/>.</summary>
    public sealed record Delete(string Key, bool Prefix = false) : EtcdOp(Key);

    public static Put PutText(string key, string value, long leaseId = 0) => new(key, Encoding.UTF8.GetBytes(value), leaseId);
}

/// <summary>
/// The outcome of a transaction: which branch ran, the revision after it, and for each
/// operation of that branch in order, the keys it read (empty for puts and deletes).
/// </summary>
public sealed record EtcdTxnResult(bool Succeeded, long Revision, IReadOnlyList<IReadOnlyList<EtcdKeyValue>> Reads);

public enum EtcdEventType
{
    Put,
    Delete,
}

/// <summary>
/// A change seen by a watch. For a delete, <see cref="Kv"/> holds only the key and the
/// revision of the delete (<see cref="EtcdKeyValue.ModRevision"/>).
/// </summary>
public sealed record EtcdWatchEvent(EtcdEventType Type, EtcdKeyValue Kv);
