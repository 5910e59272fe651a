using System.Buffers;
using Ovis.Store;

namespace Ovis.Volumes;

/// <summary>
/// Snapshots, clones, rollback, delete and flatten. Every layer is a set of objects of its own
/// id; a snapshot freezes the volume's current top layer under <c>NAME@TAG</c> and the volume
/// continues on a new, empty layer above it (as Sheepdog gives the working VDI a new id). None of
/// this copies data, so it takes the same time for a 1 GiB volume as for a 1 TiB one. Catalog
/// changes are single atomic writes; data goes away only after the catalog no longer names it
/// (orphans are removed at start), so a crash never leaves a reference to missing data.
/// </summary>
public sealed partial class VolumeManager
{
    // Layers that a flatten or a merge is copying from or into, outside the control lock: no
    // other control operation may change them until it is done. Guarded by _lock.
    private readonly HashSet<uint> _pinned = [];

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
        CheckName(tag, "snapshot tag");
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(name);
            CheckNotPinned(v.Record, name);
            string full = $"{name}@{tag}";
            CheckFree(full);
            // Writes in flight finish into the layer being frozen; new ones wait and then go to
            // the new layer. Everything acknowledged so far is made durable before the catalog
            // names the snapshot, so a completed snapshot survives a crash whole.
            await v.Gate.FreezeAsync().ConfigureAwait(false);
            try
            {
                await FlushOrThrowAsync().ConfigureAwait(false);
                VolumeRecord top = v.Record;
                uint newId = _catalog.State.NextId;
                VolumeRecord snapshot = top with { Tag = tag, Created = DateTimeOffset.UtcNow };
                VolumeRecord live = top with { Id = newId, ParentId = top.Id };
                Apply([.. _catalog.State.Volumes.Select(r => r.Id == top.Id ? snapshot : r), live], moved: (top.Id, newId));
            }
            finally
            {
                v.Gate.Thaw();
            }
            return Get(full);
        }
        finally
        {
            _control.Release();
        }
    }

    public async Task<VolumeInfo> CloneAsync(string snapshot, string newName)
    {
        CheckName(newName, "volume name");
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState s = Find(snapshot);
            if (!s.Record.IsSnapshot)
            {
                throw new VolumeException(VolumeErrorCode.InvalidArgument, $"'{snapshot}' is not a snapshot: clone from NAME@TAG (take one with 'vdi snapshot')");
            }
            CheckFree(newName);
            VolumeRecord r = s.Record;
            AddRecord(new VolumeRecord(_catalog.State.NextId, newName, r.Size, r.ObjectSize, DateTimeOffset.UtcNow) { ParentId = r.Id });
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
            VolumeState v = FindLive(name);
            CheckNotPinned(v.Record, name);
            VolumeState target = Find($"{name}@{tag}");
            if (v.Connections > 0)
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"volume '{name}' is exported to {v.Connections} connection(s): disconnect them before a rollback");
            }
            // The volume continues on a new, empty layer over the snapshot; its old top layer is
            // no longer named and its objects go.
            VolumeRecord old = v.Record;
            VolumeRecord live = old with { Id = _catalog.State.NextId, ParentId = target.Record.Id, Size = target.Record.Size };
            Apply([.. _catalog.State.Volumes.Select(r => r.Id == old.Id ? live : r)], moved: (old.Id, live.Id));
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
        (VolumeRecord Snapshot, VolumeRecord Child)? merge = null;
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = Find(name);
            VolumeRecord r = v.Record;
            CheckNotPinned(r, name);
            if (v.Connections > 0)
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"'{name}' is exported to {v.Connections} connection(s): disconnect them first");
            }
            List<VolumeRecord> dependents = [.. _catalog.State.Volumes.Where(d => d.ParentId == r.Id)];
            if (!r.IsSnapshot)
            {
                List<string> snapshots = [.. _catalog.State.Volumes.Where(s => s.IsSnapshot && s.Name == r.Name).Select(s => s.DisplayName)];
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
                merge = (r, dependents[0]);
                Pin([r.Id, dependents[0].Id]);
            }
            if (merge is null)
            {
                Apply([.. _catalog.State.Volumes.Where(x => x.Id != r.Id)]);
                await DeleteObjectsAsync(r.Id).ConfigureAwait(false);
                return;
            }
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
            await CopyIntoHolesAsync([snapshot.Id], child, progress: null).ConfigureAwait(false);
            await _control.WaitAsync().ConfigureAwait(false);
            try
            {
                Apply([.. _catalog.State.Volumes.Where(x => x.Id != snapshot.Id).Select(x => x.Id == child.Id ? x with { ParentId = snapshot.ParentId } : x)]);
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
        uint[] chain;
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            v = FindLive(name);
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
            await CopyIntoHolesAsync(chain[1..], v.Record, progress).ConfigureAwait(false);
            await _control.WaitAsync().ConfigureAwait(false);
            try
            {
                SaveRecord(v.Record with { ParentId = null });
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
        var present = new HashSet<uint>(_store.ListObjects().Where(o => source.Contains(o.Volume)).Select(o => o.Index));
        byte[] data = ArrayPool<byte>.Shared.Rent((int)os);
        BlockState[] states = ArrayPool<BlockState>.Shared.Rent((int)(os / bs));
        try
        {
            for (uint index = 0; index < objects; index++)
            {
                progress?.Report((double)index / objects);
                if (!present.Contains(index))
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
