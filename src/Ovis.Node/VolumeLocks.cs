using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Catalog;
using Ovis.Nbd;

namespace Ovis.Node;

/// <summary>
/// The volume locks this node holds in the cluster catalog: taken when the first connection
/// opens a volume for writing, shared by that volume's connections on this node, released when
/// the last one closes. A lock lives on the node's membership lease, so a node that dies loses
/// it within the lease time and another node can take the volume over.
/// </summary>
// The semaphore never allocates a wait handle (only WaitAsync is used), so it needs no disposal.
#pragma warning disable CA1001
/// <remarks>
/// Fencing (docs/fencing.md): a lock's generation is the etcd revision that created its key, so
/// it grows with every acquisition. Before the first request on a newly taken lock, every live
/// member is made to know the generation for each layer of the volume (<c>fence</c>); every change
/// this node sends carries it (<see cref="GenerationOf"/>). A replica that refuses one as fenced
/// tells us another node holds the volume: the lock is dropped and its users' requests fail.
/// </remarks>
internal sealed partial class VolumeLocks(EtcdCatalog catalog, Func<NodeRegistration?> registration,
    Func<string, IReadOnlyList<uint>, long, CancellationToken, Task> fence,
    Func<string, CancellationToken, Task<IAsyncDisposable?>> startRecovery,
    Func<string, IReadOnlyList<uint>> layersOf, Func<uint, string?> volumeOfLayer, ILogger logger)
#pragma warning restore CA1001
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    // Changed under _gate; read without it by GenerationOf, on every change sent.
    private readonly ConcurrentDictionary<string, Held> _held = new(StringComparer.Ordinal);
    // Which held lock a layer's changes go out under, learned on first use.
    private readonly ConcurrentDictionary<uint, Held> _byLayer = new();

    /// <summary>A share of one volume's lock; dispose when the connection ends.</summary>
    public interface IShare : IAsyncDisposable
    {
        /// <summary>Cancelled when the lock is gone with the node's lease or fenced by a newer holder: requests must stop.</summary>
        CancellationToken Lost { get; }

        /// <summary>False once the lock may be gone: lost, fenced, or the lease not renewed within its TTL by this process's clock.</summary>
        bool IsValid { get; }

        /// <summary>While the lock is not valid only because the lease is not renewed yet (etcd
        /// slow, restarting, out of reach): waits for the renewal, at most <see cref="LeaseWait"/>.
        /// True when the lock is valid, false when it is gone or the wait ran out.</summary>
        ValueTask<bool> WaitValidAsync();
    }

    /// <summary>How long a request waits for a lease that is not renewed yet before it fails with
    /// EIO. Nobody can take the lock while etcd does not answer, so an etcd restart only stalls
    /// the volume's I/O, as a Ceph monitor election stalls RBD's; a partition longer than this
    /// fails it.</summary>
    public TimeSpan LeaseWait { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>The node's writeback cache, if it runs one: what it holds of a volume belongs to a
    /// tenure of its lock (taken: adopted or dropped; let go of: pushed and flushed first).</summary>
    public Ovis.Cluster.Cache.WritebackCache? Cache { get; init; }

    /// <summary>
    /// The generation changes of <paramref name="layer"/> go out with: that of this node's lock on
    /// the volume the layer belongs to, while the lock is valid; null otherwise (the change must
    /// not be sent). Synchronous and allocation-free once the layer has been seen.
    /// </summary>
    public long? GenerationOf(uint layer)
    {
        if (!_byLayer.TryGetValue(layer, out Held? held) || held.Ended)
        {
            if (volumeOfLayer(layer) is not { } volume || !_held.TryGetValue(volume, out held) || held.Ended)
                return null;
            _byLayer[layer] = held;
        }
        return held.IsValid ? held.Generation : null;
    }

    /// <summary>The generation of this node's lock on <paramref name="layer"/>'s volume while it
    /// stands, whether or not the lease is current (the tenure the dirty-region log is kept
    /// under); 0 without one.</summary>
    public long TenureOf(uint layer)
    {
        if (_byLayer.TryGetValue(layer, out Held? held) && !held.Ended)
            return held.Generation;
        return volumeOfLayer(layer) is { } volume && _held.TryGetValue(volume, out held) && !held.Ended ? held.Generation : 0;
    }

    /// <summary>As <see cref="GenerationOf"/>, but while this node's lock on the layer's volume is
    /// only waiting for its lease's renewal, waits for it (<see cref="LeaseWait"/>).</summary>
    public async ValueTask<long?> WaitGenerationAsync(uint layer)
    {
        if (GenerationOf(layer) is { } generation)
            return generation;
        return _byLayer.TryGetValue(layer, out Held? held) && await held.WaitValidAsync(LeaseWait).ConfigureAwait(false)
            ? held.Generation
            : null;
    }

    /// <summary>The volume <paramref name="layer"/> belongs to and the generation of this node's
    /// valid lock on it (as <see cref="GenerationOf"/>), for the catalog records written under it.</summary>
    public (string Volume, long Generation)? HolderOf(uint layer)
        => GenerationOf(layer) is { } generation && _byLayer.TryGetValue(layer, out Held? held) && held.Generation == generation
            ? (held.Volume, generation)
            : null;

    /// <summary>The generation of this node's valid lock on <paramref name="volume"/> — also while
    /// it is being released, or after the volume left the registry under it — or null; for the
    /// records kept under the lock that are written then (the dirty bitmaps' last save).</summary>
    public long? GenerationOfVolumeOrRelease(string volume)
        => GenerationOfVolume(volume) ?? _byLayer.Values.FirstOrDefault(h => h.Volume == volume && h.IsValid)?.Generation;

    /// <summary>The generation of this node's valid lock on <paramref name="volume"/>, or null.</summary>
    public long? GenerationOfVolume(string volume)
        => _held.TryGetValue(volume, out Held? held) && held.IsValid ? held.Generation : null;

    /// <summary>A replica refused a change of <paramref name="layer"/> as fenced: the volume has a newer holder.</summary>
    public void OnFenced(uint layer, long generation)
    {
        if (!_byLayer.TryGetValue(layer, out Held? held) || held.Generation != generation || held.Ended)
            return;
        LogFenced(logger, held.Volume, generation);
        held.End();
        // Out of the table now, so a later open takes the lock afresh; the connections that share
        // this one fail their requests and let go of it as they close.
        _ = ForgetAsync(held);
    }

    private async Task ForgetAsync(Held held)
    {
        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_held.TryGetValue(held.Volume, out Held? current) && ReferenceEquals(current, held))
                _held.TryRemove(held.Volume, out _);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Takes (or shares) the lock of <paramref name="volume"/>; throws
    /// <see cref="ExportUnavailableException"/> naming the holder when another node has it. A node
    /// that holds it only to recover the volume lets go within seconds: that is waited for.</summary>
    public async Task<IShare> AcquireAsync(string volume)
    {
        var deadline = DateTime.UtcNow + RecoveryWait;
        var servingDeadline = DateTime.UtcNow + ReleaseWait;
        while (true)
        {
            (IShare? share, string? servedBy) = await TryAcquireAsync(volume, forRecovery: false).ConfigureAwait(false);
            if (servedBy is not null)
            {
                // Another node serves it — or served it until a moment ago: a gateway lets go of
                // the lock just after its last client has gone, so a client that moves from one
                // gateway to another races that release. It is given a moment.
                if (DateTime.UtcNow > servingDeadline)
                    throw Refused(volume, servedBy);
                await Task.Delay(TimeSpan.FromMilliseconds(100)).ConfigureAwait(false);
                continue;
            }
            if (share is not null)
                return share;
            // Only a holder about to let go gets here (a recovering one, or this node releasing it): wait for it.
            if (DateTime.UtcNow > deadline)
                throw Refused(volume, await catalog.GetVolumeLockHolderAsync(volume).ConfigureAwait(false));
            await Task.Delay(TimeSpan.FromMilliseconds(50)).ConfigureAwait(false);
        }
    }

    /// <summary>Takes the lock of an idle volume to recover it; null when any node holds it.</summary>
    public async Task<IShare?> TryAcquireForRecoveryAsync(string volume) => (await TryAcquireAsync(volume, forRecovery: true).ConfigureAwait(false)).Share;

    // A recovering holder gives an idle volume back after a slice of at most a few seconds.
    private static readonly TimeSpan RecoveryWait = TimeSpan.FromSeconds(15);

    // A serving holder whose last client just closed releases the lock within milliseconds.
    private static readonly TimeSpan ReleaseWait = TimeSpan.FromSeconds(3);

    private static ExportUnavailableException Refused(string volume, string? holder) => new(
        $"volume {volume} is being served by node {holder ?? "(just released)"}: one node writes a volume at a time; connect there, or retry once it is closed or its lease has run out");

    /// <summary>The share, or null to try again; or the node that serves the volume.</summary>
    private async Task<(IShare? Share, string? ServedBy)> TryAcquireAsync(string volume, bool forRecovery)
    {
        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_held.TryGetValue(volume, out Held? held) && !held.Ended && held.IsValid)
            {
                if (forRecovery)
                    return (null, null); // served or recovered here already
                // A recovery's hold is no serving tenure: it did not record this node as the
                // volume's last server nor adopt the cache, and its release does not drain the
                // cache. A client that shared it served the volume with served/VOLUME still naming
                // the gateway before; that one, taking the volume back, replayed its old cache over
                // the writes flushed here (the crash oracle read them lost). The slice ends within
                // seconds: the caller waits and takes the lock afresh.
                if (held.ForRecovery)
                    return (null, null);
                held.Users++;
                return (new Share(this, held), null);
            }
            if (registration() is not { IsLost: false } holder)
                throw new ExportUnavailableException($"volume {volume}: this node is not a cluster member now (its lease ran out); it rejoins by itself as soon as the cluster catalog answers, then retry");
            VolumeLock? taken = forRecovery
                ? await catalog.TryAcquireVolumeLockForRecoveryAsync(volume, holder).ConfigureAwait(false)
                : await catalog.TryAcquireVolumeLockAsync(volume, holder).ConfigureAwait(false);
            if (taken is null)
            {
                if (forRecovery)
                    return (null, null);
                string? other = await catalog.GetVolumeLockHolderAsync(volume).ConfigureAwait(false);
                // Released meanwhile, being released by this very node (its last connection just
                // closed), or held by a recovery that lets go soon: the caller tries again.
                if (other is null || other == holder.Node.Id || await catalog.IsLockedForRecoveryAsync(volume).ConfigureAwait(false))
                    return (null, null);
                return (null, other);
            }
            held = new Held(volume, taken) { ForRecovery = forRecovery };
            try
            {
                // Before any change goes out under this lock — the recovery's included — every
                // live copy refuses the changes of every older holder.
                // Known now, so that the objects of a layer deleted from the registry under this
                // lock can still be deleted (the registry no longer says whose the layer was).
                IReadOnlyList<uint> layers = layersOf(volume);
                foreach (uint layer in layers)
                    _byLayer[layer] = held;
                try
                {
                    await fence(volume, layers, held.Generation, held.Lost).ConfigureAwait(false);
                }
                catch (Ovis.Cluster.Gateway.FencedException ex)
                {
                    // Our lock is no longer the newest: the lease must have lapsed meanwhile.
                    throw new ExportUnavailableException($"{ex.Message}; try again");
                }
                // Before the first request: objects a predecessor may have left differing are queued first.
                _held[volume] = held;
                held.Recovery = await startRecovery(volume, held.Lost).ConfigureAwait(false);
                // Before the first request: what the cache holds of the volume from an earlier
                // tenure goes out under this one, or, if another node served it since, never.
                if (!forRecovery && Cache is { } cache)
                    await cache.AdoptAsync(layers, held.Generation, taken.LastServedHere).ConfigureAwait(false);
            }
            catch
            {
                _held.TryRemove(volume, out _);
                held.End();
                await taken.DisposeAsync().ConfigureAwait(false);
                throw;
            }
            held.Users = 1;
            return (new Share(this, held), null);
        }
        finally
        {
            _gate.Release();
        }
    }

    private async ValueTask ReleaseAsync(Held held)
    {
        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (--held.Users > 0)
                return;
        }
        finally
        {
            _gate.Release();
        }
        // Still under the lock (it ends below): whoever takes the volume next must find every
        // write this node acknowledged on the copies. Before the recovery and its dirty-region
        // log let go of the layers: the drain's pushes are writes like any other, logged there.
        // The lock stays in the table meanwhile, so a client that reconnects here is served at
        // once (qemu-img after a guest, a restarted qemu) instead of waiting for the drain.
        if (!held.ForRecovery && !held.Ended && Cache is { } cache)
            await cache.ReleaseAsync(layersOf(held.Volume)).ConfigureAwait(false);
        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            // Taken up again by a connection that opened the volume during the drain, or let go
            // of already by a release that drained after this one began.
            if (held.Users > 0 || held.Released)
                return;
            held.Released = true;
            if (_held.TryGetValue(held.Volume, out Held? current) && ReferenceEquals(current, held))
                _held.TryRemove(held.Volume, out _);
        }
        finally
        {
            _gate.Release();
        }
        if (held.Recovery is { } recovery)
            await recovery.DisposeAsync().ConfigureAwait(false);
        held.End();
        try
        {
            await held.Lock.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is Ovis.Cluster.Etcd.EtcdException or HttpRequestException)
        {
            // The lease takes the lock with it when the node goes; releasing early is a courtesy.
        }
    }

    private sealed class Held
    {
        private readonly CancellationTokenSource _ended;

        public Held(string volume, VolumeLock @lock)
        {
            Volume = volume;
            Lock = @lock;
            _ended = CancellationTokenSource.CreateLinkedTokenSource(@lock.Lost);
            Lost = _ended.Token;
        }

        public string Volume { get; }

        public VolumeLock Lock { get; }

        /// <summary>The lock's generation: the revision that created its key.</summary>
        public long Generation => Lock.CreateRevision;

        public int Users { get; set; }

        /// <summary>Let go of (under the gate): no later release of it does it again.</summary>
        public bool Released { get; set; }

        /// <summary>Taken only to recover the volume: nothing is written under it but copies.</summary>
        public bool ForRecovery { get; init; }

        /// <summary>The volume's recovery, run while this node holds the lock.</summary>
        public IAsyncDisposable? Recovery { get; set; }

        /// <summary>Cancelled when the lease is lost, the lock fenced or released.</summary>
        public CancellationToken Lost { get; }

        public bool Ended => Lost.IsCancellationRequested;

        public bool IsValid => !Ended && Lock.Holder.IsCurrent;

        public async ValueTask<bool> WaitValidAsync(TimeSpan limit)
            => IsValid || (!Ended && await Lock.Holder.WaitCurrentAsync(limit).ConfigureAwait(false) && !Ended);

        // The source is never disposed: its token may be read by connections until they close,
        // and a linked source without a timer holds nothing that needs disposal beyond the link.
        public void End() => _ended.Cancel();
    }

    private sealed class Share(VolumeLocks owner, Held held) : IShare
    {
        private int _disposed;

        public CancellationToken Lost => held.Lost;

        public bool IsValid => held.IsValid;

        public ValueTask<bool> WaitValidAsync() => held.WaitValidAsync(owner.LeaseWait);

        public ValueTask DisposeAsync()
            => Interlocked.Exchange(ref _disposed, 1) == 0 ? owner.ReleaseAsync(held) : ValueTask.CompletedTask;
    }

    [LoggerMessage(EventId = 35, Level = LogLevel.Error, Message = "Volume {Volume}: a replica refused this node's changes as fenced (lock generation {Generation}): another node holds the volume now; its requests here fail until it is opened again")]
    private static partial void LogFenced(ILogger logger, string volume, long generation);
}
