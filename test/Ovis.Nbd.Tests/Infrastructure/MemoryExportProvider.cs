namespace Ovis.Nbd.Tests.Infrastructure;

internal sealed class MemoryExportProvider : IExportProvider
{
    private readonly List<(string Name, string Description, MemoryBlockDevice Device)> _exports = [];
    private readonly Dictionary<string, Exception> _failures = [];

    public MemoryExportProvider Add(string name, MemoryBlockDevice device, string description = "")
    {
        _exports.Add((name, description, device));
        return this;
    }

    /// <summary>Opening <paramref name="name"/> throws <paramref name="exception"/> (an export that exists elsewhere, or a broken backend).</summary>
    public MemoryExportProvider Fail(string name, Exception exception)
    {
        _failures[name] = exception;
        return this;
    }

    /// <summary>Opening <paramref name="name"/> works again (the other node let go of it).</summary>
    public void Recover(string name) => _failures.Remove(name);

    /// <summary>Complete every open (or its failure) after a thread-pool hop instead of inline, as one that asks etcd would.</summary>
    public bool OpenAsynchronously { get; set; }

    /// <summary>Opens that found an export (and so handed out a device to dispose).</summary>
    public int Opened { get; private set; }

    /// <summary>Every call of OpenAsync, whatever it came to.</summary>
    public int OpenCalls { get; private set; }

    public IReadOnlyList<(string Name, string Description)> ListExports()
    {
        var list = new List<(string Name, string Description)>();
        foreach ((string name, string description, _) in _exports)
        {
            list.Add((name, description));
        }

        return list;
    }

    /// <summary>How long every open takes, as one that waits for a volume's lock would; implies <see cref="OpenAsynchronously"/>.</summary>
    public TimeSpan OpenDelay { get; set; }

    public ValueTask<IBlockDevice?> OpenAsync(string name)
    {
        OpenCalls++;
        return OpenAsynchronously || OpenDelay > TimeSpan.Zero ? OpenLaterAsync(name) : new ValueTask<IBlockDevice?>(Open(name));
    }

    private async ValueTask<IBlockDevice?> OpenLaterAsync(string name)
    {
        if (OpenDelay > TimeSpan.Zero)
        {
            await Task.Delay(OpenDelay);
        }
        else
        {
            await Task.Yield();
        }

        return Open(name);
    }

    private MemoryBlockDevice? Open(string name)
    {
        if (_failures.TryGetValue(name, out Exception? exception))
        {
            throw exception;
        }

        foreach ((string exportName, _, MemoryBlockDevice device) in _exports)
        {
            if (exportName == name)
            {
                Opened++;
                return device;
            }
        }

        return null;
    }
}
