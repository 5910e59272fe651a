using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Fencing;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

/// <summary>
/// Serves the peer protocol (see PeerProtocol.cs) against one node's store. One instance serves
/// every connection: the host (a Kestrel connection handler, or <see cref="PeerListener"/>) calls
/// <see cref="RunAsync"/> once per accepted connection.
/// </summary>
public sealed class PeerServer
{
    private static long _lastConnectionId;

    private readonly ConnectionLimit<ILogger> _connections;

    // FILL_HOLES with ZEROES carries no payload, but the store takes the range as a buffer whose
    // content it ignores. One shared read-only buffer serves every such request.
    private static readonly Lazy<byte[]> ZeroPayload = new(() => new byte[PeerProtocol.MaxPayloadLength]);

    /// <param name="store">The store requests are applied to; not disposed by the server.</param>
    /// <param name="epochs">The node's epoch, checked against every object operation.</param>
    /// <param name="fences">The node's fences, checked against every change (shared with its own gateway's local copy).</param>
    /// <param name="options">In-flight limits per connection.</param>
    /// <param name="logger">Receives connection open/close, protocol errors and store faults.</param>
    public PeerServer(IObjectStore store, IEpochSource epochs, FenceTable fences, PeerServerOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(epochs);
        ArgumentNullException.ThrowIfNull(fences);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxInFlightRequests, 1, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxInFlightBytes, 1, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxConnections, 1, nameof(options));
        int max = options.MaxConnections;
        _connections = new ConnectionLimit<ILogger>(max, (log, count) => PeerLog.ConnectionsRefused(log, count, max));
        Store = store;
        Epochs = epochs;
        Fences = fences;
        Options = options;
        Logger = logger;
    }

    internal IObjectStore Store { get; }

    internal IEpochSource Epochs { get; }

    internal FenceTable Fences { get; }

    internal PeerServerOptions Options { get; }

    internal ILogger Logger { get; }

    /// <summary>
    /// Serves one connection until the peer disconnects, breaks the framing, or
    /// <paramref name="cancellationToken"/> asks it to stop. Requests already started finish and
    /// their replies are written first; then the transport is completed. A misbehaving peer never
    /// surfaces as an exception. Beyond <see cref="PeerServerOptions.MaxConnections"/> open at
    /// once, the transport is completed at once and nothing is read or written.
    /// </summary>
    public Task RunAsync(IDuplexPipe transport, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(transport);
        if (!_connections.TryEnter(Logger))
        {
            return RefuseAsync(transport);
        }

        var connection = new PeerServerConnection(this, transport, Interlocked.Increment(ref _lastConnectionId));
        return RunAdmittedAsync(connection, cancellationToken);
    }

    /// <summary>Connections being served now.</summary>
    internal int OpenConnections => _connections.Open;

    private async Task RunAdmittedAsync(PeerServerConnection connection, CancellationToken cancellationToken)
    {
        try
        {
            await connection.RunAsync(cancellationToken);
        }
        finally
        {
            _connections.Exit();
        }
    }

    private static async Task RefuseAsync(IDuplexPipe transport)
    {
        await transport.Output.CompleteAsync();
        await transport.Input.CompleteAsync();
    }

    /// <summary>STATS: a cold path (ListObjects builds a list).</summary>
    internal PeerStats CollectStats()
    {
        // Only the local store has a journal; a gateway-like store reports no syncs.
        long syncs = Store is LocalStore local ? local.JournalSyncCount : 0;
        return new PeerStats(Store.UsedBytes, Store.ListObjects().Count, syncs) { Space = (Store as LocalStore)?.Space };
    }

    internal static ReadOnlyMemory<byte> Zeroes(int length) => ZeroPayload.Value.AsMemory(0, length);
}
