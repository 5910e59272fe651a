namespace Ovis.Volumes;

/// <summary>
/// Where a backup reads from: a snapshot taken at one instant, and — for an incremental — the
/// ranges its bitmap marked up to that instant. <see cref="Changed"/> is null for a full backup.
/// </summary>
public sealed record BackupPoint(string Volume, string Snapshot, long Size, string? Bitmap, long Granularity, IReadOnlyList<(long Offset, long Length)>? Changed);

/// <summary>How a backup ended, for its bitmap and snapshot.</summary>
public enum BackupOutcome
{
    /// <summary>On its target and confirmed: the bits it copied go, the snapshot goes.</summary>
    Done,
    /// <summary>Interrupted, to be resumed: the bits stay frozen and the snapshot stays.</summary>
    Suspended,
    /// <summary>Given up: the bits go back into the bitmap (the next backup copies them), the snapshot goes.</summary>
    Abandoned,
}

/// <summary>
/// Backups read a snapshot — a frozen layer that nothing writes — while the volume goes on in its
/// own layer, so a guest's write never waits for the backup or its target: there is no
/// copy-before-write at all. The snapshot and the bitmap's next period start at the same instant,
/// inside the snapshot's frozen gate, so no write falls between two links of a chain.
/// </summary>
public sealed partial class VolumeManager
{
    /// <summary>
    /// Takes snapshot <c>VOLUME@TAG</c> and, at its instant, starts <paramref name="bitmap"/>'s next
    /// period (creating the bitmap when a full backup names one that does not exist yet). An
    /// incremental backup copies what the bitmap marked until then.
    /// </summary>
    public async Task<BackupPoint> StartBackupAsync(string volume, string tag, string? bitmap, bool incremental)
    {
        if (incremental && bitmap is null)
        {
            throw new VolumeException(VolumeErrorCode.InvalidArgument, "an incremental backup needs the bitmap that tracked the changes since the last one (--bitmap)");
        }
        if (bitmap is not null)
        {
            CheckName(bitmap, "bitmap name");
            CheckBitmapsHeld(volume);
        }
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(volume);
            DirtyBitmap? b = bitmap is null ? null : v.Bitmaps.FirstOrDefault(x => x.Name == bitmap);
            if (incremental && b is null)
            {
                throw new VolumeException(VolumeErrorCode.NotFound, $"bitmap '{bitmap}' not found on volume '{volume}': an incremental backup needs a full one with --bitmap first");
            }
            if (b is not null && _runningBackups.Contains(b))
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"bitmap '{bitmap}' is in use by a running backup of '{volume}'");
            }
            bool created = false;
            if (b is null && bitmap is not null)
            {
                CheckBitmapFits(v.Record.Size, DefaultBitmapGranularity);
                b = new DirtyBitmap(NewBitmapPath(volume, bitmap), bitmap, volume, DefaultBitmapGranularity, v.Record.Size, DateTimeOffset.UtcNow);
                await SaveBitmapAsync(b, force: true).ConfigureAwait(false);
                created = true;
            }
            DirtyBits? frozen = null;
            VolumeInfo snapshot;
            try
            {
                snapshot = await SnapshotUnderControlAsync(volume, tag, state =>
                {
                    if (created)
                    {
                        lock (_lock)
                        {
                            state.Bitmaps = [.. state.Bitmaps, b!];
                        }
                    }
                    else if (b is not null)
                    {
                        frozen = b.Freeze();
                    }
                }).ConfigureAwait(false);
            }
            catch
            {
                if (created)
                {
                    lock (_lock)
                    {
                        v.Bitmaps = [.. v.Bitmaps.Where(x => x != b)];
                    }
                    await DeleteBitmapAsync(b!).ConfigureAwait(false);
                }
                else
                {
                    b?.Unfreeze();
                }
                throw;
            }
            if (b is not null)
            {
                // The frozen bits are on disk before anything is copied: a crash now loses no change.
                await SaveBitmapAsync(b, force: true).ConfigureAwait(false);
                _runningBackups.Add(b);
            }
            IReadOnlyList<(long, long)>? changed = incremental ? [.. DirtyRuns.Dirty(frozen!, b!.Granularity, snapshot.Size)] : null;
            return new BackupPoint(volume, snapshot.Name, snapshot.Size, bitmap, b?.Granularity ?? DefaultBitmapGranularity, changed);
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>Picks up an interrupted backup of <paramref name="snapshot"/> again: its bitmap's frozen bits must still be there.</summary>
    public async Task ResumeBackupAsync(string volume, string snapshot, string? bitmap)
    {
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            VolumeState v = FindLive(volume);
            _ = Find(snapshot);
            if (bitmap is null)
            {
                return;
            }
            DirtyBitmap b = FindBitmap(v, bitmap);
            if (b.Frozen is null || _runningBackups.Contains(b))
            {
                throw new VolumeException(VolumeErrorCode.InUse, $"bitmap '{bitmap}' has no interrupted backup to resume (or one is running)");
            }
            _runningBackups.Add(b);
        }
        finally
        {
            _control.Release();
        }
    }

    /// <summary>Ends a backup: see <see cref="BackupOutcome"/>. The snapshot is deleted unless <paramref name="keepSnapshot"/>.</summary>
    public async Task FinishBackupAsync(BackupPoint point, BackupOutcome outcome, bool keepSnapshot)
    {
        ArgumentNullException.ThrowIfNull(point);
        await _control.WaitAsync().ConfigureAwait(false);
        try
        {
            DirtyBitmap? b = null;
            lock (_lock)
            {
                if (point.Bitmap is not null && _byName.TryGetValue(point.Volume, out VolumeState? v))
                {
                    b = v.Bitmaps.FirstOrDefault(x => x.Name == point.Bitmap);
                }
            }
            if (b is not null)
            {
                if (outcome == BackupOutcome.Done)
                {
                    b.DropFrozen();
                }
                else if (outcome == BackupOutcome.Abandoned)
                {
                    b.Unfreeze();
                }
                await SaveBitmapAsync(b, force: true).ConfigureAwait(false);
                _runningBackups.Remove(b);
            }
        }
        finally
        {
            _control.Release();
        }
        if (outcome != BackupOutcome.Suspended && !keepSnapshot)
        {
            await DeleteAsync(point.Snapshot).ConfigureAwait(false);
        }
    }
}
