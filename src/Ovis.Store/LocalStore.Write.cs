using System.Buffers.Binary;

namespace Ovis.Store;

public sealed partial class LocalStore
{
    public ValueTask<StoreStatus> WriteAsync(ObjectId id, long offset, ReadOnlyMemory<byte> data, bool fua, IBlockSource? underlay = null)
    {
        CheckRange(id, offset, data.Length);
        ObjectMeta meta = GetOrAdd(id);
        int done = 0;
        if (MayWriteDirect(offset, data.Length, fua) && TryWriteDirect(meta, offset, data.Span, out StoreStatus direct, out bool directWait))
        {
            if (!directWait)
            {
                return new(direct);
            }
            return WriteSlowAsync(meta, offset, data, done, fua, underlay);
        }
        while (done < data.Length)
        {
            StoreStatus s = WriteRecord(meta, offset + done, data.Span[done..], underlay, out int consumed, out bool wait);
            if (wait || s == StoreStatus.NoSpace)
            {
                return WriteSlowAsync(meta, offset, data, done, fua, underlay);
            }
            if (s != StoreStatus.Ok)
            {
                return new(s);
            }
            done += consumed;
        }
        return fua ? FlushAsync() : new(StoreStatus.Ok);
    }

    private async ValueTask<StoreStatus> WriteSlowAsync(ObjectMeta meta, long offset, ReadOnlyMemory<byte> data, int done, bool fua, IBlockSource? underlay)
    {
        bool appliedForSpace = false;
        while (done < data.Length)
        {
            StoreStatus s = WriteRecord(meta, offset + done, data.Span[done..], underlay, out int consumed, out bool wait);
            if (wait)
            {
                _checkpointWake.Release();
                await _journal.WaitForSpaceAsync().ConfigureAwait(false);
                continue;
            }
            if (s == StoreStatus.NoSpace && !appliedForSpace)
            {
                // Trims and deletes in the journal free their blocks only when applied, and
                // reservations end there: apply everything now and ask once more, so that space
                // freed a moment ago serves this write (a deleted volume frees its space at once).
                appliedForSpace = true;
                await FreeSpaceForRetryAsync().ConfigureAwait(false);
                continue;
            }
            if (s != StoreStatus.Ok)
            {
                return s;
            }
            done += consumed;
        }
        return fua ? await FlushAsync().ConfigureAwait(false) : StoreStatus.Ok;
    }

    /// <summary>
    /// Journals one record for a prefix of <paramref name="data"/> (at most _maxBlocksPerRecord
    /// blocks) and points the overlay at it. Partial blocks at either end are completed with
    /// the block's current content under the object lock, so two writes into different bytes
    /// of one block never lose each other.
    /// </summary>
    private StoreStatus WriteRecord(ObjectMeta meta, long offset, ReadOnlySpan<byte> data, IBlockSource? underlay, out int consumed, out bool wait,
        bool fromReserve = false)
    {
        try
        {
            return WriteRecordCore(meta, offset, data, underlay, out consumed, out wait, fromReserve);
        }
        catch (ObjectDisposedException)
        {
            // A read-modify-write found the object file closed: the store is closing.
            consumed = 0;
            wait = false;
            return StoreStatus.Closed;
        }
    }

    private StoreStatus WriteRecordCore(ObjectMeta meta, long offset, ReadOnlySpan<byte> data, IBlockSource? underlay, out int consumed, out bool wait,
        bool fromReserve)
    {
        int headSkip = (int)(offset % StoreBlockSize);
        int firstBlock = (int)(offset / StoreBlockSize);
        int blocks = Math.Min((headSkip + data.Length + StoreBlockSize - 1) / StoreBlockSize, _maxBlocksPerRecord);
        consumed = Math.Min(data.Length, blocks * StoreBlockSize - headSkip);
        bool partialHead = headSkip != 0;
        bool partialTail = (headSkip + consumed) % StoreBlockSize != 0 && (blocks > 1 || !partialHead);
        int size = JournalFormat.RecordSize(RecordType.Write, blocks);
        int crcBytes = blocks * 4;
        wait = false;
        Span<byte> edges = partialHead || partialTail ? stackalloc byte[2 * StoreBlockSize] : default;
        Span<uint> blockCrcs = stackalloc uint[MaxBlocksPerRecord];

        lock (meta.Lock)
        {
            // Read the old content of partial blocks before reserving, so a failure leaves no
            // half-filled record in the batch.
            if ((partialHead && !ReadBlockLocked(meta, firstBlock, edges[..StoreBlockSize], underlay))
                || (partialTail && !ReadBlockLocked(meta, firstBlock + blocks - 1, edges[StoreBlockSize..], underlay)))
            {
                return StoreStatus.IoError;
            }
            // Space first, then the journal: a write the journal takes can always be applied.
            long charge = SpaceNeeded(meta, firstBlock, blocks);
            if (charge > 0 && !_space.TryCharge(charge, fromReserve))
            {
                return StoreStatus.NoSpace;
            }
            ReserveResult r = _journal.TryReserve(size, out BatchBuffer batch, out int recordOffset);
            if (r != ReserveResult.Ok)
            {
                _space.Release(charge);
                wait = r == ReserveResult.Wait;
                return _journal.IsFailed ? StoreStatus.IoError : StoreStatus.Closed;
            }
            if (charge > 0)
            {
                Interlocked.Add(ref batch.SpaceCharged, charge);
                meta.SlotCharged = true;
            }
            Span<byte> record = batch.Span.Slice(recordOffset, size);
            JournalFormat.WriteRecordHeader(record, RecordType.Write, batch.Seq, meta.Id, firstBlock, blocks);
            int dataOffset = recordOffset + JournalFormat.RecordHeaderSize + crcBytes;
            Span<byte> blockData = batch.Span.Slice(dataOffset, blocks * StoreBlockSize);
            if (partialHead)
            {
                edges[..StoreBlockSize].CopyTo(blockData);
            }
            if (partialTail)
            {
                edges[StoreBlockSize..].CopyTo(blockData[((blocks - 1) * StoreBlockSize)..]);
            }
            data[..consumed].CopyTo(blockData[headSkip..]);
            Span<byte> crcs = record.Slice(JournalFormat.RecordHeaderSize, crcBytes);
            meta.EnsureBlocks(firstBlock + blocks);
            Crc32C.ComputeBlocks(blockData, StoreBlockSize, blockCrcs);
            for (int i = 0; i < blocks; i++)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(crcs[(i * 4)..], blockCrcs[i]);
                meta.Pending[firstBlock + i] = ObjectMeta.PendingValue(batch.Seq, (uint)(dataOffset + i * StoreBlockSize));
            }
            JournalFormat.SealRecordHeader(record, crcBytes);
            Journal.Commit(batch);
        }
        return StoreStatus.Ok;
    }

    public ValueTask<StoreStatus> ZeroAsync(ObjectId id, long offset, long length, bool keepAllocated, bool fua)
    {
        CheckRange(id, offset, length);
        return ZeroCoreAsync(GetOrAdd(id), offset, length, keepAllocated ? RecordType.ZeroAllocated : RecordType.ZeroHole, fua);
    }

    public ValueTask<StoreStatus> DeleteAsync(ObjectId id)
    {
        if (!_objects.TryGetValue(id.Packed, out ObjectMeta? meta))
        {
            return new(StoreStatus.Ok);
        }
        return ZeroCoreAsync(meta, 0, MaxObjectBytes, RecordType.Delete, fua: false);
    }

    private async ValueTask<StoreStatus> ZeroCoreAsync(ObjectMeta meta, long offset, long length, RecordType type, bool fua)
    {
        long end = offset + length;
        // Partial blocks at the ends are written as zero bytes; whole blocks get one record.
        long firstWhole = (offset + StoreBlockSize - 1) / StoreBlockSize * StoreBlockSize;
        long endWhole = end / StoreBlockSize * StoreBlockSize;
        if (firstWhole >= endWhole)
        {
            return await WriteZeroBytesAsync(meta, offset, length, type).ConfigureAwait(false);
        }
        if (offset < firstWhole)
        {
            StoreStatus s = await WriteZeroBytesAsync(meta, offset, firstWhole - offset, type).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                return s;
            }
        }
        if (endWhole < end)
        {
            StoreStatus s = await WriteZeroBytesAsync(meta, endWhole, end - endWhole, type).ConfigureAwait(false);
            if (s != StoreStatus.Ok)
            {
                return s;
            }
        }
        int first = (int)(firstWhole / StoreBlockSize);
        int count = (int)((endWhole - firstWhole) / StoreBlockSize);
        while (true)
        {
            ReserveResult r = ZeroRecord(meta, first, count, type);
            if (r == ReserveResult.Ok)
            {
                break;
            }
            if (r == ReserveResult.Failed)
            {
                return _journal.IsFailed ? StoreStatus.IoError : StoreStatus.Closed;
            }
            _checkpointWake.Release();
            await _journal.WaitForSpaceAsync().ConfigureAwait(false);
        }
        return fua ? await FlushAsync().ConfigureAwait(false) : StoreStatus.Ok;
    }

    private ReserveResult ZeroRecord(ObjectMeta meta, int first, int count, RecordType type)
    {
        lock (meta.Lock)
        {
            // Blocks past what the object ever held are holes already: punching them again
            // records nothing. Allocated zeroes and deletes are always recorded.
            int effective = type == RecordType.ZeroHole ? Math.Min(count, Math.Max(0, meta.Blocks - first)) : count;
            if (effective == 0 && type == RecordType.ZeroHole)
            {
                return ReserveResult.Ok;
            }
            if (type == RecordType.Delete)
            {
                first = 0;
                effective = Math.Max(1, meta.Blocks);
            }
            ReserveResult r = _journal.TryReserve(JournalFormat.RecordSize(type, effective), out BatchBuffer batch, out int recordOffset);
            if (r != ReserveResult.Ok)
            {
                return r;
            }
            if (type != RecordType.Delete && !meta.SlotCharged)
            {
                // Never refused (zeroing is how a full disk is emptied); its slot comes from the margin.
                _space.Charge(SlotCharge);
                Interlocked.Add(ref batch.SpaceCharged, SlotCharge);
                meta.SlotCharged = true;
            }
            Span<byte> record = batch.Span.Slice(recordOffset, JournalFormat.RecordHeaderSize);
            JournalFormat.WriteRecordHeader(record, type, batch.Seq, meta.Id, first, effective);
            JournalFormat.SealRecordHeader(record, 0);
            meta.EnsureBlocks(first + effective);
            long pending = ObjectMeta.PendingZeroValue(batch.Seq, recordOffset, type == RecordType.ZeroAllocated);
            meta.Pending.AsSpan(first, effective).Fill(pending);
            Journal.Commit(batch);
        }
        return ReserveResult.Ok;
    }

    private ValueTask<StoreStatus> WriteZeroBytesAsync(ObjectMeta meta, long offset, long length, RecordType type)
    {
        if (type == RecordType.ZeroHole)
        {
            lock (meta.Lock)
            {
                // Trimming part of a block that holds no data changes nothing, and must not need
                // space: a trim is how a full disk is emptied. (Zeroes that stay allocated over a
                // parent layer still write the block.)
                // A range inside one trim may touch two blocks (it does not cover a whole one).
                if (meta.EffectiveState((int)(offset / StoreBlockSize)) != BlockState.Data
                    && meta.EffectiveState((int)((offset + length - 1) / StoreBlockSize)) != BlockState.Data)
                {
                    return new(StoreStatus.Ok);
                }
            }
        }
        // At most two partial blocks: under 8 KiB.
        byte[] zeroes = new byte[length];
        return WriteAsync(meta.Id, offset, zeroes, fua: false, underlay: null);
    }

    /// <summary>Before a refused change asks again: applies what the journal holds, if anything,
    /// and reads the free space again either way. A batch of deletes that was already applied
    /// reserved nothing, so it did not read the free space after its unlinks: the figure could be
    /// up to one checkpoint tick (200 ms) old and refuse a write right after a volume was deleted.</summary>
    private Task FreeSpaceForRetryAsync()
    {
        if (_journal.HasUnapplied)
            return ApplyPendingAsync();
        RefreshSpace();
        return Task.CompletedTask;
    }

    /// <summary>Writes, syncs and applies everything in the journal now, and reads the free space again.</summary>
    private async Task ApplyPendingAsync()
    {
        if (await FlushAsync().ConfigureAwait(false) == StoreStatus.Ok)
        {
            await _journal.WhenAppliedAsync().ConfigureAwait(false);
        }
        RefreshSpace();
    }

    public async ValueTask<StoreStatus> FlushAsync()
    {
        Interlocked.Increment(ref _flushRequests);
        try
        {
            await _journal.FlushAsync().ConfigureAwait(false);
            return StoreStatus.Ok;
        }
        catch (IOException)
        {
            return StoreStatus.IoError;
        }
        catch (ObjectDisposedException)
        {
            return StoreStatus.Closed;
        }
    }

    /// <summary>
    /// A volume's flush (what an NBD FLUSH becomes): the same one journal sync as
    /// <see cref="FlushAsync()"/>, but the caller continues on the committer's thread when it is
    /// the round's first such waiter (<see cref="Journal.FlushInlineAsync"/>), one thread hop less.
    /// Callers of this overload keep their continuations short and non-blocking.
    /// </summary>
    public ValueTask<StoreStatus> FlushAsync(uint volume)
    {
        Interlocked.Increment(ref _flushRequests);
        return _journal.FlushInlineAsync();
    }

    private static void CheckRange(ObjectId id, long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > MaxObjectBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"range {offset}+{length} is outside an object of at most {MaxObjectBytes} bytes");
        }

        if (id.Index > MaxObjectIndexValue)
        {
            throw new ArgumentOutOfRangeException(nameof(id), $"object {id}: the index is above the largest the store holds ({MaxObjectIndexValue})");
        }
    }
}
