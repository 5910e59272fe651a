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
                // With structured replies zero runs become OFFSET_HOLE chunks and are not read at
                // all, so the allocation is asked first; with simple replies, or when the client
                // asked for one chunk (DF), the whole range is data.
                if (_structuredReplies && (request.Flags & NbdCommandFlags.DontFragment) == 0)
                {
                    operation.QueryingAllocation = true;
                }
                else
                {
                    operation.Extents.Add(new NbdExtent(request.Length, NbdExtentFlags.None));
                    operation.Buffer = BufferPool.Rent((int)request.Length);
                }

                break;

            case NbdCommand.BlockStatus:
                operation.QueryingAllocation = _baseAllocationSelected;
                FillBitmapExtents(operation);
                break;
        }

        Advance(operation, onReadLoop: true);
    }

    /// <summary>Answers the selected qemu:dirty-bitmap contexts from the device's memory, on the read loop.</summary>
    private void FillBitmapExtents(NbdOperation operation)
    {
        if (_bitmapContexts.Length == 0)
        {
            return;
        }

        NbdRequest request = operation.Request;
        int max = (request.Flags & NbdCommandFlags.ReqOne) != 0 ? 1 : NbdLimits.MaxBlockStatusExtents;
        var device = _device as IDirtyBitmapDevice;
        for (int i = 0; i < _bitmapContexts.Length; i++)
        {
            if (operation.BitmapExtents.Count <= i)
            {
                operation.BitmapExtents.Add([]);
            }

            List<NbdExtent> extents = operation.BitmapExtents[i];
            extents.Clear();
            if (device is null || !device.GetDirtyExtents(_bitmapContexts[i], (long)request.Offset, request.Length, extents, max) || extents.Count == 0)
            {
                // Removed since the client selected it: nothing true can be said about it.
                operation.Fail(NbdError.EINVAL, NbdErrorReason.NoMetaContext);
                operation.QueryingAllocation = false;
                return;
            }
        }

        operation.BitmapContexts = _bitmapContexts.Length;
    }

    /// <summary>
    /// Issues the operation's device calls (allocation queries first, if it has any) one after
    /// another while they complete synchronously (the common case, and no thread hop); the first
    /// that does not is awaited through the operation's cached continuation, which resumes here
    /// off the read loop.
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

            if (!TakeResult(operation, error))
            {
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

        if (!TakeResult(operation, error))
        {
            Complete(operation, onReadLoop: false);
            return;
        }

        Advance(operation, onReadLoop: false);
    }

    /// <summary>Takes the outcome of the device call just finished; false when the operation is done.</summary>
    private bool TakeResult(NbdOperation operation, NbdError error)
    {
        if (operation.QueryingAllocation)
        {
            return TakeAllocation(operation, error);
        }

        if (error != NbdError.None)
        {
            operation.Fail(error, NbdErrorReason.Device);
            return false;
        }

        return true;
    }

    /// <summary>Starts the operation's next device call; false when it has none left.</summary>
    private bool TryIssueNext(NbdOperation operation, out ValueTask<NbdError> pending)
    {
        IBlockDevice device = _device!;
        NbdRequest request = operation.Request;
        var offset = (long)request.Offset;
        bool fua = (request.Flags & NbdCommandFlags.Fua) != 0;

        if (operation.QueryingAllocation)
        {
            List<NbdExtent> raw = operation.AllocationScratch;
            raw.Clear();
            long covered = operation.AllocationCovered;
            pending = device.GetAllocationAsync(offset + covered, request.Length - covered, raw);
            return true;
        }

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
    /// Merges an allocation answer into the operation's extents; true while part of the range is
    /// still to be asked. Then a BLOCK_STATUS is done, and a READ knows its data and zero segments.
    /// </summary>
    private bool TakeAllocation(NbdOperation operation, NbdError error)
    {
        NbdRequest request = operation.Request;
        if (request.Command == NbdCommand.BlockStatus)
        {
            bool one = (request.Flags & NbdCommandFlags.ReqOne) != 0;
            if (error == NbdError.None
                && MergeAllocation(operation, NbdExtentFlags.Hole | NbdExtentFlags.Zero, one ? 1 : NbdLimits.MaxBlockStatusExtents))
            {
                return true;
            }

            operation.QueryingAllocation = false;
            // At least one descriptor is required; fewer than asked is fine (the client asks again).
            if (operation.Extents.Count == 0)
            {
                operation.Fail(error == NbdError.None ? NbdError.EIO : error, NbdErrorReason.Device);
            }

            return false;
        }

        // Only ZERO matters here: a hole without it has undefined contents and must be read.
        if (error == NbdError.None && MergeAllocation(operation, NbdExtentFlags.Zero, NbdLimits.MaxReadSegments - 1))
        {
            return true;
        }

        operation.QueryingAllocation = false;
        long remainder = request.Length - operation.AllocationCovered;
        if (remainder > 0)
        {
            // Allocation unknown, failed, or too fragmented: reading is always correct.
            AppendExtent(operation.Extents, remainder, NbdExtentFlags.None);
        }

        // A read that is all zeroes needs no buffer at all.
        List<NbdExtent> segments = operation.Extents;
        for (int i = 0; i < segments.Count; i++)
        {
            if ((segments[i].Flags & NbdExtentFlags.Zero) == 0)
            {
                operation.Buffer = BufferPool.Rent((int)request.Length);
                break;
            }
        }

        return true;
    }

    /// <summary>
    /// Appends the device's last answer to the operation's extents, keeping only
    /// <paramref name="relevant"/> flags, merging neighbours that agree and stopping at
    /// <paramref name="maxExtents"/>; true when the answer was usable and part of the request's
    /// range is still to be asked.
    /// </summary>
    private static bool MergeAllocation(NbdOperation operation, NbdExtentFlags relevant, int maxExtents)
    {
        List<NbdExtent> raw = operation.AllocationScratch;
        long remaining = operation.Request.Length - operation.AllocationCovered;
        for (int i = 0; i < raw.Count && remaining > 0; i++)
        {
            // Guard against a device that reports empty or overlong extents.
            long length = Math.Min(raw[i].Length, remaining);
            if (length <= 0 || !AppendExtent(operation.Extents, length, raw[i].Flags & relevant, maxExtents))
            {
                return false;
            }

            operation.AllocationCovered += length;
            remaining -= length;
        }

        return raw.Count > 0 && remaining > 0;
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
