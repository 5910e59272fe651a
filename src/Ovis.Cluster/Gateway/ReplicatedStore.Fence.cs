using Microsoft.Extensions.Logging;
using Ovis.Cluster.Peer;

namespace Ovis.Cluster.Gateway;

public sealed partial class ReplicatedStore
{
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
            var pending = new List<(int Node, Task<PeerResult> Reply)>();
            for (int n = 0; n < view.Replicas.Length; n++)
            {
                if (!view.Live[n])
                    continue;
                foreach (uint layer in layers)
                    pending.Add((n, view.Replicas[n].FenceAsync(view.Epoch, layer, generation).AsTask()));
            }
            await Task.WhenAll(pending.Select(p => p.Reply)).WaitAsync(cancellationToken).ConfigureAwait(false);
            long newest = view.Epoch;
            var unfenced = new HashSet<int>();
            foreach ((int n, Task<PeerResult> reply) in pending)
            {
                PeerResult r = reply.Result;
                if (r.Status == PeerStatus.Fenced)
                    throw new FencedException($"volume {volume}: node {view.Replicas[n].NodeId} has seen a newer holder of the volume's lock than generation {generation}");
                if (r.Status == PeerStatus.StaleEpoch)
                    newest = Math.Max(newest, r.Epoch);
                else if (!r.IsOk)
                    unfenced.Add(n);
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
