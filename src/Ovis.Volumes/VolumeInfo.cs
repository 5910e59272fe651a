namespace Ovis.Volumes;

/// <summary>What the catalog and the store know of one volume.</summary>
/// <param name="UsedBytes">Bytes of data the volume's objects hold (thin provisioning).</param>
/// <param name="Connections">NBD connections that have the volume open now.</param>
public sealed record VolumeInfo(
    uint Id,
    string Name,
    long Size,
    long ObjectSize,
    DateTimeOffset Created,
    long UsedBytes,
    int Connections);
