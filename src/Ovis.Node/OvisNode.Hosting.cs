using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Ovis.Nbd;
using Ovis.Node.Admin;
using Ovis.Node.Dashboard;
using Ovis.Node.Metrics;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using Ovis.Volumes;

namespace Ovis.Node;

public sealed partial class OvisNode
{
    // Admin bodies are tiny; NBD listeners do not speak HTTP, so this limit never reaches them.
    private const long MaxAdminRequestBytes = 1L << 20;

    private static WebApplication BuildApplication(NodeOptions options, NodeVolumes volumes, NodeStatus status, ClusterMembership membership,
        ClusterRuntime? cluster, RecoveryControl? recovery, AdminToken? token, Listeners listeners)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            // Our command line is not ASP.NET Core's, and an appsettings.json in whatever
            // directory the operator happens to be in must not reconfigure the node.
            Args = [],
            ApplicationName = typeof(OvisNode).Assembly.GetName().Name,
            ContentRootPath = AppContext.BaseDirectory,
        });

        ConfigureLogging(builder.Logging, builder.Services);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = options.ShutdownTimeout);
        builder.Services.AddSingleton<IHostLifetime, EmbeddedLifetime>();

        // Owned by OvisNode, which closes them after the host; resolved on first use, once open.
        builder.Services.AddSingleton(volumes);
        builder.Services.AddSingleton(_ => volumes.Get());
        builder.Services.AddSingleton(status);
        builder.Services.AddSingleton(membership);
        builder.Services.AddSingleton<JobRegistry>();
        var locks = membership.Catalog is { } catalog && cluster is not null
            ? new VolumeLocks(catalog, () => membership.Registration, cluster.FenceAsync, cluster.StartRecoveryAsync,
                volume => volumes.TryGet()?.LayersOf(volume) ?? [], layer => volumes.TryGet()?.VolumeOfLayer(layer), StoreLoggerFactory.CreateLogger("Ovis.Cluster"))
            { Cache = cluster.Cache }
            : null;
        var connections = new NbdConnectionLimit(options.MaxNbdConnections);
        builder.Services.AddSingleton(services => new NodeMetrics(volumes, recovery, connections, cluster?.Cache));
        builder.Services.AddSingleton<IExportProvider>(services => new VolumeExports(volumes, locks, services.GetRequiredService<NodeMetrics>()));
        builder.Services.AddOpenTelemetry().ConfigureResource(r => r.AddService("ovis", serviceVersion: NodeStatus.Version)).WithMetrics(metrics => metrics
            .AddMeter(NodeMetrics.MeterName)
            // Every scrape sees the counters as they are: a test (or an operator) that scrapes
            // right after fio finished must not get the answer cached from before.
            .AddPrometheusExporter(o => o.ScrapeResponseCacheDurationMilliseconds = 0));
        if (locks is not null)
        {
            builder.Services.AddSingleton(locks);
        }
        if (cluster is not null)
        {
            builder.Services.AddSingleton(cluster);
            builder.Services.AddSingleton<PeerRoundTrips>();
            builder.Services.AddHostedService(services => services.GetRequiredService<PeerRoundTrips>());
        }

        if (recovery is not null)
        {
            builder.Services.AddSingleton(recovery);
        }
        builder.Services.AddSingleton(new NbdServerOptions { HandshakeTimeout = options.NbdHandshakeTimeout });
        builder.Services.AddSingleton(connections);
        builder.Services.ConfigureHttpJsonOptions(o =>
        {
            o.SerializerOptions.TypeInfoResolverChain.Insert(0, AdminJsonContext.Default);
            o.SerializerOptions.Encoder = AdminJsonContext.Api.Options.Encoder;
        });

        // Sockets' NoDelay is already true by default; say so here because NBD depends on it:
        // a reply is often a 16-byte header alone, and Nagle would hold it for the next one.
        builder.WebHost.UseSockets(o =>
        {
            o.NoDelay = true;
            o.UnsafePreferInlineScheduling = true;
        });
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = MaxAdminRequestBytes;

            if (options.NbdAddress is { } nbd)
            {
                listeners.Nbd.Add((nbd, Listen(kestrel, nbd, l => l.UseConnectionHandler<NbdConnectionHandler>())));
            }

            if (options.NbdSocketPath is { } socketPath)
            {
                var path = Path.GetFullPath(socketPath);
                RemoveStaleSocket(path);
                kestrel.ListenUnixSocket(path, l => l.UseConnectionHandler<NbdConnectionHandler>());
                listeners.NbdSocketPath = path;
            }

            if (cluster is not null && options.Cluster is { } clusterOptions)
            {
                listeners.Peer.Add((clusterOptions.PeerAddress, Listen(kestrel, clusterOptions.PeerAddress, l => l.UseConnectionHandler<PeerConnectionHandler>())));
            }

            // HTTP/1.1 only: h2c without TLS buys a JSON API nothing, and Kestrel warns about it.
            listeners.Admin.Add((options.AdminAddress, Listen(kestrel, options.AdminAddress, l => l.Protocols = HttpProtocols.Http1)));
        });

        var app = builder.Build();
        app.UseMiddleware<AdminErrorMiddleware>();
        if (token is not null)
        {
            app.UseMiddleware<AdminTokenMiddleware>(token);
        }

        app.UseStatusCodePages(context => AdminErrorMiddleware.WriteErrorAsync(
            context.HttpContext,
            context.HttpContext.Response.StatusCode,
            DescribeStatus(context.HttpContext)));
        app.MapAdminApi();
        app.MapPrometheusScrapingEndpoint();
        app.MapDashboard();
        return app;
    }

    /// <summary>Logs for the store, which opens (and replays its journal) before the host exists;
    /// configured like the host's own logging.</summary>
    private static readonly ILoggerFactory StoreLoggerFactory = LoggerFactory.Create(b => ConfigureLogging(b, b.Services));

    private static void ConfigureLogging(ILoggingBuilder logging, IServiceCollection services)
    {
        // stdout carries only the "... listening on ..." lines that scripts and tests parse.
        logging.ClearProviders();
        logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
        });
        services.Configure<ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        logging.SetMinimumLevel(LogLevel.Warning);
        logging.AddFilter("Microsoft", LogLevel.Warning);
        logging.AddFilter("Ovis", LogLevel.Information);

        // The host logs a failed start with a full stack trace; StartAsync reports the same
        // failure as one line instead, and the node runs no background services to log about.
        logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.None);
    }

    private static ListenOptions Listen(KestrelServerOptions kestrel, ListenAddress address, Action<ListenOptions> configure)
    {
        ListenOptions? bound = null;
        if (address.IsLocalhost && address.Port != 0)
        {
            // Both loopbacks, like Kestrel's own "localhost"; it cannot pick a free port for
            // two sockets at once, so localhost:0 falls through to IPv4 loopback below.
            kestrel.ListenLocalhost(address.Port, l => { bound = l; configure(l); });
        }
        else
        {
            kestrel.Listen(address.Address ?? IPAddress.Loopback, address.Port, l => { bound = l; configure(l); });
        }

        return bound!;
    }

    // A node killed with SIGKILL leaves its socket file behind, and bind() would then fail with
    // "address in use" although nobody listens. Remove the file only when a connect to it is
    // refused, so a socket that another live node serves is never taken away from it.
    private static void RemoveStaleSocket(string path)
    {
        if (!File.Exists(path))
        {
            return;
        }

        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionRefused)
        {
            File.Delete(path);
        }
        catch (SocketException)
        {
            // Not a socket, or not ours to judge: let bind() report it.
        }
    }

    // Kestrel names every endpoint http://..., NBD ones too: "Failed to bind to address
    // http://127.0.0.1:10809: address already in use." Say which listener it was instead.
    private static string DescribeBindFailure(IOException ex, Listeners listeners)
    {
        var reason = (ex.InnerException ?? ex).Message.TrimEnd('.');
        if (reason.Length > 1 && char.IsUpper(reason[0]) && char.IsLower(reason[1]))
        {
            reason = char.ToLowerInvariant(reason[0]) + reason[1..];
        }

        if (ex.InnerException is AddressInUseException)
        {
            reason += " (is another node running?)";
        }

        foreach (var (what, list) in (ReadOnlySpan<(string, List<(ListenAddress Requested, ListenOptions Options)>)>)[("NBD", listeners.Nbd), ("the admin API", listeners.Admin), ("peers", listeners.Peer)])
        {
            foreach (var (address, _) in list)
            {
                if (ex.Message.Contains($"://{address}:", StringComparison.Ordinal))
                {
                    return $"cannot listen for {what} on {address}: {reason}";
                }
            }
        }

        if (listeners.NbdSocketPath is { } path && ex.Message.Contains(path, StringComparison.Ordinal))
        {
            return $"cannot listen for NBD on unix:{path}: {reason}";
        }

        return $"cannot listen: {ex.Message.TrimEnd('.')}";
    }

    private static string DescribeStatus(HttpContext context) => context.Response.StatusCode switch
    {
        StatusCodes.Status404NotFound => $"no such endpoint: {context.Request.Method} {context.Request.Path} (see docs/admin-api.md)",
        StatusCodes.Status405MethodNotAllowed => $"method {context.Request.Method} is not allowed on {context.Request.Path}",
        var code => $"request failed with status {code.ToString(CultureInfo.InvariantCulture)}",
    };

    // Kestrel writes the real port back into each ListenOptions when it binds port 0.
    private void Publish(Listeners listeners)
    {
        var nbd = new List<string>();
        foreach (var (address, options) in listeners.Nbd)
        {
            var endPoint = (IPEndPoint)options.EndPoint;
            NbdEndPoint ??= endPoint;
            nbd.Add(Describe(address, endPoint));
        }

        if (listeners.NbdSocketPath is { } path)
        {
            nbd.Add($"unix:{path}");
        }

        var admin = new List<string>();
        foreach (var (address, options) in listeners.Admin)
        {
            var uri = $"http://{Describe(address, (IPEndPoint)options.EndPoint)}";
            admin.Add(uri);
        }

        AdminUri = new Uri(admin[0]);
        foreach (var (_, options) in listeners.Peer)
        {
            // Peers connect to it: the address as bound, never "localhost".
            Status.PeerListener ??= ((IPEndPoint)options.EndPoint).ToString();
        }

        Status.NbdListeners = nbd;
        Status.AdminListeners = admin;
    }

    private static string Describe(ListenAddress requested, IPEndPoint bound)
        => requested.IsLocalhost && requested.Port != 0
            ? $"localhost:{bound.Port.ToString(CultureInfo.InvariantCulture)}"
            : bound.ToString();

    /// <summary>The listen options of one node, kept to read the bound ports after start.</summary>
    private sealed class Listeners
    {
        public List<(ListenAddress Requested, ListenOptions Options)> Nbd { get; } = [];

        public List<(ListenAddress Requested, ListenOptions Options)> Admin { get; } = [];

        public List<(ListenAddress Requested, ListenOptions Options)> Peer { get; } = [];

        public string? NbdSocketPath { get; set; }
    }
}
