using System.Security.Cryptography;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

/// <summary>
/// The node's long-running admin operations (flatten), run in the background and polled by
/// clients through <c>GET /api/v1/jobs/{id}</c>. Jobs live in memory only: a restarted node has
/// forgotten them. Finished jobs stay until <see cref="MaxFinishedJobs"/> newer ones have finished.
/// </summary>
public sealed partial class JobRegistry(ILogger<JobRegistry> logger)
{
    /// <summary>Finished jobs kept for clients to read; enough for any client that polls at all.</summary>
    public const int MaxFinishedJobs = 100;

    private readonly Lock _lock = new();
    private readonly Dictionary<string, Job> _jobs = new(StringComparer.Ordinal);
    private readonly Queue<Job> _finished = new();

    /// <summary>
    /// Starts <paramref name="work"/> as a job of <paramref name="kind"/> on <paramref name="volume"/>.
    /// A refusal that <paramref name="work"/> reports before it starts (thrown, or a task already
    /// faulted) is thrown here, so the request is answered with it instead of a job that failed at
    /// once. One job of a kind per volume at a time: a second is refused with 409.
    /// </summary>
    public JobInfo Start(string kind, string volume, Func<IProgress<double>, Task<VolumeInfo>> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        return Start(kind, volume, async (JobContext job) => new JobOutcome(await work(job).ConfigureAwait(false), null));
    }

    /// <summary>
    /// <see cref="Start(string, string, Func{IProgress{double}, Task{VolumeInfo}})"/> for work that
    /// reports bytes, can be cancelled (<see cref="Cancel"/>) and may end with a backup's manifest.
    /// </summary>
    public JobInfo Start(string kind, string volume, Func<JobContext, Task<JobOutcome>> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        Job job;
        lock (_lock)
        {
            foreach (var other in _jobs.Values)
            {
                if (other.State == JobState.Running && other.Kind == kind && other.Volume == volume)
                {
                    throw new AdminRequestException($"volume '{volume}' already has a {kind} job running ({other.Id})", StatusCodes.Status409Conflict);
                }
            }

            job = new Job(NewId(), kind, volume, DateTimeOffset.UtcNow);
            _jobs.Add(job.Id, job);
        }

        Task<JobOutcome> task;
        try
        {
            task = work(job);
            if (task.IsFaulted || task.IsCanceled)
            {
                task.GetAwaiter().GetResult();
            }
        }
        catch
        {
            lock (_lock)
            {
                _jobs.Remove(job.Id);
            }

            throw;
        }

        LogJobStarted(logger, job.Id, kind, volume);
        job.Completion = CompleteAsync(job, task);
        return Describe(job);
    }

    /// <summary>Every job the node remembers, newest first.</summary>
    public IReadOnlyList<JobInfo> List()
    {
        lock (_lock)
        {
            return [.. _jobs.Values.OrderByDescending(j => j.Started).Select(Describe)];
        }
    }

    /// <summary>Asks a running job to stop; false when there is no such job. A job that is not running is left as it is.</summary>
    public bool Cancel(string id)
    {
        Job? job;
        lock (_lock)
        {
            _jobs.TryGetValue(id, out job);
        }

        if (job is null)
        {
            return false;
        }

        if (job.State == JobState.Running)
        {
            job.RequestCancel();
        }

        return true;
    }

    /// <summary>Null when there is no such job (never was, or forgotten since).</summary>
    public JobInfo? Get(string id)
    {
        lock (_lock)
        {
            return _jobs.TryGetValue(id, out var job) ? Describe(job) : null;
        }
    }

    /// <summary>
    /// Waits for the running jobs, at most <paramref name="timeout"/>: the node calls it on stop,
    /// after the listeners closed and before the volumes do. Returns the number still running.
    /// </summary>
    public async Task<int> WaitForRunningAsync(TimeSpan timeout)
    {
        List<Task> running;
        lock (_lock)
        {
            running = [.. _jobs.Values.Where(j => j.State == JobState.Running).Select(j => j.Completion)];
        }

        if (running.Count == 0)
        {
            return 0;
        }

        // Jobs that can stop half-way do (a backup stops resumable: its manifest, snapshot and
        // frozen bits stay for --resume after the restart); a flatten ignores it and is waited for.
        lock (_lock)
        {
            foreach (var job in _jobs.Values.Where(j => j.State == JobState.Running))
            {
                job.RequestCancel();
            }
        }

        LogWaitingForJobs(logger, running.Count);
        try
        {
            await Task.WhenAll(running).WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }

        // CompleteAsync never throws: a job's failure is its state.
        return running.Count(t => !t.IsCompleted);
    }

    private async Task CompleteAsync(Job job, Task<JobOutcome> task)
    {
        JobOutcome? result = null;
        string? error = null;
        try
        {
            result = await task.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            var (status, message) = AdminErrorMiddleware.Classify(ex);
            error = AdminErrorMiddleware.OneLine(message);
            if (status >= StatusCodes.Status500InternalServerError)
            {
                LogJobCrashed(logger, job.Id, job.Kind, job.Volume, ex);
            }
            else
            {
                LogJobRefused(logger, job.Id, job.Kind, job.Volume, error);
            }
        }

        lock (_lock)
        {
            job.Finish(result, error, DateTimeOffset.UtcNow);
            _finished.Enqueue(job);
            while (_finished.Count > MaxFinishedJobs)
            {
                _jobs.Remove(_finished.Dequeue().Id);
            }
        }

        if (error is null)
        {
            LogJobDone(logger, job.Id, job.Kind, job.Volume);
        }
    }

    private static JobInfo Describe(Job job) => new(job.Id, job.Kind, job.Volume, job.State, job.Progress, job.Started)
    {
        Finished = job.Finished,
        Error = job.Error,
        Result = job.Result?.Volume,
        Backup = job.Result?.Backup ?? job.Backup,
        Verify = job.Result?.Verify,
        BytesDone = job.BytesTotal > 0 ? job.BytesDone : null,
        BytesTotal = job.BytesTotal > 0 ? job.BytesTotal : null,
    };

    // Random rather than a counter: a client polling across a node restart must get 404, not
    // the first job of the new node.
    private static string NewId() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));

    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "Job {Id}: {Kind} of '{Volume}' started")]
    private static partial void LogJobStarted(ILogger logger, string id, string kind, string volume);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Job {Id}: {Kind} of '{Volume}' done")]
    private static partial void LogJobDone(ILogger logger, string id, string kind, string volume);

    [LoggerMessage(EventId = 3, Level = LogLevel.Warning, Message = "Job {Id}: {Kind} of '{Volume}' refused: {Error}")]
    private static partial void LogJobRefused(ILogger logger, string id, string kind, string volume, string error);

    [LoggerMessage(EventId = 4, Level = LogLevel.Error, Message = "Job {Id}: {Kind} of '{Volume}' failed")]
    private static partial void LogJobCrashed(ILogger logger, string id, string kind, string volume, Exception exception);

    [LoggerMessage(EventId = 5, Level = LogLevel.Information, Message = "Waiting for {Count} running job(s) before closing the volumes")]
    private static partial void LogWaitingForJobs(ILogger logger, int count);

    /// <summary>One job; its progress is written by the work's thread and read by requests.</summary>
    private sealed class Job(string id, string kind, string volume, DateTimeOffset started) : JobContext
    {
        private double _progress;
        private long _bytesDone;
        private long _bytesTotal;

        public string Id { get; } = id;

        public string Kind { get; } = kind;

        public string Volume { get; } = volume;

        public DateTimeOffset Started { get; } = started;

        public Task Completion { get; set; } = Task.CompletedTask;

        // Written once, under the registry's lock, which every reader takes.
        public JobState State { get; private set; } = JobState.Running;

        public DateTimeOffset? Finished { get; private set; }

        public string? Error { get; private set; }

        public JobOutcome? Result { get; private set; }

        public double Progress => Volatile.Read(ref _progress);

        public long BytesDone => Interlocked.Read(ref _bytesDone);

        public long BytesTotal => Interlocked.Read(ref _bytesTotal);

        public override void ReportBytes(long done, long total)
        {
            Interlocked.Exchange(ref _bytesTotal, total);
            Interlocked.Exchange(ref _bytesDone, done);
            Report(total == 0 ? 1 : (double)done / total);
        }

        public void RequestCancel() => CancelSource.Cancel();

        public override void Report(double value)
        {
            // NaN, or a report that arrives after the job finished, must not move the bar back.
            if (double.IsNaN(value) || State != JobState.Running)
            {
                return;
            }

            Volatile.Write(ref _progress, Math.Round(Math.Clamp(value, 0, 1), 4));
        }

        public void Finish(JobOutcome? result, string? error, DateTimeOffset finished)
        {
            State = error is null ? JobState.Done : JobState.Failed;
            Error = error;
            Result = result;
            Finished = finished;
            if (error is null)
            {
                Volatile.Write(ref _progress, 1);
            }
        }
    }
}

/// <summary>What a job's work sees of its job: progress, bytes, cancellation, and a manifest to show while it runs.</summary>
public abstract class JobContext : IProgress<double>
{
    private protected CancellationTokenSource CancelSource { get; } = new();

    /// <summary>Cancelled by <c>POST /api/v1/jobs/{id}/cancel</c>.</summary>
    public CancellationToken CancellationToken => CancelSource.Token;

    /// <summary>A backup's manifest as it stands, shown while the job runs.</summary>
    public BackupManifest? Backup { get; set; }

    public abstract void Report(double value);

    /// <summary>Bytes done of bytes to do; also sets the progress.</summary>
    public abstract void ReportBytes(long done, long total);
}

/// <summary>What a job left: the volume, or a backup's manifest.</summary>
public sealed record JobOutcome(VolumeInfo? Volume, BackupManifest? Backup, VerifyReport? Verify = null);
