using System.Globalization;
using System.Net;

namespace Ovis.Node;

/// <summary>
/// A TCP address to listen on, as an operator writes it: <c>127.0.0.1:10809</c>,
/// <c>[::1]:10809</c>, <c>0.0.0.0:10809</c> or <c>localhost:10809</c>. Port 0 asks the kernel
/// for a free port; the bound one is known once the node has started.
/// </summary>
public sealed record ListenAddress
{
    private ListenAddress(IPAddress? address, int port)
    {
        Address = address;
        Port = port;
    }

    /// <summary>The address to bind, or null for <c>localhost</c> (loopback, IPv4 and IPv6).</summary>
    public IPAddress? Address { get; }

    public int Port { get; }

    public bool IsLocalhost => Address is null;

    /// <summary>Reachable from this machine only: localhost, 127.0.0.0/8 or ::1.</summary>
    public bool IsLoopback => Address is null || IPAddress.IsLoopback(Address);

    public static ListenAddress Loopback(int port) => new(IPAddress.Loopback, port);

    public static ListenAddress FromEndPoint(IPEndPoint endPoint) => new(endPoint.Address, endPoint.Port);

    /// <summary>Parses HOST:PORT; <paramref name="error"/> is one line for an operator when it fails.</summary>
    public static bool TryParse(string? text, out ListenAddress? address, out string? error)
    {
        address = null;
        error = null;
        text = text?.Trim();
        if (string.IsNullOrEmpty(text))
        {
            error = "an address is empty: use HOST:PORT, e.g. 127.0.0.1:10809";
            return false;
        }

        // Tolerate a pasted URL for the admin address; the scheme says nothing we need.
        var rest = text;
        if (rest.StartsWith("http://", StringComparison.OrdinalIgnoreCase))
        {
            rest = rest["http://".Length..].TrimEnd('/');
        }

        string host;
        string portText;
        if (rest.StartsWith('['))
        {
            var close = rest.IndexOf(']', StringComparison.Ordinal);
            if (close < 0 || close + 1 >= rest.Length || rest[close + 1] != ':')
            {
                error = $"invalid address '{text}': write IPv6 addresses as [ADDRESS]:PORT, e.g. [::1]:10809";
                return false;
            }

            host = rest[1..close];
            portText = rest[(close + 2)..];
        }
        else
        {
            var colon = rest.LastIndexOf(':');
            if (colon < 0)
            {
                error = $"invalid address '{text}': use HOST:PORT, e.g. 127.0.0.1:10809";
                return false;
            }

            host = rest[..colon];
            portText = rest[(colon + 1)..];
            if (host.Contains(':', StringComparison.Ordinal))
            {
                error = $"invalid address '{text}': write IPv6 addresses as [ADDRESS]:PORT, e.g. [::1]:10809";
                return false;
            }
        }

        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port > IPEndPoint.MaxPort)
        {
            error = $"invalid address '{text}': the port must be a number from 0 to 65535";
            return false;
        }

        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase))
        {
            address = new ListenAddress(null, port);
            return true;
        }

        if (host.Length == 0 || host == "*")
        {
            address = new ListenAddress(IPAddress.Any, port);
            return true;
        }

        if (!IPAddress.TryParse(host, out var ip))
        {
            error = $"invalid address '{text}': the host must be an IP address or localhost";
            return false;
        }

        address = new ListenAddress(ip, port);
        return true;
    }

    public override string ToString()
        => Address is null ? $"localhost:{Port.ToString(CultureInfo.InvariantCulture)}" : new IPEndPoint(Address, Port).ToString();
}
