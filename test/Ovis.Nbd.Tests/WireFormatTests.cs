using System.Buffers;
using Ovis.Nbd.Tests.Infrastructure;

namespace Ovis.Nbd.Tests;

/// <summary>Golden vectors for the server's encoders, written out by hand from doc/proto.md.</summary>
public class WireFormatTests
{
    [Fact]
    public void Greeting_IsNbdMagicIHaveOptAndFlags()
    {
        var bytes = new byte[18];
        NbdHandshakeWriter.WriteGreeting(bytes, NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes);

        // 'NBDMAGIC' 'IHAVEOPT', then FIXED_NEWSTYLE (bit 0) | NO_ZEROES (bit 1).
        Assert.Equal(Wire.Hex("4e42444d41474943 49484156454f5054 0003"), bytes);
    }

    [Fact]
    public void OptionReplyHeader_HasReplyMagicOptionTypeAndLength()
    {
        var bytes = new byte[20];
        NbdHandshakeWriter.WriteOptionReplyHeader(bytes, NbdOption.Go, NbdOptionReplyType.ErrUnknown, 0x1234);

        Assert.Equal(Wire.Hex("0003e889045565a9 00000007 80000006 00001234"), bytes);
    }

    [Fact]
    public void InfoExport_IsTypeSizeAndTransmissionFlags()
    {
        var bytes = new byte[12];
        NbdHandshakeWriter.WriteInfoExport(bytes, 0x0000_0001_0000_0000, (NbdTransmissionFlags)0x0d6d);

        Assert.Equal(Wire.Hex("0000 0000000100000000 0d6d"), bytes);
    }

    [Fact]
    public void InfoBlockSize_IsTypeMinimumPreferredMaximum()
    {
        var bytes = new byte[14];
        NbdHandshakeWriter.WriteInfoBlockSize(bytes, 1, 4096, 32 << 20);

        Assert.Equal(Wire.Hex("0003 00000001 00001000 02000000"), bytes);
    }

    [Fact]
    public void ExportNameReply_PadsWith124ZeroesUnlessNoZeroes()
    {
        var padded = new byte[134];
        padded.AsSpan().Fill(0xff);
        Assert.Equal(134, NbdHandshakeWriter.WriteExportNameReply(padded, 1 << 20, (NbdTransmissionFlags)0x0001, noZeroes: false));
        Assert.Equal(Wire.Concat(Wire.Hex("0000000000100000 0001"), new byte[124]), padded);

        var bare = new byte[10];
        Assert.Equal(10, NbdHandshakeWriter.WriteExportNameReply(bare, 1 << 20, (NbdTransmissionFlags)0x0001, noZeroes: true));
        Assert.Equal(Wire.Hex("0000000000100000 0001"), bare);
    }

    [Fact]
    public void SimpleReply_IsMagicErrorCookie()
    {
        var bytes = new byte[16];
        NbdReplyWriter.WriteSimpleReply(bytes, NbdError.EINVAL, 0x0102030405060708);

        Assert.Equal(Wire.Hex("67446698 00000016 0102030405060708"), bytes);
    }

    [Fact]
    public void OffsetDataChunk_HeaderCountsTheOffsetInItsLength()
    {
        var bytes = new byte[28];
        NbdReplyWriter.WriteOffsetDataHeader(bytes, NbdReplyFlags.Done, 0xaabb, 0x2000, 512);

        // magic, flags DONE, type OFFSET_DATA (1), cookie, length 8 + 512, offset.
        Assert.Equal(Wire.Hex("668e33ef 0001 0001 000000000000aabb 00000208 0000000000002000"), bytes);
    }

    [Fact]
    public void OffsetHoleChunk_IsTwelveBytesOfOffsetAndSize()
    {
        var bytes = new byte[32];
        NbdReplyWriter.WriteOffsetHole(bytes, NbdReplyFlags.None, 7, 0x1000, 0x3000);

        Assert.Equal(Wire.Hex("668e33ef 0000 0002 0000000000000007 0000000c 0000000000001000 00003000"), bytes);
    }

    [Fact]
    public void ErrorChunk_CarriesErrnoAndMessage()
    {
        var bytes = new byte[29];
        int written = NbdReplyWriter.WriteErrorChunk(bytes, 9, NbdError.EPERM, "abc"u8);

        Assert.Equal(29, written);
        Assert.Equal(Wire.Hex("668e33ef 0001 8001 0000000000000009 00000009 00000001 0003 616263"), bytes);
    }

    [Fact]
    public void BlockStatusChunk_IsContextIdThenDescriptors()
    {
        var bytes = new byte[24 + 16];
        NbdReplyWriter.WriteBlockStatusHeader(bytes, NbdReplyFlags.Done, 5, 1, 2);
        NbdReplyWriter.WriteBlockDescriptor(bytes.AsSpan(24), 0x1000, 0);
        NbdReplyWriter.WriteBlockDescriptor(bytes.AsSpan(32), 0x3000, 3);

        Assert.Equal(
            Wire.Hex("668e33ef 0001 0005 0000000000000005 00000014 00000001 00001000 00000000 00003000 00000003"),
            bytes);
    }

    [Fact]
    public void Request_IsParsedFromFixedOffsets()
    {
        byte[] bytes = Wire.Hex("25609513 0001 0001 1122334455667788 0000000000010000 00000200");

        NbdRequest request = NbdRequest.Read(bytes);

        Assert.Equal(new NbdRequest(0x25609513, NbdCommandFlags.Fua, NbdCommand.Write, 0x1122334455667788, 0x10000, 0x200), request);
    }

    [Fact]
    public void Request_SplitAcrossSegments_IsParsedThroughScratch()
    {
        byte[] bytes = Wire.Hex("25609513 0000 0007 0000000000000042 0000000000001000 00002000");
        ReadOnlySequence<byte> split = TwoSegments(bytes, 11);

        NbdRequest request = NbdRequest.Read(split, new byte[NbdRequest.Size]);

        Assert.Equal(new NbdRequest(0x25609513, NbdCommandFlags.None, NbdCommand.BlockStatus, 0x42, 0x1000, 0x2000), request);
    }

    [Fact]
    public void OptionHeader_IsParsedFromFixedOffsets()
    {
        NbdOptionHeader header = NbdOptionHeader.Read(Wire.Hex("49484156454f5054 00000007 00000010"));

        Assert.Equal(new NbdOptionHeader(0x49484156454F5054, NbdOption.Go, 16), header);
    }

    private static ReadOnlySequence<byte> TwoSegments(byte[] bytes, int split)
    {
        var first = new Segment(bytes.AsMemory(0, split), 0);
        Segment last = first.Append(bytes.AsMemory(split));
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
