using System.CommandLine;

namespace Ovis.Cli;

/// <summary><c>ovis node info</c>: what the node says about itself; <c>ovis node list</c>: its cluster's members;
/// <c>ovis node drain</c>: move a live one's objects away before retiring it; <c>ovis node remove</c>: take a down one out.</summary>
internal static class NodeCommand
{
    public static Command Create()
    {
        var client = new ClientOptions();
        var node = new Command("node", "Inspect the node and its cluster's members");
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

        var list = new Command("list", "List the members of the node's cluster: id, address, zone, state");
        list.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var nodes = await admin.ListNodesAsync(cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(nodes);
            }
            else
            {
                ConsoleOutput.Stdout.Members(nodes);
            }
        });
        node.Subcommands.Add(list);

        var id = new Argument<string>("ID") { Description = "The member's node id (see 'ovis node list')" };
        var remove = new Command("remove", "Take a down member out of the cluster now, instead of after the down-out interval: its objects get copies on the other nodes") { id };
        remove.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var nodes = await admin.RemoveNodeAsync(parseResult.GetValue(id)!, cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(nodes);
            }
            else
            {
                ConsoleOutput.Stdout.Members(nodes);
            }
        });
        node.Subcommands.Add(remove);

        var drainId = new Argument<string>("ID") { Description = "The member's node id (see 'ovis node list')" };
        var cancel = new Option<bool>("--cancel") { Description = "Stop draining it: placement names it again (objects may move back)" };
        var drain = new Command("drain", "Retire a live member without losing a copy: placement stops naming it and its objects get copies elsewhere while it serves as a source; 'ovis node list' shows it draining, then drained") { drainId, cancel };
        drain.SetAction(async (parseResult, cancellationToken) =>
        {
            using var admin = client.CreateClient(parseResult);
            var nodes = await admin.DrainNodeAsync(parseResult.GetValue(drainId)!, parseResult.GetValue(cancel), cancellationToken);
            if (client.WantsJson(parseResult))
            {
                ConsoleOutput.Stdout.Json(nodes);
            }
            else
            {
                ConsoleOutput.Stdout.Members(nodes);
            }
        });
        node.Subcommands.Add(drain);
        return node;
    }
}
