using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Ovis.Cluster.Recovery;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

// The JSON objects of the admin API (docs/admin-api.md). The CLI reuses these types, so the
// client and the server cannot drift apart.

/// <summary>Body of <c>POST /api/v1/volumes</c>.</summary>
public sealed record CreateVolumeRequest(string Name, long Size, long? ObjectSize = null);

/// <summary>Body of <c>POST /api/v1/volumes/{name}/resize</c>.</summary>
public sealed record ResizeVolumeRequest(long Size, bool AllowShrink = false);

/// <summary>Body of <c>POST /api/v1/volumes/{name}/settings</c>: <c>{"cache": "writeback"}</c> or <c>"writethrough"</c>.</summary>
public sealed record VolumeSettingsRequest(CacheMode Cache);

/// <summary>Body of <c>POST /api/v1/volumes/{name}/snapshots</c>: the snapshot is <c>NAME@TAG</c>.</summary>
public sealed record SnapshotRequest(string Tag);

/// <summary>Body of <c>POST /api/v1/volumes/{NAME@TAG}/clone</c>: the new volume's name.</summary>
public sealed record CloneRequest(string Name);

/// <summary>Body of <c>POST /api/v1/volumes/{name}/rollback</c>: the snapshot <c>NAME@TAG</c> to go back to.</summary>
public sealed record RollbackRequest(string Tag);

/// <summary>Answer of <c>POST /api/v1/volumes/{name}/flatten</c> (202): poll <c>GET /api/v1/jobs/{job}</c>.</summary>
public sealed record JobAccepted(string Job);

/// <summary>Where a job is; a job leaves <see cref="Running"/> once, for good.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<JobState>))]
public enum JobState
{
    [JsonStringEnumMemberName("running")]
    Running,

    [JsonStringEnumMemberName("done")]
    Done,

    [JsonStringEnumMemberName("failed")]
    Failed,
}

/// <summary>Answer of <c>GET /api/v1/jobs/{id}</c>: a long-running operation the node runs in the background.</summary>
/// <param name="Kind">What the job does: <c>flatten</c>.</param>
/// <param name="Volume">The volume it works on.</param>
/// <param name="Progress">From 0 to 1; 1 once done.</param>
public sealed record JobInfo(string Id, string Kind, string Volume, JobState State, double Progress, DateTimeOffset Started)
{
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public DateTimeOffset? Finished { get; init; }

    /// <summary>Why a failed job failed: one line, like the <c>error</c> of a refused request.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Error { get; init; }

    /// <summary>The volume as the job left it, once done.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public VolumeInfo? Result { get; init; }

    /// <summary>A backup's manifest: what it copies, and how much of it the target has confirmed.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public BackupManifest? Backup { get; init; }

    /// <summary>What a verify job found.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public VerifyReport? Verify { get; init; }

    /// <summary>Bytes done so far, for jobs that count bytes (backup, restore, verify).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public long? BytesDone { get; init; }

    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public long? BytesTotal { get; init; }
}

/// <summary>Body of <c>POST /api/v1/volumes/{name}/backup</c>.</summary>
public sealed record BackupRequest(string Dest, bool Incremental = false, string? Bitmap = null, long? Rate = null, bool Resume = false, bool KeepSnapshot = false, string? Backing = null, int? TargetTimeout = null);

/// <summary>Body of <c>POST /api/v1/volumes/{name}/restore</c>: a full backup, then incrementals in order.</summary>
public sealed record RestoreRequest(IReadOnlyList<string> Sources);

/// <summary>Body of <c>POST /api/v1/volumes/{name}/verify</c>: compares the volume or snapshot with a backup chain.</summary>
public sealed record VerifyRequest(IReadOnlyList<string> Sources);

/// <summary>
/// A backup's manifest, kept beside a file target (<c>DEST.json</c>) or, for an NBD target, in the
/// node's <c>backups/</c> directory: what it copies (<see cref="Extents"/>, offset and length pairs,
/// in order) and how many of those bytes the target has confirmed (flushed), so a resumed backup
/// copies nothing twice that was confirmed. A restore reads an incremental's extents from it.
/// </summary>
public sealed record BackupManifest(string Volume, string Snapshot, string Kind, string Dest, long Size, DateTimeOffset Taken)
{
    public int Version { get; init; } = 1;
    public string? Bitmap { get; init; }
    public long Granularity { get; init; }
    /// <summary>For a qcow2 incremental: the chain's last link it was created over (its backing file).</summary>
    public string? Backing { get; init; }
    public IReadOnlyList<long[]> Extents { get; init; } = [];
    public long TotalBytes { get; init; }
    public long ConfirmedBytes { get; init; }
    /// <summary>For a resumed backup: the bytes confirmed before it resumed, which it did not copy again.</summary>
    public long? ResumedFrom { get; init; }
    public bool Complete { get; init; }
    public DateTimeOffset? Finished { get; init; }
}

/// <summary>What <c>verify</c> found.</summary>
public sealed record VerifyReport(string Volume, long ComparedBytes, long DifferentBytes, long? FirstDifference);

/// <summary>Answer of <c>GET /api/v1/node</c>.</summary>
/// <param name="CopyOnWriteBytes">Bytes copied from parent layers to complete partly written inherited blocks, since the node started.</param>
/// <param name="VolumeCount">Live volumes (clones included), not snapshots.</param>
public sealed record NodeInfo(
    string Version,
    string DataDirectory,
    NodeListeners Listeners,
    long UsedBytes,
    long JournalSyncs,
    long FlushRequests,
    long CopyOnWriteBytes,
    int VolumeCount,
    int SnapshotCount,
    DateTimeOffset Started,
    long UptimeSeconds)
{
    /// <summary>The data directory's file system and how full it is; null where the node has no local store.</summary>
    public NodeSpace? Space { get; init; }

    /// <summary>The file holding the admin token, for a CLI on the same machine to read; null when the node runs without a token.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? TokenFile { get; init; }
}

/// <summary>
/// A node's disk as its store counts it: <paramref name="UsedBytes"/> is what the file system has
/// in use plus the space writes already in the journal will take; <paramref name="State"/> is
/// <c>ok</c>, <c>nearfull</c> (from <paramref name="NearFullRatio"/>) or <c>full</c> (from
/// <paramref name="FullRatio"/>, or when less than 1 MiB is left for data: writes that need new
/// space get ENOSPC). <paramref name="RoomBytes"/>: what such writes may still take.
/// </summary>
public sealed record NodeSpace(string State, double Ratio, long TotalBytes, long UsedBytes, long AvailableBytes, long RoomBytes,
    double NearFullRatio, double FullRatio)
{
    public static NodeSpace From(Ovis.Store.StoreSpace space) => new(
        space.State switch
        {
            Ovis.Store.SpaceState.Full => "full",
            Ovis.Store.SpaceState.NearFull => "nearfull",
            _ => "ok",
        },
        Math.Round(space.Ratio, 4), space.TotalBytes, space.UsedBytes, Math.Max(0, space.AvailableBytes - space.ReservedBytes), space.RoomBytes,
        space.NearFullRatio, space.FullRatio);
}

/// <summary>Bound addresses: NBD as <c>HOST:PORT</c> or <c>unix:PATH</c>, admin as URLs.</summary>
public sealed record NodeListeners(IReadOnlyList<string> Nbd, IReadOnlyList<string> Admin);

/// <summary>A member of the cluster in <c>GET /api/v1/nodes</c>: <paramref name="State"/> is <c>up</c> while
/// its lease lives, <c>down</c> after; <paramref name="Stale"/> when its copies missed writes (no reads
/// come from it); <paramref name="UsedBytes"/> and <paramref name="Objects"/> as the node itself
/// reports them, null when it did not answer.</summary>
public sealed record MemberInfo(string Id, string Address, string Zone, string State, bool Stale, long? UsedBytes, long? Objects)
{
    /// <summary>The node's disk as it reports it; null when it did not answer (or is an older version).</summary>
    public NodeSpace? Space { get; init; }

    /// <summary>When a down member was first seen down; null while it is up (or not yet recorded).</summary>
    public DateTimeOffset? DownSince { get; init; }

    /// <summary>Seconds until a down member is taken out of the cluster (0 when due); null when it
    /// never will be: the node runs with <c>--down-out-interval 0</c>, or too few zones would remain.</summary>
    public long? OutIn { get; init; }

    /// <summary>The last peer round trip from the answering node to this one, in milliseconds (a PING
    /// every 5 s); null for the answering node itself, a down one, or one that missed the last PING.</summary>
    public double? RoundTripMs { get; init; }

    /// <summary>The peer-protocol address the node published, which the others dial (its
    /// <c>--advertise-peer</c>, or where it listens).</summary>
    public string? Peer { get; init; }

    /// <summary><c>draining</c> while an operator drains the member and some volume still needs a
    /// copy moved off it, <c>drained</c> once none does (it may be stopped and removed); null otherwise.</summary>
    public string? Drain { get; init; }
}

/// <summary>Answer of <c>GET /api/v1/cluster</c>. <paramref name="PlacementError"/> says why objects cannot
/// be placed (fewer zones than copies); null when they can.</summary>
public sealed record ClusterInfo(string Name, int Copies, int MinCopies, long Epoch, DateTimeOffset FormattedAt,
    IReadOnlyList<MemberInfo> Nodes, string? PlacementError);

/// <summary>Answer of <c>POST /api/v1/volumes/{name}/check</c>: every copy of every object of the
/// layer compared; <paramref name="Differences"/> lists the copies that disagree or could not be read,
/// <paramref name="Repaired"/> those rewritten from a good copy (with <c>?repair=true</c>).</summary>
public sealed record CheckReport(string Volume, long Objects, IReadOnlyList<CheckDifference> Differences, IReadOnlyList<CheckDifference> Repaired);

/// <summary>One copy that differs: the object id (<c>LAYER.INDEX</c>, hex), the node and why.</summary>
public sealed record CheckDifference(string ObjectId, string Node, string Reason);

/// <summary>Answer of <c>GET /api/v1/recovery</c> (and of pause and resume): whether an operator paused
/// recovery, the sums of the figures of every live node, and each node's own (<see cref="Nodes"/>;
/// a node that is down has none).</summary>
public sealed record RecoveryStatus(
    bool Paused,
    long ObjectsQueued,
    long ObjectsDone,
    long BytesMoved,
    long BytesResynced,
    long ObjectsScrubbed,
    long CopiesRepaired,
    IReadOnlyList<RecoveryProgress> Nodes)
{
    /// <summary>The node that took the pause request, while paused.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? PausedBy { get; init; }

    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public DateTimeOffset? PausedAt { get; init; }
}

/// <summary>Body of every 4xx and 5xx answer: one line meant for an operator.</summary>
public sealed record ErrorBody(string Error);

/// <summary>Body of <c>POST /api/v1/volumes/{name}/bitmaps</c>.</summary>
public sealed record AddBitmapRequest(string Name, long? Granularity = null);

/// <summary>Answer of <c>GET /healthz</c>.</summary>
public sealed record HealthStatus(string Status);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(VolumeInfo))]
[JsonSerializable(typeof(IReadOnlyList<VolumeInfo>))]
[JsonSerializable(typeof(List<VolumeInfo>))]
[JsonSerializable(typeof(CreateVolumeRequest))]
[JsonSerializable(typeof(ResizeVolumeRequest))]
[JsonSerializable(typeof(VolumeSettingsRequest))]
[JsonSerializable(typeof(SnapshotRequest))]
[JsonSerializable(typeof(CloneRequest))]
[JsonSerializable(typeof(RollbackRequest))]
[JsonSerializable(typeof(JobAccepted))]
[JsonSerializable(typeof(JobInfo))]
[JsonSerializable(typeof(NodeInfo))]
[JsonSerializable(typeof(ErrorBody))]
[JsonSerializable(typeof(ClusterInfo))]
[JsonSerializable(typeof(MemberInfo))]
[JsonSerializable(typeof(IReadOnlyList<MemberInfo>))]
[JsonSerializable(typeof(List<MemberInfo>))]
[JsonSerializable(typeof(HealthStatus))]
[JsonSerializable(typeof(CheckReport))]
[JsonSerializable(typeof(List<CheckReport>))]
[JsonSerializable(typeof(RecoveryStatus))]
[JsonSerializable(typeof(AddBitmapRequest))]
[JsonSerializable(typeof(BackupRequest))]
[JsonSerializable(typeof(RestoreRequest))]
[JsonSerializable(typeof(VerifyRequest))]
[JsonSerializable(typeof(BackupManifest))]
[JsonSerializable(typeof(VerifyReport))]
[JsonSerializable(typeof(IReadOnlyList<JobInfo>))]
[JsonSerializable(typeof(List<JobInfo>))]
[JsonSerializable(typeof(BitmapInfo))]
[JsonSerializable(typeof(IReadOnlyList<BitmapInfo>))]
[JsonSerializable(typeof(List<BitmapInfo>))]
public sealed partial class AdminJsonContext : JsonSerializerContext
{
    /// <summary>
    /// The options the API answers with: web defaults (camelCase), with quotes and apostrophes
    /// left as they are so that <c>{"error": "volume 'x' not found"}</c> reads well in curl.
    /// The API's JSON is never embedded in HTML, which is what the default escaping guards.
    /// </summary>
    public static JsonSerializerOptions CreateApiOptions(bool indented = false) => new(JsonSerializerDefaults.Web)
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = indented,
    };

    /// <summary>Metadata bound to <see cref="CreateApiOptions"/>.</summary>
    public static AdminJsonContext Api { get; } = new(CreateApiOptions());
}
