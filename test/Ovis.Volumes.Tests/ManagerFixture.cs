using Microsoft.Extensions.Logging.Abstractions;
using Ovis.Store;

namespace Ovis.Volumes.Tests;

/// <summary>A volume manager on a temporary data directory.</summary>
internal sealed class ManagerFixture : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private static readonly LocalStoreOptions Options = new() { JournalSize = 32L << 20, BatchSize = 1 << 20, BatchCount = 8 };

    private ManagerFixture(string dir, VolumeManager manager)
    {
        Directory = dir;
        Manager = manager;
    }

    public string Directory { get; }

    public VolumeManager Manager { get; private set; }

    public static async Task<ManagerFixture> CreateAsync()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ovis-vol-" + Guid.NewGuid().ToString("N"));
        return new ManagerFixture(dir, await VolumeManager.OpenAsync(dir, Options, NullLogger.Instance).WaitAsync(Timeout));
    }

    public async Task ReopenAsync()
    {
        await Manager.DisposeAsync().AsTask().WaitAsync(Timeout);
        Manager = await VolumeManager.OpenAsync(Directory, Options, NullLogger.Instance).WaitAsync(Timeout);
    }

    public async Task WriteAsync(string name, long offset, byte[] data)
    {
        using Volume v = Manager.Open(name) ?? throw new InvalidOperationException(name);
        Assert.Equal(StoreStatus.Ok, await v.WriteAsync(offset, data, fua: false).AsTask().WaitAsync(Timeout));
    }

    public async Task<byte[]> ReadAsync(string name, long offset, int length)
    {
        using Volume v = Manager.Open(name) ?? throw new InvalidOperationException(name);
        var buf = new byte[length];
        Assert.Equal(StoreStatus.Ok, await v.ReadAsync(offset, buf).AsTask().WaitAsync(Timeout));
        return buf;
    }

    public static byte[] Pattern(int length, byte value) => Enumerable.Repeat(value, length).ToArray();

    public async ValueTask DisposeAsync()
    {
        await Manager.DisposeAsync().AsTask().WaitAsync(Timeout);
        System.IO.Directory.Delete(Directory, recursive: true);
    }
}
