using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using Ovis.Nbd;

namespace Ovis.Node.Metrics;

/// <summary>The operations a volume's request latency and errors are told apart by.</summary>
internal enum VolumeOp
{
    Read,
    Write,
    Flush,
    Zero,
}

/// <summary>
/// One volume's request instruments with their tags built once, so that recording a request is
/// a few <c>Add</c>/<c>Record</c> calls on pre-boxed tags: no allocation per I/O. A request that
/// completes synchronously is recorded inline; one that does not is awaited in a pooled state
/// machine.
/// </summary>
internal sealed class VolumeMetrics
{
    private static readonly KeyValuePair<string, object?>[] OpTags =
        [new("op", "read"), new("op", "write"), new("op", "flush"), new("op", "zero")];

    private readonly NodeMetrics _node;
    private readonly KeyValuePair<string, object?> _volume;

    public VolumeMetrics(NodeMetrics node, string volume)
    {
        _node = node;
        _volume = new("volume", volume);
    }

    /// <summary>Counts the request in flight; pass the timestamp to <see cref="Complete"/>.</summary>
    public long Start()
    {
        _node.InFlight.Add(1, _volume);
        return Stopwatch.GetTimestamp();
    }

    /// <summary>Records <paramref name="request"/> when it completes; <paramref name="bytes"/> is what it moved on success.</summary>
    public ValueTask<NbdError> Complete(ValueTask<NbdError> request, VolumeOp op, long bytes, long started)
    {
        if (request.IsCompletedSuccessfully)
        {
            var error = request.Result;
            Record(error, op, bytes, started);
            return new(error);
        }

        return CompleteLaterAsync(request, op, bytes, started);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<NbdError> CompleteLaterAsync(ValueTask<NbdError> request, VolumeOp op, long bytes, long started)
    {
        var error = NbdError.EIO;
        try
        {
            error = await request.ConfigureAwait(false);
            return error;
        }
        finally
        {
            Record(error, op, bytes, started);
        }
    }

    private void Record(NbdError error, VolumeOp op, long bytes, long started)
    {
        _node.InFlight.Add(-1, _volume);
        var opTag = OpTags[(int)op];
        _node.Duration.Record(Stopwatch.GetElapsedTime(started).TotalSeconds, _volume, opTag);
        if (error != NbdError.None)
        {
            _node.Errors.Add(1, _volume, opTag);
            return;
        }

        var (count, moved) = op switch
        {
            VolumeOp.Read => (_node.Reads, _node.ReadBytes),
            VolumeOp.Write => (_node.Writes, _node.WriteBytes),
            VolumeOp.Zero => (_node.Zeroes, _node.ZeroBytes),
            _ => (_node.Flushes, (Counter<long>?)null),
        };
        count.Add(1, _volume);
        moved?.Add(bytes, _volume);
    }
}
