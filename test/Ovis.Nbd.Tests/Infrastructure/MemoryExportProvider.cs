namespace Ovis.Nbd.Tests.Infrastructure;

internal sealed class MemoryExportProvider : IExportProvider
{
    private readonly List<(string Name, string Description, MemoryBlockDevice Device)> _exports = [];

    public MemoryExportProvider Add(string name, MemoryBlockDevice device, string description = "")
    {
        _exports.Add((name, description, device));
        return this;
    }

    /// <summary>Opens that found an export (and so handed out a device to dispose).</summary>
    public int Opened { get; private set; }

    public IReadOnlyList<(string Name, string Description)> ListExports()
    {
        var list = new List<(string Name, string Description)>();
        foreach ((string name, string description, _) in _exports)
        {
            list.Add((name, description));
        }

        return list;
    }

    public IBlockDevice? Open(string name)
    {
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
