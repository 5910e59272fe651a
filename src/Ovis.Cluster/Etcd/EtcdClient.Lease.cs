using System.Net;

namespace Ovis.Cluster.Etcd;

public sealed partial class EtcdClient
{
    /// <summary>Grants a lease of <paramref name="ttlSeconds"/> (etcd raises very short TTLs to its minimum, about 2 s).</summary>
    public async Task<EtcdLease> GrantLeaseAsync(long ttlSeconds, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(ttlSeconds, 1);
        using var doc = await PostAsync("/v3/lease/grant", w => w.WriteString("TTL", Int(ttlSeconds)),
            idempotent: false, cancellationToken).ConfigureAwait(false);
        var root = doc.RootElement;
        if (root.TryGetProperty("error", out var error) && error.GetString() is { Length: > 0 } message)
            throw new EtcdException($"etcd refused a lease of {ttlSeconds} s: {message}");
        return new EtcdLease(Long(root, "ID"), Long(root, "TTL"));
    }

    /// <summary>
    /// Renews a lease once; returns its TTL in seconds from now, or 0 when the lease no longer
    /// exists (it ran out or was revoked: the keys attached to it are gone).
    /// </summary>
    public async Task<long> KeepAliveOnceAsync(long leaseId, CancellationToken cancellationToken = default)
    {
        // A streaming RPC through the gateway: one request object in, one result line out, and
        // the stream ends with the request body.
        using var doc = await PostAsync("/v3/lease/keepalive", w => w.WriteString("ID", Int(leaseId)),
            idempotent: true, cancellationToken).ConfigureAwait(false);
        var root = doc.RootElement;
        if (TryError(root, out var failure))
            throw failure;
        return root.TryGetProperty("result", out var result) ? Math.Max(0, Long(result, "TTL")) : 0;
    }

    /// <summary>Revokes a lease and deletes its keys; false when it did not exist (any more).</summary>
    public async Task<bool> RevokeAsync(long leaseId, CancellationToken cancellationToken = default)
    {
        try
        {
            using var doc = await PostAsync("/v3/lease/revoke", w => w.WriteString("ID", Int(leaseId)),
                idempotent: true, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (EtcdException e) when (e.GrpcCode == 5 || e.HttpStatus == HttpStatusCode.NotFound)
        {
            return false;
        }
    }

    /// <summary>The remaining TTL of a lease in seconds; -1 when it does not exist.</summary>
    public async Task<long> TimeToLiveAsync(long leaseId, CancellationToken cancellationToken = default)
    {
        using var doc = await PostAsync("/v3/lease/timetolive", w => w.WriteString("ID", Int(leaseId)),
            idempotent: true, cancellationToken).ConfigureAwait(false);
        return Long(doc.RootElement, "TTL");
    }
}
