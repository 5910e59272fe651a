using Ovis.Store;

namespace Ovis.Volumes.Tests;

/// <summary>Volume sizes are bounded by the object indices the store can hold (LocalStore.MaxObjectIndexValue).</summary>
public class VolumeSizeTests
{
    [Fact]
    public async Task A_volume_whose_objects_the_store_cannot_index_is_refused()
    {
        await using var f = await ManagerFixture.CreateAsync();
        const long ObjectSize = 4096;
        long largest = ((long)LocalStore.MaxObjectIndexValue + 1) * ObjectSize;

        // Exactly the store's object count is fine; one object more is not, on create and on resize.
        await f.Manager.CreateAsync("edge", largest, ObjectSize);
        var tooBig = await Assert.ThrowsAsync<VolumeException>(() => f.Manager.CreateAsync("over", largest + ObjectSize, ObjectSize));
        Assert.Equal(VolumeErrorCode.InvalidArgument, tooBig.Code);
        Assert.Contains("use larger objects", tooBig.Message, StringComparison.Ordinal);
        var grown = await Assert.ThrowsAsync<VolumeException>(() => f.Manager.ResizeAsync("edge", largest + ObjectSize, allowShrink: false));
        Assert.Equal(VolumeErrorCode.InvalidArgument, grown.Code);

        // With the default 4 MiB objects the 1 PiB volume limit comes first.
        await f.Manager.CreateAsync("big", VolumeManager.MaxVolumeSize);
    }
}
