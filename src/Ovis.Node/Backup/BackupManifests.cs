using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Ovis.Nbd;
using Ovis.Node.Admin;
using Ovis.Store;

namespace Ovis.Node.Backup;

/// <summary>Where a backup's manifest lives, and writing it so that a crash leaves the old one or the new one.</summary>
internal static class BackupManifests
{
    public static string PathFor(string dataDirectory, string dest)
        => NbdClient.IsNbdUri(dest)
            ? Path.Combine(dataDirectory, "backups", Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(dest)))[..16] + ".json")
            : dest + ".json";

    public static BackupManifest? Load(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllBytes(path), AdminJsonContext.Api.BackupManifest);
        }
        catch (JsonException e)
        {
            throw new AdminRequestException($"{path} is not a backup manifest: {e.Message}");
        }
    }

    public static void Save(string path, BackupManifest manifest)
    {
        string dir = Path.GetDirectoryName(path)!;
        Directory.CreateDirectory(dir);
        string temp = path + ".tmp";
        using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write))
        {
            JsonSerializer.Serialize(file, manifest, AdminJsonContext.Api.BackupManifest);
            file.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
        DirectorySync.Sync(dir);
    }
}
