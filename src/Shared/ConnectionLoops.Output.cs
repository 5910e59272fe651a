using System.IO.Pipelines;

namespace Ovis;

internal sealed partial class ConnectionLoops<TOperation>
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

    // A reset socket, a stop request or an aborted Kestrel connection: the ordinary ways for a
    // connection to end abruptly, none of them a server bug.
    public static bool IsTransportFailure(Exception ex)
        => ex is IOException or OperationCanceledException or ObjectDisposedException;

    /// <summary>
    /// Writes the queued replies on the calling thread if no one else is writing now: the read loop
    /// after a batch it completed itself, a store completion after its call. This is nbdkit's one
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
        while (TryDequeueCompleted(out TOperation? operation))
        {
            if (!_outputFailed)
            {
                try
                {
                    unflushed += _protocol.WriteReply(output, operation);
                }
                catch (Exception ex) when (IsTransportFailure(ex) || ex is InvalidOperationException)
                {
                    OutputFailed(ex);
                }
            }

            // The reply's bytes now live in the pipe: the buffers and budget go back.
            _protocol.ReleaseOperation(operation);
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

    private bool TryDequeueCompleted([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out TOperation? operation)
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
        _protocol.OutputClosed(exception);
        // Nobody is listening any more: stop reading requests too.
        _transport.Input.CancelPendingRead();
    }
}
