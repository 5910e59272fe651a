namespace Ovis.Volumes;

/// <summary>
/// A layer's catalog record and its live state, shared by all its open handles. For a live
/// volume the record changes under the handles when a snapshot or rollback gives it a new layer;
/// handles read <see cref="Chain"/> once per request.
/// </summary>
internal sealed class VolumeState(VolumeRecord record)
{
    public VolumeRecord Record { get; set; } = record;

    /// <summary>This layer's id, then its parent's, and so on: where reads look, in order.</summary>
    public uint[] Chain { get; set; } = [record.Id];

    public int Connections { get; set; }

    public IoGate Gate { get; } = new();

    /// <summary>The live volume's dirty bitmaps; replaced whole (under the manager's lock), read once per write.</summary>
    public DirtyBitmap[] Bitmaps { get; set; } = [];
}
