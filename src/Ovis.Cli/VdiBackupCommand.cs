using System.CommandLine;
using System.Text.Json;
using Ovis.Node.Admin;

namespace Ovis.Cli;

/// <summary>
/// <c>ovis vdi backup NAME DEST</c>, <c>ovis vdi backup verify NAME SRC...</c>,
/// <c>ovis vdi restore SRC... NAME</c> and <c>ovis vdi jobs [--cancel ID]</c>. The node does the
/// copying (as a job); DEST and SRC are paths on the node or NBD URIs — a relative path is made
/// absolute here, which is right when the CLI runs on the node.
/// </summary>
internal static class VdiBackupCommand
{
    public static Command Backup(ClientOptions client)
    {
        var name = new Argument<string>("name") { Description = "Volume name" };
        var dest = new Argument<string>("dest") { Description = "A raw file on the node (written sparse, with its manifest DEST.json), a qcow2 file (DEST.qcow2, through qemu-nbd), or an NBD URI (nbd://HOST:PORT/EXPORT)" };
        var incremental = new Option<bool>("--incremental") { Description = "Copy only what --bitmap marked since the last backup" };
        var bitmap = new Option<string?>("--bitmap") { Description = "The bitmap that starts its next period at this backup's instant (created by a full backup when missing)", HelpName = "BITMAP" };
        var rate = new Option<string?>("--rate") { Description = "At most this many bytes per second, e.g. 20M", HelpName = "LIMIT" };
        var resume = new Option<bool>("--resume") { Description = "Continue an interrupted backup to DEST where its target last confirmed" };
        var keep = new Option<bool>("--keep-snapshot") { Description = "Keep the backup's snapshot NAME@backup-... afterwards (to verify against it)" };
        var backing = new Option<string?>("--backing") { Description = "For an incremental to a qcow2 DEST: the chain's last link, which DEST reads through where nothing changed", HelpName = "PREV.qcow2" };
        var targetTimeout = new Option<int?>("--target-timeout") { Description = "Seconds one write or flush to the target may take before the backup stops, resumable (0: wait for ever) [default: 60]", HelpName = "SECONDS" };
        var command = new Command("backup", "Copy a point-in-time image of a volume in use to DEST; guest writes never wait for it") { name, dest, incremental, bitmap, rate, resume, keep, backing, targetTimeout };
        command.Subcommands.Add(Verify(client));
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            long? limit = parseResult.GetValue(rate) is { } text ? ParseRate(text) : null;
            if (parseResult.GetValue(targetTimeout) is { } seconds && seconds is < 0 or > 86400)
            {
                throw CliException.Usage($"--target-timeout: {seconds} is out of range: use 0 (wait for ever) to 86400 seconds");
            }
            var volume = parseResult.GetRequiredValue(name);
            var request = new BackupRequest(Location(parseResult.GetRequiredValue(dest)), parseResult.GetValue(incremental), parseResult.GetValue(bitmap), limit, parseResult.GetValue(resume), parseResult.GetValue(keep),
                parseResult.GetValue(backing) is { } prev ? Location(prev) : null, parseResult.GetValue(targetTimeout));
            using var admin = client.CreateClient(parseResult);
            var accepted = await admin.BackupVolumeAsync(volume, request, cancellationToken);
            var job = await FollowAsync(client, parseResult, admin, accepted.Job, $"backing up {volume}", cancellationToken);
            if (!client.WantsJson(parseResult))
            {
                var m = job.Backup!;
                ConsoleOutput.Stdout.Line($"backed up '{volume}' ({m.Kind}, {Sizes.Format(m.TotalBytes)} copied) to {m.Dest} at {m.Snapshot}");
            }
        });
        return command;
    }

    private static Command Verify(ClientOptions client)
    {
        var name = new Argument<string>("name") { Description = "The volume or snapshot NAME@TAG to compare" };
        var sources = new Argument<string[]>("src") { Description = "The full backup, then its incrementals in order", Arity = ArgumentArity.OneOrMore };
        var command = new Command("verify", "Compare a volume or snapshot with a backup chain, byte for byte") { name, sources };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var volume = parseResult.GetRequiredValue(name);
            using var admin = client.CreateClient(parseResult);
            var accepted = await admin.VerifyVolumeAsync(volume, new VerifyRequest([.. parseResult.GetRequiredValue(sources).Select(Location)]), cancellationToken);
            var job = await FollowAsync(client, parseResult, admin, accepted.Job, $"verifying {volume}", cancellationToken);
            var report = job.Verify!;
            if (report.DifferentBytes > 0)
            {
                throw new CliException($"'{volume}' differs from the backup: {report.DifferentBytes} bytes, the first at offset {report.FirstDifference}");
            }

            if (!client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Line($"'{volume}' is identical to the backup ({Sizes.Format(report.ComparedBytes)} compared)");
            }
        });
        return command;
    }

    public static Command Restore(ClientOptions client)
    {
        var args = new Argument<string[]>("src-and-name") { Description = "SRC [SRC...] NAME: a full backup (file or NBD URI), its incrementals in order (or a qcow2 chain's last link alone), and the volume to restore into (created if missing)", Arity = new ArgumentArity(2, 1000) };
        var command = new Command("restore", "Write a backup chain into a new volume, or one no client has open") { args };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var all = parseResult.GetRequiredValue(args);
            var volume = all[^1];
            using var admin = client.CreateClient(parseResult);
            var accepted = await admin.RestoreVolumeAsync(volume, new RestoreRequest([.. all[..^1].Select(Location)]), cancellationToken);
            var job = await FollowAsync(client, parseResult, admin, accepted.Job, $"restoring {volume}", cancellationToken);
            if (!client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Line($"restored '{volume}' ({Sizes.Format(job.Result?.Size ?? 0)}) from {all.Length - 1} backup(s)");
            }
        });
        return command;
    }

    public static Command Jobs(ClientOptions client)
    {
        var cancel = new Option<string?>("--cancel") { Description = "Ask a running job to stop (a backup stops resumable)", HelpName = "ID" };
        var command = new Command("jobs", "List the node's jobs (backup, restore, verify, flatten)") { cancel };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            if (parseResult.GetValue(cancel) is { } id)
            {
                var job = await admin.CancelJobAsync(id, cancellationToken);
                client.Report(parseResult, job, $"asked job {job.Id} ({job.Kind} of '{job.Volume}') to stop");
                return;
            }

            var jobs = await admin.ListJobsAsync(cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(jobs);
                return;
            }

            foreach (var j in jobs)
            {
                ConsoleOutput.Stdout.Line($"{j.Id}  {j.Kind,-8} {j.Volume,-20} {j.State.ToString().ToLowerInvariant(),-8} {j.Progress * 100,5:0.0}%  {j.Error}");
            }
        });
        return command;
    }

    /// <summary>Follows a job until it ends: a progress bar for people; with --json one line per poll (the job object) for scripts.</summary>
    private static async Task<JobInfo> FollowAsync(ClientOptions client, ParseResult parseResult, AdminClient admin, string id, string description, CancellationToken cancellationToken)
    {
        JobInfo job;
        if (client.WantsJson(parseResult))
        {
            using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(500));
            while (true)
            {
                job = await admin.GetJobAsync(id, cancellationToken);
                Console.Out.WriteLine(JsonSerializer.Serialize(job, AdminJsonContext.Api.JobInfo));
                if (job.State != JobState.Running)
                {
                    break;
                }

                await timer.WaitForNextTickAsync(cancellationToken);
            }
        }
        else
        {
            job = await ConsoleOutput.Stdout.BytesProgressAsync(description, async progress =>
            {
                using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(200));
                while (true)
                {
                    var j = await admin.GetJobAsync(id, cancellationToken);
                    progress.Report((j.BytesDone ?? 0, j.BytesTotal ?? 0));
                    if (j.State != JobState.Running)
                    {
                        return j;
                    }

                    await timer.WaitForNextTickAsync(cancellationToken);
                }
            });
        }

        return job.State == JobState.Failed ? throw new CliException(job.Error ?? $"job {job.Id} failed") : job;
    }

    private static string Location(string text) => Ovis.Nbd.NbdClient.IsNbdUri(text) ? text : Path.GetFullPath(text);

    private static long ParseRate(string text)
    {
        var t = text.EndsWith("/s", StringComparison.OrdinalIgnoreCase) ? text[..^2] : text;
        return Sizes.TryParse(t, out var bytes, out _) && bytes > 0
            ? bytes
            : throw CliException.Usage($"invalid rate '{text}': use bytes per second with an optional K, M or G suffix, e.g. 20M");
    }
}
