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
    public async Task<VolumeInfo> SnapshotAsync(string name, string tag)
    {
        CheckName(tag, "snapshot tag");
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(name);
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
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = Find(name);
            VolumeRecord r = v.Record;
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
                // The dependent takes over the blocks it was inheriting from this snapshot; its
                // reads do not change at any point, so the merge is safe while it is in use.
                VolumeRecord child = dependents[0];
                await CopyIntoHolesAsync([r.Id], child, progress: null).ConfigureAwait(false);
                Apply([.. _catalog.State.Volumes.Where(x => x.Id != r.Id).Select(x => x.Id == child.Id ? x with { ParentId = r.ParentId } : x)]);
                await DeleteObjectsAsync(r.Id).ConfigureAwait(false);
                return;
            }
            Apply([.. _catalog.State.Volumes.Where(x => x.Id != r.Id)]);
            await DeleteObjectsAsync(r.Id).ConfigureAwait(false);
        }
        finally
        {
            _control.Release();
        }
    }

    public async Task<VolumeInfo> FlattenAsync(string name, IProgress<double>? progress = null)
    {
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(name);
            uint[] chain = v.Chain;
            if (chain.Length == 1)
            {
                progress?.Report(1);
                return Describe(v);
            }
            await CopyIntoHolesAsync(chain[1..], v.Record, progress).ConfigureAwait(false);
            SaveRecord(v.Record with { ParentId = null });
            progress?.Report(1);
            return Describe(v);
        }
        finally
        {
            _control.Release();
        }
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
                Layers.GetAllocation(_store, source, index, 0, states.AsSpan(0, blocks));
                StoreStatus s = await Layers.ReadAsync(_store, source, index, 0, data.AsMemory(0, (int)os)).ConfigureAwait(false);
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
