using System.Buffers.Binary;
using System.Text;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    private const string BaseAllocation = "base:allocation";
    private const string BaseNamespace = "base:";
    private const string QemuNamespace = "qemu:";
    private const string DirtyBitmapPrefix = "qemu:dirty-bitmap:";

    // What the last NBD_OPT_SET_META_CONTEXT chose, and for which export.
    private bool _metaBaseSelected;
    private string[] _metaBitmapsSelected = [];
    private string? _metaContextExport;

    // Transmission: the contexts selected for the export in use. A bitmap's context id is
    // FirstBitmapContextId + its index here.
    private bool _baseAllocationSelected;
    private string[] _bitmapContexts = [];

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
            _metaBaseSelected = false;
            _metaBitmapsSelected = [];
            _metaContextExport = null;
            if (!_structuredReplies)
            {
                // "This option MUST NOT be requested unless structured replies have been
                // negotiated first ... a server SHOULD send NBD_REP_ERR_INVALID".
                WriteOptionReply(option, NbdOptionReplyType.ErrInvalid);
                return new ValueTask<HandshakeStep>(HandshakeStep.NextOption);
            }
        }

        if (!TryParseMetaContextQueries(data, out ReadOnlySpan<byte> nameBytes, out List<string>? queries)
            || !TryDecodeString(nameBytes, out string name))
        {
            WriteOptionReply(option, NbdOptionReplyType.ErrInvalid);
            return new ValueTask<HandshakeStep>(HandshakeStep.NextOption);
        }

        return FinishMetaContextAsync(option, name, queries);
    }

    private async ValueTask<HandshakeStep> FinishMetaContextAsync(NbdOption option, string name, List<string> queries)
    {
        ExportOpening opening = await OpenExportAsync(name);
        if (opening.Device is null)
        {
            WriteOpenFailure(option, opening);
            return HandshakeStep.NextOption;
        }

        bool set = option == NbdOption.SetMetaContext;
        IReadOnlyList<string> bitmaps = (opening.Device as IDirtyBitmapDevice)?.DirtyBitmaps ?? [];
        (bool baseAllocation, List<string> chosen) = MatchMetaContexts(queries, set, bitmaps);
        if (baseAllocation)
        {
            // The id in a LIST reply is reserved and SHOULD be zero.
            WriteMetaContext(option, set ? NbdLimits.BaseAllocationContextId : 0, BaseAllocation);
        }

        for (int i = 0; i < chosen.Count; i++)
        {
            WriteMetaContext(option, set ? NbdLimits.FirstBitmapContextId + (uint)i : 0, DirtyBitmapPrefix + chosen[i]);
        }

        if (set)
        {
            _metaBaseSelected = baseAllocation;
            _metaBitmapsSelected = [.. chosen];
            _metaContextExport = name;
        }

        WriteOptionReply(option, NbdOptionReplyType.Ack);
        return HandshakeStep.NextOption;
    }

    /// <summary>
    /// Which contexts the queries pick. No queries: LIST returns every context, SET selects none.
    /// A namespace alone ("base:", "qemu:", "qemu:dirty-bitmap:") lists what it holds but selects
    /// nothing; unknown namespaces and leaves are ignored, as the spec requires.
    /// </summary>
    private static (bool BaseAllocation, List<string> Bitmaps) MatchMetaContexts(List<string> queries, bool set, IReadOnlyList<string> bitmaps)
    {
        bool baseAllocation = queries.Count == 0 && !set;
        var chosen = new List<string>();
        if (queries.Count == 0 && !set)
        {
            chosen.AddRange(bitmaps);
        }

        foreach (string query in queries)
        {
            if (query == BaseAllocation || (!set && query == BaseNamespace))
            {
                baseAllocation = true;
            }
            else if (!set && (query == QemuNamespace || query == DirtyBitmapPrefix))
            {
                chosen.AddRange(bitmaps.Where(b => !chosen.Contains(b)));
            }
            else if (query.StartsWith(DirtyBitmapPrefix, StringComparison.Ordinal)
                && bitmaps.Contains(query[DirtyBitmapPrefix.Length..]) && !chosen.Contains(query[DirtyBitmapPrefix.Length..]))
            {
                chosen.Add(query[DirtyBitmapPrefix.Length..]);
            }
        }

        return (baseAllocation, chosen);
    }

    /* NBD_REP_META_CONTEXT data: context id (32), then the context name. */
    private void WriteMetaContext(NbdOption option, uint id, string context)
    {
        byte[] reply = new byte[4 + Encoding.UTF8.GetByteCount(context)];
        BinaryPrimitives.WriteUInt32BigEndian(reply, id);
        Encoding.UTF8.GetBytes(context, reply.AsSpan(4));
        WriteOptionReply(option, NbdOptionReplyType.MetaContext, reply);
    }

    /// <summary>Walks the queries, checking every length against the option data, and decodes them
    /// (a query that is not a valid string matches nothing).</summary>
    private static bool TryParseMetaContextQueries(ReadOnlySpan<byte> data, out ReadOnlySpan<byte> name, out List<string> queries)
    {
        name = default;
        queries = [];
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
            queries.Add(TryDecodeString(query, out string q) ? q : "");
        }

        return rest.IsEmpty;
    }
}
