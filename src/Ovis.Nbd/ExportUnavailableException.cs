namespace Ovis.Nbd;

/// <summary>
/// Thrown by <see cref="IExportProvider.OpenAsync"/> when an export exists but may not be served
/// by this server now, e.g. because another node holds its lock. The message is sent to the
/// client with NBD_REP_ERR_UNKNOWN (qemu prints it as "server reported: ...", libnbd in its debug
/// output), so it is one line for an operator that says why: "volume v is being served by node n-a".
/// </summary>
public sealed class ExportUnavailableException : Exception
{
    public ExportUnavailableException()
        : base("The export is not available on this server.")
    {
    }

    public ExportUnavailableException(string message)
        : base(message)
    {
    }

    public ExportUnavailableException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
