using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using Ovis.Store;

namespace Ovis.Cluster.Fencing;

/// <summary>What <see cref="FenceTable.TryEnter"/> decided for one change.</summary>
public enum FenceVerdict
{
    /// <summary>The change may be applied; call <see cref="FenceTable.Exit"/> once it is.</summary>
    Admitted,

    /// <summary>The change's generation is older than the layer's fence: refuse it, apply nothing.</summary>
    Fenced,

    /// <summary>The change comes from a newer holder than this replica has heard of: raise the fence
    /// first (<see cref="FenceTable.RaiseAsync"/>), then ask again.</summary>
    Newer,
}

/// <summary>
/// A replica's fences: per layer, the newest volume-lock generation it has seen. A change to a
/// layer carries its gateway's generation; one older than the fence is refused, so a gateway
/// that lost the lock (paused, cut off from etcd) can never change a copy once the next holder
/// has fenced it. Fences only grow, and every raise is on disk before it is acknowledged, so a
/// replica that restarts still refuses what it refused before (docs/fencing.md).
/// </summary>
/// <remarks>
/// A raise waits for the changes admitted under older generations to finish: a write that
/// passed the check before the raise would otherwise land after the new holder's write that the
/// raise let in. The file is small (a line per layer ever fenced; ids are never reused) and
/// rewritten whole, atomically, at each raise: once per lock acquisition per layer.
/// </remarks>
// The semaphore never allocates a wait handle (only WaitAsync is used), so it needs no disposal.
#pragma warning disable CA1001
public sealed class FenceTable
#pragma warning restore CA1001
{
    private readonly string _path;
    private readonly ConcurrentDictionary<uint, LayerFence> _layers = new();
    private readonly SemaphoreSlim _saving = new(1, 1);

    private FenceTable(string path) => _path = path;

    /// <summary>Loads the fences kept at <paramref name="path"/> (none when the file does not exist).</summary>
    public static FenceTable Open(string path)
    {
        var table = new FenceTable(path);
        if (!File.Exists(path))
            return table;
        foreach (string line in File.ReadAllLines(path))
        {
            string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 0 || parts[0].StartsWith('#'))
                continue;
            if (parts.Length != 2
                || !uint.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out uint layer)
                || !long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out long generation))
                throw new InvalidDataException($"{path}: malformed fence line '{line}'");
            table._layers[layer] = new LayerFence(generation);
        }
        return table;
    }

    /// <summary>The newest generation seen for <paramref name="layer"/>; 0 when it was never fenced.</summary>
    public long GenerationOf(uint layer) => _layers.TryGetValue(layer, out LayerFence? fence) ? Volatile.Read(ref fence.Generation) : 0;

    /// <summary>Checks a change of <paramref name="layer"/> from a holder of <paramref name="generation"/>;
    /// on <see cref="FenceVerdict.Admitted"/> the caller must <see cref="Exit"/> with the same values.</summary>
    public FenceVerdict TryEnter(uint layer, long generation)
    {
        LayerFence fence = _layers.GetOrAdd(layer, static _ => new LayerFence(0));
        lock (fence)
        {
            if (generation < fence.Generation)
                return FenceVerdict.Fenced;
            // Also a generation raised in memory but not yet on disk: its changes wait for the save.
            if (generation > fence.Durable)
                return FenceVerdict.Newer;
            fence.Active++;
            return FenceVerdict.Admitted;
        }
    }

    /// <summary>The change admitted by <see cref="TryEnter"/> is applied (or failed).</summary>
    public void Exit(uint layer, long generation)
    {
        LayerFence fence = _layers[layer];
        TaskCompletionSource? drained = null;
        lock (fence)
        {
            if (generation == fence.Generation)
            {
                fence.Active--;
            }
            else if (--fence.Older == 0)
            {
                drained = fence.Drained;
                fence.Drained = null;
            }
        }
        drained?.TrySetResult();
    }

    /// <summary>
    /// Raises the fence of <paramref name="layer"/> to <paramref name="generation"/>: from now on
    /// older changes are refused. Completes once every older change already admitted has finished
    /// and the new fence is on disk. False when the fence is newer already (the caller is fenced).
    /// </summary>
    public async ValueTask<bool> RaiseAsync(uint layer, long generation, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(generation);
        LayerFence fence = _layers.GetOrAdd(layer, static _ => new LayerFence(0));
        Task drained;
        lock (fence)
        {
            if (generation < fence.Generation)
                return false;
            if (generation > fence.Generation)
            {
                Volatile.Write(ref fence.Generation, generation);
                fence.Older += fence.Active;
                fence.Active = 0;
            }
            if (fence.Older > 0)
            {
                fence.Drained ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                drained = fence.Drained.Task;
            }
            else
            {
                drained = Task.CompletedTask;
            }
        }
        await drained.WaitAsync(cancellationToken).ConfigureAwait(false);
        await SaveAsync(cancellationToken).ConfigureAwait(false);
        lock (fence)
        {
            fence.Durable = Math.Max(fence.Durable, generation);
        }
        return true;
    }

    /// <summary>Writes the whole table to a temporary file, syncs it and renames it over the old one.</summary>
    private async Task SaveAsync(CancellationToken cancellationToken)
    {
        await _saving.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var text = new StringBuilder("# layer generation: the newest volume-lock generation this replica has seen (docs/fencing.md)\n");
            foreach ((uint layer, LayerFence fence) in _layers.OrderBy(kv => kv.Key))
            {
                long generation = Volatile.Read(ref fence.Generation);
                if (generation > 0)
                    text.Append(CultureInfo.InvariantCulture, $"{layer} {generation}\n");
            }
            string temp = _path + ".tmp";
            await using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 4096, FileOptions.Asynchronous))
            {
                await file.WriteAsync(Encoding.ASCII.GetBytes(text.ToString()), cancellationToken).ConfigureAwait(false);
                file.Flush(flushToDisk: true);
            }
            File.Move(temp, _path, overwrite: true);
            DirectorySync.Sync(Path.GetDirectoryName(Path.GetFullPath(_path))!);
        }
        finally
        {
            _saving.Release();
        }
    }

    private sealed class LayerFence(long generation)
    {
        /// <summary>Changes older than this are refused.</summary>
        public long Generation = generation;

        /// <summary>The newest generation on disk: only changes up to it are admitted.</summary>
        public long Durable = generation;

        /// <summary>Changes admitted at <see cref="Generation"/> and not yet finished.</summary>
        public int Active;

        /// <summary>Changes admitted at an older generation and not yet finished: a raise waits for them.</summary>
        public int Older;

        public TaskCompletionSource? Drained;
    }
}
