using System.CommandLine;
using System.Runtime.InteropServices;
using Ovis.Node;

namespace Ovis.Cli;

/// <summary>
/// <c>ovis serve</c>: runs one node in the foreground until SIGINT or SIGTERM. Once every
/// listener is bound it prints one line per listener on stdout, with the real port, which
/// scripts and tests wait for:
/// <code>
/// nbd listening on 127.0.0.1:10809
/// nbd listening on unix:/run/ovis/nbd.sock
/// admin listening on http://127.0.0.1:7070
/// </code>
/// </summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var data = new Option<string>("--data")
        {
            Description = "Data directory, created if missing",
            HelpName = "DIR",
            DefaultValueFactory = _ => "./ovis-data",
        };
        var nbd = new Option<string>("--nbd")
        {
            Description = "NBD TCP address (port 0 picks a free port)",
            HelpName = "HOST:PORT",
            DefaultValueFactory = _ => $"127.0.0.1:{NodeOptions.DefaultNbdPort}",
        };
        var nbdSocket = new Option<string?>("--nbd-socket")
        {
            Description = "Also serve NBD on this Unix socket",
            HelpName = "PATH",
        };
        var admin = new Option<string>("--admin")
        {
            Description = "Admin HTTP API address (port 0 picks a free port)",
            HelpName = "HOST:PORT",
            DefaultValueFactory = _ => $"127.0.0.1:{NodeOptions.DefaultAdminPort}",
        };
        var tokenFile = new Option<string?>("--token-file")
        {
            Description = "Admin token for state-changing requests, in this file (give every node of a cluster the same) [default: the cluster's, kept in etcd; alone, DIR/admin-token, created with mode 0600]",
            HelpName = "PATH",
        };
        var noToken = new Option<bool>("--no-token")
        {
            Description = "Serve the admin API without a token: anyone who reaches it may change state (refused off loopback without --insecure)",
        };
        var insecure = new Option<bool>("--insecure")
        {
            Description = "Allow --no-token on an admin address other than loopback",
        };

        var handshakeTimeout = new Option<int>("--handshake-timeout")
        {
            Description = "Seconds an NBD client may take to finish the handshake before it is disconnected (0: no limit)",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 10,
        };
        var maxConnections = new Option<int>("--max-connections")
        {
            Description = "NBD connections served at once; more are closed as they arrive",
            HelpName = "N",
            DefaultValueFactory = _ => NodeOptions.DefaultMaxConnections,
        };

        var journalSize = new Option<string>("--journal-size")
        {
            Description = "Size of the store's journal, fixed when the data directory is created",
            HelpName = "SIZE",
            DefaultValueFactory = _ => "256M",
        };

        var nearFullRatio = new Option<double>("--nearfull-ratio")
        {
            Description = "Share of the data directory's file system in use from which the node reports 'nearfull'",
            HelpName = "RATIO",
            DefaultValueFactory = _ => 0.85,
        };
        var fullRatio = new Option<double>("--full-ratio")
        {
            Description = "Share of the file system in use from which the node reports 'full' and writes that need new space get ENOSPC",
            HelpName = "RATIO",
            DefaultValueFactory = _ => 0.95,
        };

        var cacheDir = new Option<string?>("--cache-dir")
        {
            Description = "Directory of the gateway writeback cache's log, for volumes set to cache=writeback (docs/writeback-cache.md) [default: cache in the --data directory]",
            HelpName = "DIR",
        };
        var cacheSize = new Option<string>("--cache-size")
        {
            Description = "Acknowledged writes the writeback cache may hold before they are on the replicas (at least 16M)",
            HelpName = "SIZE",
            DefaultValueFactory = _ => "256M",
        };

        var noWriteAround = new Option<bool>("--no-write-around")
        {
            Description = "Cache every write of a writeback volume, even while the replicas answer faster than the cache log syncs (by default those go around the cache)",
        };

        var cluster = new Option<string?>("--cluster")
        {
            Description = "Join this cluster, formatted with 'ovis cluster format': objects are replicated over its nodes and volumes registered in its etcd",
            HelpName = "etcd://HOST:PORT[,HOST:PORT...]/NAME",
        };
        var zone = new Option<string?>("--zone")
        {
            Description = "Failure zone of this node (required with --cluster)",
            HelpName = "ZONE",
        };
        var nodeId = new Option<string?>("--node-id")
        {
            Description = "Id of this node in the cluster [default: one created once and kept in the data directory]",
            HelpName = "ID",
        };
        var leaseTtl = new Option<int>("--lease-ttl")
        {
            Description = "Seconds a node stays listed after it dies (its membership lease)",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 10,
        };
        var downOutInterval = new Option<int>("--down-out-interval")
        {
            Description = "Seconds a node may stay down before it is taken out of the cluster and its objects placed on the others (0: never)",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 600,
        };

        var peer = new Option<string>("--peer")
        {
            Description = "Address other nodes send object copies to, with --cluster (port 0 picks a free port)",
            HelpName = "HOST:PORT",
            DefaultValueFactory = _ => $"127.0.0.1:{NodeOptions.DefaultPeerPort}",
        };
        var advertisePeer = new Option<string?>("--advertise-peer")
        {
            Description = "Address other nodes dial for the peer protocol when it is not the --peer one (NAT, a proxy) [default: --peer as bound]",
            HelpName = "HOST:PORT",
        };

        var dirtyLog = new Option<string>("--dirty-log")
        {
            Description = "Log objects before their first write, so only those are resynced after a crash or a node's absence (on|off; off only to measure it)",
            HelpName = "on|off",
            DefaultValueFactory = _ => "on",
        };
        var recoveryBandwidth = new Option<string>("--recovery-bandwidth")
        {
            Description = "Bytes per second background recovery may copy, e.g. 64M; 0 for no limit",
            HelpName = "SIZE",
            DefaultValueFactory = _ => "64M",
        };
        var scrubInterval = new Option<double>("--scrub-interval")
        {
            Description = "Seconds between two objects checked by the background scrub; 0 turns it off",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 1,
        };

        var command = new Command("serve", "Run a node: serve its volumes over NBD and the admin HTTP API")
        {
            data, nbd, nbdSocket, admin, tokenFile, noToken, insecure, handshakeTimeout, maxConnections, journalSize, nearFullRatio, fullRatio, cacheDir, cacheSize, noWriteAround, cluster, zone, nodeId, leaseTtl, downOutInterval, peer, advertisePeer, dirtyLog, recoveryBandwidth, scrubInterval,
        };
        command.SetAction((parseResult, _) => RunAsync(new NodeOptions
        {
            DataDirectory = parseResult.GetRequiredValue(data),
            NbdAddress = ParseAddress("--nbd", parseResult.GetRequiredValue(nbd)),
            NbdSocketPath = parseResult.GetValue(nbdSocket) is { Length: > 0 } path ? path : null,
            AdminAddress = ParseAddress("--admin", parseResult.GetRequiredValue(admin)),
            TokenFile = ParseTokenOptions(parseResult.GetValue(tokenFile), parseResult.GetValue(noToken)),
            RequireToken = !parseResult.GetValue(noToken),
            Insecure = parseResult.GetValue(insecure),
            NbdHandshakeTimeout = ParseHandshakeTimeout(parseResult.GetValue(handshakeTimeout)),
            MaxNbdConnections = ParseMaxConnections(parseResult.GetValue(maxConnections)),
            JournalSize = ParseJournalSize(parseResult.GetRequiredValue(journalSize)),
            NearFullRatio = ParseRatios(parseResult.GetValue(nearFullRatio), parseResult.GetValue(fullRatio)).NearFull,
            FullRatio = parseResult.GetValue(fullRatio),
            CacheDirectory = ParseCacheDirectory(parseResult.GetValue(cacheDir)),
            CacheSize = ParseCacheSize(parseResult.GetRequiredValue(cacheSize)),
            CacheWriteAround = !parseResult.GetValue(noWriteAround),
            Cluster = WithRecovery(
                ParseCluster(parseResult.GetValue(cluster), parseResult.GetValue(zone), parseResult.GetValue(nodeId), parseResult.GetValue(leaseTtl),
                    parseResult.GetValue(downOutInterval), ParseAddress("--peer", parseResult.GetRequiredValue(peer)), parseResult.GetValue(advertisePeer)),
                ParseRecovery(parseResult.GetRequiredValue(dirtyLog), parseResult.GetRequiredValue(recoveryBandwidth), parseResult.GetValue(scrubInterval))),
        }));
        return command;
    }

    // .NET's socket engine reads this once, when the process first uses a socket: before the node starts.
    private const string InlineSocketCompletions = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    private static async Task<int> RunAsync(NodeOptions options)
    {
        // Socket completions run on the epoll thread instead of being posted to the thread pool.
        // With Kestrel's inline scheduling, a READ then goes from the socket to the page cache and
        // back on one thread, as nbdkit's does: the hop it saves was a third of randread's CPU
        // (docs/benchmarks.md). The price: a connection whose request blocks (a read from a cold
        // disk) holds up the other sockets of its epoll thread (one per core) meanwhile.
        // DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=0 in the environment keeps the thread pool.
        if (Environment.GetEnvironmentVariable(InlineSocketCompletions) is null)
        {
            Environment.SetEnvironmentVariable(InlineSocketCompletions, "1");
        }

        using var stop = new CancellationTokenSource();

        // The first SIGINT or SIGTERM stops the node cleanly (connections closed, volumes
        // flushed); a second one gets the default action, for when a stop hangs.
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = !stop.IsCancellationRequested;
            stop.Cancel();
        }

        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);

        OvisNode node;
        try
        {
            node = await OvisNode.StartAsync(options, stop.Token);
        }
        catch (NodeStartException ex)
        {
            throw new CliException(ex.Message, ExitCodes.Refused, ex);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            return ExitCodes.Success; // stopped while still recovering the store
        }

        await using (node)
        {
            foreach (var listener in node.Status.NbdListeners)
            {
                Console.Out.WriteLine($"nbd listening on {listener}");
            }

            foreach (var listener in node.Status.AdminListeners)
            {
                Console.Out.WriteLine($"admin listening on {listener}");
            }

            Console.Out.Flush();

            using var running = CancellationTokenSource.CreateLinkedTokenSource(stop.Token, node.Stopping);
            try
            {
                await Task.Delay(Timeout.Infinite, running.Token);
            }
            catch (OperationCanceledException)
            {
            }

            await node.StopAsync();
        }

        return ExitCodes.Success;
    }

    private static ClusterMembershipOptions? ParseCluster(string? uri, string? zone, string? nodeId, int leaseTtl, int downOutInterval, ListenAddress peer, string? advertisePeer)
    {
        if (uri is null)
        {
            return zone is null && nodeId is null && advertisePeer is null
                ? null
                : throw CliException.Usage("--zone, --node-id and --advertise-peer need --cluster");
        }

        if (advertisePeer is not null && !Ovis.Cluster.Peer.PeerAddress.TryParse(advertisePeer, out _, out var peerError))
        {
            throw CliException.Usage($"--advertise-peer: {peerError}");
        }

        if (!Ovis.Cluster.Catalog.ClusterUri.TryParse(uri, out var parsed, out var error))
        {
            throw CliException.Usage($"--cluster: {error}");
        }

        if (string.IsNullOrWhiteSpace(zone))
        {
            throw CliException.Usage("--cluster needs --zone ZONE (the node's failure zone)");
        }

        if (leaseTtl is < 2 or > 3600)
        {
            throw CliException.Usage($"--lease-ttl: {leaseTtl} is out of range: use 2 to 3600 seconds");
        }

        if (downOutInterval < 0)
        {
            throw CliException.Usage($"--down-out-interval: {downOutInterval} is out of range: use 0 (never) or more seconds");
        }

        return new ClusterMembershipOptions
        {
            Uri = parsed!,
            Zone = zone,
            NodeId = nodeId,
            LeaseTtlSeconds = leaseTtl,
            DownOutInterval = TimeSpan.FromSeconds(downOutInterval),
            PeerAddress = peer,
            AdvertisedPeer = advertisePeer?.Trim(),
        };
    }

    private static string? ParseTokenOptions(string? tokenFile, bool noToken) => (tokenFile, noToken) switch
    {
        ({ Length: > 0 }, true) => throw CliException.Usage("--token-file and --no-token contradict each other: give one"),
        ({ Length: > 0 } path, _) => path,
        _ => null,
    };

    private static TimeSpan ParseHandshakeTimeout(int seconds) => seconds switch
    {
        0 => Timeout.InfiniteTimeSpan,
        >= 1 and <= 3600 => TimeSpan.FromSeconds(seconds),
        _ => throw CliException.Usage($"--handshake-timeout: {seconds} is out of range: use 1 to 3600 seconds, or 0 for no limit"),
    };

    private static int ParseMaxConnections(int count) => count is >= 1 and <= 1_000_000
        ? count
        : throw CliException.Usage($"--max-connections: {count} is out of range: use 1 to 1000000");

    private static ClusterMembershipOptions? WithRecovery(ClusterMembershipOptions? cluster, RecoveryOptions recovery)
    {
        if (cluster is not null)
        {
            cluster.Recovery = recovery;
        }
        return cluster;
    }

    private static RecoveryOptions ParseRecovery(string dirtyLog, string bandwidth, double scrubSeconds)
    {
        bool log = dirtyLog switch
        {
            "on" => true,
            "off" => false,
            _ => throw CliException.Usage($"--dirty-log: '{dirtyLog}' is neither on nor off"),
        };
        if (!Sizes.TryParse(bandwidth, out long bytes, out string? error))
        {
            throw CliException.Usage($"--recovery-bandwidth: {error}");
        }
        if (!double.IsFinite(scrubSeconds) || scrubSeconds < 0 || scrubSeconds > 86400)
        {
            throw CliException.Usage($"--scrub-interval: {scrubSeconds} is out of range: use 0 (off) to 86400 seconds");
        }
        return new RecoveryOptions { DirtyLog = log, BandwidthBytesPerSecond = bytes, ScrubInterval = TimeSpan.FromSeconds(scrubSeconds) };
    }

    private static (double NearFull, double Full) ParseRatios(double nearFull, double full)
    {
        if (!double.IsFinite(full) || full <= 0 || full > 1)
        {
            throw CliException.Usage($"--full-ratio: {full} is out of range: use more than 0, at most 1");
        }
        if (!double.IsFinite(nearFull) || nearFull <= 0 || nearFull > full)
        {
            throw CliException.Usage($"--nearfull-ratio: {nearFull} is out of range: use more than 0, at most the full ratio ({full})");
        }
        return (nearFull, full);
    }

    private static long ParseJournalSize(string text)
    {
        if (!Sizes.TryParse(text, out long bytes, out string? error))
        {
            throw CliException.Usage($"--journal-size: {error}");
        }
        if (bytes < 16L << 20 || bytes % 4096 != 0)
        {
            throw CliException.Usage($"--journal-size: {text} is too small or not a multiple of 4 KiB: use at least 16M");
        }
        return bytes;
    }

    // Null keeps NodeOptions' default, which follows --data.
    private static string? ParseCacheDirectory(string? text) => text is not null && string.IsNullOrWhiteSpace(text)
        ? throw CliException.Usage("--cache-dir: the directory is empty: give one, or leave the option out for DIR/cache in the data directory")
        : text;

    private static long ParseCacheSize(string text)
    {
        if (!Sizes.TryParse(text, out long bytes, out string? error))
        {
            throw CliException.Usage($"--cache-size: {error}");
        }
        if (bytes < NodeOptions.MinCacheSize)
        {
            throw CliException.Usage($"--cache-size: {text} is too small: use at least 16M");
        }
        return bytes;
    }

    private static ListenAddress ParseAddress(string option, string text)
        => ListenAddress.TryParse(text, out var address, out var error)
            ? address!
            : throw CliException.Usage($"{option}: {error}");
}
