using Etcdserverpb;

namespace Ovis.Cluster.Etcd;

public sealed partial class EtcdClient
{
    /// <summary>Grants a lease of <paramref name="ttlSeconds"/> (etcd raises very short TTLs to its minimum, about 2 s).</summary>
    public async Task<EtcdLease> GrantLeaseAsync(long ttlSeconds, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(ttlSeconds, 1);
        var request = new LeaseGrantRequest { TTL = ttlSeconds };
        var response = await CallAsync("lease grant", idempotent: false, (e, o) => e.Lease.LeaseGrantAsync(request, o).ResponseAsync,
            cancellationToken).ConfigureAwait(false);
        if (!string.IsNullOrEmpty(response.Error))
            throw new EtcdException($"etcd refused a lease of {ttlSeconds} s: {response.Error}");
        return new EtcdLease(response.ID, response.TTL);
    }

    /// <summary>
    /// Renews a lease once; returns its TTL in seconds from now, or 0 when the lease no longer
    /// exists (it ran out or was revoked: the keys attached to it are gone).
    /// </summary>
    public Task<long> KeepAliveOnceAsync(long leaseId, CancellationToken cancellationToken = default) =>
        // etcd renews leases only on its keep-alive stream: one request in, one answer out.
        CallAsync("lease keepalive", idempotent: true, async (e, o) =>
        {
            using var call = e.Lease.LeaseKeepAlive(o);
            await call.RequestStream.WriteAsync(new LeaseKeepAliveRequest { ID = leaseId }, o.CancellationToken).ConfigureAwait(false);
            await call.RequestStream.CompleteAsync().ConfigureAwait(false);
            return await call.ResponseStream.MoveNext(o.CancellationToken).ConfigureAwait(false)
                ? Math.Max(0, call.ResponseStream.Current.TTL)
                : 0;
        }, cancellationToken);

    /// <summary>Revokes a lease and deletes its keys; false when it did not exist (any more).</summary>
    public async Task<bool> RevokeAsync(long leaseId, CancellationToken cancellationToken = default)
    {
        var request = new LeaseRevokeRequest { ID = leaseId };
        try
        {
            await CallAsync("lease revoke", idempotent: true, (e, o) => e.Lease.LeaseRevokeAsync(request, o).ResponseAsync,
                cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (EtcdException e) when (e.GrpcCode == (int)Grpc.Core.StatusCode.NotFound)
        {
            return false;
        }
    }

    /// <summary>The remaining TTL of a lease in seconds; -1 when it does not exist.</summary>
    public async Task<long> TimeToLiveAsync(long leaseId, CancellationToken cancellationToken = default)
    {
        var request = new LeaseTimeToLiveRequest { ID = leaseId };
        var response = await CallAsync("lease time-to-live", idempotent: true, (e, o) => e.Lease.LeaseTimeToLiveAsync(request, o).ResponseAsync,
            cancellationToken).ConfigureAwait(false);
        return response.TTL;
    }
}
