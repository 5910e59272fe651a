using System.Buffers;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Gateway;
using Ovis.Cluster.Peer;
using Ovis.Store;

namespace Ovis.Cluster.Recovery;

/// <summary>Why an object's copies are compared: a dirty-region log entry, a membership change
/// that gave it new holders, or the scrub (which also reads every block to check it).</summary>
public enum ReconcileReason
{
    Resync,
    Move,
    Scrub,
}

/// <summary>How reconciling one object went.</summary>
public enum ReconcileResult
{
    /// <summary>No copy could serve as the source; the object's copies are as they were.</summary>
    Failed,

    /// <summary>The live copies agree; a holder that is down still has to be brought up to date.</summary>
    Partial,

    /// <summary>Every holder has the same content, durably.</summary>
    Complete,
}

/// <summary>
/// Makes the copies of one object agree. It reads per-block checksums from every live holder
/// (a few bytes per 4 KiB block, not the data), picks a source — a current holder that also held
/// the object before the membership change, when there was one — and copies to each other holder
/// only the runs of blocks that differ, then syncs them. Must run with the object to itself
/// (<see cref="ObjectGate"/>): a client write between the read and the copy would be undone.
/// </summary>
public sealed partial class ObjectReconciler(ReplicatedStore store, RecoveryCounters counters, Throttle throttle, ILogger logger)
{
    // Data moves in pieces of this size: small enough for the throttle and peer buffers.
    private const int Chunk = 1 << 20;
    private const long SourceFailed = -1;
    private const long TargetFailed = -2;
    private const int MaxAttempts = 3;

    /// <param name="before">The placement the object's copies were complete in (before a membership
    /// change), or null when it is the current one.</param>
    /// <param name="throttled">Background work waits for the bandwidth limit; work a client waits for does not.</param>
    /// <returns>How it went, and the data bytes written to copies.</returns>
    public async Task<(ReconcileResult Result, long Bytes)> ReconcileAsync(ObjectId id, long objectSize, Placement? before, ReconcileReason reason,
        bool throttled, CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            ClusterView view = store.View;
            var round = new Round(view.Epoch);
            (ReconcileResult Result, long Bytes) outcome = await ReconcileInViewAsync(view, round, id, objectSize, before, reason, throttled, cancellationToken).ConfigureAwait(false);
            // A membership change under the round (a node joined or left, and a copy answered
            // from the newer epoch) is no failure of the object: it runs again in the new view.
            // Giving up failed the client write waiting for it, and the guest's flush with it.
            if (outcome.Result == ReconcileResult.Complete || round.Newest <= view.Epoch || attempt == MaxAttempts)
                return outcome;
            await store.RefreshViewAsync(round.Newest).ConfigureAwait(false);
        }
    }

    private async Task<(ReconcileResult Result, long Bytes)> ReconcileInViewAsync(ClusterView view, Round round, ObjectId id, long objectSize, Placement? before,
        ReconcileReason reason, bool throttled, CancellationToken cancellationToken)
    {
        if (view.Placement is not { } placement)
            return (ReconcileResult.Failed, 0);
        // Recovery's copies are changes like a client's: they carry the lock's generation, and a
        // node that lost the lock copies nothing.
        if (store.GenerationOf(id.Volume) is not { } generation)
            return (ReconcileResult.Failed, 0);
        int[] holders = new int[view.Copies];
        placement.ChooseIndexes(id.Packed, holders);
        // The nodes that held the object before the membership change, when there was one.
        HashSet<string>? former = before?.Choose(id.Packed, view.Copies).Select(c => c.Id).ToHashSet(StringComparer.Ordinal);
        int blocks = (int)(objectSize / store.BlockSize);
        bool verify = reason == ReconcileReason.Scrub;

        var sums = new Dictionary<int, BlockSum[]?>();
        foreach (int n in holders.Where(n => view.Live[n]))
            sums[n] = await SumsAsync(view, round, generation, n, id, blocks, verify).ConfigureAwait(false);

        int source = -1;
        foreach (int n in SourceOrder(view, holders, former))
        {
            if (!sums.TryGetValue(n, out BlockSum[]? s))
                sums[n] = s = await SumsAsync(view, round, generation, n, id, blocks, verify).ConfigureAwait(false);
            if (s is not null)
            {
                source = n;
                break;
            }
        }
        if (source < 0)
        {
            LogNoSource(logger, id.ToString(), reason);
            return (ReconcileResult.Failed, 0);
        }

        // A holder that is down may keep a change no other copy got — its own last writes as the
        // gateway that died, a push that reached only it. Compared later, after the live copies
        // were read, it must not win (the old value would come back with no write in between):
        // marked stale, it is neither read nor a source until a round that reaches it has made
        // it agree.
        if (reason == ReconcileReason.Resync)
        {
            foreach (int n in holders)
            {
                if (!view.Live[n] && !await store.EnsureStaleAsync(view, n).ConfigureAwait(false))
                    return (ReconcileResult.Failed, 0);
            }
        }

        BlockSum[] reference = sums[source]!;
        var written = new List<int>();
        long total = 0;
        bool allHolders = true;
        foreach (int n in holders)
        {
            if (n == source || !view.Live[n])
                continue;
            BlockSum[]? target = sums[n];
            if (target is not null && target.AsSpan().SequenceEqual(reference))
                continue;
            // An unreadable copy (a checksum failed) is rewritten whole: its stored sums cannot be trusted.
            long bytes = await CopyAsync(view, round, generation, source, n, id, reference, target, throttled, cancellationToken).ConfigureAwait(false);
            if (bytes == SourceFailed)
                return (ReconcileResult.Failed, total);
            if (bytes == TargetFailed)
            {
                // That holder is as good as down (its lease may not have run out yet): it stays
                // behind, and the object logged, until a later round reaches it.
                allHolders = false;
                continue;
            }
            written.Add(n);
            total += bytes;
            // Bytes to a holder new to the object since the membership change moved; bytes to one
            // that held it before (and missed writes, or differs) resynced.
            if (former is not null && !former.Contains(view.Replicas[n].NodeId))
                counters.Moved(bytes);
            else
                counters.Resynced(bytes);
            if (reason == ReconcileReason.Scrub)
                counters.Repaired(1);
            LogCopied(logger, id.ToString(), view.Replicas[n].NodeId, bytes, reason);
        }
        if (written.Count > 0)
        {
            // Durable on every copy before anyone counts on it (a log clear, a stale mark lifted).
            foreach (int n in written.Append(source))
            {
                if (!round.Saw(await view.Replicas[n].FlushAsync(view.Epoch).ConfigureAwait(false)).IsOk)
                    allHolders = false;
            }
        }
        if (!allHolders || !holders.All(n => view.Live[n] && sums.ContainsKey(n) && (sums[n] is not null || written.Contains(n))))
            return (ReconcileResult.Partial, total);
        if (former is not null)
            await DropFormerCopiesAsync(view, generation, id, holders, former).ConfigureAwait(false);
        return (ReconcileResult.Complete, total);
    }

    /// <summary>Every current holder has the object: the copies left on members that no longer
    /// hold it give their space back. One that is down keeps its copy (no read ever uses it).</summary>
    private static async Task DropFormerCopiesAsync(ClusterView view, long generation, ObjectId id, int[] holders, HashSet<string> former)
    {
        for (int n = 0; n < view.Replicas.Length; n++)
        {
            if (former.Contains(view.Replicas[n].NodeId) && !holders.Contains(n) && view.Live[n])
                await view.Replicas[n].DeleteAsync(view.Epoch, generation, id).ConfigureAwait(false);
        }
    }

    /// <summary>Holders that may be copied from, best first: current holders that held the object
    /// before the change, the local one first; then earlier holders that are still members.
    /// Never a stale node (it may miss acknowledged writes).</summary>
    private static List<int> SourceOrder(ClusterView view, int[] holders, HashSet<string>? former)
    {
        bool Held(int n) => former is null || former.Contains(view.Replicas[n].NodeId);
        bool Usable(int n) => view.Live[n] && !view.Stale[n];
        var order = holders.Where(n => Usable(n) && Held(n)).OrderBy(n => n == view.LocalIndex ? 0 : 1).ToList();
        if (former is not null)
        {
            for (int n = 0; n < view.Replicas.Length; n++)
            {
                if (!holders.Contains(n) && Usable(n) && former.Contains(view.Replicas[n].NodeId))
                    order.Add(n);
            }
        }
        return order;
    }

    // A copy is compared only once its node refuses older holders' changes (ReplicatedStore.EnsureFencedAsync).
    private async Task<BlockSum[]?> SumsAsync(ClusterView view, Round round, long generation, int node, ObjectId id, int blocks, bool verify)
    {
        if (!round.Saw(await store.EnsureFencedAsync(view, node, id.Volume, generation).ConfigureAwait(false)).IsOk)
            return null;
        var sums = new BlockSum[blocks];
        PeerResult r = round.Saw(await view.Replicas[node].GetBlockSumsAsync(view.Epoch, id, 0, sums, verify).ConfigureAwait(false));
        return r.IsOk ? sums : null;
    }

    /// <summary>Copies the runs of blocks where <paramref name="target"/> differs from
    /// <paramref name="reference"/> (all of them when the target's sums are unknown); returns the
    /// data bytes written, or which side failed.</summary>
    private async Task<long> CopyAsync(ClusterView view, Round round, long generation, int from, int to, ObjectId id, BlockSum[] reference, BlockSum[]? target,
        bool throttled, CancellationToken cancellationToken)
    {
        IReplica source = view.Replicas[from];
        IReplica destination = view.Replicas[to];
        int bs = store.BlockSize;
        long copied = 0;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(Chunk);
        try
        {
            for (int b = 0; b < reference.Length;)
            {
                if (target is not null && target[b] == reference[b])
                {
                    b++;
                    continue;
                }
                // A run of differing blocks in one source state, at most one chunk long.
                int e = b + 1;
                while (e < reference.Length && reference[e].State == reference[b].State
                       && (target is null || target[e] != reference[e]) && (long)(e - b + 1) * bs <= Chunk)
                    e++;
                long offset = (long)b * bs;
                int length = (e - b) * bs;
                cancellationToken.ThrowIfCancellationRequested();
                PeerResult r;
                switch (reference[b].State)
                {
                    case BlockState.Data:
                        if (throttled)
                            await throttle.WaitAsync(length, cancellationToken).ConfigureAwait(false);
                        r = round.Saw(await source.ReadAsync(view.Epoch, id, offset, buffer.AsMemory(0, length)).ConfigureAwait(false));
                        if (!r.IsOk)
                        {
                            LogCopyFailed(logger, id.ToString(), source.NodeId, r.Status);
                            return SourceFailed;
                        }
                        r = await destination.WriteAsync(view.Epoch, generation, id, offset, buffer.AsMemory(0, length), fua: false).ConfigureAwait(false);
                        copied += length;
                        break;
                    case BlockState.Zero:
                        r = await destination.ZeroAsync(view.Epoch, generation, id, offset, length, keepAllocated: true, fua: false).ConfigureAwait(false);
                        break;
                    default:
                        r = await destination.ZeroAsync(view.Epoch, generation, id, offset, length, keepAllocated: false, fua: false).ConfigureAwait(false);
                        break;
                }
                if (!round.Saw(r).IsOk)
                {
                    LogCopyFailed(logger, id.ToString(), destination.NodeId, r.Status);
                    return TargetFailed;
                }
                b = e;
            }
            return copied;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>The newest epoch a copy answered from during one round (a StaleEpoch reply).</summary>
    private sealed class Round(long epoch)
    {
        public long Newest { get; private set; } = epoch;

        public PeerResult Saw(PeerResult r)
        {
            if (r.Status == PeerStatus.StaleEpoch && r.Epoch > Newest)
                Newest = r.Epoch;
            return r;
        }
    }

    [LoggerMessage(EventId = 61, Level = LogLevel.Warning, Message = "Object {Object}: no current copy to {Reason} from")]
    private static partial void LogNoSource(ILogger logger, string @object, ReconcileReason reason);

    [LoggerMessage(EventId = 62, Level = LogLevel.Information, Message = "Object {Object}: copy on {Node} brought up to date ({Bytes} bytes, {Reason})")]
    private static partial void LogCopied(ILogger logger, string @object, string node, long bytes, ReconcileReason reason);

    [LoggerMessage(EventId = 63, Level = LogLevel.Warning, Message = "Object {Object}: copying between copies failed on {Node} ({Status})")]
    private static partial void LogCopyFailed(ILogger logger, string @object, string node, PeerStatus status);
}
