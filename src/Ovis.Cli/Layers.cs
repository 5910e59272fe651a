using Ovis.Volumes;

namespace Ovis.Cli;

/// <summary>
/// The layers a node lists (volumes, snapshots, clones) as the tree their <see cref="VolumeInfo.Parent"/>
/// links make: each layer under the one it inherits from, a volume under its latest snapshot.
/// </summary>
internal sealed class Layers
{
    private readonly Dictionary<string, VolumeInfo> _byName = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<VolumeInfo>> _children = new(StringComparer.Ordinal);
    private readonly List<VolumeInfo> _roots = [];

    public Layers(IReadOnlyList<VolumeInfo> layers)
    {
        foreach (var layer in layers)
        {
            _byName[layer.Name] = layer;
        }

        // Oldest first under each parent: the order things happened in.
        foreach (var layer in layers.OrderBy(l => l.Created).ThenBy(l => l.Name, StringComparer.Ordinal))
        {
            // A parent the list does not have (deleted between two requests) makes a root,
            // rather than a layer that silently disappears from the tree.
            if (layer.Parent is { } parent && _byName.ContainsKey(parent) && !IsAncestor(layer.Name, parent))
            {
                if (!_children.TryGetValue(parent, out var siblings))
                {
                    _children[parent] = siblings = [];
                }

                siblings.Add(layer);
            }
            else
            {
                _roots.Add(layer);
            }
        }

        _roots.Sort((a, b) => StringComparer.Ordinal.Compare(a.Name, b.Name));
    }

    /// <summary>Layers without a parent, by name: one tree each.</summary>
    public IReadOnlyList<VolumeInfo> Roots => _roots;

    public bool TryGet(string name, out VolumeInfo layer) => _byName.TryGetValue(name, out layer!);

    public IReadOnlyList<VolumeInfo> ChildrenOf(VolumeInfo layer)
        => _children.TryGetValue(layer.Name, out var children) ? children : [];

    /// <summary>The root of the tree <paramref name="layer"/> is in.</summary>
    public VolumeInfo RootOf(VolumeInfo layer)
    {
        while (!_roots.Contains(layer))
        {
            layer = _byName[layer.Parent!];
        }

        return layer;
    }

    /// <summary>The tree under <paramref name="root"/>, parents before children.</summary>
    public IEnumerable<VolumeInfo> TreeOf(VolumeInfo root)
    {
        yield return root;
        foreach (var child in ChildrenOf(root))
        {
            foreach (var layer in TreeOf(child))
            {
                yield return layer;
            }
        }
    }

    /// <summary>
    /// <c>snapshot</c>; <c>clone</c> for a volume whose data comes, through its own snapshots, from
    /// another volume's snapshot; else <c>volume</c> (also a clone once flattened).
    /// </summary>
    public string KindOf(VolumeInfo layer)
    {
        if (layer.IsSnapshot)
        {
            return "snapshot";
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (var parent = layer.Parent; parent is not null && seen.Add(parent); parent = _byName.GetValueOrDefault(parent)?.Parent)
        {
            if (!OwnSnapshot(layer.Name, parent))
            {
                return "clone";
            }
        }

        return "volume";
    }

    private static bool OwnSnapshot(string volume, string snapshot)
        => snapshot.Length > volume.Length && snapshot[volume.Length] == '@' && snapshot.StartsWith(volume, StringComparison.Ordinal);

    // Guards the tree against a parent cycle, which would be a bug on the node, but must not
    // hang the CLI: the layer that closes the cycle becomes a root.
    private bool IsAncestor(string name, string start)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (string? current = start; current is not null && seen.Add(current); current = _byName.GetValueOrDefault(current)?.Parent)
        {
            if (current == name)
            {
                return true;
            }
        }

        return false;
    }
}
