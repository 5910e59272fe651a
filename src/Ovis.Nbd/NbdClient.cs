using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace Ovis.Nbd;

/// <summary>
/// A small NBD client, for a backup's target or a restore's source (another Ovis, qemu-nbd,
/// nbdkit): fixed newstyle, NBD_OPT_GO, simple replies only, one request at a time (a backup
/// copies MiB-sized chunks, so a request's round trip is small beside its data). Not thread-safe.
/// URIs: <c>nbd://HOST[:PORT]/EXPORT</c> and <c>nbd+unix:///EXPORT?socket=PATH</c>.
/// </summary>
public sealed class NbdClient : IAsyncDisposable
{
    private const ushort RepAck = 1;
    private const uint RepInfo = 3;
    private const ushort InfoExport = 0;
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly byte[] _header = new byte[32];
    private ulong _cookie;

    private NbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public long Size { get; private set; }

    public bool IsReadOnly => (_flags & (ushort)NbdTransmissionFlags.ReadOnly) != 0;

    public bool CanWriteZeroes => (_flags & (ushort)NbdTransmissionFlags.SendWriteZeroes) != 0;

    private ushort _flags;
    private bool _gaveUp;

    /// <summary>How long one request may wait for its reply; past it the request fails with an
    /// <see cref="IOException"/> and so does every later one (the stream is out of step).
    /// Infinite by default.</summary>
    public TimeSpan RequestTimeout { get; set; } = Timeout.InfiniteTimeSpan;

    /// <summary>True for a URI this client can open.</summary>
    public static bool IsNbdUri(string text) => text.StartsWith("nbd://", StringComparison.Ordinal) || text.StartsWith("nbd+unix://", StringComparison.Ordinal);

    public static async Task<NbdClient> ConnectAsync(string uri, CancellationToken cancellationToken)
    {
        var u = new Uri(uri);
        string export = Uri.UnescapeDataString(u.AbsolutePath.TrimStart('/'));
        Socket socket;
        if (u.Scheme == "nbd+unix")
        {
            string? path = u.Query.TrimStart('?').Split('&').Select(p => p.Split('=', 2)).Where(p => p[0] == "socket" && p.Length == 2).Select(p => Uri.UnescapeDataString(p[1])).FirstOrDefault()
                ?? throw new ArgumentException($"'{uri}' names no socket (nbd+unix:///EXPORT?socket=PATH)");
            socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken).ConfigureAwait(false);
        }
        else if (u.Scheme == "nbd")
        {
            socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await socket.ConnectAsync(u.Host, u.Port > 0 ? u.Port : 10809, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            throw new ArgumentException($"'{uri}' is not an NBD URI (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)");
        }
        var client = new NbdClient(socket);
        try
        {
            await client.HandshakeAsync(export, cancellationToken).ConfigureAwait(false);
            return client;
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private async Task HandshakeAsync(string export, CancellationToken ct)
    {
        byte[] greeting = new byte[18];
        await _stream.ReadExactlyAsync(greeting, ct).ConfigureAwait(false);
        if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != NbdMagic.Init || BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)) != NbdMagic.Option)
        {
            throw new IOException("the peer is not an NBD server with the newstyle handshake");
        }
        ushort serverFlags = BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
        if ((serverFlags & (ushort)NbdHandshakeFlags.FixedNewstyle) == 0)
        {
            throw new IOException("the NBD server does not speak fixed newstyle");
        }
        byte[] clientFlags = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(clientFlags, (uint)(NbdClientFlags.FixedNewstyle | (NbdClientFlags)(serverFlags & (ushort)NbdHandshakeFlags.NoZeroes)));
        await _stream.WriteAsync(clientFlags, ct).ConfigureAwait(false);

        // NBD_OPT_GO: name length, name, no information requests.
        byte[] name = Encoding.UTF8.GetBytes(export);
        byte[] option = new byte[16 + 4 + name.Length + 2];
        BinaryPrimitives.WriteUInt64BigEndian(option, NbdMagic.Option);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), (uint)NbdOption.Go);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)(4 + name.Length + 2));
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(16), (uint)name.Length);
        name.CopyTo(option, 20);
        await _stream.WriteAsync(option, ct).ConfigureAwait(false);

        byte[] reply = new byte[20];
        while (true)
        {
            await _stream.ReadExactlyAsync(reply, ct).ConfigureAwait(false);
            uint type = BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(12));
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(16));
            byte[] data = new byte[length];
            await _stream.ReadExactlyAsync(data, ct).ConfigureAwait(false);
            if (type == RepAck)
            {
                return;
            }
            if (type == RepInfo && length >= 12 && BinaryPrimitives.ReadUInt16BigEndian(data) == InfoExport)
            {
                Size = (long)BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2));
                _flags = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
            }
            else if ((type & 0x8000_0000) != 0)
            {
                string message = Encoding.UTF8.GetString(data);
                throw new IOException($"the NBD server refused export '{export}'{(message.Length > 0 ? ": " + message : "")}");
            }
        }
    }

    public Task ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct) => RequestAsync(NbdCommand.Read, 0, offset, buffer.Length, ReadOnlyMemory<byte>.Empty, buffer, ct);

    public Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct) => RequestAsync(NbdCommand.Write, 0, offset, data.Length, data, Memory<byte>.Empty, ct);

    public Task WriteZeroesAsync(long offset, int length, CancellationToken ct) => RequestAsync(NbdCommand.WriteZeroes, 0, offset, length, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, ct);

    public Task FlushAsync(CancellationToken ct) => RequestAsync(NbdCommand.Flush, 0, 0, 0, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, ct);

    /* Request: magic (32), flags (16), type (16), cookie (64), offset (64), length (32).
       Simple reply: magic (32), error (32), cookie (64), then data for a READ. */
    private async Task RequestAsync(NbdCommand command, ushort flags, long offset, int length, ReadOnlyMemory<byte> payload, Memory<byte> into, CancellationToken ct)
    {
        if (_gaveUp)
        {
            throw new IOException("the NBD server stopped answering earlier; this connection is given up");
        }
        if (RequestTimeout == Timeout.InfiniteTimeSpan)
        {
            await ExchangeAsync(command, flags, offset, length, payload, into, ct).ConfigureAwait(false);
            return;
        }
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(RequestTimeout);
        try
        {
            await ExchangeAsync(command, flags, offset, length, payload, into, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            // A server that hangs (stopped, its disk stuck, a cut link with no reset) must not
            // hold the caller forever: it gets an error it can act on (a backup stops resumable).
            _gaveUp = true;
            throw new IOException($"the NBD server did not answer {command} at {offset} (+{length}) within {(long)RequestTimeout.TotalSeconds} s");
        }
    }

    private async Task ExchangeAsync(NbdCommand command, ushort flags, long offset, int length, ReadOnlyMemory<byte> payload, Memory<byte> into, CancellationToken ct)
    {
        ulong cookie = ++_cookie;
        BinaryPrimitives.WriteUInt32BigEndian(_header, NbdMagic.Request);
        BinaryPrimitives.WriteUInt16BigEndian(_header.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(_header.AsSpan(6), (ushort)command);
        BinaryPrimitives.WriteUInt64BigEndian(_header.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(_header.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(24), (uint)length);
        await _stream.WriteAsync(_header.AsMemory(0, 28), ct).ConfigureAwait(false);
        if (!payload.IsEmpty)
        {
            await _stream.WriteAsync(payload, ct).ConfigureAwait(false);
        }
        await _stream.ReadExactlyAsync(_header.AsMemory(0, 16), ct).ConfigureAwait(false);
        if (BinaryPrimitives.ReadUInt32BigEndian(_header) != NbdMagic.SimpleReply || BinaryPrimitives.ReadUInt64BigEndian(_header.AsSpan(8)) != cookie)
        {
            throw new IOException("the NBD server sent a reply this client did not expect");
        }
        uint error = BinaryPrimitives.ReadUInt32BigEndian(_header.AsSpan(4));
        if (error != 0)
        {
            throw new IOException($"the NBD server failed {command} at {offset} (+{length}): error {error}");
        }
        if (command == NbdCommand.Read)
        {
            await _stream.ReadExactlyAsync(into, ct).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            // NBD_CMD_DISC: no reply; the server closes after what is in flight.
            BinaryPrimitives.WriteUInt32BigEndian(_header, NbdMagic.Request);
            BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(4), (uint)NbdCommand.Disconnect);
            _header.AsSpan(8, 20).Clear();
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await _stream.WriteAsync(_header.AsMemory(0, 28), cts.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The peer is gone already.
        }
        await _stream.DisposeAsync().ConfigureAwait(false);
        _socket.Dispose();
    }
}
