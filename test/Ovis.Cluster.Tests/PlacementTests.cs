using System.Globalization;
using Xunit.Abstractions;

namespace Ovis.Cluster.Tests;

/// <summary>
/// Placement computed for real over many object ids: evenness, weights, distinct zones,
/// determinism, and how much moves when a node joins or leaves. Object ids are sequential
/// <c>ObjectId.Packed</c> values of a few volumes, as the gateway will pass them, so the hash has
/// to spread neighbours apart. Measured figures go to the test output.
/// </summary>
public sealed class PlacementTests(ITestOutputHelper output)
{
    /// <summary>Objects for the evenness tests.</summary>
    private const int Objects = 200_000;

    /// <summary>Objects for the join and leave tests: enough that 1/(N+1) is measured to about
    /// ±1 % of itself, few enough to keep the suite fast in a Debug build.</summary>
    private const int MoveObjects = 100_000;

    /// <summary>Sequential object indexes in four volumes, packed as <c>ObjectId.Packed</c> does.</summary>
    private static ulong ObjectIdAt(int i) => ((ulong)(uint)(1 + (i & 3)) << 32) | (uint)(i >> 2);

    /// <summary>Nodes n0, n1, … dealt round-robin into zones z0, z1, z2.</summary>
    private static List<ClusterNode> Nodes(int count, int zones = 3) =>
        [.. Enumerable.Range(0, count).Select(i => new ClusterNode($"n{i}", $"z{i % zones}"))];

    /// <summary>Every object's copies as node numbers (n7 is 7), in preference order: copy c of
    /// object i is at <c>[i * copies + c]</c>. Numbers, not strings, keep the runs fast.</summary>
    private static int[] PlaceAll(Placement placement, int copies, int objects = Objects)
    {
        int[] numberOf = [.. placement.Nodes.Select(x => int.Parse(x.Id.AsSpan(1), CultureInfo.InvariantCulture))];
        var all = new int[objects * copies];
        for (int i = 0; i < objects; i++)
        {
            Span<int> picks = all.AsSpan(i * copies, copies);
            placement.ChooseIndexes(ObjectIdAt(i), picks);
            for (int c = 0; c < copies; c++)
                picks[c] = numberOf[picks[c]];
        }
        return all;
    }

    private static Dictionary<string, int> Count(int[] all, int copies, bool primariesOnly)
    {
        var counts = new int[64];
        for (int i = 0; i < all.Length; i += copies)
        {
            for (int c = 0; c < (primariesOnly ? 1 : copies); c++)
                counts[all[i + c]]++;
        }
        var named = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int n = 0; n < counts.Length; n++)
        {
            if (counts[n] > 0)
                named[$"n{n}"] = counts[n];
        }
        return named;
    }

    private void Report(string what, Dictionary<string, int> counts, double total) =>
        output.WriteLine(what + ": " + string.Join(", ", counts.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key} {kv.Value / total:P2}")));

    [Fact]
    public void Placement_spreads_primaries_and_copies_evenly_and_never_puts_two_copies_in_one_zone()
    {
        List<ClusterNode> nodes = Nodes(6);
        var placement = new Placement(nodes);

        int[] all = PlaceAll(placement, copies: 3);

        // Node n is in zone n % 3: the three copies cover the zones 0, 1 and 2 exactly once.
        int sameZone = 0;
        for (int i = 0; i < all.Length; i += 3)
        {
            int zones = (1 << (all[i] % 3)) | (1 << (all[i + 1] % 3)) | (1 << (all[i + 2] % 3));
            if (zones != 0b111)
                sameZone++;
        }
        Assert.Equal(0, sameZone);

        Dictionary<string, int> primaries = Count(all, 3, primariesOnly: true);
        Dictionary<string, int> held = Count(all, 3, primariesOnly: false);
        Report("primary share", primaries, Objects);
        Report("copies held / objects", held, Objects);
        Assert.Equal(6, primaries.Count);
        Assert.Equal(6, held.Count);
        double primaryMean = Objects / 6.0;
        double heldMean = 3.0 * Objects / 6;
        Assert.All(primaries.Values, n => Assert.InRange(n, 0.9 * primaryMean, 1.1 * primaryMean));
        Assert.All(held.Values, n => Assert.InRange(n, 0.9 * heldMean, 1.1 * heldMean));
    }

    [Fact]
    public void Placement_gives_a_node_of_weight_2_about_twice_the_objects()
    {
        List<ClusterNode> nodes = Nodes(6);
        nodes[0] = nodes[0] with { Weight = 2 }; // n0 in z0, beside n3
        var placement = new Placement(nodes);

        int[] all = PlaceAll(placement, copies: 3);

        // Primaries: a node wins with probability w / Σw = 2/7 for n0, 1/7 for the others.
        Dictionary<string, int> primaries = Count(all, 3, primariesOnly: true);
        Report("primary share, n0 weight 2", primaries, Objects);
        Assert.InRange(primaries["n0"], 0.9 * Objects * 2 / 7, 1.1 * Objects * 2 / 7);
        foreach (string id in new[] { "n1", "n2", "n3", "n4", "n5" })
            Assert.InRange(primaries[id], 0.9 * Objects / 7, 1.1 * Objects / 7);

        // Copies: every object has one copy in z0, and there n0 wins 2/3 against n3's 1/3.
        Dictionary<string, int> held = Count(all, 3, primariesOnly: false);
        Report("copies held / objects, n0 weight 2", held, Objects);
        double ratio = (double)held["n0"] / held["n3"];
        output.WriteLine($"n0 / n3 copies held: {ratio:F3}");
        Assert.InRange(ratio, 1.8, 2.2);
        Assert.InRange(held["n1"], 0.9 * Objects / 2, 1.1 * Objects / 2);
    }

    [Fact]
    public void Placement_is_deterministic_and_independent_of_the_order_nodes_are_listed_in()
    {
        List<ClusterNode> nodes = Nodes(7);
        var placement = new Placement(nodes);
        var again = new Placement(nodes);
        var reversed = new Placement(Enumerable.Reverse(nodes));

        for (int i = 0; i < 5_000; i++)
        {
            ulong id = ObjectIdAt(i);
            string[] first = [.. placement.Choose(id, 3).Select(n => n.Id)];
            Assert.Equal(first, placement.Choose(id, 3).Select(n => n.Id));
            Assert.Equal(first, again.Choose(id, 3).Select(n => n.Id));
            Assert.Equal(first, reversed.Choose(id, 3).Select(n => n.Id));
            // Fewer copies are a prefix of more copies.
            Assert.Equal(first.AsSpan(0, 2).ToArray(), placement.Choose(id, 2).Select(n => n.Id));
        }
    }

    /// <summary>
    /// Golden values: the hash decides where data already on disk lives, so it must not change
    /// between builds, machines or processes (string.GetHashCode would). If this fails, the hash
    /// changed and every existing cluster would have to move almost all its data.
    /// </summary>
    [Fact]
    public void Placement_of_known_objects_is_pinned()
    {
        List<ClusterNode> nodes = Nodes(6);
        var uniform = new Placement(nodes);
        nodes[4] = nodes[4] with { Weight = 3.5 };
        var weighted = new Placement(nodes);
        static string Place(Placement placement, ulong id) => string.Join(",", placement.Choose(id, 3).Select(n => n.Id));
        ulong[] ids = [0, 1, 0x0000_0001_0000_0000, 0x0000_0001_0000_0001, ulong.MaxValue, 0xDEAD_BEEF_0000_1234];

        string actual = string.Join(" ", ids.Select(id => Place(uniform, id))) + " | " + string.Join(" ", ids.Select(id => Place(weighted, id)));
        output.WriteLine(actual);
        Assert.Equal(Golden, actual);
    }

    // Cross-checked when pinned (2026-11) against an independent Python implementation of the
    // documented scheme (SplitMix64 finalizer, FNV-1a node ids, -ln(u)/w): same output.
    private const string Golden =
        "n4,n5,n0 n5,n3,n4 n1,n2,n3 n4,n0,n5 n1,n5,n0 n1,n2,n3 | n4,n5,n0 n5,n4,n3 n4,n2,n3 n4,n0,n5 n1,n5,n0 n1,n2,n3";

    [Theory]
    [InlineData(4)]
    [InlineData(6)]
    [InlineData(9)]
    public void Adding_one_node_to_N_moves_about_one_in_N_plus_1_and_only_to_the_new_node(int n)
    {
        List<ClusterNode> nodes = Nodes(n);
        var before = new Placement(nodes);
        var joined = new ClusterNode($"n{n}", $"z{n % 3}");
        var after = new Placement([.. nodes, joined]);

        const int copies = 3;
        int[] old = PlaceAll(before, copies, MoveObjects);
        int[] now = PlaceAll(after, copies, MoveObjects);

        int movedPrimaries = 0, primariesElsewhere = 0, changedObjects = 0, badChanges = 0;
        for (int i = 0; i < MoveObjects; i++)
        {
            ReadOnlySpan<int> was = old.AsSpan(i * copies, copies), @is = now.AsSpan(i * copies, copies);
            if (was[0] != @is[0])
            {
                movedPrimaries++;
                if (@is[0] != n) // rendezvous: a primary only ever moves to the newcomer
                    primariesElsewhere++;
            }
            if (was.SequenceEqual(@is))
                continue;
            // Any change swaps exactly one copy for the new node (the order may change with it).
            changedObjects++;
            int gone = 0, came = 0;
            foreach (int x in was)
                gone += @is.Contains(x) ? 0 : 1;
            foreach (int x in @is)
                came += was.Contains(x) ? 0 : 1;
            if (gone != 1 || came != 1 || !@is.Contains(n))
                badChanges++;
        }
        Assert.Equal(0, primariesElsewhere);
        Assert.Equal(0, badChanges);

        double expected = 1.0 / (n + 1);
        double primaryFraction = (double)movedPrimaries / MoveObjects;
        output.WriteLine($"N={n}: primaries moved {primaryFraction:P2} (1/(N+1) = {expected:P2}); " +
            $"objects with one copy moved {(double)changedObjects / MoveObjects:P2} = copies moved {(double)changedObjects / (copies * MoveObjects):P2} of all copies");
        Assert.InRange(primaryFraction, 0.8 * expected, 1.2 * expected);
        // With 3 copies in 3 zones every object has one copy in the new node's zone, which now
        // has k + 1 nodes; the new node takes 1/(k + 1) of that zone's copies, nothing elsewhere.
        int zoneSize = nodes.Count(x => x.Zone == joined.Zone) + 1;
        Assert.InRange((double)changedObjects / MoveObjects, 0.9 / zoneSize, 1.1 / zoneSize);
    }

    [Theory]
    [InlineData("n0", 3)] // z0 keeps n3
    [InlineData("n6", 2)] // z3 has only n6: its zone disappears
    public void Removing_a_node_moves_only_the_copies_it_held(string removed, int copies)
    {
        // Seven nodes in four zones: z0 {n0, n3}, z1 {n1, n4}, z2 {n2, n5}, z3 {n6}.
        List<ClusterNode> nodes = Nodes(6);
        nodes.Add(new ClusterNode("n6", "z3"));
        var before = new Placement(nodes);
        var after = new Placement(nodes.Where(x => x.Id != removed));

        int[] old = PlaceAll(before, copies, MoveObjects);
        int[] now = PlaceAll(after, copies, MoveObjects);

        int gone = int.Parse(removed.AsSpan(1), CultureInfo.InvariantCulture);
        int held = 0, untouchedButChanged = 0, badChanges = 0;
        Span<int> survivors = stackalloc int[copies], kept = stackalloc int[copies];
        for (int i = 0; i < MoveObjects; i++)
        {
            ReadOnlySpan<int> was = old.AsSpan(i * copies, copies), @is = now.AsSpan(i * copies, copies);
            if (!was.Contains(gone))
            {
                if (!was.SequenceEqual(@is)) // must be untouched, order included
                    untouchedButChanged++;
                continue;
            }
            held++;
            // The survivors keep their order; exactly one replacement fills the gap.
            int s = 0, k = 0, came = 0;
            foreach (int x in was)
            {
                if (x != gone)
                    survivors[s++] = x;
            }
            foreach (int x in @is)
            {
                if (was.Contains(x))
                    kept[k++] = x;
                else
                    came++;
            }
            if (came != 1 || !survivors[..s].SequenceEqual(kept[..k]))
                badChanges++;
        }
        Assert.Equal(0, untouchedButChanged);
        Assert.Equal(0, badChanges);
        output.WriteLine($"removing {removed} ({copies} copies): {(double)held / MoveObjects:P2} of objects had a copy on it and changed; the rest kept their placement exactly");
        Assert.True(held > 0);
    }

    [Theory]
    [InlineData("n0", 3)] // z0 keeps n3
    [InlineData("n6", 3)] // z3 has only n6: three zones are left for three copies
    public void A_node_of_weight_0_is_never_chosen_and_only_the_copies_it_held_move(string drained, int copies)
    {
        // z0 {n0, n3}, z1 {n1, n4}, z2 {n2, n5}, z3 {n6}, as in the removal test: weight 0 must place
        // every object exactly as removing the node does, while the node stays in Nodes.
        List<ClusterNode> nodes = Nodes(6);
        nodes.Add(new ClusterNode("n6", "z3"));
        var removed = new Placement(nodes.Where(x => x.Id != drained));
        var weighted = new Placement(nodes.Select(x => x.Id == drained ? x with { Weight = 0 } : x));

        Assert.Equal(7, weighted.Nodes.Count);
        Assert.Equal(removed.Zones, weighted.Zones);
        Assert.False(weighted.SameAs(new Placement(nodes)));
        Assert.True(weighted.SameAs(new Placement(nodes.Select(x => x.Id == drained ? x with { Weight = 0 } : x).Reverse())));
        int[] without = PlaceAll(removed, copies, MoveObjects);
        int[] zeroed = PlaceAll(weighted, copies, MoveObjects);
        Assert.Equal(without, zeroed);
        Assert.DoesNotContain(int.Parse(drained.AsSpan(1), CultureInfo.InvariantCulture), zeroed);
    }

    [Fact]
    public void Zones_count_only_nodes_of_positive_weight()
    {
        var placement = new Placement([new("a", "z0"), new("b", "z1"), new("c", "z2", 0)]);
        Assert.Equal(["z0", "z1"], placement.Zones);
        var e = Assert.Throws<PlacementException>(() => placement.Choose(42, 3));
        Assert.Equal(2, e.Zones);
        Assert.Equal(2, placement.Choose(42, 2).Count);
        Assert.Throws<PlacementException>(() => new Placement([new("a", "z0", 0)]).Choose(42, 1));
    }

    [Fact]
    public void More_copies_than_zones_is_a_clear_one_line_error()
    {
        var placement = new Placement(Nodes(6));

        var e = Assert.Throws<PlacementException>(() => placement.Choose(42, 4));
        Assert.Equal("Cannot place 4 copies in distinct zones: the cluster has 3 zone(s) (z0, z1, z2); add zones or lower the copies.", e.Message);
        Assert.Equal(4, e.Copies);
        Assert.Equal(3, e.Zones);
        Assert.Throws<PlacementException>(() => placement.EnsureCanPlace(4));
        Assert.Throws<PlacementException>(() => placement.ChooseIndexes(42, new int[4]));
        Assert.Throws<PlacementException>(() => new Placement([]).Choose(42, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => placement.Choose(42, 0));
        placement.EnsureCanPlace(3);
    }

    [Fact]
    public void Bad_nodes_are_refused()
    {
        Assert.Throws<ArgumentException>(() => new Placement([new("a", "z0"), new("a", "z1")]));
        Assert.Throws<ArgumentException>(() => new Placement([new("a", "z0", -1)]));
        Assert.Throws<ArgumentException>(() => new Placement([new("a", "z0", double.NaN)]));
        Assert.Throws<ArgumentException>(() => new Placement([new("a", "z0", double.PositiveInfinity)]));
        Assert.Throws<ArgumentException>(() => new Placement([new("", "z0")]));
        Assert.Throws<ArgumentException>(() => new Placement([new("a", "")]));
    }

    [Fact]
    public void ChooseIndexes_allocates_nothing()
    {
        var placement = new Placement(Nodes(9));
        Span<int> picks = stackalloc int[3];
        placement.ChooseIndexes(1, picks); // warm up (JIT)

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10_000; i++)
            placement.ChooseIndexes(ObjectIdAt(i), picks);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
    }
}
