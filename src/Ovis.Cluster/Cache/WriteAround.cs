using System.Diagnostics;

namespace Ovis.Cluster.Cache;

/// <summary>
/// Whether a writeback layer's writes go through the cache or around it, straight to the copies
/// (docs/writeback-cache.md, "Write-around"). The cache hides the copies' round trip behind one
/// sync of the local log; when the copies answer faster than that sync (near replicas, a fast
/// network), it only adds work, and writes go around it — as bcache bypasses a congested cache.
/// Each way's latency is the mean of the guest writes of its last window; the way in use is
/// measured all the time, the other by a short window every <see cref="ExploreEvery"/>, and only
/// while the quickest pushes (the copies' round trip) say it could win: behind slow links, never.
/// Thread-safe.
/// </summary>
internal sealed class WriteAround(bool enabled)
{
    private const int WindowWrites = 32;
    private static readonly TimeSpan WindowTime = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan ExploreEvery = TimeSpan.FromSeconds(5);
    // A switch needs the other way faster by this share, so two ways alike do not flap.
    private const double Margin = 0.95;
    // Going around is tried only while the quickest push without FUA of the last second or two
    // (what a write sent around costs at the least: the round trip, no queue) beats a cached write.
    // At queue depth one every push carries FUA, so pays the copies' sync as well, which a write
    // around does not: with only FUA pushes to go by, going around is tried while the quickest
    // beats this many cached writes. Behind 2 ms links it takes 15 of them (4.5 ms against
    // 0.3 ms), and each try cost a window of writes at two round trips each with their flushes;
    // with near copies on this machine's shared disk the copies' sync under load made it 3 to 5
    // (a factor of 3 kept the write + flush job off the faster way: 0.51× write-through).
    private static readonly TimeSpan PushPeriod = TimeSpan.FromSeconds(1);
    private const double FuaPushesPerCachedWrite = 8;
    // Nor while the layer holds more unpushed bytes than this: the first write around waits for
    // them all, and behind a slow link that must stay one round trip.
    private const long MaxDirtyToTry = 1L << 20;

    private readonly Lock _lock = new();
    private readonly Way _cache = new();
    private readonly Way _around = new();
    private bool _goAround;
    // The quickest push of this period and of the one before, without FUA and with; 0 when none.
    private double _pushMin;
    private double _pushMinBefore;
    private double _fuaPushMin;
    private double _fuaPushMinBefore;
    private long _pushPeriodStart;
    private int _aroundInFlight;
    private TaskCompletionSource? _aroundDrained;
    private long _aroundWrites;

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
            SampleLocked(_around, startedAt, dirtyBytes: 0);
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
            SampleLocked(_cache, startedAt, dirtyBytes);
    }

    /// <summary>A push went to every copy: without FUA, what a write sent around would take; with
    /// it, that and a sync on the copies.</summary>
    public void Pushed(long startedAt, bool fua)
    {
        if (!enabled)
            return;
        long now = Stopwatch.GetTimestamp();
        double micros = Stopwatch.GetElapsedTime(startedAt, now).TotalMicroseconds;
        lock (_lock)
        {
            RollPushPeriodLocked(now);
            ref double min = ref fua ? ref _fuaPushMin : ref _pushMin;
            min = min == 0 ? micros : Math.Min(min, micros);
        }
    }

    // Caller holds _lock.
    private void RollPushPeriodLocked(long now)
    {
        TimeSpan age = Stopwatch.GetElapsedTime(_pushPeriodStart, now);
        if (age < PushPeriod)
            return;
        bool recent = age < 2 * PushPeriod;
        _pushMinBefore = recent ? _pushMin : 0;
        _fuaPushMinBefore = recent ? _fuaPushMin : 0;
        _pushMin = 0;
        _fuaPushMin = 0;
        _pushPeriodStart = now;
    }

    // Caller holds _lock.
    private bool AroundCouldWinLocked(double cachedMicros, long dirtyBytes)
    {
        if (dirtyBytes > MaxDirtyToTry)
            return false;
        RollPushPeriodLocked(Stopwatch.GetTimestamp());
        if (Quickest(_pushMin, _pushMinBefore) is > 0 and var quickest)
            return quickest < cachedMicros;
        double quickestFua = Quickest(_fuaPushMin, _fuaPushMinBefore);
        return quickestFua == 0 || quickestFua < FuaPushesPerCachedWrite * cachedMicros;
    }

    private static double Quickest(double now, double before) => now == 0 ? before : before == 0 ? now : Math.Min(now, before);

    // Caller holds _lock. dirtyBytes: what the layer holds unpushed (only a cached write's sample
    // can switch to going around, and it says).
    private void SampleLocked(Way way, long startedAt, long dirtyBytes)
    {
        // A write of the other way finishing after a switch says nothing of this one.
        if (way != (_goAround ? _around : _cache) || !way.Add(Stopwatch.GetElapsedTime(startedAt).TotalMicroseconds))
            return;
        Way other = _goAround ? _cache : _around;
        bool stale = other.MeasuredAt == 0 || Stopwatch.GetElapsedTime(other.MeasuredAt) > ExploreEvery;
        bool worthTrying = _goAround || AroundCouldWinLocked(way.Micros, dirtyBytes);
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
