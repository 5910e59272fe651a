using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Ovis.Store;

namespace Ovis.Cluster.Recovery;

/// <summary>
/// The dirty-region log, as cmirrord keeps it: before the first write to a clean object goes to
/// its copies, the object is recorded durably as "its copies may differ". Marks of concurrent
/// writes share one save (one round trip to the catalog); a write to an object already marked
/// pays nothing. Clears are lazy: an object is cleared only when every copy took every write to
/// it, a flush made them durable since, and it has been idle a while — and the clear waits for
/// the next save, which it rides along with. After a gateway crash or a node's absence, only the
/// logged objects need to be compared and resynced.
/// </summary>
public sealed partial class DirtyLog : IAsyncDisposable
{
    private readonly IDirtyLogStore _store;
    private readonly ILogger _logger;
    private readonly TimeSpan _clearAfter;
    private readonly ConcurrentDictionary<ObjectId, Entry> _entries = new();
    private readonly ConcurrentDictionary<uint, LayerState> _layers = new();
    private readonly Lock _batchLock = new();
    private readonly SemaphoreSlim _saving = new(1, 1);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _clearer;
    private TaskCompletionSource _next = NewBatch();
    private bool _saveQueued;
    // Counts the writes that ended; an entry keeps the count of its last one, so a clear can tell
    // the writes that ended before a bitmap save from those after, whatever the clock's resolution.
    private long _ends;

    /// <param name="clearAfter">How long an object stays marked after its last write (and a flush).</param>
    public DirtyLog(IDirtyLogStore store, ILogger logger, TimeSpan clearAfter)
    {
        _store = store;
        _logger = logger;
        _clearAfter = clearAfter;
        _clearer = Task.Run(() => ClearLoopAsync(_stop.Token));
    }

    /// <summary>
    /// Called before objects of the given layers are forgotten (cleared in the catalog): a dirty
    /// bitmap relies on the log to name every object changed since its last save, so it is saved
    /// here first (docs/backup.md). Only objects whose last write ended before the call are
    /// cleared; when it throws, none is.
    /// </summary>
    public Func<IReadOnlyCollection<uint>, Task>? BeforeClear { get; set; }

    /// <summary>Objects marked now (durably or on their way).</summary>
    public int Count => _entries.Count;

    /// <summary>
    /// Loads what the log holds for <paramref name="layers"/> — left by an earlier gateway — and
    /// adopts it: those objects count as marked here too (never cleared before they are resynced).
    /// Returns them. A layer is adopted once; a write to a layer not adopted adopts it first, so a
    /// save never drops a predecessor's marks.
    /// </summary>
    public async Task<IReadOnlyList<ObjectId>> AdoptAsync(IReadOnlyCollection<uint> layers, CancellationToken cancellationToken)
    {
        var found = new List<ObjectId>();
        // A layer adopted under an earlier tenure of the lock (lost, then taken again) is loaded
        // afresh: meanwhile another holder may have logged objects this node's memory lacks.
        foreach (uint layer in layers)
        {
            if (_layers.TryGetValue(layer, out LayerState? s) && s.Adopted.IsCompletedSuccessfully && s.Tenure != _store.TenureOf(layer))
                Forget(layer, s);
        }
        var fresh = layers.Where(l => !_layers.TryGetValue(l, out LayerState? s) || !s.Adopted.IsCompletedSuccessfully).ToArray();
        if (fresh.Length > 0)
            await LoadLayersAsync(fresh, cancellationToken).ConfigureAwait(false);
        foreach (uint layer in layers)
        {
            LayerState state = Layer(layer);
            await state.Adopted.ConfigureAwait(false);
            found.AddRange(state.Inherited.Select(i => new ObjectId(layer, i)));
        }
        return found;
    }

    private async Task LoadLayersAsync(uint[] layers, CancellationToken cancellationToken)
    {
        var loaded = await _store.LoadAsync(layers, cancellationToken).ConfigureAwait(false);
        foreach (uint layer in layers)
        {
            LayerState state = Layer(layer);
            uint[] indexes = loaded.TryGetValue(layer, out uint[]? l) ? l : [];
            lock (state)
            {
                if (state.Adopted.IsCompletedSuccessfully)
                    continue;
                state.Tenure = _store.TenureOf(layer);
                state.Inherited = indexes;
                foreach (uint index in indexes)
                    _entries.TryAdd(new ObjectId(layer, index), new Entry { Durable = Task.CompletedTask, Missed = true });
                state.AdoptedSource.TrySetResult();
            }
        }
    }

    private LayerState Layer(uint layer) => _layers.GetOrAdd(layer, static _ => new LayerState());

    // Drops what this node logged for a layer under a tenure that ended: nothing of it is saved.
    private void Forget(uint layer, LayerState state)
    {
        lock (_batchLock)
        {
            if (!_layers.TryRemove(new KeyValuePair<uint, LayerState>(layer, state)))
                return;
            foreach (var (id, _) in _entries)
            {
                if (id.Volume == layer)
                    _entries.TryRemove(id, out _);
            }
        }
    }

    /// <summary>
    /// Called before a change to <paramref name="id"/> goes to its copies; completes when the
    /// object is logged durably. Pass the mark it returns to <see cref="EndWrite"/>: the entry
    /// this write counted in may be dropped meanwhile (a release, a new tenure) and another
    /// created, and ending the write on that other one would leave it counting a writer forever.
    /// </summary>
    public ValueTask<WriteMark> BeginWriteAsync(ObjectId id)
    {
        while (true)
        {
            // One lookup: a write under a tenure this log has not adopted the layer in adopts it first.
            if (_layers.TryGetValue(id.Volume, out LayerState? adopted) && adopted.Adopted.IsCompletedSuccessfully
                && adopted.Tenure != _store.TenureOf(id.Volume))
                return AdoptThenBeginAsync(id);
            if (_entries.TryGetValue(id, out Entry? entry))
            {
                if (Interlocked.Increment(ref entry.Writers) > 0)
                {
                    Task durable = entry.Durable;
                    return durable.IsCompletedSuccessfully ? new(new WriteMark(id, entry)) : AwaitDurableAsync(entry, id, durable);
                }
                // Being cleared this instant: mark it again.
                Interlocked.Decrement(ref entry.Writers);
                continue;
            }
            LayerState layer = Layer(id.Volume);
            if (!layer.Adopted.IsCompletedSuccessfully)
                return AdoptThenBeginAsync(id);
            var fresh = new Entry { Writers = 1 };
            lock (_batchLock)
            {
                fresh.Durable = _next.Task;
                if (!_entries.TryAdd(id, fresh))
                    continue;
                layer.Changed = true;
                if (!_saveQueued)
                {
                    _saveQueued = true;
                    _ = SaveLoopAsync();
                }
            }
            return AwaitDurableAsync(fresh, id, fresh.Durable);
        }
    }

    private async ValueTask<WriteMark> AdoptThenBeginAsync(ObjectId id)
    {
        await AdoptAsync([id.Volume], _stop.Token).ConfigureAwait(false);
        return await BeginWriteAsync(id).ConfigureAwait(false);
    }

    private async ValueTask<WriteMark> AwaitDurableAsync(Entry entry, ObjectId id, Task durable)
    {
        try
        {
            await durable.ConfigureAwait(false);
        }
        catch
        {
            EndWrite(id, entry, missed: false);
            throw;
        }
        return new WriteMark(id, entry);
    }

    /// <summary>The change is done: <paramref name="missed"/> when some copy did not take it (the
    /// object stays logged until that copy is resynced).</summary>
    public void EndWrite(WriteMark mark, bool missed) => EndWrite(mark.Id, mark.Entry, missed);

    private void EndWrite(ObjectId id, Entry entry, bool missed)
    {
        LayerState layer = Layer(id.Volume);
        entry.Generation = Interlocked.Read(ref layer.Generation);
        entry.LastWrite = Environment.TickCount64;
        entry.Ended = Interlocked.Increment(ref _ends);
        if (missed)
            entry.Missed = true;
        Interlocked.Decrement(ref entry.Writers);
    }

    /// <summary>A flush of <paramref name="layer"/> starts: returns its generation for <see cref="FlushDone"/>.</summary>
    public long FlushStarting(uint layer) => Interlocked.Increment(ref Layer(layer).Generation) - 1;

    /// <summary>The flush that started at <paramref name="generation"/> made every earlier write to
    /// the layer durable on every copy that took it.</summary>
    public void FlushDone(uint layer, long generation)
    {
        LayerState state = Layer(layer);
        long seen;
        while ((seen = Interlocked.Read(ref state.Covered)) < generation + 1
               && Interlocked.CompareExchange(ref state.Covered, generation + 1, seen) != seen)
        {
        }
    }

    /// <summary>Recovery made every copy of <paramref name="id"/> identical and durable: it may be
    /// cleared with the next save (unless a write is on its way).</summary>
    public void Resynced(ObjectId id)
    {
        if (_entries.TryGetValue(id, out Entry? entry))
        {
            entry.Missed = false;
            entry.Generation = long.MinValue;
            entry.LastWrite = 0;
        }
    }

    /// <summary>A node failed a flush of <paramref name="layer"/>: every object of the layer logged now
    /// stays logged until it is resynced.</summary>
    public void MissedAll(uint layer)
    {
        foreach (var (id, entry) in _entries)
        {
            if (id.Volume == layer)
                entry.Missed = true;
        }
    }

    /// <summary>Whether some copy of <paramref name="id"/> may lack a write (so it waits for a resync).</summary>
    public bool IsMissed(ObjectId id) => _entries.TryGetValue(id, out Entry? entry) && entry.Missed;

    /// <summary>Whether <paramref name="id"/> is logged here now.</summary>
    public bool IsMarked(ObjectId id) => _entries.ContainsKey(id);

    /// <summary>Logged objects, for resync after a node comes back.</summary>
    public IReadOnlyList<ObjectId> Marked() => [.. _entries.Keys];

    private async Task SaveLoopAsync()
    {
        await _saving.WaitAsync().ConfigureAwait(false);
        try
        {
            TaskCompletionSource batch;
            Dictionary<uint, uint[]> records;
            lock (_batchLock)
            {
                _saveQueued = false;
                batch = _next;
                _next = NewBatch();
                records = Snapshot();
            }
            try
            {
                await _store.SaveAsync(records, CancellationToken.None).ConfigureAwait(false);
                batch.SetResult();
            }
#pragma warning disable CA1031 // The writers waiting on the batch get the failure; their marks are retried by the next save.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                LogSaveFailed(_logger, ex);
                foreach (uint layer in records.Keys)
                    Layer(layer).Changed = true;
                foreach (var (id, entry) in _entries)
                {
                    if (entry.Durable == batch.Task)
                        _entries.TryRemove(new KeyValuePair<ObjectId, Entry>(id, entry));
                }
                batch.SetException(ex);
            }
        }
        finally
        {
            _saving.Release();
        }
    }

    // Under _batchLock: the full record of every changed layer (a record is replaced whole).
    private Dictionary<uint, uint[]> Snapshot()
    {
        var changed = new HashSet<uint>();
        foreach (var (layer, state) in _layers)
        {
            // A record built under a tenure that ended is never saved under the next one.
            if (state.Changed && state.Tenure == _store.TenureOf(layer))
            {
                state.Changed = false;
                changed.Add(layer);
            }
        }
        var records = changed.ToDictionary(l => l, _ => new List<uint>());
        foreach (ObjectId id in _entries.Keys)
        {
            if (records.TryGetValue(id.Volume, out List<uint>? list))
                list.Add(id.Index);
        }
        return records.ToDictionary(r => r.Key, r => r.Value.Order().ToArray());
    }

    private async Task ClearLoopAsync(CancellationToken cancellationToken)
    {
        TimeSpan period = _clearAfter / 2 > TimeSpan.FromMilliseconds(100) ? _clearAfter / 2 : TimeSpan.FromMilliseconds(100);
        using var timer = new PeriodicTimer(period);
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false))
            {
                long before = long.MaxValue;
                HashSet<uint>? layers = null;
                if (BeforeClear is not null)
                {
                    // Only the layers whose bitmaps were saved, and only what was written before.
                    layers = ClearableLayers();
                    before = Interlocked.Read(ref _ends);
                    if (layers.Count == 0 || !await RunBeforeClearAsync(layers).ConfigureAwait(false))
                        continue;
                }
                if (ClearIdle(layers, before: before) > 0)
                {
                    lock (_batchLock)
                    {
                        if (_saveQueued)
                            continue; // the clears ride on the save already queued
                        _saveQueued = true;
                    }
                    await SaveLoopAsync().ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    // Whether an entry may be cleared now: every copy took every write, a flush covered them,
    // it is idle, and its last write was among the first `before` to end (so a bitmap save
    // started after counting them has its bits).
    private bool Clearable(ObjectId id, Entry entry, long now, long idle, long before)
    {
        LayerState layer = Layer(id.Volume);
        return !entry.Missed && entry.Durable.IsCompletedSuccessfully && now - entry.LastWrite >= idle && entry.Ended <= before
            && (entry.Generation < Interlocked.Read(ref layer.Covered) || entry.Generation == long.MinValue);
    }

    private HashSet<uint> ClearableLayers()
    {
        long now = Environment.TickCount64;
        long idle = (long)_clearAfter.TotalMilliseconds;
        var layers = new HashSet<uint>();
        foreach (var (id, entry) in _entries)
        {
            if (Clearable(id, entry, now, idle, long.MaxValue))
                layers.Add(id.Volume);
        }
        return layers;
    }

    private async Task<bool> RunBeforeClearAsync(IReadOnlyCollection<uint> layers)
    {
        if (BeforeClear is not { } beforeClear)
            return true;
        try
        {
            await beforeClear(layers).ConfigureAwait(false);
            return true;
        }
#pragma warning disable CA1031 // Nothing is cleared then: the objects stay logged, which only over-reports.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            LogBeforeClearFailed(_logger, ex);
            return false;
        }
    }

    /// <summary>Drops the entries that may be cleared now (of <paramref name="only"/> layers, when
    /// given; whose last write ended among the first <paramref name="before"/>); returns how many.</summary>
    private int ClearIdle(IReadOnlyCollection<uint>? only = null, bool ignoreIdle = false, long before = long.MaxValue)
    {
        long now = Environment.TickCount64;
        long idle = ignoreIdle ? long.MinValue : (long)_clearAfter.TotalMilliseconds;
        int cleared = 0;
        foreach (var (id, entry) in _entries)
        {
            if (only is not null && !only.Contains(id.Volume))
                continue;
            LayerState layer = Layer(id.Volume);
            if (!Clearable(id, entry, now, idle, before))
                continue;
            // No writer may be inside while it goes: a writer arriving now sees the sentinel and marks again.
            if (Interlocked.CompareExchange(ref entry.Writers, int.MinValue / 2, 0) != 0)
                continue;
            lock (_batchLock)
            {
                _entries.TryRemove(new KeyValuePair<ObjectId, Entry>(id, entry));
                layer.Changed = true;
            }
            cleared++;
        }
        return cleared;
    }

    /// <summary>
    /// This gateway stops writing <paramref name="layers"/> (the volume's lock is going): what may
    /// be cleared is cleared now, without waiting for idleness, and saved; then the layers are
    /// forgotten here, so no later save of this gateway overwrites the next holder's log.
    /// </summary>
    public async Task ReleaseAsync(IReadOnlyCollection<uint> layers)
    {
        long before = BeforeClear is null ? long.MaxValue : Interlocked.Read(ref _ends);
        if (await RunBeforeClearAsync(layers).ConfigureAwait(false))
            ClearIdle(layers, ignoreIdle: true, before);
        bool save;
        Task queued;
        lock (_batchLock)
        {
            // A save already queued has not taken its batch yet (it does so under this lock): the
            // clears above ride on it, and this waits for exactly that batch.
            save = !_saveQueued;
            _saveQueued = true;
            queued = _next.Task;
        }
        if (save)
            await SaveLoopAsync().ConfigureAwait(false);
        else
            await queued.ConfigureAwait(false);
        foreach (var (id, _) in _entries)
        {
            if (layers.Contains(id.Volume))
                _entries.TryRemove(id, out _);
        }
        foreach (uint layer in layers)
            _layers.TryRemove(layer, out _);
    }

    private static TaskCompletionSource NewBatch() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _clearer.ConfigureAwait(false);
        _stop.Dispose();
    }

    /// <summary>A write counted in the log by <see cref="BeginWriteAsync"/>, for <see cref="EndWrite(WriteMark, bool)"/>.</summary>
    public readonly struct WriteMark
    {
        internal WriteMark(ObjectId id, Entry entry)
        {
            Id = id;
            Entry = entry;
        }

        internal ObjectId Id { get; }

        internal Entry Entry { get; }
    }

    internal sealed class Entry
    {
        public int Writers;
        public Task Durable = Task.CompletedTask;
        public long Generation = long.MaxValue;
        public long LastWrite = Environment.TickCount64;
        // DirtyLog._ends when its last write ended; 0 before any.
        public long Ended;
        public bool Missed;
    }

    private sealed class LayerState
    {
        public readonly TaskCompletionSource AdoptedSource = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public long Generation;
        public long Covered;
        // The lock generation the layer was adopted under (IDirtyLogStore.TenureOf).
        public long Tenure;
        public bool Changed;
        public uint[] Inherited = [];

        public Task Adopted => AdoptedSource.Task;
    }

    [LoggerMessage(EventId = 69, Level = LogLevel.Warning, Message = "Could not save the dirty bitmaps before clearing the dirty-region log; the objects stay logged")]
    private static partial void LogBeforeClearFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 60, Level = LogLevel.Error, Message = "Could not save the dirty-region log; the writes waiting for it fail")]
    private static partial void LogSaveFailed(ILogger logger, Exception exception);
}
