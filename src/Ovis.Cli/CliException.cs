namespace Ovis.Cli;

/// <summary>
/// Ends a command with one line on stderr (<c>ovis: message</c>) and an exit code; the only way
/// commands report failure, so no stack trace reaches the terminal.
/// </summary>
public sealed class CliException(string message, int exitCode = ExitCodes.Refused, Exception? innerException = null)
    : Exception(message, innerException)
{
    public int ExitCode { get; } = exitCode;

    public static CliException Usage(string message) => new(message, ExitCodes.Usage);
}
