using System.Buffers;

namespace Ovis.Nbd.Tests.Infrastructure;

/// <summary>
/// Hands out fresh arrays filled with 0xEE (so stale bytes can never pass for device data) and
/// tracks every one until it comes back; a second return is counted, not thrown.
/// </summary>
internal sealed class CountingArrayPool : ArrayPool<byte>
{
    public const byte Garbage = 0xEE;

    private readonly HashSet<byte[]> _outstanding = new(ReferenceEqualityComparer.Instance);
    private readonly Lock _lock = new();

    public int Outstanding
    {
        get
        {
            lock (_lock)
            {
                return _outstanding.Count;
            }
        }
    }

    public int Rented { get; private set; }

    /// <summary>The most arrays out at once.</summary>
    public int MaxOutstanding { get; private set; }

    public int BadReturns { get; private set; }

    public override byte[] Rent(int minimumLength)
    {
        var array = new byte[minimumLength];
        array.AsSpan().Fill(Garbage);
        lock (_lock)
        {
            _outstanding.Add(array);
            Rented++;
            MaxOutstanding = Math.Max(MaxOutstanding, _outstanding.Count);
        }

        return array;
    }

    public override void Return(byte[] array, bool clearArray = false)
    {
        lock (_lock)
        {
            if (!_outstanding.Remove(array))
            {
                BadReturns++;
            }
        }
    }
}
