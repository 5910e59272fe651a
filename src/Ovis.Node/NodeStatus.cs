using System.Reflection;

namespace Ovis.Node;

/// <summary>What a running node says about itself in <c>GET /api/v1/node</c>.</summary>
public sealed class NodeStatus(string dataDirectory, TimeProvider timeProvider)
{
    private readonly long _startTimestamp = timeProvider.GetTimestamp();

    /// <summary>The informational version of this build, e.g. <c>0.1.0+3f2a…</c>.</summary>
    public static string Version { get; } =
        typeof(NodeStatus).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
        ?? typeof(NodeStatus).Assembly.GetName().Version?.ToString()
        ?? "unknown";

    public string DataDirectory { get; } = dataDirectory;

    public DateTimeOffset Started { get; } = timeProvider.GetUtcNow();

    public TimeSpan Uptime => timeProvider.GetElapsedTime(_startTimestamp);

    /// <summary>Bound NBD listeners, <c>HOST:PORT</c> or <c>unix:PATH</c>; set once the node has started.</summary>
    public IReadOnlyList<string> NbdListeners { get; internal set; } = [];

    /// <summary>Bound admin listeners as URLs; set once the node has started.</summary>
    public IReadOnlyList<string> AdminListeners { get; internal set; } = [];

    /// <summary>Where the admin token is kept (never the token itself); null when the node runs without one.</summary>
    public string? TokenFile { get; internal set; }

    /// <summary>The peer protocol listener of a clustered node, as <c>HOST:PORT</c>; null on an embedded node.</summary>
    public string? PeerListener { get; internal set; }
}
