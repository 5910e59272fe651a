using System.CommandLine;
using System.CommandLine.Help;

namespace Ovis.Cli;

/// <summary>
/// Entry point of <c>ovis</c>. Every failure ends as one line on stderr, <c>ovis: ...</c>, and an
/// exit code from <see cref="ExitCodes"/>; nothing else is written to stderr by the CLI itself.
/// </summary>
public static class Program
{
    public static async Task<int> Main(string[] args)
    {
        var root = CreateRootCommand();

        // '@' is part of snapshot names (disk0@v1); a token starting with it must stay a name
        // rather than be read as a response file ("response file not found").
        var parseResult = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });

        if (parseResult.Errors.Count > 0 && parseResult.Action is not HelpAction)
        {
            return Fail(DescribeParseError(parseResult), ExitCodes.Usage);
        }

        try
        {
            return await parseResult.InvokeAsync(new InvocationConfiguration
            {
                // Our own handler below keeps stack traces off the terminal.
                EnableDefaultExceptionHandler = false,

                // serve handles SIGINT/SIGTERM itself so that it can stop cleanly; the client
                // commands have nothing to clean up and may die at once.
                ProcessTerminationTimeout = null,
            });
        }
        catch (CliException ex)
        {
            return Fail(ex.Message, ex.ExitCode);
        }
        catch (Exception ex)
        {
            return Fail($"unexpected error: {ex.Message}", ExitCodes.Refused);
        }
    }

    /// <summary>The whole command tree; public so tests can parse command lines without running them.</summary>
    public static RootCommand CreateRootCommand()
    {
        var root = new RootCommand("Ovis: a block store for virtual machine disks, served over NBD");
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(VdiCommand.Create());
        root.Subcommands.Add(NodeCommand.Create());
        root.Subcommands.Add(ClusterCommand.Create());
        return root;
    }

    private static int Fail(string message, int exitCode)
    {
        Console.Error.WriteLine($"ovis: {message.ReplaceLineEndings(" ")}");
        return exitCode;
    }

    // System.CommandLine's messages are sentences ("Required argument missing for command:
    // 'create'."); keep the first, in the lower-case style of the rest of our errors, and
    // point at the help of the command that was being parsed.
    private static string DescribeParseError(ParseResult parseResult)
    {
        // "Required command was not provided" also comes with "Unrecognized command or
        // argument 'x'", which is the one that says what went wrong.
        var error = parseResult.Errors.FirstOrDefault(e => e.Message.StartsWith("Unrecognized", StringComparison.Ordinal))
            ?? parseResult.Errors[0];
        var message = error.Message.TrimEnd('.');
        if (message.Length > 1 && char.IsUpper(message[0]) && !char.IsUpper(message[1]))
        {
            message = char.ToLowerInvariant(message[0]) + message[1..];
        }

        var path = new List<string>();
        for (var result = parseResult.CommandResult; result is not null; result = result.Parent as System.CommandLine.Parsing.CommandResult)
        {
            path.Add(result.Command is RootCommand ? "ovis" : result.Command.Name);
        }

        path.Reverse();
        return $"{message} (see '{string.Join(' ', path)} --help')";
    }
}
