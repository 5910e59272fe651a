using System.Diagnostics;

namespace Ovis.Cluster.Cache;

/// <summary>
/// Whether a writeback layer's writes go through the cache or around it, straight to the copies
/// (docs/writeback-cache.md, "Write-around"). The cache hides the copies' round trip behind one
/// sync of the local log; when the copies answer faster than that sync (near replicas, a fast
/// network), it only adds work, and writes go around it — as bcache bypasses a congested cache.
/// Each way's latency is the mean of the guest writes of its last window; the way in use is
/// measured all the time, the other by a short window every <see cref="ExploreEvery"/>, and only
/// while the pushes (the copies' own latency) say it could win: behind slow links, never.
/// Thread-safe.
/// </summary>
internal sealed class WriteAround(bool enabled)
{
    private const int WindowWrites = 32;
    private static readonly TimeSpan WindowTime = TimeSpan.FromMilliseconds(100);
    internal static readonly TimeSpan ExploreEvery = TimeSpan.FromSeconds(5);
    // A switch needs the other way faster by this share, so two ways alike do not flap.
    private const double Margin = 0.95;
    // Going around is tried only while the pushes without FUA (what a write sent around costs)
    // take less than this many times a cached write; far beyond, the round trip is what the cache
    // hides (2 ms links: 17 times). At queue depth one every push carries FUA, so pays the copies'
    // sync as well and says nothing: then going around is tried.
    private const double PushesCouldWin = 4.0;
    private const double PushWeight = 1.0 / 32;
    // Nor while the layer holds more unpushed bytes than this: the first write around waits for
    // them all, and behind a slow link that must stay one round trip.
    private const long MaxDirtyToTry = 1L << 20;

    private readonly Lock _lock = new();
    private readonly Way _cache = new();
    private readonly Way _around = new();
    private bool _goAround;
    private double _pushMicros;
    private long _pushedAt;
    private int _aroundInFlight;
    private TaskCompletionSource? _aroundDrained;
    private long _aroundWrites;
    private long _dirtyBytes;

    /// <summary>Writes sent around the cache so far.</summary>
    public long AroundWrites => Interlocked.Read(ref _aroundWrites);

    /// <summary>Whether writes go around the cache now.</summary>
    public bool IsAround
    {
        get { lock (_lock) return enabled && _goAround; }
    }

    /// <summary>Whether the next write goes around the cache; if so, the caller calls
    /// <see cref="AroundEnded"/> when it completes.</summary>
    public bool GoAround()
    {
        if (!enabled)
            return false;
        lock (_lock)
        {
            if (!_goAround)
                return false;
            _aroundInFlight++;
            _aroundWrites++;
            return true;
        }
    }

    public void AroundEnded(long startedAt, bool sample)
    {
        TaskCompletionSource? drained = null;
        lock (_lock)
        {
            if (--_aroundInFlight == 0)
            {
                drained = _aroundDrained;
                _aroundDrained = null;
            }
        }
        drained?.TrySetResult();
        if (sample)
            SampledAround(startedAt);
    }

    /// <summary>A write sent around the cache at <paramref name="startedAt"/> is done.</summary>
    public void SampledAround(long startedAt)
    {
        lock (_lock)
            SampleLocked(_around, startedAt);
    }

    /// <summary>Before a write goes through the cache: the writes sent around it are done, so no
    /// copy can take one of them after the cache's newer write of the same block.</summary>
    public Task AroundDrained()
    {
        lock (_lock)
        {
            if (_aroundInFlight == 0)
                return Task.CompletedTask;
            _aroundDrained ??= new(TaskCreationOptions.RunContinuationsAsynchronously);
            return _aroundDrained.Task;
        }
    }

    /// <summary>A write through the cache that began at <paramref name="startedAt"/> is
    /// acknowledged; the layer holds <paramref name="dirtyBytes"/> unpushed.</summary>
    public void Cached(long startedAt, long dirtyBytes)
    {
        if (!enabled)
            return;
        lock (_lock)
        {
            _dirtyBytes = dirtyBytes;
            SampleLocked(_cache, startedAt);
        }
    }

    /// <summary>A push without FUA went to every copy: what a write sent around would take.</summary>
    public void Pushed(long startedAt)
    {
        if (!enabled)
            return;
        long now = Stopwatch.GetTimestamp();
        double micros = Stopwatch.GetElapsedTime(startedAt, now).TotalMicroseconds;
        lock (_lock)
        {
            bool stale = _pushedAt == 0 || Stopwatch.GetElapsedTime(_pushedAt, now) > ExploreEvery;
            _pushMicros = stale ? micros : _pushMicros + (micros - _pushMicros) * PushWeight;
            _pushedAt = now;
        }
    }

    // Caller holds _lock.
    private bool AroundCouldWinLocked(double cachedMicros)
    {
        if (_dirtyBytes > MaxDirtyToTry)
            return false;
        bool known = _pushedAt != 0 && Stopwatch.GetElapsedTime(_pushedAt) <= ExploreEvery;
        return !known || _pushMicros < PushesCouldWin * cachedMicros;
    }

    // Caller holds _lock.
    private void SampleLocked(Way way, long startedAt)
    {
        // A write of the other way finishing after a switch says nothing of this one.
        if (way != (_goAround ? _around : _cache) || !way.Add(Stopwatch.GetElapsedTime(startedAt).TotalMicroseconds))
            return;
        Way other = _goAround ? _cache : _around;
        bool stale = other.MeasuredAt == 0 || Stopwatch.GetElapsedTime(other.MeasuredAt) > ExploreEvery;
        bool worthTrying = _goAround || AroundCouldWinLocked(way.Micros);
        if (stale ? worthTrying : other.Micros < Margin * way.Micros)
            _goAround = !_goAround;
    }

    /// <summary>One way's latency: the mean of its last full window.</summary>
    private sealed class Way
    {
        private long _windowStart;
        private int _count;
        private double _sum;

        public double Micros { get; private set; }

        public long MeasuredAt { get; private set; }

        /// <summary>True when this sample closed a window.</summary>
        public bool Add(double micros)
        {
            long now = Stopwatch.GetTimestamp();
            if (_count == 0)
                _windowStart = now;
            _count++;
            _sum += micros;
            if (_count < WindowWrites || Stopwatch.GetElapsedTime(_windowStart, now) < WindowTime)
                return false;
            Micros = _sum / _count;
            MeasuredAt = now;
            _count = 0;
            _sum = 0;
            return true;
        }
    }
}
