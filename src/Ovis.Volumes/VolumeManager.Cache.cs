using System.Collections.Frozen;

namespace Ovis.Volumes;

// The per-volume cache mode (docs/writeback-cache.md): kept in the registry, so a mode set
// through one node reaches the others through the registry's watch, as a resize does.
public sealed partial class VolumeManager
{
    // The layers of live volumes in writeback mode: replaced whole on every registry change (under
    // _lock), read without a lock on every write. Usually empty.
    private FrozenSet<uint> _writeback = FrozenSet<uint>.Empty;

    /// <summary>
    /// How writes to <paramref name="layer"/> are acknowledged: the mode of the live volume whose
    /// top layer it is; <see cref="CacheMode.Writethrough"/> for a snapshot's layer or an id no
    /// layer has (any more). Lock-free and allocation-free: gateways ask on every write.
    /// </summary>
    public CacheMode CacheModeOf(uint layer)
        => Volatile.Read(ref _writeback).Contains(layer) ? CacheMode.Writeback : CacheMode.Writethrough;

    /// <summary>
    /// Sets how gateways acknowledge <paramref name="name"/>'s writes, for every node of the
    /// cluster (the registry carries it). Refused for a snapshot, which is read-only; a clone is
    /// a volume like any other. Setting the mode it has already saves nothing.
    /// </summary>
    public async Task<VolumeInfo> SetCacheAsync(string name, CacheMode mode)
    {
        if (!Enum.IsDefined(mode))
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"invalid cache mode {(int)mode}: use writeback or writethrough");
        }
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = await CommitAsync<VolumeState>(state =>
            {
                VolumeState found = FindLive(name);
                VolumeRecord r = found.Record;
                return (r.Cache == mode ? null : Replace(state, r with { Cache = mode }), found);
            }).ConfigureAwait(false);
            return Describe(v);
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>Rebuilds <see cref="_writeback"/> from the registry's records; call under <see cref="_lock"/>.</summary>
    private void IndexCacheModes(IReadOnlyList<VolumeRecord> records)
        => Volatile.Write(ref _writeback, records.Where(r => !r.IsSnapshot && r.Cache == CacheMode.Writeback).Select(r => r.Id).ToFrozenSet());
}
