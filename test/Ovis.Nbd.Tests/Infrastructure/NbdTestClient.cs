using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Xunit.Sdk;

namespace Ovis.Nbd.Tests.Infrastructure;

/// <summary>
/// Drives one <see cref="NbdConnection"/> over in-memory pipes with raw protocol bytes. Every
/// wait has <see cref="Timeout"/>; nothing sleeps.
/// </summary>
internal sealed class NbdTestClient : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(15);

    private readonly Pipe _toServer;
    private readonly Pipe _toClient;

    public NbdTestClient(MemoryExportProvider exports, NbdServerOptions? options = null, long serverOutputPauseThreshold = 0, ArrayPool<byte>? bufferPool = null)
    {
        _toServer = new Pipe(new PipeOptions(PipeMemory, pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false));
        _toClient = new Pipe(new PipeOptions(
            PipeMemory,
            pauseWriterThreshold: serverOutputPauseThreshold,
            resumeWriterThreshold: serverOutputPauseThreshold / 2,
            useSynchronizationContext: false));
        ServerOutput = new CountingPipeWriter(_toClient.Writer);
        Connection = new NbdConnection(new DuplexPipe(_toServer.Reader, ServerOutput), exports, options ?? new NbdServerOptions(), Logger)
        {
            BufferPool = bufferPool ?? Pool,
        };

        // Off the test's synchronization context, as under Kestrel.
        Run = Task.Run(() => Connection.RunAsync(Stopping.Token));
    }

    public NbdConnection Connection { get; }

    // Shared by every test client: blocks go back to one queue whatever thread returns them.
    private static readonly BlockMemoryPool PipeMemory = new();

    public Task Run { get; }

    public CountingArrayPool Pool { get; } = new();

    public ListLogger Logger { get; } = new();

    public CountingPipeWriter ServerOutput { get; }

    public CancellationTokenSource Stopping { get; } = new();

    public static MemoryExportProvider Exports(MemoryBlockDevice device, string name = "disk") => new MemoryExportProvider().Add(name, device);

    public async Task SendAsync(ReadOnlyMemory<byte> bytes)
    {
        ValueTask<FlushResult> write = _toServer.Writer.WriteAsync(bytes);
        if (!write.IsCompletedSuccessfully)
        {
            await write.AsTask().WaitAsync(Timeout);
        }
    }

    public async Task SendUInt32Async(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        await SendAsync(bytes);
    }

    public async Task CloseSendAsync() => await _toServer.Writer.CompleteAsync().AsTask().WaitAsync(Timeout);

    /// <summary>Consumes <paramref name="count"/> bytes of replies without keeping them (or allocating).</summary>
    public async Task SkipAsync(long count, CancellationToken cancellationToken)
    {
        PipeReader reader = _toClient.Reader;
        while (count > 0)
        {
            ReadResult result = await reader.ReadAsync(cancellationToken);
            long take = Math.Min(count, result.Buffer.Length);
            reader.AdvanceTo(result.Buffer.GetPosition(take));
            count -= take;
            if (count > 0 && result.IsCompleted)
            {
                throw new XunitException("Server closed early.");
            }
        }
    }

    public async Task<byte[]> ReadExactAsync(int count)
    {
        if (count == 0)
        {
            return [];
        }

        using var timeout = new CancellationTokenSource(Timeout);
        PipeReader reader = _toClient.Reader;
        while (true)
        {
            ReadResult result = await reader.ReadAsync(timeout.Token);
            ReadOnlySequence<byte> buffer = result.Buffer;
            if (buffer.Length >= count)
            {
                byte[] bytes = buffer.Slice(0, count).ToArray();
                reader.AdvanceTo(buffer.GetPosition(count));
                return bytes;
            }

            reader.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                throw new XunitException($"Server closed after {buffer.Length} of {count} expected bytes.");
            }
        }
    }

    /// <summary>
    /// The server sends nothing for <paramref name="window"/>. A negative check can only wait; keep
    /// the window short and use it only where the bug it catches would answer at once.
    /// </summary>
    public async Task AssertSilentAsync(TimeSpan window)
    {
        using var quiet = new CancellationTokenSource(window);
        PipeReader reader = _toClient.Reader;
        try
        {
            ReadResult result = await reader.ReadAsync(quiet.Token);
            long length = result.Buffer.Length;
            bool completed = result.IsCompleted;
            reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            throw new XunitException($"expected silence, but the server sent {length} bytes{(completed ? " and closed" : "")}");
        }
        catch (OperationCanceledException) when (quiet.IsCancellationRequested)
        {
        }
    }

    /// <summary>Reads until the server completes its output; returns whatever came before that.</summary>
    public async Task<byte[]> ReadToEndAsync()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        PipeReader reader = _toClient.Reader;
        while (true)
        {
            ReadResult result = await reader.ReadAsync(timeout.Token);
            if (result.IsCompleted)
            {
                byte[] rest = result.Buffer.ToArray();
                reader.AdvanceTo(result.Buffer.End);
                return rest;
            }

            reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        }
    }

    /// <summary>The server closed the connection, sent nothing more, and RunAsync ended without throwing.</summary>
    public async Task AssertClosedAsync()
    {
        byte[] rest = await ReadToEndAsync();
        Assert.Empty(rest);
        await AssertRunCompletedAsync();
    }

    public async Task AssertRunCompletedAsync()
    {
        await Run.WaitAsync(Timeout);
        Assert.Equal(0, Pool.BadReturns);
        Assert.Equal(0, Pool.Outstanding);
    }

    public async Task SendOptionAsync(uint option, byte[]? data = null) => await SendAsync(Wire.Option(option, data ?? []));

    public async Task<OptionReply> ReadOptionReplyAsync()
    {
        byte[] header = await ReadExactAsync(20);
        Assert.Equal(Wire.OptionReplyMagic, BinaryPrimitives.ReadUInt64BigEndian(header));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        byte[] data = await ReadExactAsync((int)length);
        return new OptionReply(
            BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8)),
            BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12)),
            data);
    }

    /// <summary>Reads the greeting and answers with FIXED_NEWSTYLE | NO_ZEROES (or <paramref name="clientFlags"/>).</summary>
    public async Task GreetAsync(uint clientFlags = 3)
    {
        await ReadExactAsync(18);
        await SendUInt32Async(clientFlags);
    }

    /// <summary>The usual libnbd sequence: structured replies, optionally base:allocation, then GO.</summary>
    public async Task<(ulong Size, ushort Flags)> NegotiateAsync(string export = "disk", bool structured = true, bool baseAllocation = false)
    {
        await GreetAsync();
        if (structured)
        {
            await SendOptionAsync(Wire.OptStructuredReply);
            Assert.Equal(Wire.RepAck, (await ReadOptionReplyAsync()).Type);
        }

        if (baseAllocation)
        {
            await SendOptionAsync(Wire.OptSetMetaContext, Wire.MetaContextData(export, "base:allocation"));
            OptionReply context = await ReadOptionReplyAsync();
            Assert.Equal(Wire.RepMetaContext, context.Type);
            Assert.Equal(Wire.RepAck, (await ReadOptionReplyAsync()).Type);
        }

        await SendOptionAsync(Wire.OptGo, Wire.InfoData(export));
        ulong size = 0;
        ushort flags = 0;
        while (true)
        {
            OptionReply reply = await ReadOptionReplyAsync();
            if (reply.Type == Wire.RepAck)
            {
                return (size, flags);
            }

            Assert.Equal(Wire.RepInfo, reply.Type);
            if (BinaryPrimitives.ReadUInt16BigEndian(reply.Data) == 0)
            {
                size = BinaryPrimitives.ReadUInt64BigEndian(reply.Data.AsSpan(2));
                flags = BinaryPrimitives.ReadUInt16BigEndian(reply.Data.AsSpan(10));
            }
        }
    }

    public async Task SendRequestAsync(ushort type, ulong cookie, ulong offset, uint length, ushort flags = 0, byte[]? payload = null)
        => await SendAsync(Wire.Request(flags, type, cookie, offset, length, payload));

    public async Task<SimpleReply> ReadSimpleReplyAsync(int dataLength = 0)
    {
        byte[] header = await ReadExactAsync(16);
        Assert.Equal(Wire.SimpleReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(header));
        uint error = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
        byte[] data = error == 0 && dataLength > 0 ? await ReadExactAsync(dataLength) : [];
        return new SimpleReply(error, BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8)), data);
    }

    public async Task<Chunk> ReadChunkAsync()
    {
        byte[] header = await ReadExactAsync(20);
        Assert.Equal(Wire.StructuredReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(header));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        byte[] payload = await ReadExactAsync((int)length);
        return new Chunk(
            BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4)),
            BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6)),
            BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8)),
            payload);
    }

    /// <summary>Reads chunks until one carries DONE; all must share one cookie.</summary>
    public async Task<List<Chunk>> ReadStructuredReplyAsync()
    {
        var chunks = new List<Chunk>();
        while (true)
        {
            Chunk chunk = await ReadChunkAsync();
            if (chunks.Count > 0)
            {
                Assert.Equal(chunks[0].Cookie, chunk.Cookie);
            }

            chunks.Add(chunk);
            if ((chunk.Flags & Wire.ReplyFlagDone) != 0)
            {
                return chunks;
            }
        }
    }

    /// <summary>Either reply kind, when the test does not care which: (error, cookie).</summary>
    public async Task<(uint Error, ulong Cookie)> ReadPayloadlessReplyAsync()
    {
        byte[] magic = await ReadExactAsync(4);
        uint value = BinaryPrimitives.ReadUInt32BigEndian(magic);
        if (value == Wire.SimpleReplyMagic)
        {
            byte[] rest = await ReadExactAsync(12);
            return (BinaryPrimitives.ReadUInt32BigEndian(rest), BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4)));
        }

        Assert.Equal(Wire.StructuredReplyMagic, value);
        byte[] header = await ReadExactAsync(16);
        Assert.Equal(Wire.ReplyFlagDone, BinaryPrimitives.ReadUInt16BigEndian(header) & Wire.ReplyFlagDone);
        byte[] payload = await ReadExactAsync((int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12)));
        uint error = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(2)) == Wire.ReplyTypeError
            ? BinaryPrimitives.ReadUInt32BigEndian(payload)
            : 0;
        return (error, BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(4)));
    }

    /// <summary>The client drops the connection: stops sending and stops taking replies.</summary>
    public async Task VanishAsync()
    {
        await _toServer.Writer.CompleteAsync().AsTask().WaitAsync(Timeout);
        await _toClient.Reader.CompleteAsync().AsTask().WaitAsync(Timeout);
    }

    public async ValueTask DisposeAsync()
    {
        await VanishAsync();
        await Connection.DisposeAsync().AsTask().WaitAsync(Timeout);
        Stopping.Dispose();
    }
}

internal sealed record OptionReply(uint Option, uint Type, byte[] Data);

internal sealed record SimpleReply(uint Error, ulong Cookie, byte[] Data);

internal sealed record Chunk(ushort Flags, ushort Type, ulong Cookie, byte[] Payload)
{
    public ulong Offset => BinaryPrimitives.ReadUInt64BigEndian(Payload);

    public uint Error => BinaryPrimitives.ReadUInt32BigEndian(Payload);

    public string Message => System.Text.Encoding.UTF8.GetString(Payload.AsSpan(6, BinaryPrimitives.ReadUInt16BigEndian(Payload.AsSpan(4))));
}
