namespace Ovis.Cluster.Cache;

/// <summary>
/// Which cache-log records are still needed after a crash, so the log may reuse the space before
/// the oldest of them. A write's record is needed until its push is covered by a replica flush; a
/// tombstone (which voids its layer's earlier records) until no needed write precedes it, so that
/// the tail passes it and everything it voids at once. Appends still under way hold a floor below
/// their future LSN: every record logged later gets a higher LSN than any registered so far.
/// </summary>
internal sealed class LiveRecords
{
    private readonly Lock _lock = new();
    private readonly SortedDictionary<long, int> _needed = [];
    private readonly SortedSet<long> _tombstones = [];
    private long _highest = -1;

    /// <summary>Before an append: a floor no later record can fall below; pass it to <see cref="EndAppend"/>.</summary>
    public long BeginAppend()
    {
        lock (_lock)
        {
            long floor = _highest + 1;
            Add(floor);
            return floor;
        }
    }

    /// <summary>After an append: the floor goes, the record (when it was logged) is needed.</summary>
    public void EndAppend(long floor, long? lsn, bool tombstone = false)
    {
        lock (_lock)
        {
            Remove(floor);
            if (lsn is { } l)
                Register(l, tombstone);
        }
    }

    /// <summary>A record found in the log at start, still needed.</summary>
    public void Register(long lsn, bool tombstone = false)
    {
        lock (_lock)
        {
            _highest = Math.Max(_highest, lsn);
            if (tombstone)
                _tombstones.Add(lsn);
            else
                Add(lsn);
        }
    }

    /// <summary>These writes' records are no longer needed; returns the LSN every record before
    /// which may go (for <see cref="Ovis.Store.CacheLog.ReleaseBefore"/>).</summary>
    public long Release(IEnumerable<long> lsns)
    {
        lock (_lock)
        {
            foreach (long lsn in lsns)
                Remove(lsn);
            long firstNeeded = _needed.Count > 0 ? _needed.First().Key : _highest + 1;
            while (_tombstones.Count > 0 && _tombstones.Min < firstNeeded)
                _tombstones.Remove(_tombstones.Min);
            return _tombstones.Count > 0 ? Math.Min(firstNeeded, _tombstones.Min) : firstNeeded;
        }
    }

    private void Add(long lsn) => _needed[lsn] = _needed.GetValueOrDefault(lsn) + 1;

    private void Remove(long lsn)
    {
        if (_needed.TryGetValue(lsn, out int n))
        {
            if (n <= 1)
                _needed.Remove(lsn);
            else
                _needed[lsn] = n - 1;
        }
    }
}
