using System.CommandLine;

namespace Ovis.Cli;

/// <summary><c>ovis node info</c>: what the node says about itself.</summary>
internal static class NodeCommand
{
    public static Command Create()
    {
        var client = new ClientOptions();
        var node = new Command("node", "Inspect the node");
        client.AddTo(node);

        var info = new Command("info", "Show the node's version, data directory, listeners and usage");
        info.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var status = await admin.GetNodeAsync(cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(status);
            }
            else
            {
                ConsoleOutput.Stdout.Node(status);
            }
        });
        node.Subcommands.Add(info);
        return node;
    }
}
