namespace Ovis.Store;

/// <summary>For the layers above: make a directory's entries durable (after a rename, say).</summary>
public static class DirectorySync
{
    public static void Sync(string path) => NativeDirectory.Sync(path);
}
