using System.Runtime.CompilerServices;

namespace Ovis.Nbd;

public sealed partial class NbdConnection
{
    /// <summary>Starts an admitted, valid request on the read loop.</summary>
    private void Start(NbdOperation operation)
    {
        NbdRequest request = operation.Request;
        switch (request.Command)
        {
            case NbdCommand.Read when request.Length > 0:
                // A read that is all holes needs no buffer at all.
                if (PlanRead(operation))
                {
                    operation.Buffer = BufferPool.Rent((int)request.Length);
                }

                break;

            case NbdCommand.BlockStatus:
                // GetAllocation is synchronous: the reply is ready now.
                NbdError error = CollectBlockStatus(operation);
                if (error != NbdError.None)
                {
                    operation.Fail(error, NbdErrorReason.Device);
                }

                Complete(operation, onReadLoop: true);
                return;
        }

        Advance(operation, onReadLoop: true);
    }

    /// <summary>
    /// Issues the operation's device calls one after another while they complete synchronously
    /// (the common case, and no thread hop); the first that does not is awaited through the
    /// operation's cached continuation, which resumes here off the read loop.
    /// </summary>
    private void Advance(NbdOperation operation, bool onReadLoop)
    {
        while (true)
        {
            ValueTask<NbdError> pending;
            NbdError error;
            try
            {
                if (!TryIssueNext(operation, out pending))
                {
                    break;
                }

                if (!pending.IsCompleted)
                {
                    operation.AwaitDevice(pending);
                    return;
                }

                error = pending.Result;
            }
            catch (Exception ex)
            {
                // A device reports failures as values; an exception is its bug, not the client's.
                NbdLog.DeviceFault(_logger, _connectionId, ex);
                error = NbdError.EIO;
            }

            if (error != NbdError.None)
            {
                operation.Fail(error, NbdErrorReason.Device);
                break;
            }
        }

        Complete(operation, onReadLoop);
    }

    internal void OnDeviceCompleted(NbdOperation operation, ValueTaskAwaiter<NbdError> awaiter)
    {
        NbdError error;
        try
        {
            error = awaiter.GetResult();
        }
        catch (Exception ex)
        {
            NbdLog.DeviceFault(_logger, _connectionId, ex);
            error = NbdError.EIO;
        }

        if (error != NbdError.None)
        {
            operation.Fail(error, NbdErrorReason.Device);
            Complete(operation, onReadLoop: false);
            return;
        }

        Advance(operation, onReadLoop: false);
    }

    /// <summary>Starts the operation's next device call; false when it has none left.</summary>
    private bool TryIssueNext(NbdOperation operation, out ValueTask<NbdError> pending)
    {
        IBlockDevice device = _device!;
        NbdRequest request = operation.Request;
        var offset = (long)request.Offset;
        bool fua = (request.Flags & NbdCommandFlags.Fua) != 0;

        if (request.Command == NbdCommand.Read)
        {
            return TryIssueNextRead(operation, device, out pending);
        }

        // Every other command is a single call; zero-length ones have nothing to do
        // (the spec leaves them unspecified, but the server SHOULD NOT disconnect).
        if (operation.Step++ != 0 || (request.Length == 0 && request.Command != NbdCommand.Flush))
        {
            pending = default;
            return false;
        }

        switch (request.Command)
        {
            case NbdCommand.Write:
                pending = device.WriteAsync(offset, operation.Buffer.AsMemory(0, (int)request.Length), fua);
                return true;
            case NbdCommand.Flush:
                pending = device.FlushAsync();
                return true;
            case NbdCommand.Trim:
                pending = device.TrimAsync(offset, request.Length, fua);
                return true;
            case NbdCommand.WriteZeroes:
                pending = device.WriteZeroesAsync(
                    offset,
                    request.Length,
                    noHole: (request.Flags & NbdCommandFlags.NoHole) != 0,
                    fastZero: (request.Flags & NbdCommandFlags.FastZero) != 0,
                    fua);
                return true;
            case NbdCommand.Cache:
                pending = device.CacheAsync(offset, request.Length);
                return true;
            default:
                pending = default;
                return false;
        }
    }

    /// <summary>Reads the next data segment into its place in the buffer; zero segments are never read.</summary>
    private static bool TryIssueNextRead(NbdOperation operation, IBlockDevice device, out ValueTask<NbdError> pending)
    {
        List<NbdExtent> segments = operation.Extents;
        while (operation.Step < segments.Count)
        {
            NbdExtent segment = segments[operation.Step++];
            long start = operation.SegmentStart;
            operation.SegmentStart = start + segment.Length;
            if ((segment.Flags & NbdExtentFlags.Zero) != 0)
            {
                continue;
            }

            pending = device.ReadAsync(
                (long)operation.Request.Offset + start,
                operation.Buffer.AsMemory((int)start, (int)segment.Length));
            return true;
        }

        pending = default;
        return false;
    }

    /// <summary>
    /// Splits a READ into data and zero segments; true when any segment must be read. With
    /// structured replies zero runs become OFFSET_HOLE chunks and are not read at all; with
    /// simple replies, or when the client asked for one chunk (DF), the whole range is data.
    /// </summary>
    private bool PlanRead(NbdOperation operation)
    {
        NbdRequest request = operation.Request;
        List<NbdExtent> segments = operation.Extents;
        segments.Clear();
        if (!_structuredReplies || (request.Flags & NbdCommandFlags.DontFragment) != 0)
        {
            segments.Add(new NbdExtent(request.Length, NbdExtentFlags.None));
            return true;
        }

        // Only ZERO matters here: a hole without it has undefined contents and must be read.
        long covered = CollectAllocation(operation, NbdExtentFlags.Zero, NbdLimits.MaxReadSegments - 1, out _);
        long remainder = request.Length - covered;
        if (remainder > 0)
        {
            // Allocation unknown, failed, or too fragmented: reading is always correct.
            AppendExtent(segments, remainder, NbdExtentFlags.None);
        }

        for (int i = 0; i < segments.Count; i++)
        {
            if ((segments[i].Flags & NbdExtentFlags.Zero) == 0)
            {
                return true;
            }
        }

        return false;
    }

    private NbdError CollectBlockStatus(NbdOperation operation)
    {
        bool one = (operation.Request.Flags & NbdCommandFlags.ReqOne) != 0;
        CollectAllocation(
            operation,
            NbdExtentFlags.Hole | NbdExtentFlags.Zero,
            one ? 1 : NbdLimits.MaxBlockStatusExtents,
            out NbdError error);

        // At least one descriptor is required; fewer than asked is fine (the client asks again).
        return operation.Extents.Count > 0 ? NbdError.None : error == NbdError.None ? NbdError.EIO : error;
    }

    /// <summary>
    /// Asks the device for the allocation of the request's range and appends it to the
    /// operation's extents, keeping only <paramref name="relevant"/> flags, merging neighbours
    /// that agree and stopping at <paramref name="maxExtents"/>. Returns the bytes covered;
    /// <paramref name="error"/> is the device's error if it failed before covering anything.
    /// </summary>
    private long CollectAllocation(NbdOperation operation, NbdExtentFlags relevant, int maxExtents, out NbdError error)
    {
        IBlockDevice device = _device!;
        List<NbdExtent> extents = operation.Extents;
        List<NbdExtent> raw = operation.AllocationScratch;
        var start = (long)operation.Request.Offset;
        long end = start + operation.Request.Length;
        long position = start;
        error = NbdError.None;

        while (position < end)
        {
            raw.Clear();
            try
            {
                error = device.GetAllocation(position, end - position, raw);
            }
            catch (Exception ex)
            {
                NbdLog.DeviceFault(_logger, _connectionId, ex);
                error = NbdError.EIO;
            }

            if (error != NbdError.None || raw.Count == 0)
            {
                break;
            }

            for (int i = 0; i < raw.Count && position < end; i++)
            {
                // Guard against a device that reports empty or overlong extents.
                long length = Math.Min(raw[i].Length, end - position);
                if (length <= 0)
                {
                    return position - start;
                }

                if (!AppendExtent(extents, length, raw[i].Flags & relevant, maxExtents))
                {
                    return position - start;
                }

                position += length;
            }
        }

        return position - start;
    }

    private static bool AppendExtent(List<NbdExtent> extents, long length, NbdExtentFlags flags, int maxExtents = int.MaxValue)
    {
        int last = extents.Count - 1;
        if (last >= 0 && extents[last].Flags == flags)
        {
            extents[last] = new NbdExtent(extents[last].Length + length, flags);
            return true;
        }

        if (extents.Count == maxExtents)
        {
            return false;
        }

        extents.Add(new NbdExtent(length, flags));
        return true;
    }
}
