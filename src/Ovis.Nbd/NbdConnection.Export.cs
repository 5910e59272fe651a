using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Text;
using System.Text.Unicode;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    // Set when the handshake selects an export; read-only during transmission.
    private IBlockDevice? _device;
    private long _exportSize;
    private NbdTransmissionFlags _transmissionFlags;
    private bool _structuredReplies;

    // The device opened for an INFO or meta-context option, kept so that a following GO for the
    // same name uses the very device it described (doc/proto.md asks INFO and GO to agree).
    private IBlockDevice? _candidate;
    private string? _candidateName;

    // Sent with NBD_REP_ERR_UNKNOWN when the provider failed; the log has the exception.
    private const string OpenFaultMessage = "the export could not be opened because of a server error; see the server log";

    /// <summary>
    /// How opening an export ended: a device; no such export (Device and Refusal both null); or
    /// a refusal, whose text goes to the client.
    /// </summary>
    private readonly record struct ExportOpening(IBlockDevice? Device, string? Refusal);

    private ValueTask<HandshakeStep> HandleExportNameAsync(ReadOnlySpan<byte> data)
    {
        // EXPORT_NAME cannot answer with an error: "the server MUST terminate the session".
        if (!TryDecodeString(data, out string name))
        {
            NbdLog.ProtocolError(_logger, _connectionId, "export name is not a valid string");
            return new ValueTask<HandshakeStep>(HandshakeStep.Close);
        }

        return FinishExportNameAsync(name);
    }

    private async ValueTask<HandshakeStep> FinishExportNameAsync(string name)
    {
        ExportOpening opening = await OpenExportAsync(name);
        if (opening.Device is null)
        {
            // A refusal has been logged with its reason; only the session's end can tell the client.
            if (opening.Refusal is null)
            {
                NbdLog.ExportNotFound(_logger, _connectionId, name);
            }

            return HandshakeStep.Close;
        }

        SelectExport(name);
        PipeWriter output = _transport.Output;
        int size = NbdHandshakeWriter.WriteExportNameReply(
            output.GetSpan(NbdHandshakeWriter.ExportNameReplySize + NbdHandshakeWriter.ExportNameReplyPadding),
            (ulong)_exportSize,
            _transmissionFlags,
            _noZeroes);
        output.Advance(size);
        return HandshakeStep.Transmit;
    }

    /* NBD_OPT_INFO and NBD_OPT_GO data:

           +---------------------------------------------------------------+
         0 |                     name length (32)                          |
           +---------------------------------------------------------------+
         4 |  name: name length bytes                                   ...
           +-------------------------------+-------------------------------+
           | information request count (16)|  requests: 16 bits each    ...
           +-------------------------------+-------------------------------+
    */
    private ValueTask<HandshakeStep> HandleInfoOrGoAsync(NbdOption option, ReadOnlySpan<byte> data)
    {
        if (!TryParseInfoRequest(data, out string name, out bool wantsName, out bool wantsDescription))
        {
            WriteOptionReply(option, NbdOptionReplyType.ErrInvalid);
            return new ValueTask<HandshakeStep>(HandshakeStep.NextOption);
        }

        return FinishInfoOrGoAsync(option, name, wantsName, wantsDescription);
    }

    private static bool TryParseInfoRequest(ReadOnlySpan<byte> data, out string name, out bool wantsName, out bool wantsDescription)
    {
        name = "";
        wantsName = false;
        wantsDescription = false;
        if (data.Length < 6)
        {
            return false;
        }

        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 6))
        {
            return false;
        }

        ReadOnlySpan<byte> nameBytes = data.Slice(4, (int)nameLength);
        ReadOnlySpan<byte> requests = data[(4 + (int)nameLength)..];
        int requestCount = BinaryPrimitives.ReadUInt16BigEndian(requests);
        requests = requests[2..];
        if (requests.Length != requestCount * 2 || !TryDecodeString(nameBytes, out name))
        {
            return false;
        }

        for (int i = 0; i < requests.Length; i += 2)
        {
            // Unknown information requests are ignored, as the spec requires.
            switch ((NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(requests[i..]))
            {
                case NbdInfoType.Name:
                    wantsName = true;
                    break;
                case NbdInfoType.Description:
                    wantsDescription = true;
                    break;
            }
        }

        return true;
    }

    private async ValueTask<HandshakeStep> FinishInfoOrGoAsync(NbdOption option, string name, bool wantsName, bool wantsDescription)
    {
        ExportOpening opening = await OpenExportAsync(name);
        if (opening.Device is not { } device)
        {
            WriteOpenFailure(option, opening);
            return HandshakeStep.NextOption;
        }

        WriteExportInfo(option, device, name, wantsName, wantsDescription);
        WriteOptionReply(option, NbdOptionReplyType.Ack);
        if (option == NbdOption.Info)
        {
            return HandshakeStep.NextOption;
        }

        SelectExport(name);
        return HandshakeStep.Transmit;
    }

    private void WriteExportInfo(NbdOption option, IBlockDevice device, string name, bool wantsName, bool wantsDescription)
    {
        Span<byte> info = stackalloc byte[Math.Max(NbdHandshakeWriter.InfoExportSize, NbdHandshakeWriter.InfoBlockSizeSize)];
        NbdHandshakeWriter.WriteInfoExport(info, (ulong)device.Size, ComputeTransmissionFlags(device));
        WriteOptionReply(option, NbdOptionReplyType.Info, info[..NbdHandshakeWriter.InfoExportSize]);

        // Sent whether or not it was asked for: it states the defaults and costs nothing.
        // The preferred size is capped so that the maximum is never below it ("Size constraints").
        uint maximum = (uint)_options.MaxPayloadSize;
        uint preferred = Math.Min((uint)Math.Max(device.PreferredBlockSize, 512), maximum);
        NbdHandshakeWriter.WriteInfoBlockSize(info, 1, preferred, maximum);
        WriteOptionReply(option, NbdOptionReplyType.Info, info[..NbdHandshakeWriter.InfoBlockSizeSize]);

        if (wantsName)
        {
            WriteInfoText(option, NbdInfoType.Name, name);
        }

        if (wantsDescription && FindDescription(name) is { Length: > 0 } description)
        {
            WriteInfoText(option, NbdInfoType.Description, description);
        }
    }

    private void HandleList(ReadOnlySpan<byte> data)
    {
        if (data.Length != 0)
        {
            WriteOptionReply(NbdOption.List, NbdOptionReplyType.ErrInvalid);
            return;
        }

        /* NBD_REP_SERVER data: name length (32), name, then the description filling the rest. */
        PipeWriter output = _transport.Output;
        IReadOnlyList<(string Name, string Description)> exports = _exports.ListExports();
        for (int i = 0; i < exports.Count; i++)
        {
            (string name, string description) = exports[i];
            int nameLength = Encoding.UTF8.GetByteCount(name);
            int dataLength = 4 + nameLength + Encoding.UTF8.GetByteCount(description);
            Span<byte> span = output.GetSpan(NbdHandshakeWriter.OptionReplyHeaderSize + dataLength);
            NbdHandshakeWriter.WriteOptionReplyHeader(span, NbdOption.List, NbdOptionReplyType.Server, (uint)dataLength);
            span = span[NbdHandshakeWriter.OptionReplyHeaderSize..];
            BinaryPrimitives.WriteUInt32BigEndian(span, (uint)nameLength);
            int written = 4 + Encoding.UTF8.GetBytes(name, span[4..]);
            Encoding.UTF8.GetBytes(description, span[written..]);
            output.Advance(NbdHandshakeWriter.OptionReplyHeaderSize + dataLength);
        }

        WriteOptionReply(NbdOption.List, NbdOptionReplyType.Ack);
    }

    /* NBD_REP_INFO data for NBD_INFO_NAME and NBD_INFO_DESCRIPTION: the type (16), then the text. */
    private void WriteInfoText(NbdOption option, NbdInfoType type, string text)
    {
        PipeWriter output = _transport.Output;
        int dataLength = 2 + Encoding.UTF8.GetByteCount(text);
        Span<byte> span = output.GetSpan(NbdHandshakeWriter.OptionReplyHeaderSize + dataLength);
        NbdHandshakeWriter.WriteOptionReplyHeader(span, option, NbdOptionReplyType.Info, (uint)dataLength);
        span = span[NbdHandshakeWriter.OptionReplyHeaderSize..];
        BinaryPrimitives.WriteUInt16BigEndian(span, (ushort)type);
        Encoding.UTF8.GetBytes(text, span[2..]);
        output.Advance(NbdHandshakeWriter.OptionReplyHeaderSize + dataLength);
    }

    private string? FindDescription(string name)
    {
        IReadOnlyList<(string Name, string Description)> exports = _exports.ListExports();
        for (int i = 0; i < exports.Count; i++)
        {
            if (string.Equals(exports[i].Name, name, StringComparison.Ordinal))
            {
                return exports[i].Description;
            }
        }

        return null;
    }

    private NbdTransmissionFlags ComputeTransmissionFlags(IBlockDevice device)
    {
        // CAN_MULTI_CONN: IBlockDevice promises that completed writes and flushes are visible
        // to every connection of the export.
        NbdTransmissionFlags flags = NbdTransmissionFlags.HasFlags
            | NbdTransmissionFlags.SendFlush
            | NbdTransmissionFlags.SendFua
            | NbdTransmissionFlags.SendCache
            | NbdTransmissionFlags.CanMultiConn;

        // "MUST leave this flag clear if structured replies have not been negotiated".
        if (_structuredReplies)
        {
            flags |= NbdTransmissionFlags.SendDf;
        }

        flags |= device.IsReadOnly
            ? NbdTransmissionFlags.ReadOnly
            : NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero;
        return flags;
    }

    /// <summary>
    /// Opens <paramref name="name"/>, or hands back the device an earlier option opened for it.
    /// Nothing the provider throws escapes: a refusal comes back with its reason, a fault with a
    /// generic one, both logged here.
    /// </summary>
    private async ValueTask<ExportOpening> OpenExportAsync(string name)
    {
        if (_candidate is not null && string.Equals(_candidateName, name, StringComparison.Ordinal))
        {
            return new ExportOpening(_candidate, null);
        }

        ReleaseCandidateExport();
        IBlockDevice? device;
        PauseHandshakeLimit();
        try
        {
            device = await _exports.OpenAsync(name);
        }
        catch (ExportUnavailableException ex)
        {
            NbdLog.ExportUnavailable(_logger, _connectionId, name, ex.Message);
            return new ExportOpening(null, ex.Message);
        }
        catch (Exception ex)
        {
            // The provider says "no such export" with null and "not here" with
            // ExportUnavailableException; anything else is a server fault, not the client's.
            NbdLog.ExportOpenFault(_logger, _connectionId, name, ex);
            return new ExportOpening(null, OpenFaultMessage);
        }
        finally
        {
            ResumeHandshakeLimit();
        }

        if (device is not null)
        {
            _candidate = device;
            _candidateName = name;
        }

        return new ExportOpening(device, null);
    }

    /// <summary>NBD_REP_ERR_UNKNOWN for an export that is missing (no text) or refused (its reason).</summary>
    private void WriteOpenFailure(NbdOption option, ExportOpening opening)
    {
        if (opening.Refusal is null)
        {
            WriteOptionReply(option, NbdOptionReplyType.ErrUnknown);
        }
        else
        {
            WriteOptionError(option, NbdOptionReplyType.ErrUnknown, opening.Refusal);
        }
    }

    private void ReleaseCandidateExport()
    {
        _candidate?.Dispose();
        _candidate = null;
        _candidateName = null;
    }

    /// <summary>Ends the handshake on the export last opened; the connection now owns its device.</summary>
    private void SelectExport(string name)
    {
        IBlockDevice device = _candidate!;
        _candidate = null;
        _candidateName = null;
        _device = device;
        _exportSize = device.Size;
        _transmissionFlags = ComputeTransmissionFlags(device);
        // BLOCK_STATUS needs contexts set for this very export (doc/proto.md, "Metadata querying").
        bool forThis = string.Equals(_metaContextExport, name, StringComparison.Ordinal);
        _baseAllocationSelected = forThis && _metaBaseSelected;
        _bitmapContexts = forThis ? _metaBitmapsSelected : [];
        NbdLog.ExportSelected(_logger, _connectionId, name, _exportSize, (ushort)_transmissionFlags);
    }

    /// <summary>Strings are UTF-8 without NUL and at most 4096 bytes (doc/proto.md, "Conventions").</summary>
    private static bool TryDecodeString(ReadOnlySpan<byte> bytes, out string value)
    {
        if (bytes.Length > NbdLimits.MaxStringLength || bytes.Contains((byte)0) || !Utf8.IsValid(bytes))
        {
            value = "";
            return false;
        }

        value = Encoding.UTF8.GetString(bytes);
        return true;
    }
}
