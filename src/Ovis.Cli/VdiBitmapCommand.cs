using System.CommandLine;
using Ovis.Node.Admin;

namespace Ovis.Cli;

/// <summary><c>ovis vdi bitmap add|remove|list|clear NAME [BITMAP]</c>: a volume's persistent dirty bitmaps.</summary>
internal static class VdiBitmapCommand
{
    public static Command Create(ClientOptions client)
    {
        var bitmap = new Command("bitmap", "Manage a volume's dirty bitmaps (changes since each was created or cleared; NBD meta context qemu:dirty-bitmap:BITMAP)");
        bitmap.Subcommands.Add(AddCommand(client));
        bitmap.Subcommands.Add(RemoveCommand(client));
        bitmap.Subcommands.Add(ListCommand(client));
        bitmap.Subcommands.Add(ClearCommand(client));
        return bitmap;
    }

    private static Argument<string> Volume() => new("name") { Description = "Volume name" };

    private static Argument<string> Bitmap() => new("bitmap") { Description = "Bitmap name" };

    private static Command AddCommand(ClientOptions client)
    {
        var volume = Volume();
        var bitmap = Bitmap();
        var granularity = new Option<string?>("--granularity")
        {
            Description = "Bytes one bit stands for: a power of two from 4K to 64M [default: 64K]",
            HelpName = "SIZE",
        };
        var command = new Command("add", "Start tracking every change to the volume from now on") { volume, bitmap, granularity };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            long? g = parseResult.GetValue(granularity) is { } text
                ? (Sizes.TryParse(text, out var bytes, out var error) ? bytes : throw CliException.Usage(error))
                : null;
            using var admin = client.CreateClient(parseResult);
            var info = await admin.AddBitmapAsync(parseResult.GetRequiredValue(volume), new AddBitmapRequest(parseResult.GetRequiredValue(bitmap), g), cancellationToken);
            client.Report(parseResult, info, $"added bitmap '{info.Name}' to '{info.Volume}' ({Sizes.Format(info.Granularity)} per bit)");
        });
        return command;
    }

    private static Command RemoveCommand(ClientOptions client)
    {
        var volume = Volume();
        var bitmap = Bitmap();
        var command = new Command("remove", "Stop tracking and delete the bitmap") { volume, bitmap };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            await admin.RemoveBitmapAsync(parseResult.GetRequiredValue(volume), parseResult.GetRequiredValue(bitmap), cancellationToken);
            if (!client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Line($"removed bitmap '{parseResult.GetRequiredValue(bitmap)}' from '{parseResult.GetRequiredValue(volume)}'");
            }
        });
        return command;
    }

    private static Command ListCommand(ClientOptions client)
    {
        var volume = Volume();
        var command = new Command("list", "List the volume's bitmaps and how much each marks") { volume };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var name = parseResult.GetRequiredValue(volume);
            var bitmaps = await admin.ListBitmapsAsync(name, cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(bitmaps);
            }
            else
            {
                ConsoleOutput.Stdout.Bitmaps(name, bitmaps);
            }
        });
        return command;
    }

    private static Command ClearCommand(ClientOptions client)
    {
        var volume = Volume();
        var bitmap = Bitmap();
        var command = new Command("clear", "Forget what the bitmap marked: it tracks changes from now on") { volume, bitmap };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var info = await admin.ClearBitmapAsync(parseResult.GetRequiredValue(volume), parseResult.GetRequiredValue(bitmap), cancellationToken);
            client.Report(parseResult, info, $"cleared bitmap '{info.Name}' of '{info.Volume}'");
        });
        return command;
    }
}
