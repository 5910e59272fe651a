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
    // Going around is tried only while the pushes take less than this many times a cached write.
    // A push costs what a write sent around would, plus the copies' sync when it carries FUA (at
    // queue depth one); far beyond, the round trip is what the cache hides (2 ms links: 17 times).
    private const double PushesCouldWin = 4.0;
    private const double PushWeight = 1.0 / 32;

    private readonly Lock _lock = new();
    private readonly Way _cache = new();
    private readonly Way _around = new();
    private bool _goAround;
    private double _pushMicros;
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

    public void Cached(long startedAt)
    {
        if (!enabled)
            return;
        lock (_lock)
            SampleLocked(_cache, startedAt);
    }

    /// <summary>A push's round trip to every copy: what a write sent around would take, or a sync more.</summary>
    public void Pushed(long startedAt)
    {
        if (!enabled)
            return;
        double micros = Stopwatch.GetElapsedTime(startedAt).TotalMicroseconds;
        lock (_lock)
            _pushMicros = _pushMicros == 0 ? micros : _pushMicros + (micros - _pushMicros) * PushWeight;
    }

    // Caller holds _lock.
    private void SampleLocked(Way way, long startedAt)
    {
        // A write of the other way finishing after a switch says nothing of this one.
        if (way != (_goAround ? _around : _cache) || !way.Add(Stopwatch.GetElapsedTime(startedAt).TotalMicroseconds))
            return;
        Way other = _goAround ? _cache : _around;
        bool stale = other.MeasuredAt == 0 || Stopwatch.GetElapsedTime(other.MeasuredAt) > ExploreEvery;
        bool worthTrying = _goAround || (_pushMicros > 0 && _pushMicros < PushesCouldWin * way.Micros);
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
