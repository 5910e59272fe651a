namespace Ovis.Nbd.Tests.Infrastructure;

internal sealed class MemoryExportProvider : IExportProvider
{
    private readonly List<(string Name, string Description, MemoryBlockDevice Device)> _exports = [];

    public MemoryExportProvider Add(string name, MemoryBlockDevice device, string description = "")
    {
        _exports.Add((name, description, device));
        return this;
    }

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

    public IBlockDevice? Open(string name)
    {
        OpenCalls++;
        foreach ((string exportName, _, MemoryBlockDevice device) in _exports)
        {
            if (exportName == name)
            {
                return device;
            }
        }

        return null;
    }
}
