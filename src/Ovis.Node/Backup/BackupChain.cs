using Microsoft.AspNetCore.Http;
using Microsoft.Win32.SafeHandles;
using Ovis.Nbd;
using Ovis.Node.Admin;

namespace Ovis.Node.Backup;

/// <summary>
/// A full backup and the incrementals after it, read as the one image they make at the last
/// one's point: a range is the full's bytes with each incremental's changed extents laid over
/// them in order. The full is a raw file (with or without its manifest) or an NBD export; an
/// incremental is a raw file whose manifest (<c>FILE.json</c>) lists the extents it holds. A
/// qcow2 backup is the one exception: it is read through qemu-nbd, backing files and all.
/// </summary>
internal sealed class BackupChain : IAsyncDisposable
{
    private readonly SafeFileHandle? _fullFile;
    private readonly NbdClient? _fullNbd;
    private readonly List<(SafeFileHandle File, long[][] Extents)> _incrementals = [];
    private QemuNbdServer? _qcow2;

    private BackupChain(SafeFileHandle? fullFile, NbdClient? fullNbd, long size)
    {
        _fullFile = fullFile;
        _fullNbd = fullNbd;
        Size = size;
    }

    public long Size { get; private set; }

    public static async Task<BackupChain> OpenAsync(IReadOnlyList<string> sources, CancellationToken ct)
    {
        if (sources.Count == 0)
        {
            throw new AdminRequestException("no sources: name a full backup, then its incrementals in order");
        }
        string first = sources[0];
        BackupChain chain;
        if (NbdClient.IsNbdUri(first))
        {
            var client = await NbdClient.ConnectAsync(first, ct).ConfigureAwait(false);
            chain = new BackupChain(null, client, client.Size);
        }
        else if (File.Exists(first) && QemuNbdServer.IsQcow2(first))
        {
            return await OpenQcow2Async(sources, ct).ConfigureAwait(false);
        }
        else
        {
            CheckFile(first);
            BackupManifest? m = BackupManifests.Load(first + ".json");
            if (m is { Kind: not "full" })
            {
                throw new AdminRequestException($"'{first}' is an {m.Kind} backup: the chain starts with a full one");
            }
            if (m is { Complete: false })
            {
                throw new AdminRequestException($"the backup in '{first}' is not complete: resume it first", StatusCodes.Status409Conflict);
            }
            var file = File.OpenHandle(first, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            chain = new BackupChain(file, null, m?.Size ?? RandomAccess.GetLength(file));
        }
        try
        {
            foreach (string inc in sources.Skip(1))
            {
                CheckFile(inc);
                BackupManifest m = BackupManifests.Load(inc + ".json")
                    ?? throw new AdminRequestException($"'{inc}' has no manifest ({inc}.json): it is not an Ovis incremental backup");
                if (m.Kind != "incremental" || !m.Complete)
                {
                    throw new AdminRequestException($"'{inc}' is {(m.Complete ? "a " + m.Kind : "an incomplete")} backup, not a complete incremental");
                }
                chain._incrementals.Add((File.OpenHandle(inc, FileMode.Open, FileAccess.Read, FileShare.ReadWrite), [.. m.Extents]));
                chain.Size = m.Size;
            }
        }
        catch
        {
            await chain.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return chain;
    }

    // A qcow2 backup holds its chain in its backing files: its last link alone is the image.
    private static async Task<BackupChain> OpenQcow2Async(IReadOnlyList<string> sources, CancellationToken ct)
    {
        string last = sources[0];
        if (sources.Count > 1)
        {
            throw new AdminRequestException($"'{last}' is a qcow2 backup, which reads through its backing files: name only the chain's last link");
        }
        CheckFile(last);
        if (BackupManifests.Load(last + ".json") is { Complete: false })
        {
            throw new AdminRequestException($"the backup in '{last}' is not complete: resume it first", StatusCodes.Status409Conflict);
        }
        var server = await QemuNbdServer.StartAsync(last, readOnly: true, ct).ConfigureAwait(false);
        return new BackupChain(null, server.Client, server.Client.Size) { _qcow2 = server };
    }

    private static void CheckFile(string path)
    {
        if (!Path.IsPathFullyQualified(path) || !File.Exists(path))
        {
            throw new AdminRequestException($"backup '{path}' not found on the node (give an absolute path or an NBD URI)", StatusCodes.Status404NotFound);
        }
    }

    /// <summary>Fills <paramref name="buffer"/> with the chain's image at <paramref name="offset"/> (zeroes past the full's end).</summary>
    public async Task ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
    {
        buffer.Span.Clear();
        if (_fullNbd is not null)
        {
            int n = (int)Math.Clamp(_fullNbd.Size - offset, 0, buffer.Length);
            if (n > 0)
            {
                await _fullNbd.ReadAsync(offset, buffer[..n], ct).ConfigureAwait(false);
            }
        }
        else
        {
            await RandomAccess.ReadAsync(_fullFile!, buffer, offset, ct).ConfigureAwait(false);
        }
        long end = offset + buffer.Length;
        foreach ((SafeFileHandle file, long[][] extents) in _incrementals)
        {
            foreach (long[] e in extents)
            {
                long from = Math.Max(offset, e[0]);
                long to = Math.Min(end, e[0] + e[1]);
                if (from < to)
                {
                    await RandomAccess.ReadAsync(file, buffer.Slice((int)(from - offset), (int)(to - from)), from, ct).ConfigureAwait(false);
                }
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _fullFile?.Dispose();
        if (_qcow2 is not null)
        {
            await _qcow2.DisposeAsync().ConfigureAwait(false); // the client with it
        }
        else if (_fullNbd is not null)
        {
            await _fullNbd.DisposeAsync().ConfigureAwait(false);
        }
        foreach (var (file, _) in _incrementals)
        {
            file.Dispose();
        }
    }
}
