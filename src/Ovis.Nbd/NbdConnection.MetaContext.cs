using System.Buffers.Binary;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    private static ReadOnlySpan<byte> BaseAllocation => "base:allocation"u8;
    private static ReadOnlySpan<byte> BaseNamespace => "base:"u8;

    // What the last NBD_OPT_SET_META_CONTEXT chose, and for which export.
    private bool _metaContextsSelected;
    private string? _metaContextExport;

    // Transmission: base:allocation was selected for the export in use.
    private bool _baseAllocationSelected;

    /* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT data:

           +---------------------------------------------------------------+
         0 |                   export name length (32)                     |
           +---------------------------------------------------------------+
         4 |  export name                                               ...
           +---------------------------------------------------------------+
           |                     number of queries (32)                    |
           +---------------------------------------------------------------+
           |  per query: query length (32), then the query              ...
           +---------------------------------------------------------------+
    */
    private ValueTask<HandshakeStep> HandleMetaContextAsync(NbdOption option, ReadOnlySpan<byte> data)
    {
        bool set = option == NbdOption.SetMetaContext;
        if (set)
        {
            // "Issuing this command replaces all previously-set metadata contexts (including
            // when this command fails)".
            _metaContextsSelected = false;
            _metaContextExport = null;
            if (!_structuredReplies)
            {
                // "This option MUST NOT be requested unless structured replies have been
                // negotiated first ... a server SHOULD send NBD_REP_ERR_INVALID".
                WriteOptionReply(option, NbdOptionReplyType.ErrInvalid);
                return new ValueTask<HandshakeStep>(HandshakeStep.NextOption);
            }
        }

        if (!TryParseMetaContextQueries(data, set, out ReadOnlySpan<byte> nameBytes, out bool matchesBaseAllocation)
            || !TryDecodeString(nameBytes, out string name))
        {
            WriteOptionReply(option, NbdOptionReplyType.ErrInvalid);
            return new ValueTask<HandshakeStep>(HandshakeStep.NextOption);
        }

        return FinishMetaContextAsync(option, name, matchesBaseAllocation);
    }

    private async ValueTask<HandshakeStep> FinishMetaContextAsync(NbdOption option, string name, bool matchesBaseAllocation)
    {
        ExportOpening opening = await OpenExportAsync(name);
        if (opening.Device is null)
        {
            WriteOpenFailure(option, opening);
            return HandshakeStep.NextOption;
        }

        bool set = option == NbdOption.SetMetaContext;
        if (matchesBaseAllocation)
        {
            WriteBaseAllocationContext(option, set);
        }

        if (set)
        {
            _metaContextsSelected = matchesBaseAllocation;
            _metaContextExport = name;
        }

        WriteOptionReply(option, NbdOptionReplyType.Ack);
        return HandshakeStep.NextOption;
    }

    /* NBD_REP_META_CONTEXT data: context id (32), then the context name. */
    private void WriteBaseAllocationContext(NbdOption option, bool set)
    {
        Span<byte> reply = stackalloc byte[4 + BaseAllocation.Length];
        // The id in a LIST reply is reserved and SHOULD be zero.
        BinaryPrimitives.WriteUInt32BigEndian(reply, set ? NbdLimits.BaseAllocationContextId : 0);
        BaseAllocation.CopyTo(reply[4..]);
        WriteOptionReply(option, NbdOptionReplyType.MetaContext, reply);
    }

    /// <summary>
    /// Walks the queries, checking every length against the option data, and tells whether any
    /// of them picks base:allocation. Queries for other namespaces or unknown leaves are ignored,
    /// as the spec requires. "base:" lists the whole namespace but selects nothing.
    /// </summary>
    private static bool TryParseMetaContextQueries(ReadOnlySpan<byte> data, bool set, out ReadOnlySpan<byte> name, out bool matchesBaseAllocation)
    {
        name = default;
        matchesBaseAllocation = false;
        if (data.Length < 8)
        {
            return false;
        }

        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 8))
        {
            return false;
        }

        name = data.Slice(4, (int)nameLength);
        ReadOnlySpan<byte> rest = data[(4 + (int)nameLength)..];
        uint queryCount = BinaryPrimitives.ReadUInt32BigEndian(rest);
        rest = rest[4..];

        // No queries: LIST returns every context, SET selects none.
        matchesBaseAllocation = queryCount == 0 && !set;
        for (uint i = 0; i < queryCount; i++)
        {
            if (rest.Length < 4)
            {
                return false;
            }

            uint queryLength = BinaryPrimitives.ReadUInt32BigEndian(rest);
            if (queryLength > (uint)(rest.Length - 4))
            {
                return false;
            }

            ReadOnlySpan<byte> query = rest.Slice(4, (int)queryLength);
            rest = rest[(4 + (int)queryLength)..];
            if (query.SequenceEqual(BaseAllocation) || (!set && query.SequenceEqual(BaseNamespace)))
            {
                matchesBaseAllocation = true;
            }
        }

        return rest.IsEmpty;
    }
}
