using System.Globalization;
using System.Net;

namespace Ovis.Cluster.Peer;

/// <summary>
/// The peer-protocol address a node publishes in its member record and others dial:
/// <c>IP:PORT</c>, <c>[IPv6]:PORT</c> or <c>HOST:PORT</c> (resolved at each connect, so a name
/// behind NAT or a proxy may move).
/// </summary>
public static class PeerAddress
{
    /// <summary>Parses an address to dial; <paramref name="error"/> is one line for an operator when it fails.</summary>
    public static bool TryParse(string? text, out EndPoint? endPoint, out string? error)
    {
        endPoint = null;
        error = null;
        text = text?.Trim();
        if (string.IsNullOrEmpty(text))
        {
            error = "give HOST:PORT";
            return false;
        }

        if (IPEndPoint.TryParse(text, out IPEndPoint? ip) && text.Contains(':', StringComparison.Ordinal) && !text.EndsWith(']'))
        {
            if (ip.Port is 0)
            {
                error = $"'{text}' has no port (or port 0): write IP:PORT or [IPv6]:PORT";
                return false;
            }

            endPoint = ip;
            return true;
        }

        int colon = text.LastIndexOf(':');
        if (colon <= 0 || text.IndexOf(':', StringComparison.Ordinal) != colon
            || !int.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
        {
            error = $"'{text}' is not HOST:PORT with a port from 1 to 65535";
            return false;
        }

        string host = text[..colon];
        if (Uri.CheckHostName(host) is not UriHostNameType.Dns)
        {
            error = $"'{host}' is not a host name or IP address";
            return false;
        }

        endPoint = new DnsEndPoint(host, port);
        return true;
    }
}
