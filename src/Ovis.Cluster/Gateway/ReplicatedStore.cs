using System.Buffers;
using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Peer;
using Ovis.Cluster.Recovery;
using Ovis.Store;

namespace Ovis.Cluster.Gateway;

/// <summary>
/// The gateway: an <see cref="IObjectStore"/> that keeps every object on the nodes the
/// placement names. A change goes to all copies at once and completes when every reachable one
/// has it — and at least <see cref="ClusterView.MinCopies"/> did; a copy that missed it is marked
/// stale in the catalog before the reply, so no read ever comes from it. A read goes to one
/// copy: the local one when it holds one, else the next in placement order. A replica in a newer
/// epoch refuses a request; the gateway then refreshes its view and sends it again.
/// Flushes go only to the nodes holding unflushed writes of the volume (<see cref="FlushAsync(uint)"/>).
/// </summary>
public sealed partial class ReplicatedStore : IObjectStore
{
    // A request refused for its epoch is retried after a refresh; the epoch cannot run away forever.
    private const int MaxAttempts = 8;

    private readonly IObjectStore _local;
    private readonly IGatewayControl _control;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<string, bool> _markedStale = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<uint, DirtyNodes> _dirty = new();
    private ClusterView _view;

    /// <param name="local">This node's store: it answers space and object listings.</param>
    /// <param name="dirtyLog">The dirty-region log every change is marked in first; null runs without one.</param>
    public ReplicatedStore(IObjectStore local, ClusterView view, IGatewayControl control, ILogger logger, DirtyLog? dirtyLog = null)
    {
        _local = local;
        _view = view;
        _control = control;
        _logger = logger;
        DirtyLog = dirtyLog;
    }

    /// <summary>Client requests and recovery work take turns on each object here.</summary>
    public ObjectGate Gate { get; } = new();

    public DirtyLog? DirtyLog { get; }

    public ClusterView View => Volatile.Read(ref _view);

    public int BlockSize => _local.BlockSize;

    public long MaxObjectSize => _local.MaxObjectSize;

    public long UsedBytes => _local.UsedBytes;

    public IReadOnlyCollection<ObjectId> ListObjects() => _local.ListObjects();

    /// <summary>This node holds a copy of every object only while every member does.</summary>
    public bool ListsEveryObject => View is { Placement: { } placement } view && view.Copies >= placement.Nodes.Count;

    /// <summary>Installs a newer view (by catalog revision); an older one is ignored, as views may arrive out of order.</summary>
    public void Update(ClusterView view)
    {
        ArgumentNullException.ThrowIfNull(view);
        ClusterView current = Volatile.Read(ref _view);
        while (view.Revision > current.Revision)
        {
            ClusterView seen = Interlocked.CompareExchange(ref _view, view, current);
            if (ReferenceEquals(seen, current))
            {
                ForgetClearedMarks(view);
                return;
            }
            current = seen;
        }
    }

    public ValueTask<StoreStatus> WriteAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua, IBlockSource? underlay = null)
    {
        int bs = BlockSize;
        return underlay is not null && (offset % bs != 0 || (offset + data.Length) % bs != 0)
            ? WriteOverUnderlayAsync(id, offset, data, fua, underlay)
            : MutateAsync(id, new WriteOp(offset, data, fua));
    }

    /// <summary>
    /// A write that covers a block only in part, in a layer over parents: the replicas cannot ask
    /// the parents themselves, so the gateway first fills the edge blocks with the parents'
    /// content where the copies still have holes (FILL_HOLES is atomic per block on each copy, so
    /// a racing write is never overwritten), then writes.
    /// </summary>
    private async ValueTask<StoreStatus> WriteOverUnderlayAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua, IBlockSource underlay)
    {
        int bs = BlockSize;
        long end = offset + data.Length;
        long first = offset / bs;
        long last = (end - 1) / bs;
        StoreStatus s = StoreStatus.Ok;
        if (offset % bs != 0)
            s = await FillFromParentsAsync(id, first, underlay).ConfigureAwait(false);
        if (s == StoreStatus.Ok && end % bs != 0 && (last != first || offset % bs == 0))
            s = await FillFromParentsAsync(id, last, underlay).ConfigureAwait(false);
        return s == StoreStatus.Ok ? await MutateAsync(id, new WriteOp(offset, data, fua)).ConfigureAwait(false) : s;
    }

    private async ValueTask<StoreStatus> FillFromParentsAsync(ObjectId id, long block, IBlockSource underlay)
    {
        int bs = BlockSize;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(bs);
        try
        {
            return await underlay.ReadBlockAsync((int)block, buffer.AsMemory(0, bs)).ConfigureAwait(false)
                ? await MutateAsync(id, new FillOp(block * bs, buffer.AsMemory(0, bs), Zeroes: false, FromReserve: false)).ConfigureAwait(false)
                : StoreStatus.IoError;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public ValueTask<StoreStatus> FillHolesAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false)
        => MutateAsync(id, new FillOp(offset, data, zeroes, fromReserve));

    public ValueTask<StoreStatus> ZeroAsync(ObjectId id, long offset, long length, bool keepAllocated, bool fua)
        => MutateAsync(id, new ZeroOp(offset, length, keepAllocated, fua));

    public ValueTask<StoreStatus> DeleteAsync(ObjectId id) => MutateAsync(id, default(DeleteOp));

    /// <summary>The lock generation changes of <paramref name="layer"/> go out with; null when this
    /// node may not change it (it does not hold the volume's lock, or its lease may be gone).</summary>
    internal long? GenerationOf(uint layer) => _control.GenerationOf(layer);

    /// <summary>As <see cref="GenerationOf"/>, waiting for a lease renewal that is only late.</summary>
    internal ValueTask<long?> WaitGenerationAsync(uint layer) => _control.WaitGenerationAsync(layer);

    /// <summary>
    /// A write sent only under lock generation <paramref name="generation"/>: when this node's lock
    /// on the layer's volume is no longer that tenure (lost, fenced, or taken anew) it is not sent
    /// and fails. The writeback cache pushes with it, so a write acknowledged under one tenure
    /// never lands under a later one (a successor's data may be in between).
    /// </summary>
    internal ValueTask<StoreStatus> WriteUnderAsync(long generation, ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua)
        => MutateAsync(id, new WriteOp(offset, data, fua), generation);

    /// <summary>Sends a change to every copy of <paramref name="id"/> at once, after the object's
    /// recovery work (if any) and its mark in the dirty-region log.</summary>
    private async ValueTask<StoreStatus> MutateAsync<TOp>(ObjectId id, TOp op, long tenure = 0) where TOp : struct, IReplicaOp
    {
        if (!await Gate.EnterAsync(id, forWrite: true).ConfigureAwait(false))
            return StoreStatus.IoError;
        try
        {
            if (DirtyLog is null)
                return await SendToCopiesAsync(id, op, tenure).ConfigureAwait(false);
            DirtyLog.WriteMark mark;
            try
            {
                mark = await DirtyLog.BeginWriteAsync(id).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // The log could not be saved: the change must not go out unlogged.
            catch (Exception)
#pragma warning restore CA1031
            {
                return StoreStatus.IoError;
            }
            bool missed = true;
            try
            {
                (StoreStatus status, missed) = await SendToCopiesCountingAsync(id, op, tenure).ConfigureAwait(false);
                return status;
            }
            finally
            {
                DirtyLog.EndWrite(mark, missed);
            }
        }
        finally
        {
            Gate.Leave(id);
        }
    }

    private async ValueTask<StoreStatus> SendToCopiesAsync<TOp>(ObjectId id, TOp op, long tenure = 0) where TOp : struct, IReplicaOp
        => (await SendToCopiesCountingAsync(id, op, tenure).ConfigureAwait(false)).Status;

    /// <summary>The change on every reachable copy; Missed when some copy did not take it (or it
    /// failed). A <paramref name="tenure"/> other than 0 is the only lock generation it may go under.</summary>
    private async ValueTask<(StoreStatus Status, bool Missed)> SendToCopiesCountingAsync<TOp>(ObjectId id, TOp op, long tenure = 0) where TOp : struct, IReplicaOp
    {
        for (int attempt = 1; ; attempt++)
        {
            ClusterView view = View;
            if (view.Placement is not { } placement)
            {
                LogCannotPlace(_logger, view.PlacementError ?? "no members");
                return (StoreStatus.IoError, true);
            }
            // Asked at every attempt, right before sending: after a pause or a lapsed lease the
            // change must not go out at all (the replicas' fences catch what slips through). A
            // renewal that is only late is waited for: nobody can take the lock meanwhile.
            if ((_control.GenerationOf(id.Volume) ?? await _control.WaitGenerationAsync(id.Volume).ConfigureAwait(false)) is not { } generation
                || (tenure != 0 && generation != tenure))
            {
                LogNotHolder(_logger, id.ToString());
                return (StoreStatus.IoError, true);
            }
            int copies = view.Copies;
            int[] picks = new int[copies];
            placement.ChooseIndexes(id.Packed, picks);
            // All copies are started before any is awaited; each is awaited exactly once below.
            var pending = new ValueTask<PeerResult>[copies];
            for (int i = 0; i < copies; i++)
            {
                int n = picks[i];
#pragma warning disable CA2012
                pending[i] = view.Live[n]
                    ? op.Send(view.Replicas[n], view.Epoch, generation, id)
                    : new(new PeerResult(PeerStatus.Unreachable, view.Epoch));
#pragma warning restore CA2012
            }

            int reached = 0;
            ulong holding = 0; // slots of the nodes that took the change
            long newest = view.Epoch;
            bool noSpace = false;
            bool fenced = false;
            ulong missed = 0; // bits over i
            for (int i = 0; i < copies; i++)
            {
                PeerResult reply = await pending[i].ConfigureAwait(false);
                switch (reply.Status)
                {
                    case PeerStatus.Ok:
                        reached++;
                        holding |= 1UL << view.Slots[picks[i]];
                        break;
                    case PeerStatus.StaleEpoch:
                        newest = Math.Max(newest, reply.Epoch);
                        break;
                    case PeerStatus.Fenced:
                        fenced = true;
                        break;
                    case PeerStatus.NoSpace:
                        // A full node misses the change like a dead one: the others may still take it.
                        noSpace = true;
                        missed |= 1UL << i;
                        break;
                    default:
                        missed |= 1UL << i;
                        break;
                }
            }
            if (fenced)
            {
                // Another node holds the volume now: its copies are its business, none is marked
                // stale from here, and this change failed whatever other copies took.
                LogFenced(_logger, id.ToString(), generation);
                _control.OnFenced(id.Volume, generation);
                return (StoreStatus.IoError, true);
            }
            if (newest > view.Epoch && attempt < MaxAttempts)
            {
                // Some copy lives in a newer epoch, perhaps with a new placement: send the whole change again.
                await _control.RefreshAsync(newest).ConfigureAwait(false);
                continue;
            }
            if (reached < view.MinCopies || reached + BitCount(missed) < copies)
            {
                LogTooFewCopies(_logger, id.ToString(), reached, view.MinCopies, view.Epoch);
                return (noSpace ? StoreStatus.NoSpace : StoreStatus.IoError, true);
            }
            for (int i = 0; i < copies && missed != 0; i++)
            {
                if ((missed & (1UL << i)) != 0 && !await EnsureStaleAsync(view, picks[i]).ConfigureAwait(false))
                    return (StoreStatus.IoError, true);
            }
            // Recorded after the copies took the change and before the reply: a flush that starts
            // after the reply finds these nodes (one that starts earlier need not cover it). A
            // durable change is on every copy that answered already: no flush needs those nodes.
            if (!op.Durable)
                _dirty.GetOrAdd(id.Volume, static layer => new DirtyNodes(layer)).Add(holding, reached);
            return (StoreStatus.Ok, missed != 0);
        }
    }

    private static int BitCount(ulong bits) => System.Numerics.BitOperations.PopCount(bits);

    /// <summary>Marks a copy that missed a change stale, once per node; false when the catalog could not be told.</summary>
    internal async ValueTask<bool> EnsureStaleAsync(ClusterView view, int node)
    {
        if (view.Stale[node])
            return true;
        string nodeId = view.Replicas[node].NodeId;
        if (_markedStale.ContainsKey(nodeId))
            return true;
        try
        {
            await _control.MarkStaleAsync(nodeId, view.Epoch).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Whatever the catalog's failure, the write cannot be acknowledged.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            LogStaleMarkFailed(_logger, nodeId, ex);
            return false;
        }
        _markedStale[nodeId] = true;
        LogMarkedStale(_logger, nodeId, view.Epoch);
        return true;
    }

    /// <summary>A mark this gateway made that the catalog no longer has was cleared (the node was
    /// resynced): should the node miss a write again, it must be marked again.</summary>
    private void ForgetClearedMarks(ClusterView view)
    {
        if (_markedStale.IsEmpty)
            return;
        for (int n = 0; n < view.Replicas.Length; n++)
        {
            if (!view.Stale[n])
                _markedStale.TryRemove(view.Replicas[n].NodeId, out _);
        }
    }

    // The control installs a view with the mark before a write that made it is acknowledged, so
    // the view alone says which copies may be read.
    private static bool Readable(ClusterView view, int node) => view.Live[node] && !view.Stale[node];

    public ValueTask<StoreStatus> ReadAsync(ObjectId id, long offset, Memory<byte> buffer)
        => Inside(id, new ReadOp(offset, buffer), static (store, view, id, op) => store.ReadInsideAsync(view, id, op.Offset, op.Buffer));

    public ValueTask<StoreStatus> GetAllocationAsync(ObjectId id, long offset, Memory<BlockState> states)
        => Inside(id, new AllocationOp(offset, states), static (store, view, id, op) => store.GetAllocationInsideAsync(view, id, op.Offset, op.States));

    /// <summary>
    /// Runs a read-side request inside the object's gate: after its recovery work, if any, and
    /// never beside it. Synchronous all the way when nothing waits. The request uses the view
    /// taken <em>before</em> it entered: a request that got in just before the gate shut for a
    /// new placement must not read that placement, whose new holders may not have their copies
    /// yet (their work is queued only after the view is in); one that took the new view waits at
    /// the gate for that work.
    /// </summary>
    private ValueTask<StoreStatus> Inside<TOp>(ObjectId id, TOp op, Func<ReplicatedStore, ClusterView, ObjectId, TOp, ValueTask<StoreStatus>> request)
    {
        ClusterView view = View;
        ValueTask<bool> entered = Gate.EnterAsync(id, forWrite: false);
        if (!entered.IsCompletedSuccessfully)
            return InsideAsync(entered, view, id, op, request);
        if (!entered.Result)
            return new(StoreStatus.IoError);
        ValueTask<StoreStatus> pending;
        try
        {
            pending = request(this, view, id, op);
        }
        catch
        {
            Gate.Leave(id);
            throw;
        }
        if (pending.IsCompletedSuccessfully)
        {
            Gate.Leave(id);
            return pending;
        }
        return LeaveAfterAsync(pending, id);
    }

    private async ValueTask<StoreStatus> InsideAsync<TOp>(ValueTask<bool> entered, ClusterView view, ObjectId id, TOp op,
        Func<ReplicatedStore, ClusterView, ObjectId, TOp, ValueTask<StoreStatus>> request)
    {
        if (!await entered.ConfigureAwait(false))
            return StoreStatus.IoError;
        try
        {
            return await request(this, view, id, op).ConfigureAwait(false);
        }
        finally
        {
            Gate.Leave(id);
        }
    }

    private async ValueTask<StoreStatus> LeaveAfterAsync(ValueTask<StoreStatus> pending, ObjectId id)
    {
        try
        {
            return await pending.ConfigureAwait(false);
        }
        finally
        {
            Gate.Leave(id);
        }
    }

    private ValueTask<StoreStatus> ReadInsideAsync(ClusterView view, ObjectId id, long offset, Memory<byte> buffer)
    {
        // The common case, a local copy that is current, costs no more than the local store.
        if (view.Holds(view.LocalIndex, id) && Readable(view, view.LocalIndex))
        {
            ValueTask<StoreStatus> local = _local.ReadAsync(id, offset, buffer);
            if (!local.IsCompletedSuccessfully)
                return ReadLocalThenCopiesAsync(local, view, id, offset, buffer);
            if (local.Result == StoreStatus.Ok)
                return local;
        }
        return ReadFromCopiesAsync(view, id, offset, buffer);
    }

    private async ValueTask<StoreStatus> ReadLocalThenCopiesAsync(ValueTask<StoreStatus> local, ClusterView view, ObjectId id, long offset, Memory<byte> buffer)
        => await local.ConfigureAwait(false) == StoreStatus.Ok
            ? StoreStatus.Ok
            : await ReadFromCopiesAsync(view, id, offset, buffer).ConfigureAwait(false);

    private ValueTask<StoreStatus> ReadFromCopiesAsync(ClusterView view, ObjectId id, long offset, Memory<byte> buffer)
        => FromOneCopyAsync(view, id, new ReadOp(offset, buffer));

    private ValueTask<StoreStatus> GetAllocationInsideAsync(ClusterView view, ObjectId id, long offset, Memory<BlockState> states)
        => view.Holds(view.LocalIndex, id) && Readable(view, view.LocalIndex)
            ? _local.GetAllocationAsync(id, offset, states)
            : FromOneCopyAsync(view, id, new AllocationOp(offset, states));

    /// <summary>Asks the copies that may be read in <paramref name="view"/>, best first, until one
    /// answers; after a refresh (a copy is in a newer epoch), those of the view then.</summary>
    private async ValueTask<StoreStatus> FromOneCopyAsync<TOp>(ClusterView view, ObjectId id, TOp op) where TOp : struct, IReplicaOp
    {
        for (int attempt = 1; ; attempt++)
        {
            if (view.Placement is null)
                return StoreStatus.IoError;
            long newest = view.Epoch;
            foreach (int n in ReadOrder(view, id))
            {
                PeerResult reply = await op.Send(view.Replicas[n], view.Epoch, 0, id).ConfigureAwait(false);
                if (reply.IsOk)
                    return StoreStatus.Ok;
                if (reply.Status == PeerStatus.StaleEpoch)
                    newest = Math.Max(newest, reply.Epoch);
                // Any other failure (a checksum, a dead node): the next copy may have it right.
            }
            if (newest > view.Epoch && attempt < MaxAttempts)
            {
                await _control.RefreshAsync(newest).ConfigureAwait(false);
                // The newer view may place the object on a holder whose copy is not filled yet, and
                // its recovery waits for the requests inside the gate — this one too. So it steps
                // out and in again, behind that work (seen: a read inside the gate when a node was
                // taken out retried on the new holder's empty copy and returned zeroes).
                view = View;
                if (!await Gate.ReenterAsync(id, forWrite: false).ConfigureAwait(false))
                    return StoreStatus.IoError;
                continue;
            }
            return StoreStatus.IoError;
        }
    }

    /// <summary>The copies a read may use, best first: the local one, then placement order; never a stale or down one.</summary>
    private static List<int> ReadOrder(ClusterView view, ObjectId id)
    {
        int[] picks = new int[view.Copies];
        view.Placement!.ChooseIndexes(id.Packed, picks);
        var order = new List<int>(picks.Length);
        if (picks.Contains(view.LocalIndex) && Readable(view, view.LocalIndex))
            order.Add(view.LocalIndex);
        foreach (int n in picks)
        {
            if (n != view.LocalIndex && Readable(view, n))
                order.Add(n);
        }
        return order;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    [LoggerMessage(EventId = 40, Level = LogLevel.Error, Message = "Cannot place objects: {Reason}")]
    private static partial void LogCannotPlace(ILogger logger, string reason);

    [LoggerMessage(EventId = 41, Level = LogLevel.Error, Message = "Object {Object}: only {Reached} copies answered, {Min} needed (epoch {Epoch})")]
    private static partial void LogTooFewCopies(ILogger logger, string @object, int reached, int min, long epoch);

    [LoggerMessage(EventId = 42, Level = LogLevel.Warning, Message = "Node {Node} missed a write in epoch {Epoch}: marked stale, no reads from it until it is resynced")]
    private static partial void LogMarkedStale(ILogger logger, string node, long epoch);

    [LoggerMessage(EventId = 43, Level = LogLevel.Error, Message = "Could not mark node {Node} stale in the catalog: the write is not acknowledged")]
    private static partial void LogStaleMarkFailed(ILogger logger, string node, Exception exception);

    [LoggerMessage(EventId = 44, Level = LogLevel.Error, Message = "Object {Object}: a replica refused the change from lock generation {Generation} as fenced: another node holds the volume now")]
    private static partial void LogFenced(ILogger logger, string @object, long generation);

    [LoggerMessage(EventId = 45, Level = LogLevel.Error, Message = "Object {Object}: not sent, this node does not hold the volume's lock (or its lease may have run out)")]
    private static partial void LogNotHolder(ILogger logger, string @object);
}
