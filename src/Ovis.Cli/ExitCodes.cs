namespace Ovis.Cli;

/// <summary>Process exit codes of <c>ovis</c>; scripts rely on them.</summary>
public static class ExitCodes
{
    public const int Success = 0;

    /// <summary>The node refused the operation, could not be reached, or failed.</summary>
    public const int Refused = 1;

    /// <summary>The command line was wrong: unknown command, missing argument, invalid size.</summary>
    public const int Usage = 2;
}
