using System.Globalization;
using Microsoft.AspNetCore.Http;
using Ovis.Nbd;
using Ovis.Node.Admin;
using Ovis.Store;
using Ovis.Volumes;

namespace Ovis.Node.Backup;

/// <summary>
/// Runs one backup job: takes the snapshot and the bitmap's next point together (or picks up an
/// interrupted backup), copies what the manifest lists from the snapshot to the target at the
/// given rate, confirms it (target flush, then the manifest) every <see cref="ConfirmEvery"/>
/// bytes, and at the end drops the snapshot and the bitmap's frozen bits. The guest's volume is
/// never touched: the copy reads a frozen layer, so however slow or dead the target is, no guest
/// write waits for it.
/// </summary>
internal sealed class BackupRunner(VolumeManager volumes, string dataDirectory)
{
    private const int Chunk = 1 << 20;
    // Each confirmation costs a target flush and a manifest sync; what is not confirmed when a
    // target dies is copied again on resume, so at most this much (or 2 s of copying) is.
    private const long ConfirmEvery = 8L << 20;
    private static readonly TimeSpan ConfirmInterval = TimeSpan.FromSeconds(2);

    /// <summary>Checks what can be checked at once (so the request is refused rather than a job failing), then returns the work.</summary>
    public Func<JobContext, Task<JobOutcome>> Prepare(string volume, BackupRequest request)
    {
        if (request.Rate is <= 0)
        {
            throw new AdminRequestException($"invalid rate {request.Rate}: a positive number of bytes per second");
        }
        string dest = request.Dest;
        if (!NbdClient.IsNbdUri(dest) && !Path.IsPathFullyQualified(dest))
        {
            throw new AdminRequestException($"invalid destination '{dest}': an absolute path on the node, or an NBD URI (nbd://HOST:PORT/EXPORT)");
        }
        if (!NbdClient.IsNbdUri(dest) && !Directory.Exists(Path.GetDirectoryName(dest)))
        {
            throw new AdminRequestException($"invalid destination '{dest}': directory {Path.GetDirectoryName(dest)} does not exist on the node");
        }
        _ = volumes.Get(volume); // 404 now
        string manifestPath = BackupManifests.PathFor(dataDirectory, dest);
        BackupManifest? previous = BackupManifests.Load(manifestPath);
        if (request.Resume)
        {
            if (previous is null || previous.Complete)
            {
                throw new AdminRequestException($"there is no interrupted backup to '{dest}' to resume", StatusCodes.Status409Conflict);
            }
            if (previous.Volume != volume)
            {
                throw new AdminRequestException($"the interrupted backup to '{dest}' is of volume '{previous.Volume}', not '{volume}'", StatusCodes.Status409Conflict);
            }
        }
        else if (previous is { Complete: false })
        {
            throw new AdminRequestException($"a backup of '{previous.Volume}' to '{dest}' was interrupted ({previous.ConfirmedBytes} of {previous.TotalBytes} bytes confirmed): continue it with --resume", StatusCodes.Status409Conflict);
        }
        return job => RunAsync(job, volume, request, manifestPath, request.Resume ? previous : null);
    }

    private async Task<JobOutcome> RunAsync(JobContext job, string volume, BackupRequest request, string manifestPath, BackupManifest? resumed)
    {
        CancellationToken ct = job.CancellationToken;
        BackupPoint point;
        BackupManifest manifest;
        if (resumed is not null)
        {
            await volumes.ResumeBackupAsync(volume, resumed.Snapshot, resumed.Bitmap).ConfigureAwait(false);
            manifest = resumed with { ResumedFrom = resumed.ConfirmedBytes };
            point = new BackupPoint(volume, resumed.Snapshot, resumed.Size, resumed.Bitmap, resumed.Granularity, null);
        }
        else
        {
            string tag = "backup-" + DateTimeOffset.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture) + "-" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(2));
            point = await volumes.StartBackupAsync(volume, tag, request.Bitmap, request.Incremental).ConfigureAwait(false);
            IReadOnlyList<(long Offset, long Length)> extents;
            try
            {
                extents = point.Changed
                    ?? (NbdClient.IsNbdUri(request.Dest) ? [(0, point.Size)] : await DataExtentsAsync(point.Snapshot, point.Size).ConfigureAwait(false));
            }
            catch
            {
                await volumes.FinishBackupAsync(point, BackupOutcome.Abandoned, keepSnapshot: false).ConfigureAwait(false);
                throw;
            }
            manifest = new BackupManifest(volume, point.Snapshot, request.Incremental ? "incremental" : "full", request.Dest, point.Size, DateTimeOffset.UtcNow)
            {
                Bitmap = request.Bitmap,
                Granularity = point.Granularity,
                Extents = [.. extents.Select(e => new[] { e.Offset, e.Length })],
                TotalBytes = extents.Sum(e => e.Length),
            };
            BackupManifests.Save(manifestPath, manifest);
        }
        job.Backup = manifest;
        job.ReportBytes(manifest.ConfirmedBytes, manifest.TotalBytes);

        try
        {
            manifest = await CopyAsync(job, manifest, manifestPath, request.Rate, fresh: resumed is null, ct).ConfigureAwait(false);
        }
        catch (VolumeException)
        {
            // The snapshot cannot be read: resuming cannot help; the bits go back for the next backup.
            await volumes.FinishBackupAsync(point, BackupOutcome.Abandoned, keepSnapshot: false).ConfigureAwait(false);
            throw;
        }
        catch (Exception e)
        {
            // The snapshot and the frozen bits stay for --resume: nothing confirmed is lost.
            await volumes.FinishBackupAsync(point, BackupOutcome.Suspended, keepSnapshot: true).ConfigureAwait(false);
            string why = e is OperationCanceledException ? "cancelled" : $"the target failed ({AdminErrorMiddleware.OneLine(e.Message)})";
            throw new AdminRequestException($"backup of '{volume}' to '{request.Dest}' {why} after {job.Backup?.ConfirmedBytes ?? 0} of {manifest.TotalBytes} bytes confirmed: continue it with --resume", StatusCodes.Status409Conflict);
        }

        manifest = manifest with { Complete = true, Finished = DateTimeOffset.UtcNow };
        BackupManifests.Save(manifestPath, manifest);
        job.Backup = manifest;
        await volumes.FinishBackupAsync(point, BackupOutcome.Done, request.KeepSnapshot).ConfigureAwait(false);
        return new JobOutcome(null, manifest);
    }

    private async Task<BackupManifest> CopyAsync(JobContext job, BackupManifest manifest, string manifestPath, long? rate, bool fresh, CancellationToken ct)
    {
        using Volume source = volumes.Open(manifest.Snapshot)
            ?? throw new AdminRequestException($"snapshot '{manifest.Snapshot}' of the backup is gone: start a new backup", StatusCodes.Status409Conflict);
        await using BackupTarget target = await BackupTarget.OpenAsync(manifest.Dest, manifest.Size, fresh, ct).ConfigureAwait(false);
        var pacer = new Pacer(rate);
        byte[] buffer = new byte[Chunk];
        var states = new BlockState[Chunk / LocalStore.StoreBlockSize];
        long position = 0; // bytes of the extent list before the current chunk
        long confirmed = manifest.ConfirmedBytes;
        long sinceConfirm = 0;
        long lastConfirm = System.Diagnostics.Stopwatch.GetTimestamp();
        foreach (long[] extent in manifest.Extents)
        {
            long offset = extent[0];
            long end = extent[0] + extent[1];
            while (offset < end)
            {
                int n = (int)Math.Min(Chunk - (offset % Chunk), end - offset);
                if (position + n <= confirmed)
                {
                    // On the target already, and confirmed: a resumed backup does not copy it again.
                    position += n;
                    offset += n;
                    continue;
                }
                ct.ThrowIfCancellationRequested();
                await pacer.WaitAsync(n, ct).ConfigureAwait(false);
                if (target.NeedsZeroes && await IsZeroAsync(source, offset, n, states).ConfigureAwait(false))
                {
                    await target.ZeroAsync(offset, n, ct).ConfigureAwait(false);
                }
                else
                {
                    StoreStatus s = await source.ReadAsync(offset, buffer.AsMemory(0, n)).ConfigureAwait(false);
                    if (s != StoreStatus.Ok)
                    {
                        throw new VolumeException(VolumeErrorCode.InvalidArgument, $"reading snapshot '{manifest.Snapshot}' at {offset} failed: {s}");
                    }
                    await target.WriteAsync(offset, buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                }
                position += n;
                offset += n;
                sinceConfirm += n;
                job.ReportBytes(position, manifest.TotalBytes);
                if (sinceConfirm >= ConfirmEvery || System.Diagnostics.Stopwatch.GetElapsedTime(lastConfirm) >= ConfirmInterval)
                {
                    manifest = await ConfirmAsync(job, target, manifest, manifestPath, position, ct).ConfigureAwait(false);
                    sinceConfirm = 0;
                    lastConfirm = System.Diagnostics.Stopwatch.GetTimestamp();
                }
            }
        }
        return await ConfirmAsync(job, target, manifest, manifestPath, position, ct).ConfigureAwait(false);
    }

    // The target's flush first, then the manifest: a confirmed byte is durable on the target.
    private static async Task<BackupManifest> ConfirmAsync(JobContext job, BackupTarget target, BackupManifest manifest, string manifestPath, long position, CancellationToken ct)
    {
        await target.FlushAsync(ct).ConfigureAwait(false);
        manifest = manifest with { ConfirmedBytes = Math.Max(position, manifest.ConfirmedBytes) };
        BackupManifests.Save(manifestPath, manifest);
        job.Backup = manifest;
        return manifest;
    }

    private static async Task<bool> IsZeroAsync(Volume source, long offset, int length, BlockState[] states)
    {
        int bs = LocalStore.StoreBlockSize;
        if (offset % bs != 0 || length % bs != 0 || (offset % source.ObjectSize) + length > source.ObjectSize)
        {
            return false;
        }
        Memory<BlockState> s = states.AsMemory(0, length / bs);
        return await source.GetAllocationAsync(offset, s).ConfigureAwait(false) == StoreStatus.Ok && !s.Span.Contains(BlockState.Data);
    }

    /// <summary>The ranges of a snapshot that hold data (through its parents): what a full backup to a fresh sparse file copies.</summary>
    private async Task<IReadOnlyList<(long Offset, long Length)>> DataExtentsAsync(string snapshot, long size)
    {
        using Volume v = volumes.Open(snapshot) ?? throw new VolumeException(VolumeErrorCode.NotFound, $"snapshot '{snapshot}' not found");
        int bs = LocalStore.StoreBlockSize;
        long os = v.ObjectSize;
        var states = new BlockState[(int)(os / bs)];
        var extents = new List<(long Offset, long Length)>();
        for (long at = 0; at < size; at += os)
        {
            int blocks = (int)((Math.Min(os, size - at) + bs - 1) / bs);
            StoreStatus s = await v.GetAllocationAsync(at, states.AsMemory(0, blocks)).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                throw new IOException($"reading the allocation of '{snapshot}' failed: {s}");
            }
            for (int b = 0; b < blocks; b++)
            {
                if (states[b] != BlockState.Data)
                {
                    continue;
                }
                long start = at + ((long)b * bs);
                long len = Math.Min(bs, size - start);
                if (extents.Count > 0 && extents[^1].Offset + extents[^1].Length == start)
                {
                    extents[^1] = (extents[^1].Offset, extents[^1].Length + len);
                }
                else
                {
                    extents.Add((start, len));
                }
            }
        }
        return extents;
    }
}
