namespace Ovis.Nbd.Tests.Infrastructure;

/// <summary>
/// An in-memory export with 4 KiB allocation granularity, plus the knobs the tests need:
/// asynchronous completion, gates that hold flushes, allocation queries or every data call,
/// injected errors and exceptions, and counters.
/// </summary>
internal sealed class MemoryBlockDevice : IBlockDevice
{
    public const int AllocationBlock = 4096;

    private readonly byte[] _data;
    private readonly bool[] _allocated;
    private readonly Lock _lock = new();
    private int _concurrent;

    public MemoryBlockDevice(long size, bool readOnly = false, int preferredBlockSize = 4096)
    {
        _data = new byte[size];
        _allocated = new bool[(size + AllocationBlock - 1) / AllocationBlock];
        IsReadOnly = readOnly;
        PreferredBlockSize = preferredBlockSize;
    }

    public long Size => _data.Length;

    public bool IsReadOnly { get; }

    public int PreferredBlockSize { get; }

    /// <summary>Complete every call asynchronously (after a thread-pool hop) instead of inline.</summary>
    public bool CompleteAsynchronously { get; set; }

    /// <summary>Complete writes asynchronously and everything else inline.</summary>
    public bool CompleteWritesAsynchronously { get; set; }

    /// <summary>While set and not completed, FlushAsync waits on it.</summary>
    public TaskCompletionSource? FlushGate { get; set; }

    /// <summary>While set and not completed, every data call (read, write, trim, zero, cache) waits on it.</summary>
    public TaskCompletionSource? CallGate { get; set; }

    /// <summary>While set and not completed, GetAllocationAsync waits on it.</summary>
    public TaskCompletionSource? AllocationGate { get; set; }

    /// <summary>Completed when the concurrent calls first reach <see cref="ConcurrencyTarget"/>.</summary>
    public TaskCompletionSource ConcurrencyReached { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public int ConcurrencyTarget { get; set; } = int.MaxValue;

    public int MaxConcurrent { get; private set; }

    public NbdError InjectedError { get; set; }

    public bool ThrowOnCall { get; set; }

    public bool ThrowOnAllocation { get; set; }

    public bool Disposed { get; private set; }

    public int ReadCalls { get; private set; }

    public int FlushCalls { get; private set; }

    /// <summary>Completed when the first FlushAsync call arrives.</summary>
    public TaskCompletionSource FlushStarted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public bool? LastFua { get; private set; }

    public (bool NoHole, bool FastZero)? LastZeroFlags { get; private set; }

    public byte[] Snapshot(long offset, int length)
    {
        lock (_lock)
        {
            return _data.AsSpan((int)offset, length).ToArray();
        }
    }

    public void Fill(long offset, ReadOnlySpan<byte> bytes)
    {
        lock (_lock)
        {
            bytes.CopyTo(_data.AsSpan((int)offset));
            MarkAllocated(offset, bytes.Length, true, wholeBlocksOnly: false);
        }
    }

    public ValueTask<NbdError> ReadAsync(long offset, Memory<byte> buffer)
    {
        lock (_lock)
        {
            ReadCalls++;
        }

        return RunAsync(CallGate, new Call(CallKind.Read, offset, buffer.Length, buffer, default, false));
    }

    public ValueTask<NbdError> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua)
    {
        LastFua = fua;
        return RunAsync(CallGate, new Call(CallKind.Write, offset, data.Length, default, data, false));
    }

    public ValueTask<NbdError> FlushAsync()
    {
        lock (_lock)
        {
            FlushCalls++;
        }

        FlushStarted.TrySetResult();
        return RunAsync(FlushGate, new Call(CallKind.None, 0, 0, default, default, false));
    }

    public ValueTask<NbdError> TrimAsync(long offset, long length, bool fua)
    {
        LastFua = fua;
        return RunAsync(CallGate, new Call(CallKind.Trim, offset, length, default, default, false));
    }

    public ValueTask<NbdError> WriteZeroesAsync(long offset, long length, bool noHole, bool fastZero, bool fua)
    {
        LastFua = fua;
        LastZeroFlags = (noHole, fastZero);
        return RunAsync(CallGate, new Call(CallKind.Zero, offset, length, default, default, noHole));
    }

    public ValueTask<NbdError> CacheAsync(long offset, long length) => RunAsync(CallGate, new Call(CallKind.None, offset, length, default, default, false));

    public ValueTask<NbdError> GetAllocationAsync(long offset, long length, List<NbdExtent> extents)
    {
        bool mustWait = AllocationGate is { Task.IsCompleted: false } || CompleteAsynchronously;
        return mustWait ? GetAllocationSlowAsync(offset, length, extents) : new(DescribeAllocation(offset, length, extents));
    }

    private async ValueTask<NbdError> GetAllocationSlowAsync(long offset, long length, List<NbdExtent> extents)
    {
        if (AllocationGate is { } gate)
        {
            await gate.Task;
        }

        await Task.Yield();
        return DescribeAllocation(offset, length, extents);
    }

    private NbdError DescribeAllocation(long offset, long length, List<NbdExtent> extents)
    {
        if (ThrowOnAllocation)
        {
            throw new InvalidOperationException("injected allocation fault");
        }

        lock (_lock)
        {
            long end = offset + length;
            long position = offset;
            while (position < end)
            {
                long block = position / AllocationBlock;
                long blockEnd = Math.Min((block + 1) * AllocationBlock, end);
                NbdExtentFlags flags = _allocated[block] ? NbdExtentFlags.None : NbdExtentFlags.Hole | NbdExtentFlags.Zero;
                long extentLength = blockEnd - position;
                if (extents.Count > 0 && extents[^1].Flags == flags)
                {
                    extents[^1] = new NbdExtent(extents[^1].Length + extentLength, flags);
                }
                else
                {
                    extents.Add(new NbdExtent(extentLength, flags));
                }

                position = blockEnd;
            }
        }

        return NbdError.None;
    }

    public void Dispose() => Disposed = true;

    private ValueTask<NbdError> RunAsync(TaskCompletionSource? gate, Call call)
    {
        if (ThrowOnCall)
        {
            throw new InvalidOperationException("injected device fault");
        }

        bool mustWait = gate is { Task.IsCompleted: false } || CompleteAsynchronously
            || (CompleteWritesAsynchronously && call.Kind == CallKind.Write);
        if (!mustWait)
        {
            return new ValueTask<NbdError>(Execute(call));
        }

        return RunSlowAsync(gate, call);
    }

    private async ValueTask<NbdError> RunSlowAsync(TaskCompletionSource? gate, Call call)
    {
        int concurrent = Interlocked.Increment(ref _concurrent);
        lock (_lock)
        {
            MaxConcurrent = Math.Max(MaxConcurrent, concurrent);
        }

        if (concurrent >= ConcurrencyTarget)
        {
            ConcurrencyReached.TrySetResult();
        }

        try
        {
            if (gate is not null)
            {
                await gate.Task;
            }

            await Task.Yield();
            return Execute(call);
        }
        finally
        {
            Interlocked.Decrement(ref _concurrent);
        }
    }

    private NbdError Execute(in Call call)
    {
        if (InjectedError != NbdError.None)
        {
            return InjectedError;
        }

        lock (_lock)
        {
            switch (call.Kind)
            {
                case CallKind.Read:
                    _data.AsSpan((int)call.Offset, (int)call.Length).CopyTo(call.Buffer.Span);
                    break;
                case CallKind.Write:
                    call.Data.Span.CopyTo(_data.AsSpan((int)call.Offset));
                    MarkAllocated(call.Offset, call.Length, true, wholeBlocksOnly: false);
                    break;
                case CallKind.Trim:
                    _data.AsSpan((int)call.Offset, (int)call.Length).Clear();
                    MarkAllocated(call.Offset, call.Length, false, wholeBlocksOnly: true);
                    break;
                case CallKind.Zero:
                    _data.AsSpan((int)call.Offset, (int)call.Length).Clear();
                    MarkAllocated(call.Offset, call.Length, call.NoHole, wholeBlocksOnly: !call.NoHole);
                    break;
            }
        }

        return NbdError.None;
    }

    private void MarkAllocated(long offset, long length, bool allocated, bool wholeBlocksOnly)
    {
        if (length == 0)
        {
            return;
        }

        long first = offset / AllocationBlock;
        long last = (offset + length - 1) / AllocationBlock;
        if (wholeBlocksOnly)
        {
            first = (offset + AllocationBlock - 1) / AllocationBlock;
            last = ((offset + length) / AllocationBlock) - 1;
        }

        for (long block = first; block <= last; block++)
        {
            _allocated[block] = allocated;
        }
    }

    private enum CallKind
    {
        None,
        Read,
        Write,
        Trim,
        Zero,
    }

    // A struct rather than a lambda, so the synchronous path allocates nothing (AllocationTests).
    private readonly record struct Call(CallKind Kind, long Offset, long Length, Memory<byte> Buffer, ReadOnlyMemory<byte> Data, bool NoHole);
}
