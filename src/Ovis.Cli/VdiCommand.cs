using System.CommandLine;
using Ovis.Node.Admin;

namespace Ovis.Cli;

/// <summary><c>ovis vdi ...</c>: create, list, inspect, resize and delete volumes (VDIs, in Sheepdog's word).</summary>
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
        vdi.Subcommands.Add(DeleteCommand(client));
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
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(volume);
            }
            else
            {
                ConsoleOutput.Stdout.Line($"created volume '{volume.Name}' ({Sizes.Format(volume.Size)})");
            }
        });
        return command;
    }

    private static Command ListCommand(ClientOptions client)
    {
        var command = new Command("list", "List the volumes");
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
        var name = NameArgument();
        var command = new Command("info", "Show one volume") { name };
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
                ConsoleOutput.Stdout.Volume(volume);
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
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(volume);
            }
            else
            {
                ConsoleOutput.Stdout.Line($"resized volume '{volume.Name}' to {Sizes.Format(volume.Size)}");
            }
        });
        return command;
    }

    private static Command DeleteCommand(ClientOptions client)
    {
        var name = NameArgument();
        var command = new Command("delete", "Delete a volume and its data (refused while it is connected)") { name };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var volumeName = parseResult.GetRequiredValue(name);
            using var admin = client.CreateClient(parseResult);
            await admin.DeleteVolumeAsync(volumeName, cancellationToken);

            // Nothing to report in JSON: success is the exit code.
            if (!client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Line($"deleted volume '{volumeName}'");
            }
        });
        return command;
    }

    private static Argument<string> NameArgument() => new("name") { Description = "Volume name" };

    // Sizes are parsed in the action rather than by a custom parser so that the error is the
    // one line from Sizes, without the parser's help hint.
    private static Argument<string> SizeArgument(string description) => new("size") { Description = description };

    private static long ParseSize(string text)
        => Sizes.TryParse(text, out var bytes, out var error) ? bytes : throw CliException.Usage(error);
}
