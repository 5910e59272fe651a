namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    /// <summary>The checks of doc/proto.md, "Error values", in the order a client would want them reported.</summary>
    private NbdError Validate(in NbdRequest request, out NbdErrorReason reason)
    {
        NbdCommandFlags allowed = NbdCommandFlags.Fua;
        switch (request.Command)
        {
            case NbdCommand.Read:
                // DF only exists once structured replies are on (NBD_FLAG_SEND_DF).
                if (_structuredReplies)
                {
                    allowed |= NbdCommandFlags.DontFragment;
                }

                break;
            case NbdCommand.Write:
            case NbdCommand.Flush:
            case NbdCommand.Trim:
            case NbdCommand.Cache:
                break;
            case NbdCommand.WriteZeroes:
                allowed |= NbdCommandFlags.NoHole | NbdCommandFlags.FastZero;
                break;
            case NbdCommand.BlockStatus:
                allowed |= NbdCommandFlags.ReqOne;
                break;
            default:
                reason = NbdErrorReason.UnknownCommand;
                return NbdError.EINVAL;
        }

        if ((request.Flags & ~allowed) != 0)
        {
            reason = NbdErrorReason.InvalidFlags;
            return NbdError.EINVAL;
        }

        if (request.Command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes
            && (_transmissionFlags & NbdTransmissionFlags.ReadOnly) != 0)
        {
            reason = NbdErrorReason.ReadOnly;
            return NbdError.EPERM;
        }

        if (request.Command is NbdCommand.Read or NbdCommand.Write && request.Length > (uint)_options.MaxPayloadSize)
        {
            reason = NbdErrorReason.PayloadTooLarge;
            return NbdError.EINVAL;
        }

        if (request.Command == NbdCommand.Flush)
        {
            // "For a flush request, length and offset are reserved, and MUST be set to all-zero."
            reason = request.Offset != 0 || request.Length != 0 ? NbdErrorReason.ReservedFieldsSet : NbdErrorReason.None;
            return reason == NbdErrorReason.None ? NbdError.None : NbdError.EINVAL;
        }

        if (request.Command == NbdCommand.BlockStatus)
        {
            if (!_baseAllocationSelected && _bitmapContexts.Length == 0)
            {
                reason = NbdErrorReason.NoMetaContext;
                return NbdError.EINVAL;
            }

            // Every descriptor must have a nonzero length, so an empty range has no valid answer.
            if (request.Length == 0)
            {
                reason = NbdErrorReason.ZeroLength;
                return NbdError.EINVAL;
            }
        }

        ulong size = (ulong)_exportSize;
        if (request.Offset > size || request.Length > size - request.Offset)
        {
            reason = NbdErrorReason.OutOfRange;
            // ENOSPC for writes past the end, EINVAL for everything else.
            return request.Command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.ENOSPC : NbdError.EINVAL;
        }

        reason = NbdErrorReason.None;
        return NbdError.None;
    }
}
