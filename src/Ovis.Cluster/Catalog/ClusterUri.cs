using System.Globalization;

namespace Ovis.Cluster.Catalog;

/// <summary>
/// Where a cluster's catalog lives: <c>etcd://HOST:PORT[,HOST:PORT…]/NAME</c>, parsed into etcd
/// client URLs (<c>http://HOST:PORT</c>) and the cluster name.
/// </summary>
public sealed record ClusterUri(IReadOnlyList<string> Endpoints, string Name)
{
    public const string Usage = "etcd://HOST:PORT[,HOST:PORT...]/NAME";

    /// <summary>Parses <paramref name="text"/>; on failure <paramref name="error"/> is one line saying what is wrong.</summary>
    public static bool TryParse(string? text, out ClusterUri? uri, out string? error)
    {
        uri = null;
        error = null;
        const string scheme = "etcd://";
        if (string.IsNullOrWhiteSpace(text) || !text.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
        {
            error = $"'{text}' is not a cluster URI: use {Usage}";
            return false;
        }

        var rest = text[scheme.Length..];
        var slash = rest.IndexOf('/', StringComparison.Ordinal);
        if (slash < 0 || slash == rest.Length - 1)
        {
            error = $"'{text}' names no cluster: use {Usage}";
            return false;
        }

        var name = rest[(slash + 1)..];
        foreach (var c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
            {
                error = $"'{text}': cluster name '{name}' may only have letters, digits, '-', '_' and '.'";
                return false;
            }
        }

        var endpoints = new List<string>();
        foreach (var hostPort in rest[..slash].Split(','))
        {
            var colon = hostPort.LastIndexOf(':');
            if (colon <= 0
                || !int.TryParse(hostPort.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port)
                || port is < 1 or > 65535
                || !Uri.TryCreate($"http://{hostPort}", UriKind.Absolute, out var endpoint)
                || endpoint.AbsolutePath != "/")
            {
                error = $"'{text}': '{hostPort}' is not HOST:PORT of an etcd endpoint: use {Usage}";
                return false;
            }

            endpoints.Add($"http://{hostPort}");
        }

        uri = new ClusterUri(endpoints, name);
        return true;
    }

    public override string ToString() =>
        $"etcd://{string.Join(",", Endpoints.Select(e => e["http://".Length..]))}/{Name}";
}
