namespace Ovis.Volumes.Tests;

/// <summary>The registry conformance suite on the embedded registry, in a temporary data directory.</summary>
public sealed class EmbeddedRegistryTests : RegistryConformanceTests
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ovis-registry-").FullName;
    private readonly EmbeddedRegistry _registry;

    public EmbeddedRegistryTests()
    {
        _registry = EmbeddedRegistry.Open(_dir);
    }

    protected override IVolumeRegistry Registry => _registry;

    protected override bool IsShared => false;

    protected override Task<IVolumeRegistry> OpenAnotherAsync() => Task.FromResult<IVolumeRegistry>(EmbeddedRegistry.Open(_dir));

    public override Task DisposeAsync()
    {
        Directory.Delete(_dir, recursive: true);
        return Task.CompletedTask;
    }

    [Fact]
    public async Task A_registry_file_of_an_earlier_version_reads_as_it_was_written()
    {
        // The format catalog.json had before the registry moved behind IVolumeRegistry.
        await File.WriteAllTextAsync(Path.Combine(_dir, EmbeddedRegistry.FileName), """
            {
              "nextId": 4,
              "volumes": [
                { "id": 1, "name": "vm", "size": 67108864, "objectSize": 4194304, "created": "2024-05-01T12:00:00+00:00", "parentId": null, "tag": "s1" },
                { "id": 3, "name": "vm", "size": 67108864, "objectSize": 4194304, "created": "2024-05-01T12:00:00+00:00", "parentId": 1, "tag": null }
              ]
            }
            """);
        VersionedCatalog loaded = await EmbeddedRegistry.Open(_dir).LoadAsync().WaitAsync(T);
        Assert.Equal(4u, loaded.State.NextId);
        Assert.Equal(["vm@s1", "vm"], loaded.State.Volumes.Select(v => v.DisplayName));
        Assert.Equal(1u, loaded.State.Volumes[1].ParentId);
    }

    [Fact]
    public async Task An_unreadable_registry_file_is_reported_with_its_path()
    {
        string path = Path.Combine(_dir, EmbeddedRegistry.FileName);
        await File.WriteAllTextAsync(path, "{ not json");
        var e = Assert.Throws<InvalidDataException>(() => EmbeddedRegistry.Open(_dir));
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
    }
}
