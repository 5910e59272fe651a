using System.CommandLine;
using Ovis.Node.Admin;
using Ovis.Volumes;

namespace Ovis.Cli;

/// <summary>
/// <c>ovis vdi ...</c>: create, list, inspect, resize, set and delete volumes (VDIs, in Sheepdog's
/// word); snapshot, clone, roll back and flatten them, and draw their tree.
/// </summary>
internal static class VdiCommand
{
    public static Command Create()
    {
        var client = new ClientOptions();
        var vdi = new Command("vdi", "Manage volumes (virtual disk images)");
        client.AddTo(vdi);
        vdi.Subcommands.Add(CreateCommand(client));
        vdi.Subcommands.Add(ListCommand(client));
        vdi.Subcommands.Add(InfoCommand(client));
        vdi.Subcommands.Add(ResizeCommand(client));
        vdi.Subcommands.Add(VdiSetCommand.Create(client));
        vdi.Subcommands.Add(DeleteCommand(client));
        vdi.Subcommands.Add(SnapshotCommand(client));
        vdi.Subcommands.Add(CloneCommand(client));
        vdi.Subcommands.Add(RollbackCommand(client));
        vdi.Subcommands.Add(FlattenCommand(client));
        vdi.Subcommands.Add(TreeCommand(client));
        vdi.Subcommands.Add(VdiBitmapCommand.Create(client));
        vdi.Subcommands.Add(VdiBackupCommand.Backup(client));
        vdi.Subcommands.Add(VdiBackupCommand.Restore(client));
        vdi.Subcommands.Add(VdiBackupCommand.Jobs(client));
        return vdi;
    }

    private static Command CreateCommand(ClientOptions client)
    {
        var name = NameArgument();
        var size = SizeArgument("Size: bytes, or a number with a K, M, G or T suffix (powers of 1024), e.g. 10G");
        var objectSize = new Option<string?>("--object-size")
        {
            Description = "Size of the objects the volume is split into [default: 4M]",
            HelpName = "SIZE",
        };

        var command = new Command("create", "Create a thin-provisioned volume") { name, size, objectSize };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var request = new CreateVolumeRequest(
                parseResult.GetRequiredValue(name),
                ParseSize(parseResult.GetRequiredValue(size)),
                parseResult.GetValue(objectSize) is { } text ? ParseSize(text) : (long?)null);
            using var admin = client.CreateClient(parseResult);
            var volume = await admin.CreateVolumeAsync(request, cancellationToken);
            client.Report(parseResult, volume, $"created volume '{volume.Name}' ({Sizes.Format(volume.Size)})");
        });
        return command;
    }

    private static Command ListCommand(ClientOptions client)
    {
        var command = new Command("list", "List the volumes and their snapshots");
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var volumes = await admin.ListVolumesAsync(cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(volumes);
            }
            else
            {
                ConsoleOutput.Stdout.Volumes(volumes);
            }
        });
        return command;
    }

    private static Command InfoCommand(ClientOptions client)
    {
        var name = NameOrSnapshotArgument();
        var command = new Command("info", "Show one volume or snapshot") { name };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var volume = await admin.GetVolumeAsync(parseResult.GetRequiredValue(name), cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(volume);
            }
            else
            {
                // Whether a volume is a clone shows only in its ancestors, so that needs the list.
                var kind = volume.IsSnapshot ? "snapshot"
                    : volume.Parent is null ? "volume"
                    : new Layers(await admin.ListVolumesAsync(cancellationToken)).KindOf(volume);
                ConsoleOutput.Stdout.Volume(volume, kind);
            }
        });
        return command;
    }

    private static Command ResizeCommand(ClientOptions client)
    {
        var name = NameArgument();
        var size = SizeArgument("New size: bytes, or a number with a K, M, G or T suffix");
        var allowShrink = new Option<bool>("--allow-shrink")
        {
            Description = "Allow a smaller size; the data past the new end is lost",
        };

        var command = new Command("resize", "Grow (or, with --allow-shrink, shrink) a volume") { name, size, allowShrink };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var volumeName = parseResult.GetRequiredValue(name);
            var request = new ResizeVolumeRequest(ParseSize(parseResult.GetRequiredValue(size)), parseResult.GetValue(allowShrink));
            using var admin = client.CreateClient(parseResult);
            var volume = await admin.ResizeVolumeAsync(volumeName, request, cancellationToken);
            client.Report(parseResult, volume, $"resized volume '{volume.Name}' to {Sizes.Format(volume.Size)}");
        });
        return command;
    }

    private static Command DeleteCommand(ClientOptions client)
    {
        var name = NameOrSnapshotArgument();
        var command = new Command(
            "delete",
            "Delete a volume and its data (refused while it is connected), or a snapshot NAME@TAG (merged into the one layer that depends on it, else refused)")
        {
            name,
        };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var volumeName = parseResult.GetRequiredValue(name);
            using var admin = client.CreateClient(parseResult);
            await admin.DeleteVolumeAsync(volumeName, cancellationToken);

            // Nothing to report in JSON: success is the exit code.
            if (!client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Line($"deleted {(IsSnapshotName(volumeName) ? "snapshot" : "volume")} '{volumeName}'");
            }
        });
        return command;
    }

    private static Command SnapshotCommand(ClientOptions client)
    {
        var name = NameArgument();
        var tag = TagArgument("Tag of the new snapshot: it is named NAME@TAG, and exported read-only under that name");
        var command = new Command("snapshot", "Freeze a volume's current content as a read-only snapshot NAME@TAG (no data is copied)") { name, tag };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var request = new SnapshotRequest(parseResult.GetRequiredValue(tag));
            using var admin = client.CreateClient(parseResult);
            var snapshot = await admin.SnapshotVolumeAsync(parseResult.GetRequiredValue(name), request, cancellationToken);
            client.Report(parseResult, snapshot, $"created snapshot '{snapshot.Name}'");
        });
        return command;
    }

    private static Command CloneCommand(ClientOptions client)
    {
        var snapshot = new Argument<string>("snapshot") { Description = "The snapshot to clone, NAME@TAG" };
        var newName = new Argument<string>("new-name") { Description = "Name of the new volume" };
        var command = new Command("clone", "Create a writable volume from a snapshot; it shares the snapshot's data until written") { snapshot, newName };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var source = parseResult.GetRequiredValue(snapshot);
            if (!IsSnapshotName(source))
            {
                throw CliException.Usage($"'{source}' is not a snapshot: clone takes NAME@TAG (see 'ovis vdi tree {source}')");
            }

            using var admin = client.CreateClient(parseResult);
            var clone = await admin.CloneSnapshotAsync(source, new CloneRequest(parseResult.GetRequiredValue(newName)), cancellationToken);
            client.Report(parseResult, clone, $"cloned '{source}' as volume '{clone.Name}'");
        });
        return command;
    }

    private static Command RollbackCommand(ClientOptions client)
    {
        var name = NameArgument();
        var tag = TagArgument("Tag of the snapshot to go back to, NAME@TAG");
        var command = new Command("rollback", "Throw away what was written to a volume since a snapshot (refused while it is connected)") { name, tag };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var volumeName = parseResult.GetRequiredValue(name);
            var request = new RollbackRequest(parseResult.GetRequiredValue(tag));
            using var admin = client.CreateClient(parseResult);
            var volume = await admin.RollbackVolumeAsync(volumeName, request, cancellationToken);
            client.Report(parseResult, volume, $"rolled back volume '{volume.Name}' to '{volumeName}@{request.Tag}'");
        });
        return command;
    }

    private static Command FlattenCommand(ClientOptions client)
    {
        var name = NameArgument();
        var command = new Command("flatten", "Copy the data a volume inherits into it, so that it no longer depends on a snapshot") { name };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var volumeName = parseResult.GetRequiredValue(name);
            using var admin = client.CreateClient(parseResult);
            var accepted = await admin.FlattenVolumeAsync(volumeName, cancellationToken);

            // The node runs the flatten as a job whether or not anyone watches; the bar is for
            // people, scripts get the volume as the job left it.
            var job = client.WantsJson(parseResult)
                ? await FollowJobAsync(admin, accepted.Job, progress: null, cancellationToken)
                : await ConsoleOutput.Stdout.ProgressAsync($"flattening {volumeName}", progress => FollowJobAsync(admin, accepted.Job, progress, cancellationToken));
            if (job.State == JobState.Failed)
            {
                throw new CliException(job.Error ?? $"flattening '{volumeName}' failed (job {job.Id})");
            }

            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(job.Result ?? await admin.GetVolumeAsync(volumeName, cancellationToken));
            }
            else
            {
                ConsoleOutput.Stdout.Line($"flattened volume '{volumeName}'");
            }
        });
        return command;
    }

    private static Command TreeCommand(ClientOptions client)
    {
        var name = new Argument<string?>("name")
        {
            Description = "Show only the tree this volume or snapshot (NAME@TAG) is in [default: every tree]",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var command = new Command("tree", "Draw volumes, snapshots and clones as a tree: each layer under the one it inherits from") { name };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var layers = new Layers(await admin.ListVolumesAsync(cancellationToken));
            IReadOnlyList<VolumeInfo> roots = layers.Roots;
            if (parseResult.GetValue(name) is { } only)
            {
                if (!layers.TryGet(only, out var layer))
                {
                    throw new CliException($"volume '{only}' not found");
                }

                roots = [layers.RootOf(layer)];
            }

            if (client.WantsJson(parseResult))
            {
                // The layers of the tree(s), parents first; each names its parent, as in `vdi list --json`.
                ConsoleOutput.Stdout.Json<List<VolumeInfo>>([.. roots.SelectMany(layers.TreeOf)]);
            }
            else
            {
                ConsoleOutput.Stdout.Trees(layers, roots);
            }
        });
        return command;
    }

    // Every ~200 ms: a bar that moves smoothly, and a negligible load on the node.
    private static async Task<JobInfo> FollowJobAsync(AdminClient admin, string id, IProgress<double>? progress, CancellationToken cancellationToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(200));
        while (true)
        {
            var job = await admin.GetJobAsync(id, cancellationToken);
            progress?.Report(job.Progress);
            if (job.State != JobState.Running)
            {
                return job;
            }

            await timer.WaitForNextTickAsync(cancellationToken);
        }
    }

    private static bool IsSnapshotName(string name) => name.Contains('@', StringComparison.Ordinal);

    private static Argument<string> NameArgument() => new("name") { Description = "Volume name" };

    private static Argument<string> NameOrSnapshotArgument() => new("name") { Description = "Volume name, or NAME@TAG for a snapshot" };

    private static Argument<string> TagArgument(string description) => new("tag") { Description = description };

    // Sizes are parsed in the action rather than by a custom parser so that the error is the
    // one line from Sizes, without the parser's help hint.
    private static Argument<string> SizeArgument(string description) => new("size") { Description = description };

    private static long ParseSize(string text)
        => Sizes.TryParse(text, out var bytes, out var error) ? bytes : throw CliException.Usage(error);
}
