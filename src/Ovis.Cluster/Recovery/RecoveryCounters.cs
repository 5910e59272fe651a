namespace Ovis.Cluster.Recovery;

/// <summary>
/// One node's recovery work as it reports it to the catalog (<c>recovery/progress/&lt;node&gt;</c>):
/// objects found needing work and done (moved after a membership change, resynced from the
/// dirty-region log, repaired by check or scrub), and the bytes written to copies for each reason.
/// </summary>
public sealed record RecoveryProgress(
    string Node,
    long ObjectsQueued,
    long ObjectsDone,
    long BytesMoved,
    long BytesResynced,
    long ObjectsScrubbed,
    long CopiesRepaired,
    bool Paused,
    DateTimeOffset At);

/// <summary>
/// The live counters behind <see cref="RecoveryProgress"/>; updated by the recovery engine from
/// many tasks at once, read by whoever publishes them.
/// </summary>
public sealed class RecoveryCounters
{
    private long _queued;
    private long _done;
    private long _bytesMoved;
    private long _bytesResynced;
    private long _scrubbed;
    private long _repaired;

    public long ObjectsQueued => Volatile.Read(ref _queued);

    public long ObjectsDone => Volatile.Read(ref _done);

    public long BytesMoved => Volatile.Read(ref _bytesMoved);

    public long BytesResynced => Volatile.Read(ref _bytesResynced);

    public long ObjectsScrubbed => Volatile.Read(ref _scrubbed);

    public long CopiesRepaired => Volatile.Read(ref _repaired);

    public void Queued(long objects) => Interlocked.Add(ref _queued, objects);

    public void Done(long objects) => Interlocked.Add(ref _done, objects);

    public void Moved(long bytes) => Interlocked.Add(ref _bytesMoved, bytes);

    public void Resynced(long bytes) => Interlocked.Add(ref _bytesResynced, bytes);

    public void Scrubbed(long objects) => Interlocked.Add(ref _scrubbed, objects);

    public void Repaired(long copies) => Interlocked.Add(ref _repaired, copies);

    public RecoveryProgress Snapshot(string node, bool paused) =>
        new(node, ObjectsQueued, ObjectsDone, BytesMoved, BytesResynced, ObjectsScrubbed, CopiesRepaired, paused, DateTimeOffset.UtcNow);
}
