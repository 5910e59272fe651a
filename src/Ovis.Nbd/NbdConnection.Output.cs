using System.Buffers;
using System.IO.Pipelines;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    long IRequestProtocol<NbdOperation>.WriteReply(PipeWriter output, NbdOperation operation)
    {
        NbdRequest request = operation.Request;
        if (!_structuredReplies)
        {
            NbdReplyWriter.WriteSimpleReply(output.GetSpan(NbdReplyWriter.SimpleReplySize), operation.Error, request.Cookie);
            output.Advance(NbdReplyWriter.SimpleReplySize);
            if (request.Command != NbdCommand.Read || operation.Error != NbdError.None || request.Length == 0)
            {
                return NbdReplyWriter.SimpleReplySize;
            }

            output.Write(operation.Buffer.AsSpan(0, (int)request.Length));
            return NbdReplyWriter.SimpleReplySize + request.Length;
        }

        if (operation.Error != NbdError.None)
        {
            // Structured errors for every command: a READ may not get a simple reply at all,
            // and the others gain a message a human can read.
            ReadOnlySpan<byte> message = NbdErrorMessages.Get(operation.Reason);
            int size = NbdReplyWriter.GetErrorChunkSize(message);
            NbdReplyWriter.WriteErrorChunk(output.GetSpan(size), request.Cookie, operation.Error, message);
            output.Advance(size);
            return size;
        }

        switch (request.Command)
        {
            case NbdCommand.Read:
                return WriteReadChunks(output, operation);
            case NbdCommand.BlockStatus:
                return WriteBlockStatusChunk(output, operation);
            default:
                // Success without payload: the 16-byte simple reply is allowed and shortest.
                NbdReplyWriter.WriteSimpleReply(output.GetSpan(NbdReplyWriter.SimpleReplySize), NbdError.None, request.Cookie);
                output.Advance(NbdReplyWriter.SimpleReplySize);
                return NbdReplyWriter.SimpleReplySize;
        }
    }

    /// <summary>One content chunk per segment; the last carries DONE, since every byte was read before the first was sent.</summary>
    private static long WriteReadChunks(PipeWriter output, NbdOperation operation)
    {
        NbdRequest request = operation.Request;
        List<NbdExtent> segments = operation.Extents;
        if (segments.Count == 0)
        {
            // A zero-length read: nothing to describe, so just the final NONE chunk.
            NbdReplyWriter.WriteChunkHeader(output.GetSpan(NbdReplyWriter.ChunkHeaderSize), NbdReplyFlags.Done, NbdReplyType.None, request.Cookie, 0);
            output.Advance(NbdReplyWriter.ChunkHeaderSize);
            return NbdReplyWriter.ChunkHeaderSize;
        }

        long written = 0;
        long start = 0;
        for (int i = 0; i < segments.Count; i++)
        {
            NbdExtent segment = segments[i];
            NbdReplyFlags flags = i == segments.Count - 1 ? NbdReplyFlags.Done : NbdReplyFlags.None;
            ulong offset = request.Offset + (ulong)start;
            if ((segment.Flags & NbdExtentFlags.Zero) != 0)
            {
                NbdReplyWriter.WriteOffsetHole(output.GetSpan(NbdReplyWriter.OffsetHoleSize), flags, request.Cookie, offset, (uint)segment.Length);
                output.Advance(NbdReplyWriter.OffsetHoleSize);
                written += NbdReplyWriter.OffsetHoleSize;
            }
            else
            {
                NbdReplyWriter.WriteOffsetDataHeader(output.GetSpan(NbdReplyWriter.OffsetDataHeaderSize), flags, request.Cookie, offset, (int)segment.Length);
                output.Advance(NbdReplyWriter.OffsetDataHeaderSize);
                output.Write(operation.Buffer.AsSpan((int)start, (int)segment.Length));
                written += NbdReplyWriter.OffsetDataHeaderSize + segment.Length;
            }

            start += segment.Length;
        }

        return written;
    }

    /// <summary>One BLOCK_STATUS chunk per selected context: base:allocation first, then the bitmaps; the last carries DONE.</summary>
    private long WriteBlockStatusChunk(PipeWriter output, NbdOperation operation)
    {
        long written = 0;
        int bitmaps = operation.BitmapContexts;
        if (_baseAllocationSelected)
        {
            written += WriteBlockStatusContext(output, operation.Request.Cookie, NbdLimits.BaseAllocationContextId, operation.Extents, bitmaps == 0);
        }

        for (int i = 0; i < bitmaps; i++)
        {
            written += WriteBlockStatusContext(output, operation.Request.Cookie, NbdLimits.FirstBitmapContextId + (uint)i, operation.BitmapExtents[i], i == bitmaps - 1);
        }

        return written;
    }

    private static long WriteBlockStatusContext(PipeWriter output, ulong cookie, uint contextId, List<NbdExtent> extents, bool last)
    {
        NbdReplyWriter.WriteBlockStatusHeader(
            output.GetSpan(NbdReplyWriter.BlockStatusHeaderSize),
            last ? NbdReplyFlags.Done : NbdReplyFlags.None,
            cookie,
            contextId,
            extents.Count);
        output.Advance(NbdReplyWriter.BlockStatusHeaderSize);

        // Extents were clamped to the request's range, whose length is 32 bits.
        for (int i = 0; i < extents.Count; i++)
        {
            NbdReplyWriter.WriteBlockDescriptor(output.GetSpan(NbdReplyWriter.BlockDescriptorSize), (uint)extents[i].Length, (uint)extents[i].Flags);
            output.Advance(NbdReplyWriter.BlockDescriptorSize);
        }

        return NbdReplyWriter.BlockStatusHeaderSize + ((long)extents.Count * NbdReplyWriter.BlockDescriptorSize);
    }
}
