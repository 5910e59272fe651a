using Ovis.Volumes;

namespace Ovis.Node;

/// <summary>
/// The node's <see cref="VolumeManager"/>, set once it is open. A clustered node opens it only
/// after it has joined (its writes need it to be a live member), but its listeners start
/// before, to learn their ports; until then exports are unknown and admin calls answer 503.
/// </summary>
internal sealed class NodeVolumes
{
    private VolumeManager? _manager;

    public VolumeManager? TryGet() => Volatile.Read(ref _manager);

    public VolumeManager Get() => TryGet() ?? throw new Admin.AdminRequestException("the node is still starting: try again in a moment", 503);

    public void Set(VolumeManager manager) => Volatile.Write(ref _manager, manager);

    /// <summary>This node's own store (under the gateway, in a cluster): its journal syncs and space.</summary>
    public Ovis.Store.LocalStore? LocalStore { get; set; }
}
