using Ovis.Store;

namespace Ovis.Cluster.Recovery;

/// <summary>The objects a volume's data lives in: its layers (the volume's own first, then the
/// snapshots it reads through) and the object slots of each.</summary>
public sealed record VolumeLayout(uint[] Chain, long Size, long ObjectSize)
{
    public uint ObjectsPerLayer => (uint)((Size + ObjectSize - 1) / ObjectSize);

    public IEnumerable<ObjectId> Objects()
    {
        foreach (uint layer in Chain)
        {
            for (uint i = 0; i < ObjectsPerLayer; i++)
                yield return new ObjectId(layer, i);
        }
    }

    public bool Contains(ObjectId id) => Chain.Contains(id.Volume) && id.Index < ObjectsPerLayer;
}

/// <summary>The pause switch operators flip with <c>ovis cluster recover pause|resume</c>.</summary>
public interface IRecoveryPause
{
    /// <summary>Completes at once unless recovery is paused; then when it is resumed.</summary>
    Task WaitWhilePausedAsync(CancellationToken cancellationToken);
}
