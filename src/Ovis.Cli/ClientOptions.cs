using System.CommandLine;

namespace Ovis.Cli;

/// <summary>The options every command that talks to a node accepts, on it and its subcommands.</summary>
internal sealed class ClientOptions
{
    public Option<string?> Admin { get; } = new("--admin")
    {
        Description = $"URL of the node's admin API [default: ${AdminClient.AdminEnvironmentVariable}, else {AdminClient.Display(AdminClient.DefaultAdminUri)}]",
        HelpName = "URL",
        Recursive = true,
    };

    public Option<string?> TokenFile { get; } = new("--token-file")
    {
        Description = $"File holding the admin token, needed by commands that change state [default: ${AdminClient.TokenEnvironmentVariable}, else the file a node on this machine names]",
        HelpName = "PATH",
        Recursive = true,
    };

    public Option<bool> Json { get; } = new("--json")
    {
        Description = "Print the admin API's JSON instead of tables",
        Recursive = true,
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Admin);
        command.Options.Add(TokenFile);
        command.Options.Add(Json);
    }

    public AdminClient CreateClient(ParseResult parseResult)
        => new(AdminClient.ResolveAdminUri(parseResult.GetValue(Admin)), token: AdminClient.ResolveToken(parseResult.GetValue(TokenFile)));

    public bool WantsJson(ParseResult parseResult) => parseResult.GetValue(Json);

    /// <summary>Prints <paramref name="result"/> as JSON with --json, otherwise the one-line <paramref name="summary"/>.</summary>
    public void Report<T>(ParseResult parseResult, T result, string summary)
    {
        if (WantsJson(parseResult))
        {
            ConsoleOutput.Stdout.Json(result);
        }
        else
        {
            ConsoleOutput.Stdout.Line(summary);
        }
    }
}
