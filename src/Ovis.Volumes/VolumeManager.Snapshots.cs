using System.Buffers;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// Snapshots, clones, rollback, delete and flatten. Every layer is a set of objects of its own
/// id; a snapshot freezes the volume's current top layer under <c>NAME@TAG</c> and the volume
/// continues on a new, empty layer above it (as Sheepdog gives the working VDI a new id). None of
/// this copies data, so it takes the same time for a 1 GiB volume as for a 1 TiB one. Registry
/// changes are single atomic saves; data goes away only after the registry no longer names it
/// (orphans are removed at start), so a crash never leaves a reference to missing data.
/// </summary>
public sealed partial class VolumeManager
{
    // Layers that a flatten or a merge is copying from or into, outside the control lock: no
    // other control operation may change them until it is done. Guarded by _lock.
    private readonly HashSet<uint> _pinned = [];

    /// <summary>Reads through parent layers, for a merge to wait for before it trims a parent.</summary>
    internal ReadGrace Grace { get; } = new();

    private void Pin(uint[] layers)
    {
        lock (_lock)
        {
            if (layers.Any(_pinned.Contains))
            {
                throw new VolumeException(VolumeErrorCode.InUse, "a flatten or a snapshot merge is already using these layers: try again when it is done");
            }
            _pinned.UnionWith(layers);
        }
    }

    private void Unpin(uint[] layers)
    {
        lock (_lock)
        {
            _pinned.ExceptWith(layers);
        }
    }

    private static void CheckNotDeleting(VolumeRecord r)
    {
        if (r.Deleting)
        {
            throw new VolumeException(VolumeErrorCode.InUse, $"snapshot '{r.DisplayName}' is being deleted (merged into the layer over it): run 'ovis vdi delete {r.DisplayName}' to finish");
        }
    }

    private void CheckNotPinned(VolumeRecord r, string name)
    {
        lock (_lock)
        {
            if (_pinned.Contains(r.Id))
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"'{name}' is being flattened or merged: try again when that is done");
            }
        }
    }

    public async Task<VolumeInfo> SnapshotAsync(string name, string tag)
    {
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            return await SnapshotUnderControlAsync(name, tag, atInstant: null).ConfigureAwait(false);
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>
    /// The snapshot itself, under <see cref="_control"/>. <paramref name="atInstant"/> runs while
    /// the volume's gate is frozen, after the flush and before the snapshot is committed: no write
    /// is in flight, and every write after it goes to the new layer (a backup starts its bitmap's
    /// next period there). It runs once, whatever retries the commit needs (the gate stays frozen
    /// meanwhile); when the snapshot fails the caller undoes what it did.
    /// </summary>
    private async Task<VolumeInfo> SnapshotUnderControlAsync(string name, string tag, Action<VolumeState>? atInstant)
    {
        CheckName(tag, "snapshot tag");
        VolumeState v = FindLive(name);
        CheckNotPinned(v.Record, name);
        string full = $"{name}@{tag}";
        CheckFree(full);
        // Writes in flight finish into the layer being frozen; new ones wait and then go to
        // the new layer. Everything acknowledged so far is made durable before the registry
        // names the snapshot, so a completed snapshot survives a crash whole.
        await v.Gate.FreezeAsync().ConfigureAwait(false);
        try
        {
            await FlushOrThrowAsync().ConfigureAwait(false);
            atInstant?.Invoke(v);
            await CommitAsync(state =>
            {
                // Checked again: another node may have changed the registry since.
                if (FindLive(name) != v)
                {
                    throw new VolumeException(VolumeErrorCode.Conflict, $"volume '{name}' was deleted and created again by another node meanwhile: try again");
                }
                CheckNotPinned(v.Record, name);
                CheckFree(full);
                VolumeRecord top = v.Record;
                // The mode goes on with the live volume's new layer; a snapshot takes no writes.
                VolumeRecord snapshot = top with { Tag = tag, Created = DateTimeOffset.UtcNow, Cache = CacheMode.Writethrough };
                VolumeRecord live = top with { Id = state.NextId, ParentId = top.Id };
                return [.. state.Volumes.Select(r => r.Id == top.Id ? snapshot : r), live];
            }).ConfigureAwait(false);
        }
        finally
        {
            v.Gate.Thaw();
        }
        return Get(full);
    }

    public async Task<VolumeInfo> CloneAsync(string snapshot, string newName)
    {
        CheckName(newName, "volume name");
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            await CommitAsync(state =>
            {
                VolumeRecord r = Find(snapshot).Record;
                if (!r.IsSnapshot)
                {
                    throw new VolumeException(VolumeErrorCode.InvalidArgument, $"'{snapshot}' is not a snapshot: clone from NAME@TAG (take one with 'vdi snapshot')");
                }
                CheckNotDeleting(r);
                CheckFree(newName);
                VolumeRecord clone = new(state.NextId, newName, r.Size, r.ObjectSize, DateTimeOffset.UtcNow) { ParentId = r.Id };
                return [.. state.Volumes, clone];
            }).ConfigureAwait(false);
            return Get(newName);
        }
        finally
        {
            _control.Release();
        }
    }

    public async Task<VolumeInfo> RollbackAsync(string name, string tag)
    {
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            // Everything may read differently afterwards: marked and saved before the rollback is
            // committed (one refused only over-reports).
            VolumeState before = FindLive(name);
            long targetSize = Find($"{name}@{tag}").Record.Size;
            foreach (DirtyBitmap bitmap in before.Bitmaps)
            {
                bitmap.Grow(targetSize);
            }
            MarkAll(before, 0, Math.Max(before.Record.Size, targetSize));
            await SaveBitmapsOfAsync(before).ConfigureAwait(false);
            VolumeRecord old = await CommitAsync<VolumeRecord>(state =>
            {
                VolumeState v = FindLive(name);
                CheckNotPinned(v.Record, name);
                VolumeState target = Find($"{name}@{tag}");
                CheckNotDeleting(target.Record);
                if (v.Connections > 0)
                {
                    throw new VolumeException(VolumeErrorCode.InUse, $"volume '{name}' is exported to {v.Connections} connection(s): disconnect them before a rollback");
                }
                // The volume continues on a new, empty layer over the snapshot; its old top layer
                // is no longer named and its objects go.
                VolumeRecord top = v.Record;
                VolumeRecord live = top with { Id = state.NextId, ParentId = target.Record.Id, Size = target.Record.Size };
                return ([.. state.Volumes.Select(r => r.Id == top.Id ? live : r)], top);
            }).ConfigureAwait(false);
            await DeleteObjectsAsync(old.Id).ConfigureAwait(false);
            return Get(name);
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>
    /// Deletes a volume (refused while it is open or has snapshots) or a snapshot <c>NAME@TAG</c>:
    /// one that nothing depends on goes; one that a single layer depends on is merged into it
    /// first; one that several depend on is refused, naming them.
    /// </summary>
    public async Task DeleteAsync(string name)
    {
        (VolumeRecord Snapshot, VolumeRecord Child)? merge;
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeRecord deleted;
            (deleted, merge) = await CommitAsync<(VolumeRecord, (VolumeRecord Snapshot, VolumeRecord Child)?)>(state =>
            {
                VolumeState v = Find(name);
                VolumeRecord r = v.Record;
                CheckNotPinned(r, name);
                if (v.Connections > 0)
                {
                    throw new VolumeException(VolumeErrorCode.InUse, $"'{name}' is exported to {v.Connections} connection(s): disconnect them first");
                }
                List<VolumeRecord> dependents = [.. state.Volumes.Where(d => d.ParentId == r.Id)];
                if (!r.IsSnapshot)
                {
                    List<string> snapshots = [.. state.Volumes.Where(s => s.IsSnapshot && s.Name == r.Name).Select(s => s.DisplayName)];
                    if (snapshots.Count > 0)
                    {
                        throw new VolumeException(VolumeErrorCode.InUse, $"volume '{name}' has snapshots ({string.Join(", ", snapshots)}): delete them first");
                    }
                }
                else if (dependents.Count > 1)
                {
                    throw new VolumeException(VolumeErrorCode.InUse, $"snapshot '{name}' is needed by {string.Join(", ", dependents.Select(d => d.DisplayName))}: flatten or delete all but one of them first");
                }
                else if (dependents.Count == 1)
                {
                    // Marked first: from here on its blocks go as they are copied into the layer
                    // over it. A delete that stopped half-way is simply run again.
                    IReadOnlyList<VolumeRecord>? marked = r.Deleting ? null : [.. state.Volumes.Select(x => x.Id == r.Id ? x with { Deleting = true } : x)];
                    return (marked, (r, (r, dependents[0])));
                }
                return ([.. state.Volumes.Where(x => x.Id != r.Id)], (r, null));
            }).ConfigureAwait(false);
            if (merge is null)
            {
                if (!deleted.IsSnapshot)
                {
                    await DeleteBitmapsOfAsync(deleted.Name).ConfigureAwait(false);
                }
                await DeleteObjectsAsync(deleted.Id).ConfigureAwait(false);
                return;
            }
            Pin([merge.Value.Snapshot.Id, merge.Value.Child.Id]);
        }
        finally
        {
            _control.Release();
        }
        await MergeAsync(merge.Value.Snapshot, merge.Value.Child).ConfigureAwait(false);
    }

    /// <summary>
    /// The single dependent of a snapshot takes over the blocks it was inheriting from it; its
    /// reads do not change at any point, so this is safe while it is in use. The copy runs
    /// outside the control lock; both layers are pinned meanwhile.
    /// </summary>
    private async Task MergeAsync(VolumeRecord snapshot, VolumeRecord child)
    {
        try
        {
            await MoveIntoHolesAsync(snapshot, child).ConfigureAwait(false);
            await _control.WaitAsync().ConfigureAwait(false);
            try
            {
                await CommitAsync(state =>
                {
                    // The pins hold these layers still on this node; another node may have
                    // changed them meanwhile, and then the copy may not be what they need.
                    VolumeRecord? now = state.Volumes.FirstOrDefault(x => x.Id == snapshot.Id);
                    if (now is null || !state.Volumes.Where(x => x.ParentId == snapshot.Id).Select(x => x.Id).SequenceEqual([child.Id]))
                    {
                        throw new VolumeException(VolumeErrorCode.Conflict, $"snapshot '{snapshot.DisplayName}' or the layer over it was changed by another node during the merge: try the delete again");
                    }
                    return [.. state.Volumes.Where(x => x.Id != snapshot.Id).Select(x => x.Id == child.Id ? x with { ParentId = now.ParentId } : x)];
                }).ConfigureAwait(false);
                await DeleteObjectsAsync(snapshot.Id).ConfigureAwait(false);
            }
            finally
            {
                _control.Release();
            }
        }
        finally
        {
            Unpin([snapshot.Id, child.Id]);
        }
    }
    public async Task<VolumeInfo> FlattenAsync(string name, IProgress<double>? progress = null)
    {
        VolumeState v;
        VolumeRecord top;
        uint[] chain;
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            v = FindLive(name);
            top = v.Record;
            chain = v.Chain;
            if (chain.Length == 1)
            {
                progress?.Report(1);
                return Describe(v);
            }
            Pin(chain);
        }
        finally
        {
            _control.Release();
        }
        // The copy runs outside the control lock, which stays free for other volumes; the pins
        // keep this volume and the layers it reads from as they are until it is done.
        try
        {
            await CopyIntoHolesAsync(chain[1..], top, progress).ConfigureAwait(false);
            await _control.WaitAsync().ConfigureAwait(false);
            try
            {
                await CommitAsync(state =>
                {
                    // By id: the layer the blocks were copied into, even if another node has
                    // since snapshotted the volume over it.
                    VolumeRecord target = state.Volumes.FirstOrDefault(x => x.Id == top.Id)
                        ?? throw new VolumeException(VolumeErrorCode.Conflict, $"volume '{name}' was changed by another node during the flatten: try again");
                    return Replace(state, target with { ParentId = null });
                }).ConfigureAwait(false);
            }
            finally
            {
                _control.Release();
            }
        }
        finally
        {
            Unpin(chain);
        }
        progress?.Report(1);
        return Describe(v);
    }

    /// <summary>
    /// Copies what the layers <paramref name="source"/> (a chain, top first) hold into the holes of
    /// layer <paramref name="target"/>, block by block, never over a block the target has written
    /// (even concurrently), then flushes. Afterwards the target no longer needs those layers.
    /// </summary>
    private async Task CopyIntoHolesAsync(uint[] source, VolumeRecord target, IProgress<double>? progress)
    {
        long os = target.ObjectSize;
        int bs = _store.BlockSize;
        long objects = (target.Size + os - 1) / os;
        HashSet<uint>? present = SlotsHeldBy(source);
        byte[] data = ArrayPool<byte>.Shared.Rent((int)os);
        BlockState[] states = ArrayPool<BlockState>.Shared.Rent((int)(os / bs));
        try
        {
            for (uint index = 0; index < objects; index++)
            {
                progress?.Report((double)index / objects);
                if (present is not null && !present.Contains(index))
                {
                    continue; // nothing to inherit in this slot
                }
                int blocks = (int)(os / bs);
                StoreStatus s = await Layers.GetAllocationAsync(_store, source, index, 0, states.AsMemory(0, blocks)).ConfigureAwait(false);
                if (s == StoreStatus.Ok)
                {
                    s = await Layers.ReadAsync(_store, source, index, 0, data.AsMemory(0, (int)os)).ConfigureAwait(false);
                }
                if (s != StoreStatus.Ok)
                {
                    throw new IOException($"reading object {index} of the parent layers failed: {s}");
                }
                var id = new ObjectId(target.Id, index);
                for (int b = 0; b < blocks;)
                {
                    BlockState state = states[b];
                    int e = b + 1;
                    while (e < blocks && states[e] == state)
                    {
                        e++;
                    }
                    if (state != BlockState.Hole)
                    {
                        s = await _store.FillHolesAsync(id, (long)b * bs, data.AsMemory(b * bs, (e - b) * bs), zeroes: state == BlockState.Zero).ConfigureAwait(false);
                        if (s == StoreStatus.NoSpace)
                        {
                            // What was copied stays (the layer reads the same either way); a later try goes on from there.
                            throw new VolumeException(VolumeErrorCode.NoSpace,
                                $"no space to copy the blocks '{target.DisplayName}' inherits into it (the disk is full): free space first, by deleting a volume or a snapshot nothing depends on");
                        }
                        if (s != StoreStatus.Ok)
                        {
                            throw new IOException($"copying into object {id} failed: {s}");
                        }
                    }
                    b = e;
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(data);
            ArrayPool<BlockState>.Shared.Return(states);
        }
        await FlushOrThrowAsync().ConfigureAwait(false);
    }
}
