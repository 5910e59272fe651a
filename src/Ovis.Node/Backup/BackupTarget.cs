using Microsoft.Win32.SafeHandles;
using Ovis.Nbd;

namespace Ovis.Node.Backup;

/// <summary>Where a backup writes: a local sparse raw file, a qcow2 file, or an NBD export. Nothing here is on a guest's path.</summary>
internal abstract class BackupTarget : IAsyncDisposable
{
    /// <summary>True when unwritten ranges must be zeroed explicitly (a full backup to an NBD export that may hold old data).</summary>
    public abstract bool NeedsZeroes { get; }

    public abstract Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct);

    public abstract Task ZeroAsync(long offset, int length, CancellationToken ct);

    /// <summary>Makes everything written so far durable on the target: only then is it confirmed.</summary>
    public abstract Task FlushAsync(CancellationToken ct);

    public abstract ValueTask DisposeAsync();

    /// <summary>Opens <paramref name="dest"/>; <paramref name="fresh"/> truncates a file (a new backup, not a
    /// resumed one), and creates a qcow2 one over <paramref name="backing"/> when given.
    /// <paramref name="requestTimeout"/> bounds each NBD request: a target that stops answering fails the backup, resumable.</summary>
    public static async Task<BackupTarget> OpenAsync(string dest, long size, bool fresh, string? backing, TimeSpan requestTimeout, CancellationToken ct)
    {
        if (QemuNbdServer.IsQcow2(dest))
        {
            if (fresh)
            {
                await QemuNbdServer.CreateAsync(dest, size, backing, ct).ConfigureAwait(false);
            }
            var server = await QemuNbdServer.StartAsync(dest, readOnly: false, ct).ConfigureAwait(false);
            server.Client.RequestTimeout = requestTimeout;
            return new NbdTarget(server.Client, server);
        }
        if (NbdClient.IsNbdUri(dest))
        {
            var client = await NbdClient.ConnectAsync(dest, ct).ConfigureAwait(false);
            client.RequestTimeout = requestTimeout;
            if (client.IsReadOnly || client.Size < size)
            {
                await client.DisposeAsync().ConfigureAwait(false);
                throw new Admin.AdminRequestException(client.IsReadOnly
                    ? $"the NBD target {dest} is read-only"
                    : $"the NBD target {dest} has {client.Size} bytes, fewer than the volume's {size}");
            }
            return new NbdTarget(client);
        }
        return FileTarget.Open(dest, size, fresh);
    }
}

internal sealed class FileTarget(SafeFileHandle file) : BackupTarget
{
    public override bool NeedsZeroes => false;

    public static FileTarget Open(string path, long size, bool fresh)
    {
        var file = File.OpenHandle(path, fresh ? FileMode.Create : FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read);
        // Sparse: only what is written takes space.
        RandomAccess.SetLength(file, size);
        return new FileTarget(file);
    }

    public override Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct)
        => RandomAccess.WriteAsync(file, data, offset, ct).AsTask();

    // A fresh file reads zeroes where nothing was written.
    public override Task ZeroAsync(long offset, int length, CancellationToken ct) => Task.CompletedTask;

    public override Task FlushAsync(CancellationToken ct)
    {
        RandomAccess.FlushToDisk(file);
        return Task.CompletedTask;
    }

    public override ValueTask DisposeAsync()
    {
        file.Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>An NBD export; or a qcow2 file through the private qemu-nbd <paramref name="qcow2"/>,
/// which a fresh image (or its backing file, for an incremental) makes read what is not
/// written, so nothing is zeroed there.</summary>
internal sealed class NbdTarget(NbdClient client, QemuNbdServer? qcow2 = null) : BackupTarget
{
    private static readonly byte[] Zeroes = new byte[1 << 20];

    public override bool NeedsZeroes => qcow2 is null;

    public override Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct) => client.WriteAsync(offset, data, ct);

    public override Task ZeroAsync(long offset, int length, CancellationToken ct)
        => client.CanWriteZeroes ? client.WriteZeroesAsync(offset, length, ct) : client.WriteAsync(offset, Zeroes.AsMemory(0, length), ct);

    public override Task FlushAsync(CancellationToken ct) => client.FlushAsync(ct);

    // The server's disposal closes its client too.
    public override ValueTask DisposeAsync() => qcow2?.DisposeAsync() ?? client.DisposeAsync();
}

