using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Cluster.Peer;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Store;
using Xunit.Abstractions;

namespace Ovis.Cluster.Tests;

/// <summary>
/// The peer protocol end to end: a real <see cref="LocalStore"/> in a temporary directory behind a
/// <see cref="PeerServer"/> on a loopback port, driven by <see cref="PeerClient"/> and by raw bytes.
/// </summary>
public sealed class PeerProtocolTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Timeout = PeerFixture.Timeout;
    private static readonly ObjectId A = new(7, 1);
    private static readonly ObjectId B = new(7, 2);

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static async Task<PeerResult> Ok(ValueTask<PeerResult> call)
    {
        PeerResult result = await call.AsTask().WaitAsync(Timeout);
        Assert.Equal(PeerStatus.Ok, result.Status);
        return result;
    }

    private static async Task<PeerResult> Result(ValueTask<PeerResult> call) => await call.AsTask().WaitAsync(Timeout);

    private static async Task<byte[]> ReadAsync(PeerFixture f, ObjectId id, long offset, int length)
    {
        var buffer = new byte[length];
        await Ok(f.Client.ReadAsync(f.Epoch, id, offset, buffer));
        return buffer;
    }

    private static async Task<BlockState[]> AllocationAsync(PeerFixture f, ObjectId id, long offset, int blocks)
    {
        var states = new BlockState[blocks];
        await Ok(f.Client.GetAllocationAsync(f.Epoch, id, offset, states));
        return states;
    }

    private static async Task<BlockSum[]> SumsAsync(PeerFixture f, ObjectId id, long offset, int blocks, bool verify)
    {
        var sums = new BlockSum[blocks];
        await Ok(f.Client.GetBlockSumsAsync(f.Epoch, id, offset, sums, verify));
        return sums;
    }

    private static async Task<BlockSum[]> StoreSumsAsync(PeerFixture f, ObjectId id, long offset, int blocks)
    {
        var sums = new BlockSum[blocks];
        Assert.Equal(StoreStatus.Ok, await f.Store.GetBlockSumsAsync(id, offset, sums, verify: false));
        return sums;
    }

    // --- Wire format ---------------------------------------------------------------------------

    [Fact]
    public void A_request_header_is_52_big_endian_bytes_in_the_documented_order()
    {
        var header = new PeerRequestHeader(
            PeerOpcode.Write,
            PeerRequestFlags.Fua,
            Epoch: 0x0102030405060708,
            Handle: 0x1112131415161718,
            ObjectId: new ObjectId(0x21222324, 0x25262728).Packed,
            Offset: 0x3132333435363738,
            Length: 0x41424344,
            Generation: 0x5152535455565758);
        var bytes = new byte[PeerProtocol.RequestHeaderSize];
        header.Write(bytes);

        Assert.Equal(
            "4F564651" + "0002" + "0001" + "0102030405060708" + "1112131415161718" + "2122232425262728" + "3132333435363738" + "41424344" + "5152535455565758",
            Convert.ToHexString(bytes));
        Assert.Equal(PeerProtocol.RequestMagic, PeerRequestHeader.ReadMagic(bytes));
        Assert.Equal(header, PeerRequestHeader.Read(bytes));
    }

    [Fact]
    public void A_reply_header_is_28_big_endian_bytes_in_the_documented_order()
    {
        var header = new PeerReplyHeader(PeerStatus.StaleEpoch, Epoch: 7, Handle: 0x1112131415161718, Length: 0x1000);
        var bytes = new byte[PeerProtocol.ReplyHeaderSize];
        header.Write(bytes);

        Assert.Equal("4F565052" + "0004" + "0000" + "0000000000000007" + "1112131415161718" + "00001000", Convert.ToHexString(bytes));
        Assert.Equal(header, PeerReplyHeader.Read(bytes));
    }

    [Fact]
    public void Store_statuses_keep_their_values_on_the_wire()
    {
        Assert.Equal((ushort)StoreStatus.Ok, (ushort)PeerStatus.Ok);
        Assert.Equal((ushort)StoreStatus.IoError, (ushort)PeerStatus.IoError);
        Assert.Equal((ushort)StoreStatus.NoSpace, (ushort)PeerStatus.NoSpace);
        Assert.Equal((ushort)StoreStatus.Closed, (ushort)PeerStatus.Closed);
        Assert.Equal(4, (ushort)PeerStatus.StaleEpoch);
        Assert.Equal(5, (ushort)PeerStatus.Invalid);
        Assert.Equal(7, (ushort)PeerStatus.Fenced);
    }

    [Fact]
    public async Task The_client_sends_exactly_the_documented_bytes()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        await using var client = new PeerClient(listener.LocalEndPoint!, new PeerClientOptions(), NullLogger.Instance);

        Task<PeerResult> write = client.WriteAsync(3, 0x99, new ObjectId(1, 2), 4096, "hello"u8.ToArray(), fua: true).AsTask();
        using Socket server = await listener.AcceptAsync().WaitAsync(Timeout);
        var received = new byte[PeerProtocol.RequestHeaderSize + 5];
        for (int n = 0; n < received.Length;)
        {
            n += await server.ReceiveAsync(received.AsMemory(n)).AsTask().WaitAsync(Timeout);
        }

        // The first request on a connection has handle 1.
        Assert.Equal(
            "4F564651" + "0002" + "0001" + "0000000000000003" + "0000000000000001" + "0000000100000002" + "0000000000001000" + "00000005" + "0000000000000099" + Convert.ToHexString("hello"u8),
            Convert.ToHexString(received));

        var reply = new byte[PeerProtocol.ReplyHeaderSize];
        new PeerReplyHeader(PeerStatus.Ok, 3, 1, 0).Write(reply);
        await server.SendAsync(reply.AsMemory()).AsTask().WaitAsync(Timeout);
        Assert.Equal(new PeerResult(PeerStatus.Ok, 3), await write.WaitAsync(Timeout));
    }

    [Fact]
    public async Task The_server_answers_a_ping_with_exactly_the_documented_bytes()
    {
        await using var f = new PeerFixture(epoch: 9);
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);

        // PING and STATS are served at any epoch: 0 here.
        await raw.SendAsync(RawPeer.Request(PeerOpcode.Ping, PeerRequestFlags.None, 0, 42, 0, 0, 0));
        var (header, payload) = await raw.ReceiveAsync();

        var bytes = new byte[PeerProtocol.ReplyHeaderSize];
        header.Write(bytes);
        Assert.Equal("4F565052" + "0000" + "0000" + "0000000000000009" + "000000000000002A" + "00000000", Convert.ToHexString(bytes));
        Assert.Empty(payload);
    }

    [Fact]
    public async Task Block_sums_travel_as_a_state_byte_and_a_big_endian_crc_per_block()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        await using var client = new PeerClient(listener.LocalEndPoint!, new PeerClientOptions(), NullLogger.Instance);

        var sums = new BlockSum[3];
        Task<PeerResult> call = client.GetBlockSumsAsync(3, new ObjectId(1, 2), 8192, sums, verify: true).AsTask();
        using Socket server = await listener.AcceptAsync().WaitAsync(Timeout);
        var received = new byte[PeerProtocol.RequestHeaderSize];
        for (int n = 0; n < received.Length;)
        {
            n += await server.ReceiveAsync(received.AsMemory(n)).AsTask().WaitAsync(Timeout);
        }

        // BLOCKSUMS (10) with VERIFY (8); the length counts blocks.
        Assert.Equal(
            "4F564651" + "000A" + "0008" + "0000000000000003" + "0000000000000001" + "0000000100000002" + "0000000000002000" + "00000003" + "0000000000000000",
            Convert.ToHexString(received));

        byte[] payload = Convert.FromHexString("01" + "DEADBEEF" + "02" + "00000000" + "00" + "00000000");
        var reply = new byte[PeerProtocol.ReplyHeaderSize];
        new PeerReplyHeader(PeerStatus.Ok, 3, 1, (uint)payload.Length).Write(reply);
        await server.SendAsync(reply.Concat(payload).ToArray().AsMemory()).AsTask().WaitAsync(Timeout);
        Assert.Equal(new PeerResult(PeerStatus.Ok, 3), await call.WaitAsync(Timeout));
        Assert.Equal([new BlockSum(BlockState.Data, 0xDEADBEEF), new BlockSum(BlockState.Zero, 0), new BlockSum(BlockState.Hole, 0)], sums);
    }

    [Fact]
    public async Task The_server_answers_block_sums_with_exactly_the_documented_bytes()
    {
        await using var f = new PeerFixture(epoch: 2);
        byte[] data = RandomBytes(4096, 16);
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 4096, data, fua: false));
        await Ok(f.Client.ZeroAsync(f.Epoch, 0, A, 2 * 4096, 4096, keepAllocated: true, fua: false));
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);

        await raw.SendAsync(RawPeer.Request(PeerOpcode.BlockSums, PeerRequestFlags.None, 2, 5, A.Packed, 0, 4));
        var (header, payload) = await raw.ReceiveAsync();

        Assert.Equal(new PeerReplyHeader(PeerStatus.Ok, 2, 5, 20), header);
        Assert.Equal(
            "00" + "00000000" + "01" + Crc32C.Compute(data).ToString("X8") + "02" + "00000000" + "00" + "00000000",
            Convert.ToHexString(payload));
    }

    [Fact]
    public async Task The_server_runs_on_any_duplex_pipe_and_completes_it_when_the_sender_is_done()
    {
        await using var f = new PeerFixture(epoch: 3);
        var toServer = new Pipe();
        var fromServer = new Pipe();
        Task serving = f.Server.RunAsync(new TestDuplexPipe(toServer.Reader, fromServer.Writer), CancellationToken.None);

        // A write and a read of it in one batch, the write's payload split across two flushes.
        byte[] data = RandomBytes(4096, 19);
        await toServer.Writer.WriteAsync(RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.None, 3, 1, A.Packed, 0, 4096));
        await toServer.Writer.WriteAsync(data.AsMemory(0, 100));
        byte[] rest = [.. data.AsSpan(100), .. RawPeer.Request(PeerOpcode.Read, PeerRequestFlags.None, 3, 2, A.Packed, 0, 4096)];
        await toServer.Writer.WriteAsync(rest);
        await toServer.Writer.CompleteAsync();

        // The server finishes what it started, replies, and completes its output.
        await serving.WaitAsync(Timeout);
        ReadResult replies = await fromServer.Reader.ReadAsync().AsTask().WaitAsync(Timeout);
        while (!replies.IsCompleted)
        {
            fromServer.Reader.AdvanceTo(replies.Buffer.Start, replies.Buffer.End);
            replies = await fromServer.Reader.ReadAsync().AsTask().WaitAsync(Timeout);
        }

        byte[] all = replies.Buffer.ToArray();
        Assert.Equal((2 * PeerProtocol.ReplyHeaderSize) + 4096, all.Length);
        Assert.Equal(new PeerReplyHeader(PeerStatus.Ok, 3, 1, 0), PeerReplyHeader.Read(all));
        Assert.Equal(new PeerReplyHeader(PeerStatus.Ok, 3, 2, 4096), PeerReplyHeader.Read(all.AsSpan(PeerProtocol.ReplyHeaderSize)));
        Assert.Equal(data, all.AsSpan(2 * PeerProtocol.ReplyHeaderSize).ToArray());
    }

    [Fact]
    public async Task A_sender_slow_to_read_replies_gets_every_reply_once_and_in_full()
    {
        // The reply pipe takes 64 KiB before a flush waits, so the thread that finished a read
        // cannot write its reply through and hands the flush to the output loop; a 1 MiB budget
        // makes the read loop stop for capacity too. Reads and writes race for the writer.
        await using var f = new PeerFixture(epoch: 3, serverOptions: new PeerServerOptions { MaxInFlightBytes = 1 << 20 });
        byte[] data = RandomBytes(64 << 10, 23);
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 0, data, fua: false));
        var toServer = new Pipe();
        var fromServer = new Pipe(new PipeOptions(pauseWriterThreshold: 64 << 10, resumeWriterThreshold: 32 << 10));
        Task serving = f.Server.RunAsync(new TestDuplexPipe(toServer.Reader, fromServer.Writer), CancellationToken.None);

        // The sender goes on sending while it does not read (as a TCP peer would): once the budget
        // is spent the server stops reading, and the sender waits in turn.
        const int Requests = 200;
        byte[] block = RandomBytes(4096, 24);
        Task sending = Task.Run(async () =>
        {
            for (ulong handle = 1; handle <= Requests; handle++)
            {
                if (handle % 4 == 0)
                {
                    await toServer.Writer.WriteAsync(RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.None, 3, handle, B.Packed, handle * 4096, 4096));
                    await toServer.Writer.WriteAsync(block);
                }
                else
                {
                    await toServer.Writer.WriteAsync(RawPeer.Request(PeerOpcode.Read, PeerRequestFlags.None, 3, handle, A.Packed, 0, (uint)data.Length));
                }
            }
        });

        // Nobody reads the replies for a while: the server must neither lose nor repeat any.
        await Task.Delay(200);
        var seen = new HashSet<ulong>();
        while (seen.Count < Requests)
        {
            ReadResult result = await fromServer.Reader.ReadAsync().AsTask().WaitAsync(Timeout);
            ReadOnlySequence<byte> buffer = result.Buffer;
            while (buffer.Length >= PeerProtocol.ReplyHeaderSize)
            {
                PeerReplyHeader header = PeerReplyHeader.Read(buffer.Slice(0, PeerProtocol.ReplyHeaderSize).ToArray());
                if (buffer.Length < PeerProtocol.ReplyHeaderSize + header.Length)
                {
                    break;
                }

                Assert.Equal(PeerStatus.Ok, header.Status);
                Assert.True(seen.Add(header.Handle), $"reply {header.Handle} arrived twice");
                byte[] payload = buffer.Slice(PeerProtocol.ReplyHeaderSize, header.Length).ToArray();
                Assert.Equal(header.Handle % 4 == 0 ? [] : data, payload);
                buffer = buffer.Slice(PeerProtocol.ReplyHeaderSize + header.Length);
            }

            fromServer.Reader.AdvanceTo(buffer.Start, buffer.End);
            Assert.False(result.IsCompleted && seen.Count < Requests, $"the server ended after {seen.Count} replies");
        }

        await sending.WaitAsync(Timeout);
        await toServer.Writer.CompleteAsync();
        await serving.WaitAsync(Timeout);
        Assert.Equal(block, await ReadAsync(f, B, Requests / 4 * 4 * 4096, 4096));
    }

    private sealed class TestDuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }

    // --- Operations ----------------------------------------------------------------------------

    [Fact]
    public async Task A_write_reads_back_through_the_peer_including_unaligned_ranges()
    {
        await using var f = new PeerFixture();
        byte[] data = RandomBytes(3 * 4096, 1);
        PeerResult written = await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 8192, data, fua: false));
        Assert.Equal(f.Epoch, written.Epoch);
        Assert.Equal(data, await ReadAsync(f, A, 8192, data.Length));

        byte[] odd = RandomBytes(1000, 2);
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 8192 + 100, odd, fua: true));
        byte[] expected = (byte[])data.Clone();
        odd.CopyTo(expected, 100);
        Assert.Equal(expected, await ReadAsync(f, A, 8192, data.Length));
        Assert.Equal(odd, await ReadAsync(f, A, 8192 + 100, odd.Length));

        // The store saw it too, and what was never written reads as zeroes.
        var direct = new byte[data.Length];
        Assert.Equal(StoreStatus.Ok, await f.Store.ReadAsync(A, 8192, direct));
        Assert.Equal(expected, direct);
        Assert.Equal(new byte[4096], await ReadAsync(f, B, 0, 4096));
    }

    [Fact]
    public async Task A_whole_16_MiB_object_goes_both_ways_in_one_request()
    {
        await using var f = new PeerFixture();
        byte[] data = RandomBytes(16 << 20, 3);
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 0, data, fua: false));
        Assert.Equal(data, await ReadAsync(f, A, 0, data.Length));
    }

    [Fact]
    public async Task Hundreds_of_pipelined_writes_are_in_flight_at_once_and_all_read_back()
    {
        // A small server budget makes the server push back while the client keeps sending.
        await using var f = new PeerFixture(serverOptions: new PeerServerOptions { MaxInFlightRequests = 64, MaxInFlightBytes = 256 << 10 });
        const int Writes = 600;
        var blocks = new byte[Writes][];
        var calls = new Task<PeerResult>[Writes];
        for (int i = 0; i < Writes; i++)
        {
            blocks[i] = RandomBytes(4096, 100 + i);
            // Spread over a few objects; all started before any is awaited.
            calls[i] = f.Client.WriteAsync(f.Epoch, 0, new ObjectId(8, (uint)(i % 5)), (long)(i / 5) * 4096, blocks[i], fua: false).AsTask();
        }

        PeerResult[] results = await Task.WhenAll(calls).WaitAsync(Timeout);
        Assert.All(results, r => Assert.Equal(PeerStatus.Ok, r.Status));

        var reads = new Task<PeerResult>[Writes];
        var got = new byte[Writes][];
        for (int i = 0; i < Writes; i++)
        {
            got[i] = new byte[4096];
            reads[i] = f.Client.ReadAsync(f.Epoch, new ObjectId(8, (uint)(i % 5)), (long)(i / 5) * 4096, got[i]).AsTask();
        }

        Assert.All(await Task.WhenAll(reads).WaitAsync(Timeout), r => Assert.Equal(PeerStatus.Ok, r.Status));
        for (int i = 0; i < Writes; i++)
        {
            Assert.True(blocks[i].AsSpan().SequenceEqual(got[i]), $"write {i} did not read back");
        }
    }

    [Fact]
    public async Task Zero_fill_holes_delete_and_allocation_do_what_the_store_does()
    {
        await using var f = new PeerFixture();
        byte[] data = RandomBytes(8 * 4096, 4);
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 0, data, fua: false));
        Assert.All(await AllocationAsync(f, A, 0, 8), s => Assert.Equal(BlockState.Data, s));

        // Blocks 1-2 zeroed but kept allocated, blocks 4-5 trimmed to holes.
        await Ok(f.Client.ZeroAsync(f.Epoch, 0, A, 4096, 2 * 4096, keepAllocated: true, fua: false));
        await Ok(f.Client.ZeroAsync(f.Epoch, 0, A, 4 * 4096, 2 * 4096, keepAllocated: false, fua: true));
        Assert.Equal(
            [BlockState.Data, BlockState.Zero, BlockState.Zero, BlockState.Data, BlockState.Hole, BlockState.Hole, BlockState.Data, BlockState.Data, BlockState.Hole],
            await AllocationAsync(f, A, 0, 9));
        Assert.Equal(new byte[2 * 4096], await ReadAsync(f, A, 4096, 2 * 4096));

        // Fill holes writes only where there is a hole: blocks 4, 5 and 8 of 0-8.
        byte[] fill = RandomBytes(9 * 4096, 5);
        await Ok(f.Client.FillHolesAsync(f.Epoch, 0, A, 0, fill, zeroes: false));
        byte[] now = await ReadAsync(f, A, 0, 9 * 4096);
        Assert.Equal(data.AsSpan(0, 4096).ToArray(), now.AsSpan(0, 4096).ToArray());
        Assert.Equal(new byte[2 * 4096], now.AsSpan(4096, 2 * 4096).ToArray());
        Assert.Equal(fill.AsSpan(4 * 4096, 2 * 4096).ToArray(), now.AsSpan(4 * 4096, 2 * 4096).ToArray());
        Assert.Equal(fill.AsSpan(8 * 4096, 4096).ToArray(), now.AsSpan(8 * 4096, 4096).ToArray());

        // Fill holes with zeroes sends no payload and allocates the holes as zeroes.
        await Ok(f.Client.FillHolesAsync(f.Epoch, 0, A, 0, new byte[12 * 4096], zeroes: true));
        Assert.Equal(
            [BlockState.Data, BlockState.Zero, BlockState.Zero, BlockState.Data, BlockState.Data, BlockState.Data, BlockState.Data, BlockState.Data, BlockState.Data, BlockState.Zero, BlockState.Zero, BlockState.Zero],
            await AllocationAsync(f, A, 0, 12));

        // Allocation of a range in the middle of the object, and of an object never written.
        Assert.Equal([BlockState.Data, BlockState.Zero], await AllocationAsync(f, A, 8 * 4096, 2));
        Assert.All(await AllocationAsync(f, B, 0, 4), s => Assert.Equal(BlockState.Hole, s));

        await Ok(f.Client.DeleteAsync(f.Epoch, 0, A));
        Assert.All(await AllocationAsync(f, A, 0, 12), s => Assert.Equal(BlockState.Hole, s));
        Assert.Equal(new byte[12 * 4096], await ReadAsync(f, A, 0, 12 * 4096));
        Assert.DoesNotContain(A, f.Store.ListObjects());
    }

    [Fact]
    public async Task Block_sums_through_the_peer_are_what_the_store_answers()
    {
        await using var f = new PeerFixture();
        byte[] data = RandomBytes(4096 * 4096, 17);
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 0, data, fua: true));
        await Ok(f.Client.ZeroAsync(f.Epoch, 0, A, 10 * 4096, 5 * 4096, keepAllocated: true, fua: false));
        await Ok(f.Client.ZeroAsync(f.Epoch, 0, A, 20 * 4096, 5 * 4096, keepAllocated: false, fua: false));
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 30 * 4096 + 17, RandomBytes(3 * 4096, 18), fua: false));

        // The whole object: a 20 KiB reply that spans many pipe segments both ways.
        BlockSum[] expected = await StoreSumsAsync(f, A, 0, 4096);
        Assert.Equal(expected, await SumsAsync(f, A, 0, 4096, verify: false));
        Assert.Equal(expected, await SumsAsync(f, A, 0, 4096, verify: true));
        Assert.Equal(BlockState.Zero, expected[12].State);
        Assert.Equal(BlockState.Hole, expected[22].State);
        Assert.Equal(new BlockSum(BlockState.Data, Crc32C.Compute(data.AsSpan(0, 4096))), expected[0]);

        // A range in the middle, an object never written, and no blocks at all.
        Assert.Equal(expected[8..40], await SumsAsync(f, A, 8 * 4096, 32, verify: true));
        Assert.All(await SumsAsync(f, B, 0, 4, verify: false), s => Assert.Equal(new BlockSum(BlockState.Hole, 0), s));
        Assert.Empty(await SumsAsync(f, A, 0, 0, verify: false));
    }

    [Fact]
    public async Task Verified_block_sums_report_a_block_damaged_on_disk_as_an_io_error()
    {
        await using var f = new PeerFixture();
        byte[] data = RandomBytes(4 * 4096, 19);
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 0, data, fua: true));
        BlockSum[] good = await SumsAsync(f, A, 0, 4, verify: true);

        // Once the applier has written the object file, damage block 1 there.
        string path = Path.Combine(f.StoreDirectory, "objects", A.Volume.ToString("x8"), A.Index.ToString("x8"));
        await Eventually.TrueAsync(() => Task.FromResult(File.Exists(path) && new FileInfo(path).Length >= data.Length), Timeout, "the write applied");
        using (var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = 4096 + 9;
            int b = file.ReadByte();
            file.Position = 4096 + 9;
            file.WriteByte((byte)(b ^ 0x40));
        }

        // The block leaves the overlay (and is read from the file) just after the file write.
        await Eventually.TrueAsync(
            async () => (await Result(f.Client.GetBlockSumsAsync(f.Epoch, A, 0, new BlockSum[4], verify: true))).Status == PeerStatus.IoError,
            Timeout,
            "verify finds the damage");
        Assert.Equal(good, await SumsAsync(f, A, 0, 4, verify: false));
        Assert.Equal(good[2..], await SumsAsync(f, A, 2 * 4096, 2, verify: true));
    }

    [Fact]
    public async Task A_flush_through_the_peer_costs_one_journal_sync_for_many_writes()
    {
        await using var f = new PeerFixture();
        byte[] block = RandomBytes(4096, 6);
        long before = f.Store.JournalSyncCount;
        var writes = new Task<PeerResult>[100];
        for (int i = 0; i < writes.Length; i++)
        {
            writes[i] = f.Client.WriteAsync(f.Epoch, 0, new ObjectId(3, (uint)i), 0, block, fua: false).AsTask();
        }

        Assert.All(await Task.WhenAll(writes).WaitAsync(Timeout), r => Assert.Equal(PeerStatus.Ok, r.Status));
        Assert.Equal(before, f.Store.JournalSyncCount);
        await Ok(f.Client.FlushAsync(f.Epoch));
        Assert.Equal(before + 1, f.Store.JournalSyncCount);

        // Concurrent flushes share the store's group commit.
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 0, block, fua: false));
        before = f.Store.JournalSyncCount;
        var flushes = new Task<PeerResult>[16];
        for (int i = 0; i < flushes.Length; i++)
        {
            flushes[i] = f.Client.FlushAsync(f.Epoch).AsTask();
        }

        Assert.All(await Task.WhenAll(flushes).WaitAsync(Timeout), r => Assert.Equal(PeerStatus.Ok, r.Status));
        Assert.InRange(f.Store.JournalSyncCount - before, 1, 2);
    }

    [Fact]
    public async Task Stats_report_the_stores_figures()
    {
        await using var f = new PeerFixture(epoch: 4);
        await Ok(f.Client.WriteAsync(f.Epoch, 0, A, 0, RandomBytes(3 * 4096, 7), fua: false));
        await Ok(f.Client.WriteAsync(f.Epoch, 0, B, 0, RandomBytes(4096, 8), fua: true));

        PeerStatsResult stats = await f.Client.StatsAsync().AsTask().WaitAsync(Timeout);
        Assert.Equal(PeerStatus.Ok, stats.Status);
        Assert.Equal(4, stats.Epoch);
        Assert.Equal((4 * 4096, 2, f.Store.JournalSyncCount), (stats.Stats.UsedBytes, stats.Stats.ObjectCount, stats.Stats.JournalSyncs));
        Assert.True(stats.Stats.JournalSyncs >= 1);
        // The store's file system and thresholds come along (the free figures move with the disk).
        Ovis.Store.StoreSpace space = Assert.NotNull(stats.Stats.Space);
        Assert.Equal(f.Store.Space.TotalBytes, space.TotalBytes);
        Assert.Equal((0.85, 0.95), (space.NearFullRatio, space.FullRatio));
        Assert.InRange(space.AvailableBytes, 1, space.TotalBytes);
    }

    // --- Epochs --------------------------------------------------------------------------------

    [Fact]
    public async Task A_request_from_an_older_epoch_is_refused_and_not_applied()
    {
        await using var f = new PeerFixture(epoch: 5);
        byte[] original = RandomBytes(8192, 9);
        await Ok(f.Client.WriteAsync(5, 0, A, 0, original, fua: false));

        byte[] other = RandomBytes(8192, 10);
        Assert.Equal(new PeerResult(PeerStatus.StaleEpoch, 5), await Result(f.Client.WriteAsync(4, 0, A, 0, other, fua: true)));
        Assert.Equal(new PeerResult(PeerStatus.StaleEpoch, 5), await Result(f.Client.ZeroAsync(4, 0, A, 0, 8192, keepAllocated: false, fua: false)));
        Assert.Equal(new PeerResult(PeerStatus.StaleEpoch, 5), await Result(f.Client.FillHolesAsync(4, 0, A, 8192, other, zeroes: false)));
        Assert.Equal(new PeerResult(PeerStatus.StaleEpoch, 5), await Result(f.Client.DeleteAsync(0, 0, A)));
        Assert.Equal(new PeerResult(PeerStatus.StaleEpoch, 5), await Result(f.Client.FlushAsync(4)));
        var buffer = new byte[8192];
        Assert.Equal(new PeerResult(PeerStatus.StaleEpoch, 5), await Result(f.Client.ReadAsync(4, A, 0, buffer)));
        Assert.Equal(new byte[8192], buffer);

        Assert.Equal(original, await ReadAsync(f, A, 0, 8192));
        Assert.Equal([BlockState.Data, BlockState.Data, BlockState.Hole, BlockState.Hole], await AllocationAsync(f, A, 0, 4));
        Assert.Empty(f.Epochs.CatchUps);

        // PING and STATS are served whatever the epoch, and tell it.
        Assert.Equal(new PeerResult(PeerStatus.Ok, 5), await Result(f.Client.PingAsync()));
    }

    [Fact]
    public async Task A_request_from_a_newer_epoch_makes_the_server_catch_up_first()
    {
        await using var f = new PeerFixture(epoch: 5);
        f.Epochs.OnCatchUp = (seen, _) =>
        {
            // The catalog had moved on; the node's view learns it now.
            f.Epochs.Current = 6;
            return new ValueTask<long>(6L);
        };

        byte[] data = RandomBytes(4096, 11);
        Assert.Equal(new PeerResult(PeerStatus.Ok, 6), await Result(f.Client.WriteAsync(6, 0, A, 0, data, fua: false)));
        Assert.Equal([6L], f.Epochs.CatchUps);
        Assert.Equal(data, await ReadAsync(f, A, 0, 4096));

        // Caught up, but the sender is further ahead still: refused, not applied, epoch 6 told.
        Assert.Equal(new PeerResult(PeerStatus.StaleEpoch, 6), await Result(f.Client.WriteAsync(8, 0, A, 0, RandomBytes(4096, 12), fua: false)));
        Assert.Equal([6L, 8L], f.Epochs.CatchUps);
        Assert.Equal(data, await ReadAsync(f, A, 0, 4096));
    }

    [Fact]
    public async Task A_failing_catch_up_refuses_the_request()
    {
        await using var f = new PeerFixture(epoch: 2);
        f.Epochs.OnCatchUp = (_, _) => ValueTask.FromException<long>(new InvalidOperationException("catalog unreachable"));
        Assert.Equal(new PeerResult(PeerStatus.StaleEpoch, 2), await Result(f.Client.WriteAsync(3, 0, A, 0, RandomBytes(4096, 13), fua: false)));
        Assert.Equal(new byte[4096], await ReadAsync(f, A, 0, 4096));
    }

    // --- Malformed input -----------------------------------------------------------------------

    [Fact]
    public async Task A_bad_magic_closes_the_connection_without_a_reply()
    {
        await using var f = new PeerFixture();
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);
        byte[] request = RawPeer.Request(PeerOpcode.Ping, PeerRequestFlags.None, 0, 1, 0, 0, 0);
        request[0] ^= 0xFF;
        await raw.SendAsync(request);
        Assert.True(await raw.IsClosedAsync());

        // The server itself is fine.
        Assert.Equal(PeerStatus.Ok, (await Result(f.Client.PingAsync())).Status);
    }

    [Fact]
    public async Task An_oversize_read_is_invalid_and_the_connection_continues()
    {
        await using var f = new PeerFixture();
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);
        await raw.SendAsync(RawPeer.Request(PeerOpcode.Read, PeerRequestFlags.None, 1, 1, A.Packed, 0, 64u << 20));
        var (invalid, payload) = await raw.ReceiveAsync();
        Assert.Equal(new PeerReplyHeader(PeerStatus.Invalid, 1, 1, 0), invalid);
        Assert.Empty(payload);

        await raw.SendAsync(RawPeer.Request(PeerOpcode.Ping, PeerRequestFlags.None, 0, 2, 0, 0, 0));
        Assert.Equal(new PeerReplyHeader(PeerStatus.Ok, 1, 2, 0), (await raw.ReceiveAsync()).Header);
    }

    /// <summary>
    /// Found by PeerFuzzTests: a write to object index 2^32 - 1 was taken, and the store's next
    /// checkpoint then failed for good (its slot lies past the largest file the file system allows),
    /// which stopped checkpoints and would have filled the journal. Such an index is INVALID now;
    /// the largest one the store allows is served and checkpointed.
    /// </summary>
    [Fact]
    public async Task An_object_index_beyond_the_store_is_invalid_and_the_largest_one_is_served()
    {
        await using var f = new PeerFixture();
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);
        byte[] data = RandomBytes(4096, 9);
        foreach (uint index in new[] { LocalStore.MaxObjectIndexValue + 1, uint.MaxValue })
        {
            await raw.SendAsync([.. RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.None, 1, index, new ObjectId(3, index).Packed, 0, 4096, 1), .. data]);
            Assert.Equal(new PeerReplyHeader(PeerStatus.Invalid, 1, index, 0), (await raw.ReceiveAsync()).Header);
            await raw.SendAsync(RawPeer.Request(PeerOpcode.Read, PeerRequestFlags.None, 1, 2, new ObjectId(3, index).Packed, 0, 4096));
            Assert.Equal(new PeerReplyHeader(PeerStatus.Invalid, 1, 2, 0), (await raw.ReceiveAsync()).Header);
        }

        var largest = new ObjectId(3, LocalStore.MaxObjectIndexValue);
        await raw.SendAsync([.. RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.Fua, 1, 3, largest.Packed, 0, 4096, 1), .. data]);
        Assert.Equal(new PeerReplyHeader(PeerStatus.Ok, 1, 3, 0), (await raw.ReceiveAsync()).Header);
        Assert.Equal(data, await ReadAsync(f, largest, 0, 4096));

        // Closing checkpoints the largest object's slot: it fits in the meta file.
        await f.KillServerAsync();
        await f.Store.DisposeAsync().AsTask().WaitAsync(PeerFixture.Timeout);
        await using var reopened = LocalStore.Open(f.StoreDirectory, PeerFixture.StoreOptions, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var back = new byte[4096];
        Assert.Equal(StoreStatus.Ok, await reopened.ReadAsync(largest, 0, back));
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task An_oversize_write_is_invalid_and_then_the_connection_closes()
    {
        await using var f = new PeerFixture();
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);
        await raw.SendAsync(RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.None, 1, 7, A.Packed, 0, PeerProtocol.MaxPayloadLength + 1));
        Assert.Equal(new PeerReplyHeader(PeerStatus.Invalid, 1, 7, 0), (await raw.ReceiveAsync()).Header);
        Assert.True(await raw.IsClosedAsync());
    }

    [Fact]
    public async Task Invalid_requests_are_answered_and_their_payload_skipped()
    {
        await using var f = new PeerFixture();
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);
        ulong max = (ulong)f.Store.MaxObjectSize;
        byte[] payload = RandomBytes(4096, 14);

        // Each is invalid; those with a payload send it, and the server must skip it exactly.
        (byte[] Header, bool WithPayload)[] cases =
        [
            (RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.None, 1, 1, A.Packed, max - 100, 4096), true), // past the object
            (RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.Zeroes, 1, 2, A.Packed, 0, 4096), true),       // flag not allowed
            (RawPeer.Request(PeerOpcode.FillHoles, PeerRequestFlags.None, 1, 3, A.Packed, 512, 4096), true),   // misaligned
            (RawPeer.Request(PeerOpcode.None, PeerRequestFlags.None, 1, 4, 0, 0, 0), false),                  // opcode 0
            ((RawPeer.Request((PeerOpcode)77, PeerRequestFlags.None, 1, 5, 0, 0, 0)), false),                  // unknown opcode
            (RawPeer.Request(PeerOpcode.Allocation, PeerRequestFlags.None, 1, 6, A.Packed, 100, 1), false),   // misaligned
            (RawPeer.Request(PeerOpcode.Allocation, PeerRequestFlags.None, 1, 7, A.Packed, 0, 4097), false),  // past the object
            (RawPeer.Request(PeerOpcode.Zero, PeerRequestFlags.None, 1, 8, A.Packed, max, 1), false),          // past the object
            (RawPeer.Request(PeerOpcode.Read, PeerRequestFlags.Fua, 1, 9, A.Packed, 0, 10), false),            // flag not allowed
            (RawPeer.Request(PeerOpcode.Flush, PeerRequestFlags.None, 1, 10, A.Packed, 0, 0), false),          // object id on FLUSH
            (RawPeer.Request(PeerOpcode.Delete, PeerRequestFlags.None, 1, 11, A.Packed, 0, 1), false),         // length on DELETE
            (RawPeer.Request(PeerOpcode.Read, PeerRequestFlags.None, ulong.MaxValue, 12, A.Packed, 0, 1), false), // epoch > 2^63-1
            (RawPeer.Request(PeerOpcode.BlockSums, PeerRequestFlags.None, 1, 13, A.Packed, 100, 1), false),    // misaligned
            (RawPeer.Request(PeerOpcode.BlockSums, PeerRequestFlags.Verify, 1, 14, A.Packed, 0, 4097), false), // more blocks than an object has
            (RawPeer.Request(PeerOpcode.BlockSums, PeerRequestFlags.None, 1, 15, A.Packed, max - 4096, 2), false), // past the object
            (RawPeer.Request(PeerOpcode.BlockSums, PeerRequestFlags.Fua, 1, 16, A.Packed, 0, 1), false),       // flag not allowed
            (RawPeer.Request(PeerOpcode.Allocation, PeerRequestFlags.Verify, 1, 17, A.Packed, 0, 1), false),   // VERIFY is for BLOCKSUMS only
        ];
        foreach ((byte[] header, bool withPayload) in cases)
        {
            await raw.SendAsync(withPayload ? [.. header, .. payload] : header);
        }

        var handles = new HashSet<ulong>();
        for (int i = 0; i < cases.Length; i++)
        {
            (PeerReplyHeader reply, byte[] body) = await raw.ReceiveAsync();
            Assert.Equal(PeerStatus.Invalid, reply.Status);
            Assert.Empty(body);
            handles.Add(reply.Handle);
        }

        Assert.Equal(cases.Length, handles.Count);

        // Still in step: a valid write after all that is applied.
        await raw.SendAsync([.. RawPeer.Request(PeerOpcode.Write, PeerRequestFlags.None, 1, 99, A.Packed, 0, 4096), .. payload]);
        Assert.Equal(new PeerReplyHeader(PeerStatus.Ok, 1, 99, 0), (await raw.ReceiveAsync()).Header);
        Assert.Equal(payload, await ReadAsync(f, A, 0, 4096));
        Assert.Equal([BlockState.Data, BlockState.Hole], await AllocationAsync(f, A, 0, 2));
    }

    [Fact]
    public async Task Random_headers_never_break_the_server_every_one_gets_one_reply()
    {
        await using var f = new PeerFixture(epoch: 7);
        await using RawPeer raw = await RawPeer.ConnectAsync(f.EndPoint);
        var random = new Random(15);
        const int Requests = 2000;
        var sent = new List<byte>();
        for (int i = 0; i < Requests; i++)
        {
            var opcode = (PeerOpcode)random.Next(0, 12);
            var flags = (PeerRequestFlags)random.Next(0, 9);
            ulong epoch = (ulong)random.Next(6, 9);
            ulong id = new ObjectId(20, (uint)random.Next(0, 3)).Packed * (ulong)random.Next(0, 2);
            ulong offset = random.Next(4) switch
            {
                0 => 0,
                1 => (ulong)random.Next(0, 4096) * 4096,
                2 => (ulong)random.Next(0, 16 << 20),
                _ => (ulong)random.NextInt64(),
            };
            uint length = random.Next(3) switch
            {
                0 => 0,
                1 => (uint)random.Next(1, 3) * 4096,
                _ => (uint)random.Next(1, 9000),
            };
            var header = new PeerRequestHeader(opcode, flags, epoch, (ulong)i, id, offset, length);
            sent.AddRange(RawPeer.Request(opcode, flags, epoch, (ulong)i, id, offset, length));
            if (header.HasPayload)
            {
                sent.AddRange(RandomBytes((int)length, i));
            }
        }

        await raw.SendAsync([.. sent]);
        var seen = new HashSet<ulong>();
        for (int i = 0; i < Requests; i++)
        {
            (PeerReplyHeader reply, byte[] _) = await raw.ReceiveAsync();
            Assert.True(seen.Add(reply.Handle), $"handle {reply.Handle} answered twice");
            Assert.InRange((int)reply.Status, 0, (int)PeerStatus.Invalid);
            Assert.Equal(7ul, reply.Epoch);
        }

        Assert.Equal(Requests, seen.Count);
        Assert.Equal(PeerStatus.Ok, (await Result(f.Client.PingAsync())).Status);
    }

    // --- Failures ------------------------------------------------------------------------------

    [Fact]
    public async Task A_killed_server_gives_unreachable_promptly_and_the_client_reconnects_when_it_is_back()
    {
        await using var f = new PeerFixture(epoch: 1);
        await Ok(f.Client.WriteAsync(1, 0, A, 0, RandomBytes(4096, 16), fua: false));

        // Requests held mid-flight in the server: a newer epoch waits in catch-up.
        var holding = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        f.Epochs.OnCatchUp = async (seen, cancellationToken) =>
        {
            holding.TrySetResult();
            await Task.Delay(System.Threading.Timeout.Infinite, cancellationToken);
            return seen;
        };
        Task<PeerResult>[] held = [.. Enumerable.Range(0, 10).Select(i => f.Client.WriteAsync(2, 0, B, i * 4096L, RandomBytes(4096, i), fua: false).AsTask())];
        await holding.Task.WaitAsync(Timeout);

        var clock = Stopwatch.StartNew();
        Task kill = f.KillServerAsync().AsTask();
        PeerResult[] results = await Task.WhenAll(held).WaitAsync(Timeout);
        output.WriteLine($"unreachable after {clock.ElapsedMilliseconds} ms");
        Assert.All(results, r => Assert.Equal(PeerResult.Unreachable, r));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"took {clock.Elapsed}");
        await kill.WaitAsync(Timeout);

        // Nobody listens: still unreachable, quickly (connection refused).
        Assert.Equal(PeerResult.Unreachable, await Result(f.Client.PingAsync()));
        Assert.False(f.Client.IsConnected);

        f.Epochs.OnCatchUp = null;
        f.StartServer();
        Assert.Equal(new PeerResult(PeerStatus.Ok, 1), await Result(f.Client.PingAsync()));
        Assert.Equal(4096, (await ReadAsync(f, A, 0, 4096)).Length);
        Assert.True(f.Client.IsConnected);
    }

    [Fact]
    public async Task A_peer_that_never_answers_times_out_as_unreachable()
    {
        using var silent = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        silent.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        silent.Listen(4);
        var options = new PeerClientOptions { RequestTimeout = TimeSpan.FromMilliseconds(300) };
        await using var client = new PeerClient(silent.LocalEndPoint!, options, NullLogger.Instance);

        var clock = Stopwatch.StartNew();
        Task<PeerResult>[] calls = [.. Enumerable.Range(0, 5).Select(_ => client.PingAsync().AsTask())];
        using Socket accepted = await silent.AcceptAsync().WaitAsync(Timeout);
        Assert.All(await Task.WhenAll(calls).WaitAsync(Timeout), r => Assert.Equal(PeerResult.Unreachable, r));
        output.WriteLine($"timed out after {clock.ElapsedMilliseconds} ms");
        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(300), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task A_silent_peer_that_answers_again_is_reached_by_the_first_call_after_a_quiet_spell()
    {
        var options = new PeerClientOptions { RequestTimeout = TimeSpan.FromMilliseconds(300), ProbeInterval = TimeSpan.FromMilliseconds(200) };
        await using var f = new PeerFixture(epoch: 1, options);
        await Ok(f.Client.WriteAsync(1, 0, A, 0, RandomBytes(4096, 19), fua: false));

        // A newer epoch waits in catch-up until it times out: the client marks the peer silent.
        var release = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        f.Epochs.OnCatchUp = (_, _) => new ValueTask<long>(release.Task);
        Assert.Equal(PeerResult.Unreachable, await Result(f.Client.WriteAsync(2, 0, A, 0, RandomBytes(4096, 20), fua: false)));
        Assert.Equal(PeerResult.Unreachable, await Result(f.Client.PingAsync()));
        f.Epochs.OnCatchUp = null;
        release.SetResult(1);

        // No call for several probe intervals: the client's own probes find the peer back.
        await Eventually.TrueAsync(() => Task.FromResult(f.Client.IsConnected), Timeout, "a probe reconnected without a call");
        Assert.Equal(new PeerResult(PeerStatus.Ok, 1), await Result(f.Client.PingAsync()));
    }

    [Fact]
    public async Task Nobody_listening_is_unreachable_at_once()
    {
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        await using var client = new PeerClient(new IPEndPoint(IPAddress.Loopback, port), new PeerClientOptions(), NullLogger.Instance);
        Assert.Equal(PeerResult.Unreachable, await Result(client.WriteAsync(1, 0, A, 0, new byte[4096], fua: false)));
        Assert.Equal(PeerResult.Unreachable, await Result(client.PingAsync()));
    }

    [Fact]
    public async Task A_canceled_request_throws_and_the_connection_carries_on()
    {
        await using var f = new PeerFixture(epoch: 1);
        var release = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        f.Epochs.OnCatchUp = (_, _) => new ValueTask<long>(release.Task);

        using var cts = new CancellationTokenSource();
        Task<PeerResult> held = f.Client.WriteAsync(2, 0, A, 0, RandomBytes(4096, 17), fua: false, cts.Token).AsTask();
        await Eventually.TrueAsync(() => Task.FromResult(!f.Epochs.CatchUps.IsEmpty), Timeout, "the write reached the server");
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => held.WaitAsync(Timeout));

        // The late reply is dropped; the connection is still good.
        release.SetResult(1);
        Assert.Equal(new PeerResult(PeerStatus.Ok, 1), await Result(f.Client.PingAsync()));
        Assert.Equal(new byte[4096], await ReadAsync(f, A, 0, 4096));
    }

    // --- Throughput ----------------------------------------------------------------------------

    /// <summary>Not a benchmark (the machine is shared): a figure in the test output, and a check
    /// that many in flight work at all. docs/benchmarks.md has the measured numbers.</summary>
    [Fact]
    public async Task Loopback_throughput_of_4_KiB_writes_is_measured()
    {
        await using var f = new PeerFixture();
        byte[] block = RandomBytes(4096, 18);
        TimeSpan duration = TimeSpan.FromSeconds(1.5);

        foreach (int depth in (int[])[1, 16, 64])
        {
            long writes = 0;
            var clock = Stopwatch.StartNew();
            await Task.WhenAll(Enumerable.Range(0, depth).Select(worker => Task.Run(async () =>
            {
                var id = new ObjectId(30, (uint)worker);
                long n = 0;
                while (clock.Elapsed < duration)
                {
                    PeerResult r = await f.Client.WriteAsync(f.Epoch, 0, id, n % 4096 * 4096, block, fua: false);
                    Assert.Equal(PeerStatus.Ok, r.Status);
                    n++;
                }

                Interlocked.Add(ref writes, n);
            }))).WaitAsync(Timeout);
            double perSecond = writes / clock.Elapsed.TotalSeconds;
            output.WriteLine($"{depth,3} in flight: {perSecond,9:N0} writes/s ({perSecond * 4096 / (1 << 20):N0} MiB/s)");
            Assert.True(writes > 0);
        }

        var pings = Stopwatch.StartNew();
        int round = 0;
        for (; pings.Elapsed < TimeSpan.FromSeconds(1); round++)
        {
            await f.Client.PingAsync();
        }

        output.WriteLine($"ping round trips, one at a time: {round / pings.Elapsed.TotalSeconds:N0}/s");
    }
}
