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
internal sealed class VolumeLocks(EtcdCatalog catalog, Func<NodeRegistration?> registration, Func<string, CancellationToken, Task<IAsyncDisposable?>> startRecovery)
#pragma warning restore CA1001
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly Dictionary<string, Held> _held = new(StringComparer.Ordinal);

    /// <summary>A share of one volume's lock; dispose when the connection ends.</summary>
    public interface IShare : IAsyncDisposable
    {
        /// <summary>Cancelled when the lock is gone with the node's lease: writes must stop.</summary>
        CancellationToken Lost { get; }
    }

    /// <summary>Takes (or shares) the lock of <paramref name="volume"/>; throws
    /// <see cref="ExportUnavailableException"/> naming the holder when another node has it. A node
    /// that holds it only to recover the volume lets go within seconds: that is waited for.</summary>
    public async Task<IShare> AcquireAsync(string volume)
    {
        var deadline = DateTime.UtcNow + RecoveryWait;
        while (true)
        {
            IShare? share = await TryAcquireAsync(volume, forRecovery: false).ConfigureAwait(false);
            if (share is not null)
                return share;
            // Only a holder about to let go gets here (a recovering one, or this node releasing it; a
            // serving one throws): wait for it.
            if (DateTime.UtcNow > deadline)
                throw Refused(volume, await catalog.GetVolumeLockHolderAsync(volume).ConfigureAwait(false));
            await Task.Delay(TimeSpan.FromMilliseconds(50)).ConfigureAwait(false);
        }
    }

    /// <summary>Takes the lock of an idle volume to recover it; null when any node holds it.</summary>
    public Task<IShare?> TryAcquireForRecoveryAsync(string volume) => TryAcquireAsync(volume, forRecovery: true);

    // A recovering holder gives an idle volume back after a slice of at most a few seconds.
    private static readonly TimeSpan RecoveryWait = TimeSpan.FromSeconds(15);

    private static ExportUnavailableException Refused(string volume, string? holder) => new(
        $"volume {volume} is being served by node {holder ?? "(just released)"}: one node writes a volume at a time; connect there, or retry once it is closed or its lease has run out");

    private async Task<IShare?> TryAcquireAsync(string volume, bool forRecovery)
    {
        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_held.TryGetValue(volume, out Held? held) && !held.Lock.Lost.IsCancellationRequested)
            {
                if (forRecovery)
                    return null; // served or recovered here already
                held.Users++;
                return new Share(this, held);
            }
            NodeRegistration holder = registration() ?? throw new ExportUnavailableException($"volume {volume}: this node is not a cluster member now");
            VolumeLock? taken = forRecovery
                ? await catalog.TryAcquireVolumeLockForRecoveryAsync(volume, holder).ConfigureAwait(false)
                : await catalog.TryAcquireVolumeLockAsync(volume, holder).ConfigureAwait(false);
            if (taken is null)
            {
                if (forRecovery)
                    return null;
                string? other = await catalog.GetVolumeLockHolderAsync(volume).ConfigureAwait(false);
                // Released meanwhile, being released by this very node (its last connection just
                // closed), or held by a recovery that lets go soon: the caller tries again.
                if (other is null || other == holder.Node.Id || await catalog.IsLockedForRecoveryAsync(volume).ConfigureAwait(false))
                    return null;
                throw Refused(volume, other);
            }
            IAsyncDisposable? recovery;
            try
            {
                // Before the first request: objects a predecessor may have left differing are queued first.
                recovery = await startRecovery(volume, taken.Lost).ConfigureAwait(false);
            }
            catch
            {
                await taken.DisposeAsync().ConfigureAwait(false);
                throw;
            }
            held = new Held(volume, taken) { Users = 1, Recovery = recovery };
            _held[volume] = held;
            return new Share(this, held);
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
            if (_held.TryGetValue(held.Volume, out Held? current) && ReferenceEquals(current, held))
                _held.Remove(held.Volume);
        }
        finally
        {
            _gate.Release();
        }
        if (held.Recovery is { } recovery)
            await recovery.DisposeAsync().ConfigureAwait(false);
        try
        {
            await held.Lock.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is Ovis.Cluster.Etcd.EtcdException or HttpRequestException)
        {
            // The lease takes the lock with it when the node goes; releasing early is a courtesy.
        }
    }

    private sealed class Held(string volume, VolumeLock @lock)
    {
        public string Volume => volume;

        public VolumeLock Lock => @lock;

        public int Users { get; set; }

        /// <summary>The volume's recovery, run while this node holds the lock.</summary>
        public IAsyncDisposable? Recovery { get; init; }
    }

    private sealed class Share(VolumeLocks owner, Held held) : IShare
    {
        private int _disposed;

        public CancellationToken Lost => held.Lock.Lost;

        public ValueTask DisposeAsync()
            => Interlocked.Exchange(ref _disposed, 1) == 0 ? owner.ReleaseAsync(held) : ValueTask.CompletedTask;
    }
}
