namespace Ovis.Cluster;

/// <summary>
/// The 64-bit hashes behind <see cref="Placement"/>. These functions decide where every object
/// lives: changing any constant here moves (nearly) all data in every cluster, so they are
/// frozen, and <c>PlacementTests</c> pins their output with golden values.
/// </summary>
/// <remarks>
/// Hand-written because System.IO.Hashing does not restore here (see ENVIRONMENT.md), and
/// <see cref="string.GetHashCode()"/> is randomised per process.
/// </remarks>
internal static class PlacementHash
{
    /// <summary>
    /// The SplitMix64 finalizer (Steele, Lea and Flood, "Fast splittable pseudorandom number
    /// generators", 2014, with David Stafford's "Mix13" constants — the same variant as
    /// java.util.SplittableRandom). A bijection on 64 bits in which every input bit flips every
    /// output bit with probability about 1/2, so sequential object ids look independent.
    /// </summary>
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Hash of an object id, computed once per placement decision.</summary>
    // The golden-ratio increment keeps object id 0 away from the fixed point Mix(0) = 0.
    public static ulong OfObject(ulong objectId) => Mix(objectId + 0x9E3779B97F4A7C15UL);

    /// <summary>Hash of a node id: FNV-1a 64 over the UTF-16 code units, then <see cref="Mix"/>
    /// (FNV alone mixes its last characters poorly; "node-1" and "node-2" differ in one).</summary>
    public static ulong OfNode(string nodeId)
    {
        ulong h = 0xCBF29CE484222325UL; // FNV-1a 64 offset basis
        foreach (char c in nodeId)
        {
            h ^= c;
            h *= 0x100000001B3UL; // FNV-1a 64 prime
        }
        return Mix(h);
    }

    /// <summary>The hash of the pair (object, node) from their separate hashes.</summary>
    public static ulong OfPair(ulong objectHash, ulong nodeHash) => Mix(objectHash ^ nodeHash);
}
