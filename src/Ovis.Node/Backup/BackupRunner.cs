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
    // 8 MiB made a backup to a raw file fsync 128 times per GiB and run at 0.6-0.75x nbdcopy
    // (bench/backup-throughput.sh); 64 MiB keeps a resume's re-copy small against a whole disk.
    private const long ConfirmEvery = 64L << 20;
    private static readonly TimeSpan ConfirmInterval = TimeSpan.FromSeconds(2);
    // A target request (a write of a chunk, a flush) may take this long before the target counts
    // as hung and the backup stops, resumable; a slow disk's flush stays well inside it.
    private const int DefaultTargetTimeout = 60;
    private const int MaxTargetTimeout = 86400;

    private static TimeSpan TargetTimeout(BackupRequest request) => request.TargetTimeout switch
    {
        0 => Timeout.InfiniteTimeSpan,
        { } seconds => TimeSpan.FromSeconds(seconds),
        null => TimeSpan.FromSeconds(DefaultTargetTimeout),
    };

    /// <summary>Checks what can be checked at once (so the request is refused rather than a job failing), then returns the work.</summary>
    public Func<JobContext, Task<JobOutcome>> Prepare(string volume, BackupRequest request)
    {
        if (request.Rate is <= 0)
        {
            throw new AdminRequestException($"invalid rate {request.Rate}: a positive number of bytes per second");
        }
        if (request.TargetTimeout is < 0 or > MaxTargetTimeout)
        {
            throw new AdminRequestException($"invalid target timeout {request.TargetTimeout}: 0 (wait for ever) to {MaxTargetTimeout} seconds");
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
        CheckBacking(dest, request);
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

    // A qcow2 incremental is an overlay: it reads through the chain's last link where the bitmap
    // marked nothing, so the file alone is the image at its point (qemu-img and QEMU open it so).
    private static void CheckBacking(string dest, BackupRequest request)
    {
        if (request.Backing is null)
        {
            if (request.Incremental && !request.Resume && QemuNbdServer.IsQcow2(dest))
            {
                throw new AdminRequestException($"an incremental backup to the qcow2 file '{dest}' needs --backing PREV.qcow2, the chain's last link");
            }
            return;
        }
        if (!request.Incremental || !QemuNbdServer.IsQcow2(dest))
        {
            throw new AdminRequestException("--backing is for an incremental backup to a qcow2 file");
        }
        if (!Path.IsPathFullyQualified(request.Backing) || !File.Exists(request.Backing) || !QemuNbdServer.IsQcow2(request.Backing))
        {
            throw new AdminRequestException($"backing file '{request.Backing}' is not a qcow2 file on the node (give an absolute path)", StatusCodes.Status404NotFound);
        }
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
                Backing = request.Backing,
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
            manifest = await CopyAsync(job, manifest, manifestPath, request.Rate, TargetTimeout(request), fresh: resumed is null, ct).ConfigureAwait(false);
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

    private async Task<BackupManifest> CopyAsync(JobContext job, BackupManifest manifest, string manifestPath, long? rate, TimeSpan targetTimeout, bool fresh, CancellationToken ct)
    {
        using Volume source = volumes.Open(manifest.Snapshot)
            ?? throw new AdminRequestException($"snapshot '{manifest.Snapshot}' of the backup is gone: start a new backup", StatusCodes.Status409Conflict);
        await using BackupTarget target = await BackupTarget.OpenAsync(manifest.Dest, manifest.Size, fresh, manifest.Backing, targetTimeout, ct).ConfigureAwait(false);
        var pacer = new Pacer(rate);
        // Two buffers: the snapshot's next chunk is read while the target writes the last one.
        byte[][] buffers = [new byte[Chunk], new byte[Chunk]];
        int next = 0;
        Task writing = Task.CompletedTask;
        var states = new BlockState[Chunk / LocalStore.StoreBlockSize];
        long position = 0; // bytes of the extent list before the current chunk
        long confirmed = manifest.ConfirmedBytes;
        long sinceConfirm = 0;
        long lastConfirm = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
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
                        await writing.ConfigureAwait(false);
                        await target.ZeroAsync(offset, n, ct).ConfigureAwait(false);
                    }
                    else
                    {
                        Memory<byte> chunk = buffers[next].AsMemory(0, n);
                        next ^= 1;
                        StoreStatus s = await source.ReadAsync(offset, chunk).ConfigureAwait(false);
                        if (s != StoreStatus.Ok)
                        {
                            throw new VolumeException(VolumeErrorCode.InvalidArgument, $"reading snapshot '{manifest.Snapshot}' at {offset} failed: {s}");
                        }
                        // One write at a time (the NBD client sends one request at a time): the
                        // last one ends before this one starts, and its buffer is the one read next.
                        await writing.ConfigureAwait(false);
                        writing = target.WriteAsync(offset, chunk, ct);
                    }
                    position += n;
                    offset += n;
                    sinceConfirm += n;
                    job.ReportBytes(position, manifest.TotalBytes);
                    if (sinceConfirm >= ConfirmEvery || System.Diagnostics.Stopwatch.GetElapsedTime(lastConfirm) >= ConfirmInterval)
                    {
                        await writing.ConfigureAwait(false);
                        manifest = await ConfirmAsync(job, target, manifest, manifestPath, position, ct).ConfigureAwait(false);
                        sinceConfirm = 0;
                        lastConfirm = System.Diagnostics.Stopwatch.GetTimestamp();
                    }
                }
            }
            await writing.ConfigureAwait(false);
            return await ConfirmAsync(job, target, manifest, manifestPath, position, ct).ConfigureAwait(false);
        }
        finally
        {
            // A write still in flight when the copy fails ends before the target is closed under it.
            await writing.ContinueWith(static _ => { }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default).ConfigureAwait(false);
        }
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
