using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Ovis.Interop.Tests.Infrastructure;

/// <summary>
/// A deliberately small NBD client over a raw socket: fixed newstyle handshake, NBD_OPT_GO with
/// NBD_INFO_BLOCK_SIZE, NBD_OPT_LIST, and simple replies only (it never negotiates structured
/// replies). Besides well-formed requests it can send arbitrary bytes, which is what the
/// bad-input tests need. Every receive has a timeout; nothing here blocks forever.
/// Byte layouts follow doc/proto.md of NetworkBlockDevice/nbd; all fields are big-endian.
/// </summary>
public sealed class RawNbdClient : IAsyncDisposable
{
    public const ulong NbdMagic = 0x4e42444d41474943;        // "NBDMAGIC"
    public const ulong IHaveOpt = 0x49484156454F5054;        // "IHAVEOPT"
    public const ulong OptionReplyMagic = 0x0003e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    public const ushort FlagFixedNewstyle = 1;
    public const ushort FlagNoZeroes = 2;

    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptGo = 7;

    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepErrUnknown = 0x80000006;

    public const ushort InfoExport = 0;
    public const ushort InfoBlockSize = 3;

    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisc = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;
    public const ushort CmdWriteZeroes = 6;

    public const ushort CmdFlagFua = 1;

    public const ushort TransHasFlags = 1 << 0;
    public const ushort TransSendFlush = 1 << 2;
    public const ushort TransSendFua = 1 << 3;
    public const ushort TransSendTrim = 1 << 5;
    public const ushort TransSendWriteZeroes = 1 << 6;
    public const ushort TransCanMultiConn = 1 << 8;

    public const uint EPERM = 1;
    public const uint EINVAL = 22;
    public const uint ENOMEM = 12;
    public const uint ENOSPC = 28;
    public const uint EOVERFLOW = 75;

    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(20);

    private readonly Socket _socket;
    private ulong _nextHandle = 1;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
    }

    public Socket Socket => _socket;

    /// <summary>Handshake flags the server sent in its greeting.</summary>
    public ushort HandshakeFlags { get; private set; }

    public long ExportSize { get; private set; }

    public ushort TransmissionFlags { get; private set; }

    public uint MinimumBlockSize { get; private set; }

    public uint PreferredBlockSize { get; private set; }

    /// <summary>Maximum payload the server advertised, or the spec's default of 32 MiB when it did not.</summary>
    public uint MaximumPayload { get; private set; } = 32 << 20;

    public bool CanMultiConn => (TransmissionFlags & TransCanMultiConn) != 0;

    /// <summary>Opens a TCP connection and reads nothing.</summary>
    public static async Task<RawNbdClient> ConnectRawAsync(int port, TimeSpan? timeout = null)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        using var cts = new CancellationTokenSource(timeout ?? DefaultTimeout);
        try
        {
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), cts.Token);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        return new RawNbdClient(socket);
    }

    /// <summary>Connects and reads the server greeting; the caller continues the handshake.</summary>
    public static async Task<RawNbdClient> ConnectGreetedAsync(int port)
    {
        var c = await ConnectRawAsync(port);
        await c.ReadGreetingAsync();
        return c;
    }

    /// <summary>Connects, negotiates fixed newstyle and enters transmission on <paramref name="export"/> with NBD_OPT_GO.</summary>
    public static async Task<RawNbdClient> ConnectAsync(int port, string export)
    {
        var c = await ConnectGreetedAsync(port);
        try
        {
            await c.SendClientFlagsAsync();
            var reply = await c.GoAsync(export);
            if (reply != RepAck)
            {
                throw new InvalidOperationException($"NBD_OPT_GO '{export}' refused with reply type 0x{reply:x8}");
            }
            return c;
        }
        catch
        {
            await c.DisposeAsync();
            throw;
        }
    }

    //  S: 64 bits NBDMAGIC | 64 bits IHAVEOPT | 16 bits handshake flags
    public async Task ReadGreetingAsync()
    {
        var b = await ReceiveExactAsync(18);
        var magic = BinaryPrimitives.ReadUInt64BigEndian(b);
        var opt = BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(8));
        if (magic != NbdMagic || opt != IHaveOpt)
        {
            throw new InvalidDataException($"bad greeting: {Convert.ToHexString(b)}");
        }
        HandshakeFlags = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(16));
        if ((HandshakeFlags & FlagFixedNewstyle) == 0)
        {
            throw new InvalidDataException("server does not offer fixed newstyle");
        }
    }

    //  C: 32 bits client flags
    public Task SendClientFlagsAsync()
    {
        var flags = (uint)FlagFixedNewstyle | ((HandshakeFlags & FlagNoZeroes) != 0 ? FlagNoZeroes : 0u);
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, flags);
        return SendAsync(b);
    }

    //  C: 64 bits IHAVEOPT | 32 bits option | 32 bits length | data
    public Task SendOptionAsync(uint option, ReadOnlySpan<byte> data)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)data.Length);
        data.CopyTo(b.AsSpan(16));
        return SendAsync(b);
    }

    //  S: 64 bits reply magic | 32 bits option | 32 bits reply type | 32 bits length | data
    public async Task<(uint Option, uint Type, byte[] Data)> ReadOptionReplyAsync()
    {
        var h = await ReceiveExactAsync(20);
        var magic = BinaryPrimitives.ReadUInt64BigEndian(h);
        if (magic != OptionReplyMagic)
        {
            throw new InvalidDataException($"bad option reply magic 0x{magic:x16}");
        }
        var option = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8));
        var type = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12));
        var length = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        if (length > 1 << 20)
        {
            throw new InvalidDataException($"option reply of {length} bytes");
        }
        var data = length == 0 ? [] : await ReceiveExactAsync((int)length);
        return (option, type, data);
    }

    /// <summary>
    /// NBD_OPT_GO: data is 32 bits name length | name | 16 bits info count | 16 bits per info.
    /// Returns NBD_REP_ACK, or the error reply type (the connection stays in option haggling).
    /// </summary>
    public async Task<uint> GoAsync(string export)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var data = new byte[4 + name.Length + 2 + 2];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + name.Length), 1);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + name.Length), InfoBlockSize);
        await SendOptionAsync(OptGo, data);
        var sawExport = false;
        while (true)
        {
            var (option, type, payload) = await ReadOptionReplyAsync();
            if (option != OptGo)
            {
                throw new InvalidDataException($"reply for option {option}, expected {OptGo}");
            }
            if (type == RepInfo)
            {
                var info = BinaryPrimitives.ReadUInt16BigEndian(payload);
                if (info == InfoExport)
                {
                    //  16 bits type | 64 bits size | 16 bits transmission flags
                    ExportSize = (long)BinaryPrimitives.ReadUInt64BigEndian(payload.AsSpan(2));
                    TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(10));
                    sawExport = true;
                }
                else if (info == InfoBlockSize)
                {
                    //  16 bits type | 32 bits minimum | 32 bits preferred | 32 bits maximum payload
                    MinimumBlockSize = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(2));
                    PreferredBlockSize = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(6));
                    MaximumPayload = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(10));
                }
                continue;
            }
            if (type == RepAck && !sawExport)
            {
                throw new InvalidDataException("NBD_REP_ACK to NBD_OPT_GO without NBD_INFO_EXPORT");
            }
            return type;
        }
    }

    /// <summary>NBD_OPT_LIST: the export names, in the order the server sent them.</summary>
    public async Task<List<string>> ListAsync()
    {
        await SendOptionAsync(OptList, []);
        var names = new List<string>();
        while (true)
        {
            var (_, type, payload) = await ReadOptionReplyAsync();
            if (type == RepAck)
            {
                return names;
            }
            if (type != RepServer)
            {
                throw new InvalidDataException($"NBD_OPT_LIST reply type 0x{type:x8}");
            }
            var len = (int)BinaryPrimitives.ReadUInt32BigEndian(payload);
            names.Add(Encoding.UTF8.GetString(payload, 4, len));
        }
    }

    /// <summary>
    /// Request header, 28 bytes:
    ///  C: 32 bits magic | 16 bits flags | 16 bits type | 64 bits handle | 64 bits offset | 32 bits length
    /// </summary>
    public static byte[] EncodeRequest(ushort type, ulong handle, ulong offset, uint length, ushort flags = 0, uint magic = RequestMagic)
    {
        var b = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(b, magic);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), handle);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), length);
        return b;
    }

    public ulong NextHandle() => _nextHandle++;

    /// <summary>Sends a request header (and the payload, for a write) without waiting for the reply.</summary>
    public async Task<ulong> SendRequestAsync(ushort type, ulong offset, uint length, ReadOnlyMemory<byte> payload = default, ushort flags = 0)
    {
        var handle = NextHandle();
        await SendAsync(EncodeRequest(type, handle, offset, length, flags));
        if (!payload.IsEmpty)
        {
            await SendAsync(payload);
        }
        return handle;
    }

    /// <summary>
    /// Simple reply, 16 bytes, then the read data when the error is 0:
    ///  S: 32 bits magic | 32 bits error | 64 bits handle
    /// Returns null when the server closed the connection instead.
    /// </summary>
    public async Task<SimpleReply?> ReadReplyAsync(int readLength = 0, TimeSpan? timeout = null)
    {
        var h = await TryReceiveExactAsync(16, timeout);
        if (h is null)
        {
            return null;
        }
        var magic = BinaryPrimitives.ReadUInt32BigEndian(h);
        if (magic != SimpleReplyMagic)
        {
            throw new InvalidDataException($"expected a simple reply, got magic 0x{magic:x8} ({Convert.ToHexString(h)})");
        }
        var error = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(4));
        var handle = BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8));
        byte[] data = [];
        if (error == 0 && readLength > 0)
        {
            data = await ReceiveExactAsync(readLength, timeout);
        }
        return new SimpleReply(handle, error, data);
    }

    public async Task<SimpleReply> ExpectReplyAsync(ulong handle, int readLength = 0)
    {
        var r = await ReadReplyAsync(readLength) ?? throw new InvalidDataException($"server closed the connection instead of replying to handle {handle}");
        Assert.Equal(handle, r.Handle);
        return r;
    }

    public async Task<SimpleReply> ReadAsync(long offset, int length)
    {
        var h = await SendRequestAsync(CmdRead, (ulong)offset, (uint)length);
        return await ExpectReplyAsync(h, length);
    }

    /// <summary>Reads and fails the test unless the server answered without error.</summary>
    public async Task<byte[]> ReadOkAsync(long offset, int length)
    {
        var r = await ReadAsync(offset, length);
        Assert.True(r.Error == 0, $"NBD_CMD_READ {offset}+{length} failed with error {r.Error}");
        return r.Data;
    }

    public async Task<uint> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false)
    {
        var h = await SendRequestAsync(CmdWrite, (ulong)offset, (uint)data.Length, data, fua ? CmdFlagFua : (ushort)0);
        return (await ExpectReplyAsync(h)).Error;
    }

    public async Task WriteOkAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false)
    {
        var e = await WriteAsync(offset, data, fua);
        Assert.True(e == 0, $"NBD_CMD_WRITE {offset}+{data.Length} failed with error {e}");
    }

    public async Task<uint> FlushAsync() => (await ExpectReplyAsync(await SendRequestAsync(CmdFlush, 0, 0))).Error;

    public async Task<uint> TrimAsync(long offset, uint length) =>
        (await ExpectReplyAsync(await SendRequestAsync(CmdTrim, (ulong)offset, length))).Error;

    public async Task<uint> WriteZeroesAsync(long offset, uint length) =>
        (await ExpectReplyAsync(await SendRequestAsync(CmdWriteZeroes, (ulong)offset, length))).Error;

    /// <summary>NBD_CMD_DISC then close: the soft disconnect.</summary>
    public async Task DisconnectAsync()
    {
        await SendAsync(EncodeRequest(CmdDisc, NextHandle(), 0, 0));
        _socket.Shutdown(SocketShutdown.Send);
    }

    public async Task SendAsync(ReadOnlyMemory<byte> data, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? DefaultTimeout);
        while (!data.IsEmpty)
        {
            var n = await _socket.SendAsync(data, SocketFlags.None, cts.Token);
            data = data[n..];
        }
    }

    public async Task<byte[]> ReceiveExactAsync(int count, TimeSpan? timeout = null) =>
        await TryReceiveExactAsync(count, timeout) ?? throw new EndOfStreamException($"server closed the connection (wanted {count} bytes)");

    /// <summary>Null when the server closed (or reset) the connection before the first byte.</summary>
    public async Task<byte[]?> TryReceiveExactAsync(int count, TimeSpan? timeout = null)
    {
        var buffer = new byte[count];
        var got = 0;
        var limit = timeout ?? DefaultTimeout;
        using var cts = new CancellationTokenSource(limit);
        while (got < count)
        {
            int n;
            try
            {
                n = await _socket.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, cts.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"no answer from the server within {limit.TotalSeconds:F0}s ({got}/{count} bytes received)");
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted)
            {
                n = 0;
            }
            if (n == 0)
            {
                if (got == 0)
                {
                    return null;
                }
                throw new EndOfStreamException($"server closed the connection mid-message ({got}/{count} bytes)");
            }
            got += n;
        }
        return buffer;
    }

    /// <summary>
    /// Waits until the server closes the connection, draining whatever it sends meanwhile.
    /// Returns the drained bytes; fails the test if the connection is still open after <paramref name="timeout"/>.
    /// </summary>
    public async Task<byte[]> ExpectCloseAsync(TimeSpan timeout, string what)
    {
        var drained = new MemoryStream();
        var buffer = new byte[64 * 1024];
        using var cts = new CancellationTokenSource(timeout);
        while (true)
        {
            int n;
            try
            {
                n = await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            }
            catch (OperationCanceledException)
            {
                Assert.Fail($"{what}: the server kept the connection open for {timeout.TotalSeconds:F0}s (received {drained.Length} bytes: {Convert.ToHexString(drained.ToArray().AsSpan(0, (int)Math.Min(64, drained.Length)))})");
                throw;
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted)
            {
                return drained.ToArray();
            }
            if (n == 0)
            {
                return drained.ToArray();
            }
            drained.Write(buffer, 0, n);
        }
    }

    /// <summary>
    /// After a request the server may refuse: waits for either a simple reply or the server closing
    /// the connection. Returns "disconnect" or "reply handle H error E " (success shows as "error 0 ").
    /// Fails the test if neither happens within <paramref name="timeout"/>.
    /// </summary>
    public async Task<string> ExpectCloseOrReplyAsync(TimeSpan timeout)
    {
        byte[]? h;
        try
        {
            h = await TryReceiveExactAsync(16, timeout);
        }
        catch (TimeoutException)
        {
            Assert.Fail($"the server neither replied nor closed the connection within {timeout.TotalSeconds:F0}s (is it waiting for a payload it should have refused?)");
            throw;
        }
        catch (EndOfStreamException)
        {
            return "disconnect (mid-reply)";
        }
        if (h is null)
        {
            return "disconnect";
        }
        var magic = BinaryPrimitives.ReadUInt32BigEndian(h);
        Assert.True(magic == SimpleReplyMagic, $"expected a simple reply, got {Convert.ToHexString(h)}");
        return $"reply handle {BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8))} error {BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(4))} ";
    }

    /// <summary>
    /// During option haggling: waits for an option error reply or the server closing the
    /// connection; fails the test on a non-error reply or a timeout.
    /// </summary>
    public async Task<string> ExpectCloseOrOptionErrorAsync(TimeSpan timeout)
    {
        byte[]? h;
        try
        {
            h = await TryReceiveExactAsync(20, timeout);
        }
        catch (TimeoutException)
        {
            Assert.Fail($"the server neither answered the option nor closed the connection within {timeout.TotalSeconds:F0}s");
            throw;
        }
        catch (EndOfStreamException)
        {
            return "disconnect (mid-reply)";
        }
        if (h is null)
        {
            return "disconnect";
        }
        Assert.Equal(OptionReplyMagic, BinaryPrimitives.ReadUInt64BigEndian(h));
        var type = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12));
        Assert.True((type & 0x80000000) != 0, $"the option was answered with non-error reply type 0x{type:x8}");
        return $"option error reply 0x{type:x8}";
    }

    /// <summary>Closes with an RST (linger 0): the client vanishes without a FIN handshake.</summary>
    public void Abort()
    {
        try
        {
            _socket.LingerState = new LingerOption(true, 0);
        }
        catch (SocketException)
        {
        }
        _socket.Close();
    }

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}

public sealed record SimpleReply(ulong Handle, uint Error, byte[] Data);
