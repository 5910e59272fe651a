namespace Ovis.Nbd;

/// <summary>Why the server refused a request; carried to the reply so a structured error can say it.</summary>
internal enum NbdErrorReason : byte
{
    None,
    Device,
    UnknownCommand,
    InvalidFlags,
    ReadOnly,
    PayloadTooLarge,
    OutOfRange,
    ReservedFieldsSet,
    NoMetaContext,
    ZeroLength,
}

internal static class NbdErrorMessages
{
    /// <summary>
    /// The human-readable text of an NBD_REPLY_TYPE_ERROR chunk. UTF-8 literals, so the reply path
    /// neither formats nor allocates. Device errors carry no text: the errno says it all.
    /// </summary>
    public static ReadOnlySpan<byte> Get(NbdErrorReason reason) => reason switch
    {
        NbdErrorReason.UnknownCommand => "unknown command"u8,
        NbdErrorReason.InvalidFlags => "command flags not valid for this command"u8,
        NbdErrorReason.ReadOnly => "export is read-only"u8,
        NbdErrorReason.PayloadTooLarge => "length exceeds the maximum payload size"u8,
        NbdErrorReason.OutOfRange => "offset and length exceed the export size"u8,
        NbdErrorReason.ReservedFieldsSet => "offset and length must be zero"u8,
        NbdErrorReason.NoMetaContext => "no metadata context was negotiated"u8,
        NbdErrorReason.ZeroLength => "length must not be zero"u8,
        _ => default,
    };
}
