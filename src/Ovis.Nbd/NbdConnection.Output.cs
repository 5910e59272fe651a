using System.Buffers;
using System.IO.Pipelines;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    // Large READ replies are pushed to the socket in pieces of about this size rather than
    // piling a whole batch into the pipe before the first byte leaves.
    private const int FlushThreshold = 256 << 10;

    // Set under _sync once nothing is in flight: the output loop returns when it next holds the writer.
    private bool _outputStopping;

    // Writer only (whoever holds _writerBusy): once the client stops taking replies, operations
    // are still released but nothing more is written.
    private bool _outputFailed;

    // A flush that did not complete where it was started (the client is slow to read): the
    // thread that started it hands it, with the writer, to the output loop instead of waiting.
    private ValueTask<FlushResult> _handedFlush;
    private bool _flushHandedOver;

    /// <summary>
    /// Writes the queued replies on the calling thread if no one else is writing now: the read loop
    /// after a batch it completed itself, a device completion after its call. This is nbdkit's one
    /// hop (the thread that did the work sends the reply) instead of a wake-up of the output loop
    /// per batch. When the writer is busy the reply is already queued, and its holder writes it
    /// before it lets go (<see cref="TryReleaseWriter"/>).
    /// </summary>
    private void WriteRepliesIfIdle()
    {
        lock (_sync)
        {
            if (_writerBusy || _completed.Count == 0)
            {
                return;
            }

            _writerBusy = true;
        }

        PipeWriter output = _transport.Output;
        while (true)
        {
            long unflushed = WriteQueuedReplies(output);
            if (unflushed > 0 && !_outputFailed)
            {
                ValueTask<FlushResult> flush;
                try
                {
                    flush = output.FlushAsync();
                }
                catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
                {
                    OutputFailed(ex);
                    continue;
                }

                if (!flush.IsCompleted)
                {
                    // Never wait here (this may be the read loop or a store's thread): the output
                    // loop takes the writer over and awaits the flush.
                    _handedFlush = flush;
                    Volatile.Write(ref _flushHandedOver, true);
                    _repliesReady.Set();
                    return;
                }

                TakeFlushResult(flush);
            }

            if (TryReleaseWriter(out bool stopping))
            {
                if (stopping)
                {
                    _repliesReady.Set();
                }

                return;
            }
        }
    }

    /// <summary>
    /// Waits for work the writing threads hand it: a flush that did not complete at once (then it
    /// holds the writer), queued replies nobody is writing, or the end of the connection. Replies
    /// are drained in completion order and flushed once per lot (or every FlushThreshold bytes
    /// when the lot is large).
    /// </summary>
    private async Task OutputLoopAsync()
    {
        PipeWriter output = _transport.Output;
        while (true)
        {
            await _repliesReady.WaitAsync();
            bool owner;
            if (Volatile.Read(ref _flushHandedOver))
            {
                _flushHandedOver = false;
                ValueTask<FlushResult> handed = _handedFlush;
                _handedFlush = default;
                owner = true;
                try
                {
                    FlushResult result = await handed;
                    if (result.IsCompleted || result.IsCanceled)
                    {
                        OutputFailed(null);
                    }
                }
                catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
                {
                    OutputFailed(ex);
                }
            }
            else
            {
                lock (_sync)
                {
                    owner = !_writerBusy;
                    _writerBusy = true;
                }
            }

            if (!owner)
            {
                // Another thread is writing; it hands over or lets go (and wakes this loop when stopping).
                continue;
            }

            while (true)
            {
                long unflushed = WriteQueuedReplies(output);
                if (unflushed > 0 && !_outputFailed)
                {
                    // Awaited here rather than in a helper so that a flush the client makes wait
                    // reuses this loop's state machine instead of boxing a new one per batch. No
                    // cancellation token: a stop request still lets in-flight replies go out; it is
                    // the transport's own abort that ends a flush the client never drains.
                    try
                    {
                        FlushResult result = await output.FlushAsync();
                        if (result.IsCompleted || result.IsCanceled)
                        {
                            OutputFailed(null);
                        }
                    }
                    catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
                    {
                        OutputFailed(ex);
                    }
                }

                if (TryReleaseWriter(out bool stopping))
                {
                    if (stopping)
                    {
                        return;
                    }

                    break;
                }
            }
        }
    }

    /// <summary>Encodes queued replies into the pipe until the queue is empty or FlushThreshold bytes
    /// are waiting; the caller holds the writer. Returns the bytes written.</summary>
    private long WriteQueuedReplies(PipeWriter output)
    {
        long unflushed = 0;
        while (TryDequeueCompleted(out NbdOperation? operation))
        {
            if (!_outputFailed)
            {
                try
                {
                    unflushed += WriteReply(output, operation);
                }
                catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
                {
                    OutputFailed(ex);
                }
            }

            // The reply's bytes now live in the pipe: the payload buffer and budget go back.
            ReleaseOperation(operation);
            if (unflushed >= FlushThreshold)
            {
                break;
            }
        }

        return unflushed;
    }

    private void TakeFlushResult(ValueTask<FlushResult> flush)
    {
        try
        {
            FlushResult result = flush.Result;
            if (result.IsCompleted || result.IsCanceled)
            {
                OutputFailed(null);
            }
        }
        catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
        {
            OutputFailed(ex);
        }
    }

    /// <summary>Lets the writer go unless replies were queued meanwhile (then the caller writes them
    /// too); <paramref name="stopping"/> says the connection is ending and the output loop should know.</summary>
    private bool TryReleaseWriter(out bool stopping)
    {
        lock (_sync)
        {
            stopping = _outputStopping;
            if (_completed.Count > 0)
            {
                return false;
            }

            _writerBusy = false;
            return true;
        }
    }

    private bool TryDequeueCompleted([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out NbdOperation? operation)
    {
        lock (_sync)
        {
            return _completed.TryDequeue(out operation);
        }
    }

    private void OutputFailed(Exception? exception)
    {
        if (_outputFailed)
        {
            return;
        }

        _outputFailed = true;
        NbdLog.OutputClosed(_logger, _connectionId, exception);
        // Nobody is listening any more: stop reading requests too.
        _transport.Input.CancelPendingRead();
    }

    /// <summary>Encodes one operation's reply into the pipe; returns the bytes written.</summary>
    private long WriteReply(PipeWriter output, NbdOperation operation)
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
