namespace Ovis.Cluster;

/// <summary>
/// A node as placement sees it: a stable id, the failure zone it sits in (a rack, a host, a
/// power feed — copies of one object never share a zone) and a relative capacity weight.
/// </summary>
/// <param name="Id">Stable node id; placement hashes it, so renaming a node moves its objects.</param>
/// <param name="Zone">Failure zone. Nodes in the same zone never hold two copies of one object.</param>
/// <param name="Weight">Relative capacity (for example TiB of disk); a node of weight 2 receives
/// about twice the objects of a node of weight 1. Finite and not negative; 0 means the node is
/// never chosen (a node being drained: it stays a member, and a source for recovery, but holds nothing).</param>
public sealed record ClusterNode(string Id, string Zone, double Weight = 1);
