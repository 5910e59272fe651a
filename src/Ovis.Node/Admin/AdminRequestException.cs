namespace Ovis.Node.Admin;

/// <summary>A request the admin API refuses before it reaches the volumes: answered with 400.</summary>
public sealed class AdminRequestException(string message) : Exception(message);
