namespace Ovis.Store;

public sealed partial class LocalStore
{
    public async ValueTask<StoreStatus> FillHolesAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool zeroes, bool fromReserve = false)
    {
        CheckRange(id, offset, data.Length);
        if (offset % StoreBlockSize != 0 || data.Length % StoreBlockSize != 0)
        {
            throw new ArgumentException("FillHolesAsync takes whole blocks", nameof(offset));
        }
        ObjectMeta meta = GetOrAdd(id);
        int first = (int)(offset / StoreBlockSize);
        int count = data.Length / StoreBlockSize;
        int b = 0;
        bool appliedForSpace = false;
        while (b < count)
        {
            StoreStatus status = StoreStatus.Ok;
            bool wait = false;
            lock (meta.Lock)
            {
                // The hole test and the write happen under one lock hold (the lock is
                // re-entrant), so a client write to the block in between cannot be overwritten.
                while (b < count && meta.EffectiveState(first + b) != BlockState.Hole)
                {
                    b++;
                }
                if (b == count)
                {
                    break;
                }
                int end = b + 1;
                while (end < count && end - b < _maxBlocksPerRecord && meta.EffectiveState(first + end) == BlockState.Hole)
                {
                    end++;
                }
                if (zeroes)
                {
                    ReserveResult r = ZeroRecord(meta, first + b, end - b, RecordType.ZeroAllocated);
                    wait = r == ReserveResult.Wait;
                    status = r == ReserveResult.Failed ? (_journal.IsFailed ? StoreStatus.IoError : StoreStatus.Closed) : StoreStatus.Ok;
                }
                else
                {
                    status = WriteRecord(meta, (long)(first + b) * StoreBlockSize, data.Span[(b * StoreBlockSize)..(end * StoreBlockSize)], null, out _, out wait, fromReserve);
                }
                if (status == StoreStatus.Ok && !wait)
                {
                    b = end;
                }
            }
            if (wait)
            {
                _checkpointWake.Release();
                await _journal.WaitForSpaceAsync().ConfigureAwait(false);
                continue;
            }
            if (status == StoreStatus.NoSpace && !appliedForSpace)
            {
                // As a write does: trims in the journal free their blocks only when applied.
                appliedForSpace = true;
                await FreeSpaceForRetryAsync().ConfigureAwait(false);
                continue;
            }
            if (status != StoreStatus.Ok)
            {
                return status;
            }
        }
        return StoreStatus.Ok;
    }
}
