using System.CommandLine;
using Ovis.Node.Admin;
using Ovis.Volumes;

namespace Ovis.Cli;

/// <summary><c>ovis vdi set NAME KEY=VALUE...</c>: a volume's settings; for now only <c>cache=writeback|writethrough</c>.</summary>
internal static class VdiSetCommand
{
    private const string Keys = "cache=writeback|writethrough";

    public static Command Create(ClientOptions client)
    {
        var name = new Argument<string>("name") { Description = "Volume name (a snapshot is read-only and has no settings)" };
        var settings = new Argument<string[]>("setting")
        {
            Description = $"KEY=VALUE: {Keys} (docs/writeback-cache.md; writeback only in a cluster)",
            Arity = ArgumentArity.OneOrMore,
        };
        var command = new Command("set", "Change a volume's settings") { name, settings };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var volumeName = parseResult.GetRequiredValue(name);
            var request = Parse(parseResult.GetRequiredValue(settings));
            using var admin = client.CreateClient(parseResult);
            var volume = await admin.SetVolumeSettingsAsync(volumeName, request, cancellationToken);
            client.Report(parseResult, volume, $"volume '{volume.Name}': cache={CacheModes.Name(volume.Cache)}");
        });
        return command;
    }

    // Checked before the node is asked, so a typo is a usage error (exit 2) whatever the node.
    private static VolumeSettingsRequest Parse(string[] settings)
    {
        CacheMode? cache = null;
        foreach (var setting in settings)
        {
            var at = setting.IndexOf('=', StringComparison.Ordinal);
            if (at < 0)
            {
                throw CliException.Usage($"'{setting}' is not KEY=VALUE: use {Keys}");
            }

            var (key, value) = (setting[..at], setting[(at + 1)..]);
            if (key != "cache")
            {
                throw CliException.Usage($"unknown setting '{key}': the only one is {Keys}");
            }

            if (!CacheModes.TryParse(value, out var mode))
            {
                throw CliException.Usage($"cache: '{value}' is neither writeback nor writethrough");
            }

            if (cache is not null)
            {
                throw CliException.Usage("cache is given twice: give it once");
            }

            cache = mode;
        }

        // OneOrMore arguments, each one cache=... or refused above.
        return new VolumeSettingsRequest(cache!.Value);
    }
}
