using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Ovis.Node.Dashboard;

/// <summary>
/// The web dashboard at <c>/dashboard</c>: three static files compiled into the assembly (no
/// build step, nothing fetched from the internet) whose script polls the admin API's read-only
/// routes and <c>/metrics</c>, so it needs no token.
/// </summary>
internal static class DashboardEndpoints
{
    private static readonly (string Route, string Resource, string ContentType)[] Files =
    [
        ("/dashboard", "index.html", "text/html; charset=utf-8"),
        ("/dashboard/dashboard.js", "dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard/dashboard.css", "dashboard.css", "text/css; charset=utf-8"),
    ];

    public static void MapDashboard(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGet("/", () => TypedResults.Redirect("/dashboard"));
        foreach (var (route, resource, contentType) in Files)
        {
            // Read once: the files are a few KiB and never change while the node runs.
            var content = Read(resource);
            endpoints.MapGet(route, () => TypedResults.Bytes(content, contentType));
        }
    }

    private static byte[] Read(string resource)
    {
        using var stream = typeof(DashboardEndpoints).Assembly.GetManifestResourceStream("Ovis.Dashboard." + resource)
            ?? throw new InvalidOperationException($"the dashboard's {resource} is not embedded in {typeof(DashboardEndpoints).Assembly.GetName().Name}");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
