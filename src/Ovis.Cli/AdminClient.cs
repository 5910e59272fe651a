using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Ovis.Node;
using Ovis.Node.Admin;
using Ovis.Volumes;

namespace Ovis.Cli;

/// <summary>
/// The CLI's side of the admin HTTP API (docs/admin-api.md). Every failure, whether the node is
/// down, slow, or refuses, becomes a <see cref="CliException"/> with one line for the operator.
/// </summary>
public sealed partial class AdminClient : IDisposable
{
    /// <summary>Environment variable naming the node when <c>--admin</c> is not given.</summary>
    public const string AdminEnvironmentVariable = "OVIS_ADMIN";

    public static readonly Uri DefaultAdminUri = new($"http://127.0.0.1:{NodeOptions.DefaultAdminPort.ToString(CultureInfo.InvariantCulture)}");

    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    private readonly HttpClient _http;
    private readonly string _display;

    /// <param name="token">The admin token and where it came from (for messages); null looks for it
    /// in the file a node on this machine names, the first time a request needs it.</param>
    public AdminClient(Uri adminUri, TimeSpan? timeout = null, (string Value, string Origin)? token = null)
    {
        ArgumentNullException.ThrowIfNull(adminUri);

        // A trailing slash keeps a path prefix (a node behind a reverse proxy at /ovis/) when
        // the relative API paths below are resolved against it.
        _display = Display(adminUri);
        var baseUri = adminUri.AbsoluteUri.EndsWith('/') ? adminUri : new Uri(adminUri.AbsoluteUri + "/");
        _http = new HttpClient { BaseAddress = baseUri, Timeout = timeout ?? DefaultTimeout };
        _token = token;
        _tokenSettled = token is not null;
    }

    /// <summary>
    /// The node to talk to: <paramref name="option"/> (from <c>--admin</c>), else
    /// <c>$OVIS_ADMIN</c>, else <see cref="DefaultAdminUri"/>. <c>HOST:PORT</c> without a
    /// scheme means http. Throws a usage <see cref="CliException"/> for anything else.
    /// </summary>
    public static Uri ResolveAdminUri(string? option)
    {
        var text = option;
        var source = "--admin";
        if (string.IsNullOrWhiteSpace(text))
        {
            text = Environment.GetEnvironmentVariable(AdminEnvironmentVariable);
            source = AdminEnvironmentVariable;
        }

        if (string.IsNullOrWhiteSpace(text))
        {
            return DefaultAdminUri;
        }

        text = text.Trim();
        var withScheme = text.Contains("://", StringComparison.Ordinal) ? text : "http://" + text;
        if (!Uri.TryCreate(withScheme, UriKind.Absolute, out var uri)
            || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps)
            || uri.Query.Length > 0 || uri.Fragment.Length > 0)
        {
            throw CliException.Usage($"invalid admin URL '{text}' (from {source}): use http://HOST:PORT, e.g. {Display(DefaultAdminUri)}");
        }

        return uri;
    }

    public Task<NodeInfo> GetNodeAsync(CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, "api/v1/node", null, AdminJsonContext.Default.NodeInfo, cancellationToken);

    public Task<List<VolumeInfo>> ListVolumesAsync(CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, "api/v1/volumes", null, AdminJsonContext.Default.ListVolumeInfo, cancellationToken);

    public Task<VolumeInfo> GetVolumeAsync(string name, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, VolumePath(name), null, AdminJsonContext.Default.VolumeInfo, cancellationToken);

    public Task<VolumeInfo> CreateVolumeAsync(CreateVolumeRequest request, CancellationToken cancellationToken)
        => SendAsync(
            HttpMethod.Post,
            "api/v1/volumes",
            JsonContent.Create(request, AdminJsonContext.Default.CreateVolumeRequest),
            AdminJsonContext.Default.VolumeInfo,
            cancellationToken);

    public Task<VolumeInfo> ResizeVolumeAsync(string name, ResizeVolumeRequest request, CancellationToken cancellationToken)
        => SendAsync(
            HttpMethod.Post,
            VolumePath(name) + "/resize",
            JsonContent.Create(request, AdminJsonContext.Default.ResizeVolumeRequest),
            AdminJsonContext.Default.VolumeInfo,
            cancellationToken);

    public Task<VolumeInfo> SetVolumeSettingsAsync(string name, VolumeSettingsRequest request, CancellationToken cancellationToken)
        => SendAsync(
            HttpMethod.Post,
            VolumePath(name) + "/settings",
            JsonContent.Create(request, AdminJsonContext.Default.VolumeSettingsRequest),
            AdminJsonContext.Default.VolumeInfo,
            cancellationToken);

    /// <summary>Deletes a volume, or a snapshot when <paramref name="name"/> is <c>NAME@TAG</c>.</summary>
    public Task DeleteVolumeAsync(string name, CancellationToken cancellationToken)
        => SendAsync<object>(HttpMethod.Delete, VolumePath(name), null, null, cancellationToken);

    public Task<VolumeInfo> SnapshotVolumeAsync(string name, SnapshotRequest request, CancellationToken cancellationToken)
        => SendAsync(
            HttpMethod.Post,
            VolumePath(name) + "/snapshots",
            JsonContent.Create(request, AdminJsonContext.Default.SnapshotRequest),
            AdminJsonContext.Default.VolumeInfo,
            cancellationToken);

    /// <summary>Clones <paramref name="snapshot"/> (<c>NAME@TAG</c>) into a new volume.</summary>
    public Task<VolumeInfo> CloneSnapshotAsync(string snapshot, CloneRequest request, CancellationToken cancellationToken)
        => SendAsync(
            HttpMethod.Post,
            VolumePath(snapshot) + "/clone",
            JsonContent.Create(request, AdminJsonContext.Default.CloneRequest),
            AdminJsonContext.Default.VolumeInfo,
            cancellationToken);

    public Task<VolumeInfo> RollbackVolumeAsync(string name, RollbackRequest request, CancellationToken cancellationToken)
        => SendAsync(
            HttpMethod.Post,
            VolumePath(name) + "/rollback",
            JsonContent.Create(request, AdminJsonContext.Default.RollbackRequest),
            AdminJsonContext.Default.VolumeInfo,
            cancellationToken);

    /// <summary>Starts a flatten on the node; follow it with <see cref="GetJobAsync"/>.</summary>
    public Task<JobAccepted> FlattenVolumeAsync(string name, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, VolumePath(name) + "/flatten", null, AdminJsonContext.Default.JobAccepted, cancellationToken);

    public Task<JobInfo> GetJobAsync(string id, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, "api/v1/jobs/" + Uri.EscapeDataString(id), null, AdminJsonContext.Default.JobInfo, cancellationToken);

    public Task<CheckReport> CheckVolumeAsync(string name, bool repair, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, VolumePath(name) + (repair ? "/check?repair=true" : "/check"), null, AdminJsonContext.Default.CheckReport, cancellationToken);

    public Task<List<BitmapInfo>> ListBitmapsAsync(string volume, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, VolumePath(volume) + "/bitmaps", null, AdminJsonContext.Default.ListBitmapInfo, cancellationToken);

    public Task<BitmapInfo> AddBitmapAsync(string volume, AddBitmapRequest request, CancellationToken cancellationToken)
        => SendAsync(
            HttpMethod.Post,
            VolumePath(volume) + "/bitmaps",
            JsonContent.Create(request, AdminJsonContext.Default.AddBitmapRequest),
            AdminJsonContext.Default.BitmapInfo,
            cancellationToken);

    public Task RemoveBitmapAsync(string volume, string bitmap, CancellationToken cancellationToken)
        => SendAsync<object>(HttpMethod.Delete, VolumePath(volume) + "/bitmaps/" + Uri.EscapeDataString(bitmap), null, null, cancellationToken);

    public Task<BitmapInfo> ClearBitmapAsync(string volume, string bitmap, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, VolumePath(volume) + "/bitmaps/" + Uri.EscapeDataString(bitmap) + "/clear", null, AdminJsonContext.Default.BitmapInfo, cancellationToken);

    public Task<JobAccepted> BackupVolumeAsync(string volume, BackupRequest request, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, VolumePath(volume) + "/backup", JsonContent.Create(request, AdminJsonContext.Default.BackupRequest), AdminJsonContext.Default.JobAccepted, cancellationToken);

    public Task<JobAccepted> RestoreVolumeAsync(string volume, RestoreRequest request, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, VolumePath(volume) + "/restore", JsonContent.Create(request, AdminJsonContext.Default.RestoreRequest), AdminJsonContext.Default.JobAccepted, cancellationToken);

    public Task<JobAccepted> VerifyVolumeAsync(string volume, VerifyRequest request, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, VolumePath(volume) + "/verify", JsonContent.Create(request, AdminJsonContext.Default.VerifyRequest), AdminJsonContext.Default.JobAccepted, cancellationToken);

    public Task<List<JobInfo>> ListJobsAsync(CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, "api/v1/jobs", null, AdminJsonContext.Default.ListJobInfo, cancellationToken);

    public Task<JobInfo> CancelJobAsync(string id, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, "api/v1/jobs/" + Uri.EscapeDataString(id) + "/cancel", null, AdminJsonContext.Default.JobInfo, cancellationToken);

    public Task<ClusterInfo> GetClusterAsync(CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, "api/v1/cluster", null, AdminJsonContext.Default.ClusterInfo, cancellationToken);

    public Task<List<MemberInfo>> ListNodesAsync(CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, "api/v1/nodes", null, AdminJsonContext.Default.ListMemberInfo, cancellationToken);

    /// <summary>Takes a down member out of the cluster now; returns the members left.</summary>
    public Task<List<MemberInfo>> RemoveNodeAsync(string id, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Delete, "api/v1/nodes/" + Uri.EscapeDataString(id), null, AdminJsonContext.Default.ListMemberInfo, cancellationToken);

    /// <summary>Starts draining a member (or, with <paramref name="cancel"/>, stops); returns the members.</summary>
    public Task<List<MemberInfo>> DrainNodeAsync(string id, bool cancel, CancellationToken cancellationToken)
        => SendAsync(cancel ? HttpMethod.Delete : HttpMethod.Post, "api/v1/nodes/" + Uri.EscapeDataString(id) + "/drain", null,
            AdminJsonContext.Default.ListMemberInfo, cancellationToken);

    public Task<RecoveryStatus> GetRecoveryAsync(CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, "api/v1/recovery", null, AdminJsonContext.Default.RecoveryStatus, cancellationToken);

    /// <summary>Pauses or resumes recovery on every node of the cluster.</summary>
    public Task<RecoveryStatus> SetRecoveryPausedAsync(bool paused, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, paused ? "api/v1/recovery/pause" : "api/v1/recovery/resume", null, AdminJsonContext.Default.RecoveryStatus, cancellationToken);

    public void Dispose() => _http.Dispose();

    /// <summary>The URL as people write it: <c>http://127.0.0.1:7070</c>, without Uri's trailing slash.</summary>
    public static string Display(Uri uri) => uri.AbsolutePath == "/" ? uri.GetLeftPart(UriPartial.Authority) : uri.AbsoluteUri;

    // '@' of NAME@TAG may stay as it is in a path segment; the node accepts %40 too.
    private static string VolumePath(string name) => "api/v1/volumes/" + Uri.EscapeDataString(name).Replace("%40", "@", StringComparison.Ordinal);

    private async Task<T> SendAsync<T>(HttpMethod method, string path, HttpContent? content, JsonTypeInfo<T>? answerType, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(method, path) { Content = content };
        HttpResponseMessage response;
        try
        {
            await AttachTokenAsync(request, cancellationToken);
            response = await _http.SendAsync(request, HttpCompletionOption.ResponseContentRead, cancellationToken);
        }
        catch (HttpRequestException ex) when (ex.HttpRequestError is HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError)
        {
            throw new CliException($"cannot reach the Ovis node at {_display} (is 'ovis serve' running?)", ExitCodes.Refused, ex);
        }
        catch (HttpRequestException ex)
        {
            throw new CliException($"request to the Ovis node at {_display} failed: {ex.Message}", ExitCodes.Refused, ex);
        }
        catch (TaskCanceledException ex) when (!cancellationToken.IsCancellationRequested)
        {
            throw new CliException(
                $"the Ovis node at {_display} did not answer within {_http.Timeout.TotalSeconds.ToString(CultureInfo.InvariantCulture)} s",
                ExitCodes.Refused,
                ex);
        }

        using (response)
        {
            if (response.StatusCode == HttpStatusCode.Unauthorized)
            {
                throw new CliException(DescribeRefusal());
            }

            if (!response.IsSuccessStatusCode)
            {
                throw new CliException(await DescribeFailureAsync(response, cancellationToken));
            }

            if (answerType is null)
            {
                return default!;
            }

            try
            {
                return await response.Content.ReadFromJsonAsync(answerType, cancellationToken)
                    ?? throw new JsonException("empty answer");
            }
            catch (JsonException ex)
            {
                throw new CliException($"the server at {_display} is not an Ovis node, or a different version: unexpected answer to {method} /{path}", ExitCodes.Refused, ex);
            }
        }
    }

    // The node puts one line in {"error": ...}; anything else (a proxy's HTML page, an old
    // node) is described by its status instead of being dumped on the terminal.
    private static async Task<string> DescribeFailureAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        try
        {
            var body = await response.Content.ReadFromJsonAsync(AdminJsonContext.Default.ErrorBody, cancellationToken);
            if (!string.IsNullOrWhiteSpace(body?.Error))
            {
                return body.Error;
            }
        }
        catch (Exception ex) when (ex is JsonException or NotSupportedException)
        {
        }

        var status = (int)response.StatusCode;
        return response.StatusCode == HttpStatusCode.NotFound
            ? $"the node does not know {response.RequestMessage?.Method} {response.RequestMessage?.RequestUri?.AbsolutePath} (HTTP 404): is it an Ovis node?"
            : $"the node answered HTTP {status.ToString(CultureInfo.InvariantCulture)} {response.ReasonPhrase}";
    }
}
