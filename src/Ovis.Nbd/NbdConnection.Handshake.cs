using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Text.Unicode;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    private const NbdClientFlags KnownClientFlags = NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes;

    private bool _noZeroes;

    private enum HandshakeStep
    {
        NextOption,
        Transmit,
        Close,
    }

    /// <summary>Greets the client and answers options until one selects an export (true) or the session ends (false).</summary>
    private async Task<bool> HandshakeAsync(CancellationToken cancellationToken)
    {
        // The client flags and each option header are read into this small array; option data
        // into a pooled buffer of its own length, rented only while that option is handled, so
        // a connection that says nothing (or sits between options) holds no buffer at all.
        byte[] scratch = new byte[NbdOptionHeader.Size];
        PipeWriter output = _transport.Output;
        NbdHandshakeWriter.WriteGreeting(output.GetSpan(NbdHandshakeWriter.GreetingSize), NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes);
        output.Advance(NbdHandshakeWriter.GreetingSize);
        if (!await FlushHandshakeAsync(cancellationToken)
            || !await ReadExactAsync(scratch.AsMemory(0, 4), cancellationToken))
        {
            return false;
        }

        var clientFlags = (NbdClientFlags)BinaryPrimitives.ReadUInt32BigEndian(scratch);
        if ((clientFlags & ~KnownClientFlags) != 0)
        {
            // "the server MUST drop the TCP connection if the client sets an unknown flag".
            NbdLog.ProtocolError(_logger, _connectionId, "unknown client flags");
            return false;
        }

        _noZeroes = (clientFlags & NbdClientFlags.NoZeroes) != 0;

        while (true)
        {
            if (!await ReadExactAsync(scratch.AsMemory(0, NbdOptionHeader.Size), cancellationToken))
            {
                return false;
            }

            NbdOptionHeader header = NbdOptionHeader.Read(scratch);
            if (header.Magic != NbdMagic.Option)
            {
                NbdLog.ProtocolError(_logger, _connectionId, "bad option magic");
                return false;
            }

            HandshakeStep step;
            if (header.Length > NbdLimits.MaxOptionLength)
            {
                // EXPORT_NAME has no way to report an error, and past the skip limit the
                // client is more likely hostile than confused: end the session for both.
                if (header.Option == NbdOption.ExportName || header.Length > NbdLimits.MaxSkippedOptionLength)
                {
                    NbdLog.ProtocolError(_logger, _connectionId, "option data too long");
                    return false;
                }

                if (!await SkipAsync(header.Length, cancellationToken))
                {
                    return false;
                }

                WriteOptionReply(header.Option, NbdOptionReplyType.ErrTooBig);
                step = HandshakeStep.NextOption;
            }
            else
            {
                int length = (int)header.Length;
                byte[] data = length == 0 ? [] : BufferPool.Rent(length);
                try
                {
                    if (!await ReadExactAsync(data.AsMemory(0, length), cancellationToken))
                    {
                        return false;
                    }

                    step = await HandleOptionAsync(header.Option, data.AsMemory(0, length));
                }
                finally
                {
                    if (length != 0)
                    {
                        BufferPool.Return(data);
                    }
                }
            }

            if (!await FlushHandshakeAsync(cancellationToken) || step == HandshakeStep.Close)
            {
                return false;
            }

            if (step == HandshakeStep.Transmit)
            {
                return true;
            }
        }
    }

    /// <summary>
    /// Answers one option. Those that name an export wait for it to open; <paramref name="data"/>
    /// (the handshake's buffer) is parsed before that wait and not touched after it.
    /// </summary>
    private ValueTask<HandshakeStep> HandleOptionAsync(NbdOption option, ReadOnlyMemory<byte> data)
    {
        switch (option)
        {
            case NbdOption.ExportName:
                return HandleExportNameAsync(data.Span);

            case NbdOption.Info:
            case NbdOption.Go:
                return HandleInfoOrGoAsync(option, data.Span);

            case NbdOption.ListMetaContext:
            case NbdOption.SetMetaContext:
                return HandleMetaContextAsync(option, data.Span);

            default:
                return new ValueTask<HandshakeStep>(HandleOption(option, data.Span));
        }
    }

    /// <summary>The options that never open an export.</summary>
    private HandshakeStep HandleOption(NbdOption option, ReadOnlySpan<byte> data)
    {
        switch (option)
        {
            case NbdOption.Abort:
                // Any data is ignored, as the spec asks; the client drops the connection next.
                WriteOptionReply(option, NbdOptionReplyType.Ack);
                return HandshakeStep.Close;

            case NbdOption.List:
                HandleList(data);
                return HandshakeStep.NextOption;

            case NbdOption.StructuredReply:
                if (data.Length != 0)
                {
                    WriteOptionReply(option, NbdOptionReplyType.ErrInvalid);
                }
                else
                {
                    _structuredReplies = true;
                    WriteOptionReply(option, NbdOptionReplyType.Ack);
                }

                return HandshakeStep.NextOption;

            default:
                // STARTTLS (this server is NOTLS), EXTENDED_HEADERS (refusing them is correct and
                // keeps compact headers, which libnbd 1.14 and qemu 7.2 use anyway) and every
                // option this server does not know: "MUST reply ... with NBD_REP_ERR_UNSUP".
                WriteOptionReply(option, NbdOptionReplyType.ErrUnsup);
                return HandshakeStep.NextOption;
        }
    }

    private void WriteOptionReply(NbdOption option, NbdOptionReplyType type, ReadOnlySpan<byte> data = default)
    {
        PipeWriter output = _transport.Output;
        int size = NbdHandshakeWriter.OptionReplyHeaderSize + data.Length;
        Span<byte> span = output.GetSpan(size);
        NbdHandshakeWriter.WriteOptionReplyHeader(span, option, type, (uint)data.Length);
        data.CopyTo(span[NbdHandshakeWriter.OptionReplyHeaderSize..]);
        output.Advance(size);
    }

    /// <summary>
    /// An error reply with a message for the operator: "All error replies MAY have some data set,
    /// in which case that data is an error message string suitable for display to the user".
    /// Cut to its first line and to the 4096 bytes a string may have (libnbd drops the session on
    /// a longer one), never inside a character.
    /// </summary>
    private void WriteOptionError(NbdOption option, NbdOptionReplyType type, string message)
    {
        ReadOnlySpan<char> text = message;
        int lineEnd = text.IndexOfAny('\r', '\n', '\0');
        if (lineEnd >= 0)
        {
            text = text[..lineEnd];
        }

        PipeWriter output = _transport.Output;
        Span<byte> span = output.GetSpan(NbdHandshakeWriter.OptionReplyHeaderSize + NbdLimits.MaxStringLength);
        // When the text does not fit this writes the characters that do and stops.
        Utf8.FromUtf16(text, span.Slice(NbdHandshakeWriter.OptionReplyHeaderSize, NbdLimits.MaxStringLength), out _, out int written);
        NbdHandshakeWriter.WriteOptionReplyHeader(span, option, type, (uint)written);
        output.Advance(NbdHandshakeWriter.OptionReplyHeaderSize + written);
    }

    private async ValueTask<bool> FlushHandshakeAsync(CancellationToken cancellationToken)
    {
        FlushResult result = await _transport.Output.FlushAsync(cancellationToken);
        return !result.IsCompleted && !result.IsCanceled;
    }

    /// <summary>Fills <paramref name="destination"/> from the client; false if the client went away first.</summary>
    private async ValueTask<bool> ReadExactAsync(Memory<byte> destination, CancellationToken cancellationToken)
    {
        if (destination.IsEmpty)
        {
            return true;
        }

        PipeReader input = _transport.Input;
        while (true)
        {
            ReadResult result = await input.ReadAsync(cancellationToken);
            ReadOnlySequence<byte> buffer = result.Buffer;
            if (buffer.Length >= destination.Length)
            {
                buffer.Slice(0, destination.Length).CopyTo(destination.Span);
                input.AdvanceTo(buffer.GetPosition(destination.Length));
                return true;
            }

            input.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted || result.IsCanceled)
            {
                return false;
            }
        }
    }

    /// <summary>Discards <paramref name="count"/> bytes of client data without buffering them.</summary>
    private async ValueTask<bool> SkipAsync(long count, CancellationToken cancellationToken)
    {
        PipeReader input = _transport.Input;
        while (count > 0)
        {
            ReadResult result = await input.ReadAsync(cancellationToken);
            ReadOnlySequence<byte> buffer = result.Buffer;
            long skipped = Math.Min(count, buffer.Length);
            input.AdvanceTo(buffer.GetPosition(skipped));
            count -= skipped;
            if (count > 0 && (result.IsCompleted || result.IsCanceled))
            {
                return false;
            }
        }

        return true;
    }
}
