namespace Ovis.Node;

/// <summary>How a clustered node recovers copies: <c>ovis serve --dirty-log, --recovery-bandwidth, --scrub-interval</c>.</summary>
public sealed class RecoveryOptions
{
    /// <summary>Log objects before their first write (the dirty-region log); off only to measure what it costs.</summary>
    public bool DirtyLog { get; set; } = true;

    /// <summary>How long an object stays logged after its last write and a flush.</summary>
    public TimeSpan DirtyClearAfter { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Bytes per second background recovery may write to copies; 0 for no limit.</summary>
    public long BandwidthBytesPerSecond { get; set; } = 64L << 20;

    /// <summary>The background scrub checks one object of each served volume this often; zero turns it off.</summary>
    public TimeSpan ScrubInterval { get; set; } = TimeSpan.FromSeconds(1);
}
