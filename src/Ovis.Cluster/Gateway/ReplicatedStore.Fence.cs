using Microsoft.Extensions.Logging;
using Ovis.Cluster.Peer;

namespace Ovis.Cluster.Gateway;

public sealed partial class ReplicatedStore
{
    // The newest generation each node is known to have raised its fence to, per layer, by this
    // gateway's FENCE requests (a change raises it too, but a comparison does not).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(string Node, uint Layer), long> _fencedAt = new();

    /// <summary>
    /// Before recovery compares <paramref name="node"/>'s copy of an object of <paramref name="layer"/>
    /// without changing it: makes sure that node refuses older holders first. A node that missed
    /// the fence at acquisition (unreachable then) may still take an old holder's late change;
    /// compared before its fence, the copy could look equal and then change behind recovery's back.
    /// Fenced after, whatever an old holder landed there is on an object its dirty log names, and
    /// is compared after. Not OK when the node did not take the fence (its reply says why).
    /// </summary>
    internal async ValueTask<PeerResult> EnsureFencedAsync(ClusterView view, int node, uint layer, long generation)
    {
        string id = view.Replicas[node].NodeId;
        if (_fencedAt.TryGetValue((id, layer), out long seen) && seen >= generation)
            return new PeerResult(PeerStatus.Ok, view.Epoch);
        PeerResult r = await view.Replicas[node].FenceAsync(view.Epoch, layer, generation).ConfigureAwait(false);
        if (r.Status == PeerStatus.Fenced)
            _control.OnFenced(layer, generation);
        if (r.IsOk)
            _fencedAt.AddOrUpdate((id, layer), generation, (_, old) => Math.Max(old, generation));
        return r;
    }

    /// <summary>A copy answered from <paramref name="seen"/>, newer than this gateway's view: the view is brought up to it.</summary>
    internal ValueTask RefreshViewAsync(long seen) => _control.RefreshAsync(seen);

    /// <summary>
    /// Makes every live member know <paramref name="generation"/> for each of
    /// <paramref name="layers"/> (docs/fencing.md): once this returns, no replica that answered
    /// takes a change from an older holder of the volume. A live member that does not answer is
    /// marked stale — no read comes from it until recovery has brought it up to date, and
    /// recovery's copies raise its fence. Throws <see cref="FencedException"/> when a replica has
    /// seen a newer holder already, and whatever the catalog throws when a member could neither be
    /// fenced nor marked.
    /// </summary>
    public async Task FenceAsync(string volume, IReadOnlyList<uint> layers, long generation, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(layers);
        for (int attempt = 1; ; attempt++)
        {
            ClusterView view = View;
            var pending = new List<(int Node, uint Layer, Task<PeerResult> Reply)>();
            for (int n = 0; n < view.Replicas.Length; n++)
            {
                if (!view.Live[n])
                    continue;
                foreach (uint layer in layers)
                    pending.Add((n, layer, view.Replicas[n].FenceAsync(view.Epoch, layer, generation).AsTask()));
            }
            await Task.WhenAll(pending.Select(p => p.Reply)).WaitAsync(cancellationToken).ConfigureAwait(false);
            long newest = view.Epoch;
            var unfenced = new HashSet<int>();
            foreach ((int n, uint layer, Task<PeerResult> reply) in pending)
            {
                PeerResult r = reply.Result;
                if (r.Status == PeerStatus.Fenced)
                    throw new FencedException($"volume {volume}: node {view.Replicas[n].NodeId} has seen a newer holder of the volume's lock than generation {generation}");
                if (r.Status == PeerStatus.StaleEpoch)
                    newest = Math.Max(newest, r.Epoch);
                else if (!r.IsOk)
                    unfenced.Add(n);
                else
                    _fencedAt.AddOrUpdate((view.Replicas[n].NodeId, layer), generation, (_, old) => Math.Max(old, generation));
            }
            if (newest > view.Epoch && attempt < MaxAttempts)
            {
                await _control.RefreshAsync(newest).ConfigureAwait(false);
                continue;
            }
            foreach (int n in unfenced)
            {
                LogFenceMissed(_logger, volume, view.Replicas[n].NodeId, generation);
                if (!view.Stale[n])
                    await _control.MarkStaleAsync(view.Replicas[n].NodeId, view.Epoch).ConfigureAwait(false);
            }
            LogFencedVolume(_logger, volume, generation, layers.Count, pending.Select(p => p.Node).Distinct().Count() - unfenced.Count);
            return;
        }
    }

    [LoggerMessage(EventId = 46, Level = LogLevel.Information, Message = "Volume {Volume}: lock generation {Generation} fenced ({Layers} layers on {Nodes} nodes)")]
    private static partial void LogFencedVolume(ILogger logger, string volume, long generation, int layers, int nodes);

    [LoggerMessage(EventId = 47, Level = LogLevel.Warning, Message = "Volume {Volume}: node {Node} did not take the fence of lock generation {Generation}: marked stale until recovery has brought it up to date")]
    private static partial void LogFenceMissed(ILogger logger, string volume, string node, long generation);
}

/// <summary>A replica has seen a newer holder of a volume's lock than the caller's.</summary>
public sealed class FencedException(string message) : Exception(message);
