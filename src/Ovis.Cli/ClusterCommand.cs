using System.CommandLine;
using Ovis.Cluster.Catalog;
using Ovis.Cluster.Etcd;

namespace Ovis.Cli;

/// <summary>
/// <c>ovis cluster format</c> (talks to etcd directly: no node is needed, nor can one join before)
/// and <c>ovis cluster info</c> (through any node's admin API).
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
        return cluster;
    }

    private static Command CheckCommand()
    {
        var client = new ClientOptions();
        var volume = new Argument<string>("VOLUME") { Description = "The volume (or NAME@TAG snapshot) whose copies to compare" };
        var repair = new Option<bool>("--repair") { Description = "Rewrite each copy that differs from a current one (the volume must not be open)" };
        var check = new Command("check", "Compare every copy of every object of a volume; exit 1 when any differs or cannot be read (and was not repaired)") { volume, repair };
        client.AddTo(check);
        check.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var report = await admin.CheckVolumeAsync(parseResult.GetRequiredValue(volume), parseResult.GetValue(repair), cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(report);
            }
            else
            {
                foreach (var d in report.Differences)
                {
                    ConsoleOutput.Stdout.Line($"object {d.ObjectId}: copy on {d.Node}: {d.Reason}");
                }

                foreach (var d in report.Repaired)
                {
                    ConsoleOutput.Stdout.Line($"object {d.ObjectId}: copy on {d.Node}: {d.Reason}");
                }

                ConsoleOutput.Stdout.Line($"{report.Volume}: {report.Objects} objects checked, {report.Differences.Count} cop{(report.Differences.Count == 1 ? "y differs" : "ies differ")}");
            }

            return report.Differences.Count == report.Repaired.Count ? ExitCodes.Success : ExitCodes.Refused;
        });
        return check;
    }
}
