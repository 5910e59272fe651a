using Microsoft.AspNetCore.Http;
using Microsoft.Net.Http.Headers;

namespace Ovis.Node.Admin;

/// <summary>
/// Refuses, with 401 and <c>{"error": ...}</c>, every request that may change state (any method
/// but GET and HEAD) unless it carries <c>Authorization: Bearer TOKEN</c> with the node's token.
/// Deciding by method rather than by route keeps a route added later closed by default.
/// </summary>
internal sealed class AdminTokenMiddleware(RequestDelegate next, AdminToken token)
{
    /// <summary>The start of the message for a request without a token; the CLI tells it from a wrong one by this.</summary>
    public const string MissingMessage = "no token";

    public const string WrongMessage = "wrong token";

    private const string Scheme = "Bearer ";

    public Task InvokeAsync(HttpContext context)
    {
        if (HttpMethods.IsGet(context.Request.Method) || HttpMethods.IsHead(context.Request.Method))
        {
            return next(context);
        }

        var header = context.Request.Headers.Authorization.ToString();
        if (header.Length == 0)
        {
            return RefuseAsync(context, $"{MissingMessage}: {context.Request.Method} {context.Request.Path} changes state and needs the admin token (Authorization: Bearer TOKEN; see docs/admin-api.md)");
        }

        if (!header.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase) || !token.Matches(header.AsSpan(Scheme.Length).Trim()))
        {
            return RefuseAsync(context, $"{WrongMessage}: the Authorization header does not carry this node's admin token");
        }

        return next(context);
    }

    private static Task RefuseAsync(HttpContext context, string message)
    {
        context.Response.Headers[HeaderNames.WWWAuthenticate] = "Bearer";
        return AdminErrorMiddleware.WriteErrorAsync(context, StatusCodes.Status401Unauthorized, message);
    }
}
