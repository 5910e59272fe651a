using System.Buffers;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Ovis.Cluster.Fencing;
using Ovis.Store;

namespace Ovis.Cluster.Peer;

/// <summary>
/// The server side of one peer connection.
/// </summary>
/// <remarks>
/// Runs on <see cref="ConnectionLoops{TOperation}"/>, the skeleton it shares with the NBD front:
/// the read loop parses and checks requests and starts their store calls without waiting for them;
/// replies go out in completion order, written by the thread that finished them when nobody else is
/// writing; requests and payload bytes in flight are bounded, and when the budget is spent the read
/// loop stops reading, which pushes back on the sender through TCP. This class holds the peer
/// protocol's half: parsing, validation, fencing, the operations and the reply encoding.
/// </remarks>
internal sealed partial class PeerServerConnection
{
    private readonly PeerServer _server;
    private readonly IObjectStore _store;
    private readonly IEpochSource _epochs;
    private readonly FenceTable _fences;
    private readonly IDuplexPipe _transport;
    private readonly ILogger _logger;
    private readonly long _connectionId;
    private readonly long _maxObjectSize;
    private readonly uint _maxObjectIndex;
    private readonly int _blockSize;

    // The store again when it keeps block checksums (BLOCKSUMS); null otherwise.
    private readonly LocalStore? _sums;
    private CancellationToken _stopping;

    // Payload and read buffers. One pool per connection, sized to its in-flight limit: the shared
    // pool keeps only a few arrays per size and core, so hundreds of 4 KiB requests in flight would
    // turn into a new array each. This pool never holds more than the connection once had in flight.
    private readonly ArrayPool<byte> _bufferPool;
    private readonly ConnectionLoops<PeerOperation> _loops;

    public PeerServerConnection(PeerServer server, IDuplexPipe transport, long connectionId)
    {
        _server = server;
        _store = server.Store;
        _sums = server.Store as LocalStore;
        _epochs = server.Epochs;
        _fences = server.Fences;
        _transport = transport;
        _logger = server.Logger;
        _connectionId = connectionId;
        _maxObjectSize = server.Store.MaxObjectSize;
        _maxObjectIndex = server.Store.MaxObjectIndex;
        _blockSize = server.Store.BlockSize;
        _bufferPool = ArrayPool<byte>.Create(PeerProtocol.MaxPayloadLength, server.Options.MaxInFlightRequests);
        _loops = new ConnectionLoops<PeerOperation>(transport, this, server.Options.MaxInFlightRequests, server.Options.MaxInFlightBytes);
    }

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        _stopping = cancellationToken;
        PeerLog.ConnectionOpened(_logger, _connectionId);
        try
        {
            await TransmitAsync(cancellationToken);
        }
        catch (Exception ex) when (IsTransportFailure(ex))
        {
            PeerLog.TransportClosed(_logger, _connectionId, ex);
        }
        finally
        {
            await TeardownAsync();
            PeerLog.ConnectionClosed(_logger, _connectionId);
        }
    }

    private static bool IsTransportFailure(Exception ex) => ConnectionLoops<PeerOperation>.IsTransportFailure(ex);

    // Whatever ends the read loop, requests already started run to completion (their replies still
    // go out if the peer is listening) and every buffer goes back once (ConnectionLoops.RunAsync).
    private Task TransmitAsync(CancellationToken cancellationToken) => _loops.RunAsync(cancellationToken);

    /// <summary>The one teardown path: runs after both loops have ended and nothing is in flight.</summary>
    private async ValueTask TeardownAsync()
    {
        try
        {
            await _transport.Output.CompleteAsync();
            await _transport.Input.CompleteAsync();
        }
        catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
        {
            PeerLog.TransportClosed(_logger, _connectionId, ex);
        }
    }
}
