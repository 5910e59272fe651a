using System.Buffers;
using System.Runtime.CompilerServices;

namespace Ovis.Cluster;

/// <summary>
/// Maps an object to the nodes that hold its copies: weighted rendezvous (highest random
/// weight) hashing, with the copies of one object in distinct zones.
/// </summary>
/// <remarks>
/// <para>Each node scores an object with <c>-w / ln(u)</c>, where <c>w</c> is the node's weight
/// and <c>u</c> in (0, 1) comes from a hash of (object id, node id); the highest score wins.
/// <c>-ln(u) / w</c> is an exponential variable of rate <c>w</c>, so a node wins with probability
/// <c>w / Σw</c> (Schindelhauer and Schomaker, "Weighted distributed hash tables", 2005). The
/// code keeps the reciprocal <c>-ln(u) / w</c> and picks the smallest, which orders nodes the
/// same way.</para>
/// <para>Copies: the first is the best-scoring node overall (the primary); each next one is the
/// best-scoring node in a zone not used yet. Within a zone the winner is always that zone's own
/// best scorer, so a node's share of its zone follows its weight.</para>
/// <para>Why rendezvous: adding a node moves exactly the objects the new node now wins (about
/// <c>w_new / Σw</c> of them) and every moved copy goes <i>to</i> the new node; removing a node
/// moves only the copies it held. No ring, no virtual nodes, nothing to rebalance or persist:
/// the node list of an epoch determines everything.</para>
/// <para>An instance is immutable and thread-safe; build one per membership epoch. Choosing costs
/// one hash, one logarithm and one compare per node, and allocates nothing in
/// <see cref="ChooseIndexes"/> (only the result array in <see cref="Choose(ulong, int)"/>).</para>
/// </remarks>
public sealed class Placement
{
    /// <summary>Zone buffers up to this many zones live on the stack; more are rented.</summary>
    private const int StackZones = 128;

    // Nodes sorted by (zone, id), ordinal, so that each zone is one contiguous range and the
    // result does not depend on the order the caller listed the nodes in.
    private readonly ClusterNode[] _nodes;
    private readonly ulong[] _nodeHashes;
    private readonly double[] _inverseWeights;
    // Every zone of the nodes, weight 0 or not: zone z holds nodes [_zoneStarts[z], _zoneStarts[z + 1]).
    private readonly string[] _allZones;
    private readonly int[] _zoneStarts;
    // The zones with a node of positive weight: the only ones a copy can go to.
    private readonly string[] _zones;

    /// <summary>Builds the placement of one membership epoch.</summary>
    /// <exception cref="ArgumentException">A node has an empty id or zone, a weight that is negative
    /// or not finite, or an id that another node already has.</exception>
    public Placement(IEnumerable<ClusterNode> nodes)
    {
        ArgumentNullException.ThrowIfNull(nodes);
        ClusterNode[] sorted = [.. nodes];
        foreach (ClusterNode node in sorted)
        {
            ArgumentNullException.ThrowIfNull(node, nameof(nodes));
            if (string.IsNullOrEmpty(node.Id))
                throw new ArgumentException("A node id must not be empty.", nameof(nodes));
            if (string.IsNullOrEmpty(node.Zone))
                throw new ArgumentException($"Node '{node.Id}' has an empty zone.", nameof(nodes));
            if (!(node.Weight >= 0) || double.IsInfinity(node.Weight))
                throw new ArgumentException($"Node '{node.Id}' has weight {node.Weight}; a weight must be finite and not negative.", nameof(nodes));
        }
        Array.Sort(sorted, static (a, b) =>
        {
            int byZone = string.CompareOrdinal(a.Zone, b.Zone);
            return byZone != 0 ? byZone : string.CompareOrdinal(a.Id, b.Id);
        });

        var seen = new HashSet<string>(sorted.Length, StringComparer.Ordinal);
        var zones = new List<string>();
        var eligible = new List<string>();
        var zoneStarts = new List<int>();
        _nodeHashes = new ulong[sorted.Length];
        _inverseWeights = new double[sorted.Length];
        for (int i = 0; i < sorted.Length; i++)
        {
            ClusterNode node = sorted[i];
            if (!seen.Add(node.Id))
                throw new ArgumentException($"Node id '{node.Id}' appears twice.", nameof(nodes));
            if (i == 0 || !string.Equals(node.Zone, sorted[i - 1].Zone, StringComparison.Ordinal))
            {
                zones.Add(node.Zone);
                zoneStarts.Add(i);
            }
            if (node.Weight > 0 && (eligible.Count == 0 || !string.Equals(eligible[^1], node.Zone, StringComparison.Ordinal)))
                eligible.Add(node.Zone);
            _nodeHashes[i] = PlacementHash.OfNode(node.Id);
            // Weight 0 gives +∞: every key of that node is +∞, never below a zone's best (which
            // starts at +∞), so it is never chosen and a zone of such nodes only has no winner.
            _inverseWeights[i] = 1 / node.Weight;
        }
        zoneStarts.Add(sorted.Length);
        _nodes = sorted;
        _allZones = [.. zones];
        _zones = [.. eligible];
        _zoneStarts = [.. zoneStarts];
    }

    /// <summary>The nodes, sorted by zone then id (ordinal). <see cref="ChooseIndexes"/> returns
    /// indexes into this list.</summary>
    public IReadOnlyList<ClusterNode> Nodes => _nodes;

    /// <summary>The distinct zones with a node of positive weight, sorted (ordinal). Their number
    /// is the most copies an object can have.</summary>
    public IReadOnlyList<string> Zones => _zones;

    /// <summary>Whether <paramref name="other"/> places every object where this one does: the same
    /// nodes, zones and weights (both lists are sorted the same way, so they compare in order).</summary>
    public bool SameAs(Placement? other) =>
        other is not null && other._nodes.AsSpan().SequenceEqual(_nodes);

    /// <summary>Throws the error <see cref="Choose(ulong, int)"/> would throw for this many copies;
    /// for checking a configuration (such as <c>cluster format --copies N</c>) up front.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="copies"/> is less than 1.</exception>
    /// <exception cref="PlacementException">There are fewer zones than copies.</exception>
    public void EnsureCanPlace(int copies)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(copies, 1);
        if (copies > _zones.Length)
            ThrowTooFewZones(copies);
    }

    /// <summary>The nodes that hold the copies of an object, in preference order: the first is
    /// the primary, and no two are in the same zone.</summary>
    /// <param name="objectId">The object, such as <c>ObjectId.Packed</c>.</param>
    /// <param name="copies">How many copies; at least 1, at most the number of zones.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="copies"/> is less than 1.</exception>
    /// <exception cref="PlacementException">There are fewer zones than copies.</exception>
    public IReadOnlyList<ClusterNode> Choose(ulong objectId, int copies)
    {
        EnsureCanPlace(copies);
        var result = new ClusterNode[copies];
        Span<int> picks = copies <= StackZones ? stackalloc int[copies] : new int[copies];
        ChooseIndexes(objectId, picks);
        for (int i = 0; i < picks.Length; i++)
            result[i] = _nodes[picks[i]];
        return result;
    }

    /// <summary>The allocation-free form of <see cref="Choose(ulong, int)"/>: writes
    /// <c>destination.Length</c> copies as indexes into <see cref="Nodes"/>, in preference order.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="destination"/> is empty.</exception>
    /// <exception cref="PlacementException">There are fewer zones than <c>destination.Length</c>.</exception>
    public void ChooseIndexes(ulong objectId, Span<int> destination)
    {
        int copies = destination.Length;
        if (copies < 1 || copies > _zones.Length)
            EnsureCanPlace(copies);

        int zoneCount = _allZones.Length;
        double[]? rentedKeys = null;
        int[]? rentedBest = null;
        Span<double> zoneKey = zoneCount <= StackZones
            ? stackalloc double[StackZones]
            : (rentedKeys = ArrayPool<double>.Shared.Rent(zoneCount));
        Span<int> zoneBest = zoneCount <= StackZones
            ? stackalloc int[StackZones]
            : (rentedBest = ArrayPool<int>.Shared.Rent(zoneCount));
        try
        {
            // One pass over the nodes: each zone's best (smallest) key and the node that has it.
            // Ties go to the lower index, so the result is the same on every machine.
            ulong objectHash = PlacementHash.OfObject(objectId);
            ulong[] hashes = _nodeHashes;
            double[] inverseWeights = _inverseWeights;
            for (int z = 0; z < zoneCount; z++)
            {
                double best = double.PositiveInfinity;
                int bestNode = -1;
                for (int i = _zoneStarts[z], end = _zoneStarts[z + 1]; i < end; i++)
                {
                    double key = Key(PlacementHash.OfPair(objectHash, hashes[i]), inverseWeights[i]);
                    if (key < best)
                    {
                        best = key;
                        bestNode = i;
                    }
                }
                zoneKey[z] = best;
                zoneBest[z] = bestNode;
            }

            // Copy c is the best zone winner among the zones not used yet.
            for (int c = 0; c < copies; c++)
            {
                double best = double.PositiveInfinity;
                int bestZone = -1;
                for (int z = 0; z < zoneCount; z++)
                {
                    if (zoneBest[z] >= 0 && zoneKey[z] < best)
                    {
                        best = zoneKey[z];
                        bestZone = z;
                    }
                }
                destination[c] = zoneBest[bestZone];
                zoneBest[bestZone] = -1;
            }
        }
        finally
        {
            if (rentedKeys is not null)
                ArrayPool<double>.Shared.Return(rentedKeys);
            if (rentedBest is not null)
                ArrayPool<int>.Shared.Return(rentedBest);
        }
    }

    /// <summary>
    /// <c>-ln(u) / w</c> for <c>u</c> uniform in (0, 1) taken from the top 53 bits of the hash
    /// (the +0.5 keeps <c>u</c> off 0 and 1); the reciprocal of the score <c>-w / ln(u)</c>, so
    /// the smallest key is the highest score.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double Key(ulong hash, double inverseWeight)
    {
        double u = ((hash >> 11) + 0.5) * (1.0 / (1UL << 53));
        return -Math.Log(u) * inverseWeight;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowTooFewZones(int copies) =>
        throw new PlacementException(copies, _zones.Length,
            $"Cannot place {copies} copies in distinct zones: the cluster has {_zones.Length} zone(s) ({string.Join(", ", _zones)}); add zones or lower the copies.");
}

/// <summary>An object cannot be placed as asked: more copies than zones.</summary>
public sealed class PlacementException : InvalidOperationException
{
    /// <summary>Creates the error for <paramref name="copies"/> copies over <paramref name="zones"/> zones.</summary>
    public PlacementException(int copies, int zones, string message)
        : base(message)
    {
        Copies = copies;
        Zones = zones;
    }

    /// <summary>The copies asked for.</summary>
    public int Copies { get; }

    /// <summary>The zones the cluster has.</summary>
    public int Zones { get; }
}
