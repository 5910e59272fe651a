using Microsoft.Extensions.Logging.Abstractions;

namespace Ovis.Store.Tests;

/// <summary>A store in a temporary directory that tests can crash and reopen.</summary>
internal sealed class StoreFixture : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    public StoreFixture(LocalStoreOptions? options = null, string? parent = null)
    {
        Directory = Path.Combine(parent ?? Path.GetTempPath(), "ovis-store-" + Guid.NewGuid().ToString("N"));
        Options = options ?? new LocalStoreOptions { JournalSize = 32L << 20, BatchSize = 1 << 20, BatchCount = 8 };
        Store = LocalStore.Open(Directory, Options, NullLogger.Instance);
    }

    /// <summary>Options whose timers never fire during a test: only the test's own flushes commit,
    /// and no checkpoint runs unless the journal fills.</summary>
    public static LocalStoreOptions QuietTimers() => new()
    {
        JournalSize = 64L << 20,
        BatchSize = 1 << 20,
        BatchCount = 8,
        CommitInterval = TimeSpan.FromMinutes(10),
        CheckpointInterval = TimeSpan.FromMinutes(10),
    };

    public string Directory { get; }

    public LocalStoreOptions Options { get; }

    public LocalStore Store { get; private set; }

    /// <summary>Kills the store as kill -9 would (no drain, no checkpoint) and opens it again.</summary>
    public async Task CrashAndReopenAsync()
    {
        await Store.CrashAsync().WaitAsync(Timeout);
        // A reopen that throws leaves no store to dispose, so the test reports its exception.
        Store = null!;
        Store = LocalStore.Open(Directory, Options, NullLogger.Instance);
    }

    /// <summary>Opens the store again after the test crashed it itself (to change its files in between).</summary>
    public void Reopen()
    {
        Store = null!;
        Store = LocalStore.Open(Directory, Options, NullLogger.Instance);
    }

    /// <summary>Closes the store cleanly and opens it again.</summary>
    public async Task ReopenAsync()
    {
        await Store.DisposeAsync().AsTask().WaitAsync(Timeout);
        Store = LocalStore.Open(Directory, Options, NullLogger.Instance);
    }

    public async ValueTask DisposeAsync()
    {
        if (Store is not null)
        {
            await Store.DisposeAsync().AsTask().WaitAsync(Timeout);
        }
        System.IO.Directory.Delete(Directory, recursive: true);
    }
}

internal static class Bytes
{
    public static byte[] Random(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    public static async Task<byte[]> ReadAsync(IObjectStore store, ObjectId id, long offset, int length)
    {
        var buf = new byte[length];
        Assert.Equal(StoreStatus.Ok, await store.ReadAsync(id, offset, buf).AsTask().WaitAsync(StoreFixture.Timeout));
        return buf;
    }
}
