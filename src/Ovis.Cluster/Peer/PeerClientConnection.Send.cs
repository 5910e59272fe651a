using System.Buffers;
using System.IO.Pipelines;

namespace Ovis.Cluster.Peer;

internal sealed partial class PeerClientConnection
{
    // Large WRITE payloads are pushed to the socket in pieces of about this size.
    private const int FlushThreshold = 256 << 10;

    /// <summary>
    /// The only writer of the socket. Each wake-up copies every queued request into the pipe (the
    /// payload's one copy) and flushes once for the lot: under load many requests share a send.
    /// </summary>
    private async Task SendLoopAsync()
    {
        PipeWriter output = _output;
        try
        {
            while (true)
            {
                await _sendReady.WaitAsync();
                if (IsFailed)
                {
                    return;
                }

                long unflushed = 0;
                while (_sendQueue.TryDequeue(out PeerRequest? request))
                {
                    if (!request.TryBeginCopy())
                    {
                        // Canceled or failed while queued.
                        continue;
                    }

                    try
                    {
                        unflushed += WriteRequest(output, request);
                    }
                    finally
                    {
                        request.EndCopy();
                    }

                    if (unflushed >= FlushThreshold)
                    {
                        if (!await FlushAsync(output))
                        {
                            return;
                        }

                        unflushed = 0;
                    }
                }

                if (unflushed > 0 && !await FlushAsync(output))
                {
                    return;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
        {
            // The socket broke under a write; the receive loop reports it.
            Abort();
        }
        finally
        {
            try
            {
                await output.CompleteAsync();
            }
            catch (Exception ex) when (ex is IOException or ObjectDisposedException)
            {
                // Completing flushes what is left, into a socket that is already gone.
            }
        }
    }

    private async ValueTask<bool> FlushAsync(PipeWriter output)
    {
        FlushResult result = await output.FlushAsync();
        if (result.IsCompleted || result.IsCanceled)
        {
            Abort();
            return false;
        }

        return true;
    }

    private static long WriteRequest(PipeWriter output, PeerRequest request)
    {
        request.Header.Write(output.GetSpan(PeerRequestHeader.Size));
        output.Advance(PeerRequestHeader.Size);
        if (!request.HasPayload || request.Payload.IsEmpty)
        {
            return PeerRequestHeader.Size;
        }

        output.Write(request.Payload.Span);
        return PeerRequestHeader.Size + request.Payload.Length;
    }
}
