using System.Net;
using System.Net.Http.Headers;

namespace Ovis.Cli;

public sealed partial class AdminClient
{
    /// <summary>Environment variable holding the admin token when <c>--token-file</c> is not given.</summary>
    public const string TokenEnvironmentVariable = "OVIS_TOKEN";

    private (string Value, string Origin)? _token;
    private bool _tokenSettled;
    private string? _discoveryNote;

    /// <summary>
    /// The token to send: from the file named by <c>--token-file</c>, else <c>$OVIS_TOKEN</c>;
    /// null when neither is given (the client then looks for it, see <see cref="DiscoverTokenAsync"/>).
    /// </summary>
    public static (string Value, string Origin)? ResolveToken(string? tokenFile)
    {
        if (!string.IsNullOrWhiteSpace(tokenFile))
        {
            string text;
            try
            {
                text = File.ReadAllText(tokenFile).Trim();
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new CliException($"cannot read the token file '{tokenFile}' (from --token-file): {ex.Message}");
            }

            return text.Length > 0 ? (text, $"--token-file {tokenFile}") : throw new CliException($"the token file '{tokenFile}' (from --token-file) is empty");
        }

        return Environment.GetEnvironmentVariable(TokenEnvironmentVariable)?.Trim() is { Length: > 0 } fromEnvironment
            ? (fromEnvironment, TokenEnvironmentVariable)
            : null;
    }

    // Reads stay open on the node: only requests that may change state need (and look for) a token.
    private async Task AttachTokenAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        if (!_tokenSettled && request.Method != HttpMethod.Get && request.Method != HttpMethod.Head)
        {
            _tokenSettled = true;
            _token = await DiscoverTokenAsync(cancellationToken);
        }

        if (_token is { } token)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token.Value);
        }
    }

    /// <summary>
    /// A node on this machine names its token's file in <c>GET /api/v1/node</c>; read it when this
    /// user may. Never for a node elsewhere: a path it names means nothing here, and a token read
    /// from this machine must not be sent to another.
    /// </summary>
    private async Task<(string Value, string Origin)?> DiscoverTokenAsync(CancellationToken cancellationToken)
    {
        var host = _http.BaseAddress!;
        if (!host.IsLoopback)
        {
            return null;
        }

        var node = await GetNodeAsync(cancellationToken);
        if (node.TokenFile is not { } path)
        {
            return null;
        }

        try
        {
            return File.ReadAllText(path).Trim() is { Length: > 0 } text ? (text, path) : null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _discoveryNote = $"; {path} is not readable here: {ex.Message}";
            return null;
        }
    }

    private string DescribeRefusal() => _token is { } token
        ? $"the admin API refused the request: wrong token (the one from {token.Origin} is not the node's; check OVIS_TOKEN or --token-file)"
        : $"the admin API refused the request: no token (set OVIS_TOKEN or --token-file{_discoveryNote})";
}
