using Microsoft.AspNetCore.Http;

namespace Ovis.Node.Admin;

/// <summary>
/// A request the admin API refuses before it reaches the volumes: answered with
/// <paramref name="statusCode"/>, 400 unless the refusal is a conflict (409) or names something missing (404).
/// </summary>
public sealed class AdminRequestException(string message, int statusCode = StatusCodes.Status400BadRequest) : Exception(message)
{
    public int StatusCode { get; } = statusCode;
}
