using System.CommandLine;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Etcd;
using Ovis.Node.Admin;

namespace Ovis.Cli;

/// <summary>
/// <c>ovis cluster format</c> (talks to etcd directly: no node is needed, nor can one join before);
/// <c>ovis cluster info</c>, <c>check</c>, <c>recovery</c> and <c>recover pause|resume</c>
/// (through any node's admin API).
/// </summary>
internal static class ClusterCommand
{
    public const int MaxCopies = 16;

    public static Command Create()
    {
        var cluster = new Command("cluster", "Format a cluster and inspect it");

        var copies = new Option<int>("--copies")
        {
            Description = $"Copies of every object, 1 to {MaxCopies}; fixed once formatted",
            HelpName = "N",
            Required = true,
        };
        var minCopies = new Option<int?>("--min-copies")
        {
            Description = "Fewest copies a write must reach while nodes are down [default: a majority of --copies]",
            HelpName = "N",
        };
        var etcd = new Option<string>("--etcd")
        {
            Description = "Where the cluster's catalog lives, as given to 'ovis serve --cluster'",
            HelpName = ClusterUri.Usage,
            Required = true,
        };
        var format = new Command("format", "Create a cluster in etcd, once; nodes join it with 'ovis serve --cluster'") { copies, minCopies, etcd };
        format.SetAction(async (parseResult, cancellationToken) =>
        {
            var n = parseResult.GetValue(copies);
            if (n is < 1 or > MaxCopies)
            {
                throw CliException.Usage($"--copies: {n} is out of range: use 1 to {MaxCopies}");
            }

            var min = parseResult.GetValue(minCopies) ?? ClusterFormat.DefaultMinCopies(n);
            if (min < 1 || min > n)
            {
                throw CliException.Usage($"--min-copies: {min} is out of range: use 1 to --copies ({n})");
            }

            var text = parseResult.GetRequiredValue(etcd);
            if (!ClusterUri.TryParse(text, out var uri, out var error))
            {
                throw CliException.Usage($"--etcd: {error}");
            }

            using var client = new EtcdClient(uri!.Endpoints);
            var catalog = new EtcdCatalog(client, uri.Name);
            try
            {
                var done = await catalog.FormatAsync(n, min, cancellationToken);
                ConsoleOutput.Stdout.Line($"formatted cluster '{done.Name}' with {done.Copies} cop{(done.Copies == 1 ? "y" : "ies")} of every object; writes need {done.EffectiveMinCopies} while nodes are down");
            }
            catch (CatalogException ex)
            {
                throw new CliException(ex.Message, ExitCodes.Refused, ex);
            }
            catch (Exception ex) when (ex is EtcdException or HttpRequestException)
            {
                throw new CliException($"cannot reach etcd at {uri}: {ex.Message}", ExitCodes.Refused, ex);
            }
        });
        cluster.Subcommands.Add(format);

        var client = new ClientOptions();
        var info = new Command("info", "Show the cluster of a node: name, copies, epoch, members");
        client.AddTo(info);
        info.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var status = await admin.GetClusterAsync(cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(status);
            }
            else
            {
                ConsoleOutput.Stdout.Cluster(status);
                ConsoleOutput.Stdout.Members(status.Nodes);
            }
        });
        cluster.Subcommands.Add(info);
        cluster.Subcommands.Add(CheckCommand());
        cluster.Subcommands.Add(RecoveryCommand());
        cluster.Subcommands.Add(RecoverCommand());
        return cluster;
    }

    private static Command RecoveryCommand()
    {
        var client = new ClientOptions();
        var wait = new Option<bool>("--wait") { Description = "Follow it until every object found needing work is done (Ctrl-C stops watching, not recovery)" };
        var recovery = new Command("recovery", "Show recovery's progress on every live node, and whether it is paused") { wait };
        client.AddTo(recovery);
        recovery.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var status = !parseResult.GetValue(wait)
                ? await admin.GetRecoveryAsync(cancellationToken)
                : client.WantsJson(parseResult)
                    ? await WaitForRecoveryAsync(admin, progress: null, cancellationToken)
                    : await ConsoleOutput.Stdout.CountProgressAsync("recovering", "objects", progress => WaitForRecoveryAsync(admin, progress, cancellationToken));
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(status);
            }
            else
            {
                ConsoleOutput.Stdout.Recovery(status);
            }
        });
        return recovery;
    }

    // Nodes publish their figures once a second: asking more often shows nothing new.
    private static async Task<RecoveryStatus> WaitForRecoveryAsync(AdminClient admin, IProgress<(long Done, long Total)>? progress, CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        while (true)
        {
            var status = await admin.GetRecoveryAsync(cancellationToken);
            progress?.Report((status.ObjectsDone, status.ObjectsQueued));
            if (status.Nodes.All(n => n.ObjectsDone >= n.ObjectsQueued))
            {
                return status;
            }

            await timer.WaitForNextTickAsync(cancellationToken);
        }
    }

    private static Command RecoverCommand()
    {
        var client = new ClientOptions();
        var recover = new Command("recover", "Pause or resume recovery on every node of the cluster");
        client.AddTo(recover);
        var pause = new Command("pause", "Pause recovery on every node (for a maintenance window); it stays paused, across restarts, until resumed");
        pause.SetAction((parseResult, cancellationToken) => SetPausedAsync(client, parseResult, true, cancellationToken));
        recover.Subcommands.Add(pause);
        var resume = new Command("resume", "Resume recovery on every node");
        resume.SetAction((parseResult, cancellationToken) => SetPausedAsync(client, parseResult, false, cancellationToken));
        recover.Subcommands.Add(resume);
        return recover;
    }

    private static async Task SetPausedAsync(ClientOptions client, ParseResult parseResult, bool paused, CancellationToken cancellationToken)
    {
        using var admin = client.CreateClient(parseResult);
        var status = await admin.SetRecoveryPausedAsync(paused, cancellationToken);
        client.Report(parseResult, status, paused
            ? "recovery paused on every node (each sees it within a few seconds); 'ovis cluster recover resume' resumes it"
            : "recovery resumed on every node");
    }

    private static Command CheckCommand()
    {
        var client = new ClientOptions();
        var volume = new Argument<string?>("VOLUME")
        {
            Description = "The volume (or NAME@TAG snapshot) whose copies to compare [default: every volume]",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var repair = new Option<bool>("--repair") { Description = "Bring each copy that differs back from a good one, through the node serving the volume (or this one)" };
        var check = new Command("check", "Compare every copy of every object of a volume, or of every volume; exit 1 when any differs or cannot be read (and was not repaired)") { volume, repair };
        client.AddTo(check);
        check.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var names = parseResult.GetValue(volume) is { } one
                ? [one]
                : (await admin.ListVolumesAsync(cancellationToken)).Where(v => !v.IsSnapshot).Select(v => v.Name).ToList();
            var reports = new List<CheckReport>();
            foreach (var name in names)
            {
                reports.Add(await admin.CheckVolumeAsync(name, parseResult.GetValue(repair), cancellationToken));
            }

            if (client.WantsJson(parseResult))
            {
                if (parseResult.GetValue(volume) is null)
                {
                    ConsoleOutput.Stdout.Json(reports);
                }
                else
                {
                    ConsoleOutput.Stdout.Json(reports[0]);
                }
            }
            else
            {
                foreach (var report in reports)
                {
                    foreach (var d in report.Differences.Concat(report.Repaired))
                    {
                        ConsoleOutput.Stdout.Line($"object {d.ObjectId}: copy on {d.Node}: {d.Reason}");
                    }

                    ConsoleOutput.Stdout.Line($"{report.Volume}: {report.Objects} objects checked, {report.Differences.Count} cop{(report.Differences.Count == 1 ? "y differs" : "ies differ")}");
                }
            }

            return reports.All(r => r.Differences.Count == r.Repaired.Count) ? ExitCodes.Success : ExitCodes.Refused;
        });
        return check;
    }
}
