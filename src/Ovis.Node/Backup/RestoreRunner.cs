using Microsoft.AspNetCore.Http;
using Ovis.Node.Admin;
using Ovis.Store;
using Ovis.Volumes;

namespace Ovis.Node.Backup;

/// <summary>Restore of a backup chain into a volume, and verify of a volume or snapshot against one.</summary>
/// <param name="lockFor">Takes a volume's lock before it is written (in a cluster; null elsewhere).</param>
internal sealed class RestoreRunner(VolumeManager volumes, Func<string, Task<IAsyncDisposable?>>? lockFor = null)
{
    private const int Chunk = 1 << 20;

    /// <summary>
    /// Writes the chain's image into <paramref name="name"/>: a new volume of the chain's size, or
    /// an existing one that no client has open (resized, then zeroed first). Runs of zeroes are
    /// not written into the zeroed volume, so a thin backup restores thin.
    /// </summary>
    public async Task<JobOutcome> RestoreAsync(JobContext job, string name, IReadOnlyList<string> sources)
    {
        CancellationToken ct = job.CancellationToken;
        await using BackupChain chain = await BackupChain.OpenAsync(sources, ct).ConfigureAwait(false);
        if (volumes.List().FirstOrDefault(v => v.Name == name) is { } existing)
        {
            if (existing.IsSnapshot)
            {
                throw new AdminRequestException($"'{name}' is a snapshot, which is read-only: restore into a volume");
            }
            if (existing.Connections > 0)
            {
                throw new AdminRequestException($"volume '{name}' is exported to {existing.Connections} connection(s): disconnect them before a restore", StatusCodes.Status409Conflict);
            }
            if (existing.Size != chain.Size)
            {
                await volumes.ResizeAsync(name, chain.Size, allowShrink: true).ConfigureAwait(false);
            }
        }
        else
        {
            await volumes.CreateAsync(name, chain.Size).ConfigureAwait(false);
        }
        await using IAsyncDisposable? held = lockFor is null ? null : await lockFor(name).ConfigureAwait(false);
        using Volume target = volumes.Open(name) ?? throw new VolumeException(VolumeErrorCode.NotFound, $"volume '{name}' not found");
        Check(await target.ZeroAsync(0, chain.Size, keepAllocated: false, fua: false).ConfigureAwait(false), name);
        byte[] buffer = new byte[Chunk];
        for (long at = 0; at < chain.Size; at += Chunk)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(Chunk, chain.Size - at);
            await chain.ReadAsync(at, buffer.AsMemory(0, n), ct).ConfigureAwait(false);
            if (buffer.AsSpan(0, n).ContainsAnyExcept((byte)0))
            {
                Check(await target.WriteAsync(at, buffer.AsMemory(0, n), fua: false).ConfigureAwait(false), name);
            }
            job.ReportBytes(at + n, chain.Size);
        }
        Check(await target.FlushAsync().ConfigureAwait(false), name);
        return new JobOutcome(volumes.Get(name), null);
    }

    /// <summary>Compares <paramref name="name"/> (a volume or <c>NAME@TAG</c>) with the chain's image, byte for byte.</summary>
    public async Task<JobOutcome> VerifyAsync(JobContext job, string name, IReadOnlyList<string> sources)
    {
        CancellationToken ct = job.CancellationToken;
        await using BackupChain chain = await BackupChain.OpenAsync(sources, ct).ConfigureAwait(false);
        using Volume v = volumes.Open(name) ?? throw new VolumeException(VolumeErrorCode.NotFound, $"volume '{name}' not found");
        if (v.Size != chain.Size)
        {
            return new JobOutcome(null, null, new VerifyReport(name, 0, Math.Abs(v.Size - chain.Size), Math.Min(v.Size, chain.Size)));
        }
        byte[] expected = new byte[Chunk];
        byte[] actual = new byte[Chunk];
        long different = 0;
        long? first = null;
        for (long at = 0; at < v.Size; at += Chunk)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(Chunk, v.Size - at);
            await chain.ReadAsync(at, expected.AsMemory(0, n), ct).ConfigureAwait(false);
            Check(await v.ReadAsync(at, actual.AsMemory(0, n)).ConfigureAwait(false), name);
            int i = expected.AsSpan(0, n).CommonPrefixLength(actual.AsSpan(0, n));
            if (i < n)
            {
                first ??= at + i;
                for (; i < n; i++)
                {
                    different += expected[i] != actual[i] ? 1 : 0;
                }
            }
            job.ReportBytes(at + n, v.Size);
        }
        return new JobOutcome(null, null, new VerifyReport(name, v.Size, different, first));
    }

    private static void Check(StoreStatus s, string name)
    {
        if (s != StoreStatus.Ok)
        {
            throw new IOException($"I/O on volume '{name}' failed: {s}");
        }
    }
}
