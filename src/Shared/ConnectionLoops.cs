using System.Buffers;
using System.IO.Pipelines;

namespace Ovis;

/// <summary>What a connection's parser tells the read loop after a pass over the input.</summary>
internal enum ReceiveStatus
{
    /// <summary>Every whole request has been taken; read more.</summary>
    NeedData,

    /// <summary>The next request does not fit the in-flight budget; wait for a reply to free some.</summary>
    NeedCapacity,

    /// <summary>The connection ends (a disconnect request or a broken framing).</summary>
    Close,
}

/// <summary>The protocol half of a request/reply connection: parsing requests, encoding replies.</summary>
internal interface IRequestProtocol<TOperation>
    where TOperation : class
{
    /// <summary>Parses, checks and starts every whole request in <paramref name="buffer"/>, consuming what it used.</summary>
    ReceiveStatus ReceiveRequests(ref ReadOnlySequence<byte> buffer);

    /// <summary>The client closed its side; <paramref name="bytesLeft"/> says it left part of a request unread.</summary>
    void InputEnded(bool bytesLeft);

    /// <summary>The read loop has ended: releases a request whose payload had not all arrived.</summary>
    void AbandonPartialRequest();

    /// <summary>Encodes one operation's reply into the pipe; returns the bytes written.</summary>
    long WriteReply(PipeWriter output, TOperation operation);

    /// <summary>Returns an operation's buffers, then its budget (<see cref="ConnectionLoops{TOperation}.Release"/>).</summary>
    void ReleaseOperation(TOperation operation);

    /// <summary>The client stopped taking replies (first failure only).</summary>
    void OutputClosed(Exception? exception);
}

/// <summary>
/// The loops of one request/reply connection, shared by the NBD front and the peer protocol: a read
/// loop that parses requests and starts them without waiting, an in-flight budget that stops it
/// reading (pushing back on the client through TCP) when spent, and replies written in completion
/// order by whichever thread finds the writer idle (<see cref="WriteRepliesIfIdle"/>), with an
/// output loop for the flushes a slow reader makes wait.
/// One source file, compiled into both assemblies like <see cref="AsyncSignal"/>.
/// </summary>
internal sealed partial class ConnectionLoops<TOperation>
    where TOperation : class
{
    private readonly IDuplexPipe _transport;
    private readonly IRequestProtocol<TOperation> _protocol;
    private readonly int _maxRequests;
    private readonly long _maxBytes;
    private readonly Lock _sync = new();

    // Guarded by _sync: the in-flight budget, finished operations waiting for a writer, idle
    // operation objects, and who holds the writer.
    private readonly Queue<TOperation> _completed;
    private readonly Stack<TOperation> _idle;
    private int _inFlightRequests;
    private long _inFlightBytes;
    private bool _writerBusy;

    // The output loop waits for work handed to it; the read loop (and the final drain) for budget.
    private readonly AsyncSignal _repliesReady = new();
    private readonly AsyncSignal _capacityFreed = new();

    // Read loop only: replies its batch completed itself, written once the batch is parsed.
    private bool _replySignalPending;

    public ConnectionLoops(IDuplexPipe transport, IRequestProtocol<TOperation> protocol, int maxRequests, long maxBytes)
    {
        _transport = transport;
        _protocol = protocol;
        _maxRequests = maxRequests;
        _maxBytes = maxBytes;
        _completed = new Queue<TOperation>(Math.Min(maxRequests, 1024));
        _idle = new Stack<TOperation>(Math.Min(maxRequests, 1024));
    }

    /// <summary>
    /// Serves requests until the input ends, the framing breaks or <paramref name="cancellationToken"/>
    /// fires; then lets every started request finish and its reply go out (if the client still
    /// listens) before it returns, so every buffer goes back exactly once.
    /// </summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        Task output = OutputLoopAsync();
        try
        {
            await ReadLoopAsync(cancellationToken);
        }
        finally
        {
            _protocol.AbandonPartialRequest();
            WriteRepliesIfIdle();
            await DrainAsync();
            lock (_sync)
            {
                _outputStopping = true;
            }

            _repliesReady.Set();
            await output;
        }
    }

    /// <summary>
    /// Takes a request slot and <paramref name="bytes"/> of budget, or says to wait for a reply to
    /// free some; <paramref name="idle"/> is a released operation to reuse, or null.
    /// </summary>
    public bool TryAdmit(long bytes, out TOperation? idle)
    {
        lock (_sync)
        {
            // A request larger than the whole byte budget is admitted alone rather than never.
            if (_inFlightRequests >= _maxRequests || (_inFlightBytes != 0 && _inFlightBytes + bytes > _maxBytes))
            {
                idle = null;
                return false;
            }

            _inFlightRequests++;
            _inFlightBytes += bytes;
            _idle.TryPop(out idle);
            return true;
        }
    }

    /// <summary>Gives back an operation's slot and <paramref name="bytes"/>; once per admitted operation, after its buffers went back.</summary>
    public void Release(TOperation operation, long bytes)
    {
        lock (_sync)
        {
            _inFlightRequests--;
            _inFlightBytes -= bytes;
            _idle.Push(operation);
        }

        _capacityFreed.Set();
    }

    /// <summary>
    /// Queues a finished operation's reply. The read loop writes once per batch (so its replies
    /// share a flush); any other thread (a store completion) writes at once unless someone is
    /// writing already.
    /// </summary>
    public void Complete(TOperation operation, bool onReadLoop)
    {
        lock (_sync)
        {
            _completed.Enqueue(operation);
        }

        if (onReadLoop)
        {
            _replySignalPending = true;
        }
        else
        {
            WriteRepliesIfIdle();
        }
    }

    private async Task ReadLoopAsync(CancellationToken cancellationToken)
    {
        PipeReader input = _transport.Input;
        while (true)
        {
            ReadResult result = await input.ReadAsync(cancellationToken);
            ReadOnlySequence<byte> buffer = result.Buffer;
            ReceiveStatus status = _protocol.ReceiveRequests(ref buffer);

            // The replies the batch completed synchronously go out together, from this thread.
            if (_replySignalPending)
            {
                _replySignalPending = false;
                WriteRepliesIfIdle();
            }

            switch (status)
            {
                case ReceiveStatus.NeedData:
                    input.AdvanceTo(buffer.Start, buffer.End);
                    if (result.IsCompleted || result.IsCanceled)
                    {
                        _protocol.InputEnded(bytesLeft: !buffer.IsEmpty);
                        return;
                    }

                    break;

                case ReceiveStatus.NeedCapacity:
                    // Leave the unadmitted header in the pipe (examined == consumed, so the next
                    // read returns at once) and stop reading until a reply frees budget.
                    input.AdvanceTo(buffer.Start);
                    if (result.IsCanceled)
                    {
                        return;
                    }

                    await _capacityFreed.WaitAsync();
                    break;

                default:
                    input.AdvanceTo(buffer.Start);
                    return;
            }
        }
    }

    private async ValueTask DrainAsync()
    {
        while (true)
        {
            lock (_sync)
            {
                if (_inFlightRequests == 0)
                {
                    return;
                }
            }

            await _capacityFreed.WaitAsync();
        }
    }
}
