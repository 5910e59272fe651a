using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using Ovis.Node.Backup;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

/// <summary>Backup, restore and verify, run as jobs; the job list and cancel (docs/backup.md).</summary>
public static partial class AdminApi
{
    private static void MapBackups(RouteGroupBuilder api)
    {
        api.MapPost("/volumes/{name}/backup", BackupVolumeAsync);
        api.MapPost("/volumes/{name}/restore", RestoreVolumeAsync);
        api.MapPost("/volumes/{name}/verify", VerifyVolumeAsync);
        api.MapGet("/jobs", (JobRegistry jobs) => TypedResults.Ok(jobs.List()));
        api.MapPost("/jobs/{id}/cancel", CancelJob);
    }

    private static async Task<Accepted<JobAccepted>> BackupVolumeAsync(string name, HttpRequest request, VolumeManager volumes, JobRegistry jobs, NodeStatus node, IServiceProvider services, CancellationToken cancellationToken)
    {
        var body = await AdminRequestReader.ReadBackupAsync(request, cancellationToken);
        var work = new BackupRunner(volumes, node.DataDirectory).Prepare(name, body);
        // The lock covers the snapshots the backup takes and deletes, in a cluster.
        var held = await LockForChangeAsync(services, volumes, name);
        var job = jobs.Start("backup", name, async (JobContext context) =>
        {
            await using (held)
            {
                return await work(context);
            }
        });
        return TypedResults.Accepted($"{Prefix}/jobs/{job.Id}", new JobAccepted(job.Id));
    }

    private static async Task<Accepted<JobAccepted>> RestoreVolumeAsync(string name, HttpRequest request, VolumeManager volumes, JobRegistry jobs, IServiceProvider services, CancellationToken cancellationToken)
    {
        var sources = await AdminRequestReader.ReadSourcesAsync(request, cancellationToken);
        // In a cluster the volume is written under its lock, taken once it exists.
        var runner = new RestoreRunner(volumes, services.GetService(typeof(VolumeLocks)) is VolumeLocks locks ? target => LockForChangeAsync(locks, volumes, target) : null);
        var job = jobs.Start("restore", name, (JobContext context) => runner.RestoreAsync(context, name, sources));
        return TypedResults.Accepted($"{Prefix}/jobs/{job.Id}", new JobAccepted(job.Id));
    }

    private static async Task<Accepted<JobAccepted>> VerifyVolumeAsync(string name, HttpRequest request, VolumeManager volumes, JobRegistry jobs, CancellationToken cancellationToken)
    {
        var sources = await AdminRequestReader.ReadSourcesAsync(request, cancellationToken);
        _ = volumes.Get(name);
        var runner = new RestoreRunner(volumes);
        var job = jobs.Start("verify", name, (JobContext context) => runner.VerifyAsync(context, name, sources));
        return TypedResults.Accepted($"{Prefix}/jobs/{job.Id}", new JobAccepted(job.Id));
    }

    private static Ok<JobInfo> CancelJob(string id, JobRegistry jobs)
        => jobs.Cancel(id)
            ? TypedResults.Ok(jobs.Get(id)!)
            : throw new AdminRequestException($"job '{id}' not found", StatusCodes.Status404NotFound);
}
