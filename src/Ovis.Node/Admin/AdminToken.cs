using System.Security.Cryptography;
using System.Text;

namespace Ovis.Node.Admin;

/// <summary>
/// The bearer token that every state-changing admin request must carry (docs/admin-api.md,
/// "Token"). It lives in a file only its owner may read: <c>admin-token</c> in the data
/// directory unless the operator names another with <c>--token-file</c>.
/// </summary>
public sealed class AdminToken
{
    /// <summary>The token's file in the data directory.</summary>
    public const string FileName = "admin-token";

    // Owner read/write only: whoever can read the file can change every volume.
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private readonly byte[] _utf8;

    public AdminToken(string value, string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(value);
        Value = value;
        Path = path;
        _utf8 = Encoding.UTF8.GetBytes(value);
    }

    public string Value { get; }

    /// <summary>The file the token was read from; <c>GET /api/v1/node</c> names it so that a CLI on the same machine can find it.</summary>
    public string Path { get; }

    /// <summary>32 random bytes, hex: no character that a shell or an HTTP header would mangle.</summary>
    public static string Generate() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));

    /// <summary>Constant-time comparison, so the time a refusal takes says nothing about the token.</summary>
    public bool Matches(ReadOnlySpan<char> presented)
    {
        Span<byte> buffer = stackalloc byte[256];
        var max = Encoding.UTF8.GetMaxByteCount(presented.Length);
        var bytes = max <= buffer.Length ? buffer : new byte[max];
        var length = Encoding.UTF8.GetBytes(presented, bytes);
        return CryptographicOperations.FixedTimeEquals(bytes[..length], _utf8);
    }

    /// <summary>Reads the token an operator named with <c>--token-file</c>; it must exist.</summary>
    public static AdminToken ReadFile(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        string text;
        try
        {
            text = File.ReadAllText(full).Trim();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new NodeStartException($"cannot read the admin token file '{full}': {ex.Message}", ex);
        }

        return text.Length > 0 ? new AdminToken(text, full) : throw new NodeStartException($"the admin token file '{full}' is empty");
    }

    /// <summary>The data directory's token, created (mode 0600) the first time.</summary>
    public static AdminToken ReadOrCreate(string dataDirectory)
    {
        var path = System.IO.Path.Combine(dataDirectory, FileName);
        if (File.Exists(path) && File.ReadAllText(path).Trim() is { Length: > 0 } stored)
        {
            return new AdminToken(stored, path);
        }

        return Write(dataDirectory, Generate());
    }

    /// <summary>Writes <paramref name="value"/> as the data directory's token (a cluster's, copied
    /// from etcd, so that the CLI on this machine finds it where it finds a single node's).</summary>
    public static AdminToken Write(string dataDirectory, string value)
    {
        var path = System.IO.Path.Combine(dataDirectory, FileName);
        var temp = path + ".tmp";
        File.Delete(temp);

        // Created with its mode, never widened later: there is no moment when others may read it.
        var create = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            create.UnixCreateMode = OwnerOnly;
        }

        using (var stream = new FileStream(temp, create))
        {
            stream.Write(Encoding.UTF8.GetBytes(value + "\n"));
            stream.Flush(flushToDisk: true);
        }

        File.Move(temp, path, overwrite: true);
        return new AdminToken(value, path);
    }
}
