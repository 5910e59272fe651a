using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Ovis.Volumes;

namespace Ovis.Node.Admin;

/// <summary>
/// Turns every failure of an admin request into a status code and <c>{"error": "..."}</c> with
/// one line: refusals of the volume manager keep their meaning (404, 409, 400), anything else is
/// a 500 whose stack trace goes to the node's log, never to the client.
/// </summary>
internal sealed partial class AdminErrorMiddleware(RequestDelegate next, ILogger<AdminErrorMiddleware> logger)
{
    public async Task InvokeAsync(HttpContext context)
    {
        try
        {
            await next(context);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The client went away; there is nobody to answer.
        }
        catch (Exception ex)
        {
            var (status, message) = Classify(ex);
            if (status >= StatusCodes.Status500InternalServerError)
            {
                LogRequestFailed(logger, context.Request.Method, context.Request.Path, ex);
            }

            if (context.Response.HasStarted)
            {
                // Headers are out: the only honest thing left is to cut the response short.
                context.Abort();
                return;
            }

            context.Response.Clear();
            await WriteErrorAsync(context, status, message);
        }
    }

    /// <summary>Writes <c>{"error": message}</c> with <paramref name="status"/>.</summary>
    public static Task WriteErrorAsync(HttpContext context, int status, string message)
    {
        context.Response.StatusCode = status;
        return context.Response.WriteAsJsonAsync(new ErrorBody(OneLine(message)), AdminJsonContext.Api.ErrorBody, contentType: null, context.RequestAborted);
    }

    /// <summary>The status and one-line message a failure is answered with; jobs report theirs the same way.</summary>
    internal static (int Status, string Message) Classify(Exception ex) => ex switch
    {
        VolumeException volume => (volume.Code switch
        {
            VolumeErrorCode.NotFound => StatusCodes.Status404NotFound,
            VolumeErrorCode.AlreadyExists or VolumeErrorCode.InUse or VolumeErrorCode.Conflict => StatusCodes.Status409Conflict,
            VolumeErrorCode.NoSpace => StatusCodes.Status507InsufficientStorage,
            _ => StatusCodes.Status400BadRequest,
        }, volume.Message),
        AdminRequestException request => (request.StatusCode, request.Message),
        Ovis.Cluster.Etcd.EtcdException etcd => (StatusCodes.Status503ServiceUnavailable, $"the cluster catalog did not answer: {etcd.Message}"),
        BadHttpRequestException badRequest => (badRequest.StatusCode, badRequest.Message),
        _ => (StatusCodes.Status500InternalServerError, $"internal error: {ex.Message} (see the node's log)"),
    };

    internal static string OneLine(string message)
        => message.ReplaceLineEndings(" ").Trim();

    [LoggerMessage(EventId = 1, Level = LogLevel.Error, Message = "{Method} {Path} failed")]
    private static partial void LogRequestFailed(ILogger logger, string method, PathString path, Exception exception);
}
