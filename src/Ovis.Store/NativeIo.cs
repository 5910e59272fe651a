using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Ovis.Store;

/// <summary>The few Linux calls .NET does not expose: O_DIRECT opens, fdatasync, hole punching.</summary>
internal static partial class NativeIo
{
    private const int ORdWr = 0x2;
    private const int OCreat = 0x40;
    private const int ODirect = 0x4000;
    private const int OCloexec = 0x80000;
    private const int FallocFlKeepSize = 0x1;
    private const int FallocFlPunchHole = 0x2;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    private static partial int FDataSync(nint fd);

    [LibraryImport("libc", EntryPoint = "pwritev2", SetLastError = true)]
    private static unsafe partial nint PWriteV2(nint fd, IoVec* iov, int iovcnt, long offset, int flags);

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public nint Base;
        public nuint Length;
    }

    private const int RwfDsync = 0x2;
    private const int ENoSys = 38;
    private const int EOpNotSupp = 95;
    private const int EInval = 22;
    private const int EIntr = 4;

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    private static partial int FAllocate(nint fd, int mode, long offset, long length);

    [LibraryImport("libc", EntryPoint = "statvfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int StatVfs(string path, Span<ulong> buf);

    /// <summary>ENOSPC: the file system has no block left for the call.</summary>
    public const int NoSpaceErrno = 28;

    /// <summary>
    /// Size and free space of the file system holding <paramref name="path"/>, in bytes; free is
    /// what an unprivileged process may still allocate (f_bavail), so blocks ext4 keeps for root
    /// count as used.
    /// </summary>
    public static (long Total, long Available) FileSystemSpace(string path)
    {
        // struct statvfs on LP64 glibc: f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, … each 8
        // bytes, 112 bytes in all; the buffer is larger so that no layout can overrun it.
        Span<ulong> buf = stackalloc ulong[32];
        if (StatVfs(path, buf) != 0)
        {
            throw new IOException($"statvfs {path}: errno {Marshal.GetLastPInvokeError()}");
        }
        ulong frsize = buf[1] != 0 ? buf[1] : buf[0];
        return ((long)(buf[2] * frsize), (long)(buf[4] * frsize));
    }

    /// <summary>Allocates the blocks of a range without changing the file's size (best effort:
    /// false when the file system cannot, or has no room).</summary>
    public static bool Allocate(SafeFileHandle handle, long offset, long length)
        => FAllocate(handle.DangerousGetHandle(), FallocFlKeepSize, offset, length) == 0;

    /// <summary>Whether an I/O exception is the file system being out of space.</summary>
    public static bool IsNoSpace(Exception e)
        => e is IOException io && (io.HResult == NoSpaceErrno || io.Message.Contains("No space left", StringComparison.Ordinal));

    /// <summary>Opens a file for direct I/O: writes bypass the page cache, so a journal write costs
    /// no page-cache copy and its fdatasync has no dirty pages to write back.</summary>
    public static SafeFileHandle OpenDirect(string path)
    {
        int fd = Open(path, ORdWr | OCreat | ODirect | OCloexec, Convert.ToInt32("644", 8));
        if (fd < 0)
        {
            throw new IOException($"open {path} (O_DIRECT): errno {Marshal.GetLastPInvokeError()}");
        }
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>Makes the file's data durable (and the metadata needed to read it). One device flush.</summary>
    public static void DataSync(SafeFileHandle handle)
    {
        if (FDataSync(handle.DangerousGetHandle()) != 0)
        {
            throw new IOException($"fdatasync: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="offset"/> with RWF_DSYNC: on return it is
    /// durable as after a write and an fdatasync (on a device with FUA, one write and no cache
    /// flush). False, having written nothing, when the kernel or file system does not take the
    /// flag; throws on a real I/O error, as RandomAccess.Write would.
    /// </summary>
    public static unsafe bool TryWriteDataSync(SafeFileHandle handle, ReadOnlySpan<byte> data, long offset)
    {
        fixed (byte* p = data)
        {
            var iov = new IoVec { Base = (nint)p, Length = (nuint)data.Length };
            nint n;
            int errno;
            do
            {
                n = PWriteV2(handle.DangerousGetHandle(), &iov, 1, offset, RwfDsync);
                errno = n < 0 ? Marshal.GetLastPInvokeError() : 0;
            }
            while (errno == EIntr);
            if (errno is ENoSys or EOpNotSupp or EInval)
            {
                return false;
            }
            if (n < 0)
            {
                throw new IOException($"pwritev2(RWF_DSYNC): errno {errno}", errno);
            }
            if (n != data.Length)
            {
                // O_DIRECT writes of whole blocks are cut short only by a full disk, which the
                // preallocated journal never meets: a short write is an I/O error here.
                throw new IOException($"pwritev2(RWF_DSYNC): wrote {n} of {data.Length} bytes");
            }
            return true;
        }
    }

    /// <summary>Frees the blocks of a range; it then reads as zeroes and uses no space.</summary>
    public static void PunchHole(SafeFileHandle handle, long offset, long length)
    {
        if (FAllocate(handle.DangerousGetHandle(), FallocFlPunchHole | FallocFlKeepSize, offset, length) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            // EOPNOTSUPP (95): a file system without hole punching; write zeroes instead.
            if (errno != 95)
            {
                throw new IOException($"fallocate(PUNCH_HOLE): errno {errno}");
            }
            WriteZeroes(handle, offset, length);
        }
    }

    private static void WriteZeroes(SafeFileHandle handle, long offset, long length)
    {
        byte[] zeroes = new byte[Math.Min(length, 1 << 20)];
        while (length > 0)
        {
            int n = (int)Math.Min(length, zeroes.Length);
            RandomAccess.Write(handle, zeroes.AsSpan(0, n), offset);
            offset += n;
            length -= n;
        }
    }
}

internal static partial class NativeDirectory
{
    private const int ORdOnly = 0;
    private const int ODirectory = 0x10000;
    private const int OCloexec = 0x80000;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int FSync(int fd);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "syncfs", SetLastError = true)]
    private static partial int SyncFs(int fd);

    /// <summary>Makes everything written to the file system holding <paramref name="path"/> durable
    /// (syncfs: all its files' data and metadata, one call).</summary>
    public static void SyncFileSystem(string path) => CallOnDirectory(path, SyncFs, "syncfs");

    /// <summary>Makes a directory's entries (files created or removed in it) durable.</summary>
    public static void Sync(string path) => CallOnDirectory(path, FSync, "fsync");

    private static void CallOnDirectory(string path, Func<int, int> call, string name)
    {
        int fd = Open(path, ORdOnly | ODirectory | OCloexec, 0);
        if (fd < 0)
        {
            throw new IOException($"open {path}: errno {Marshal.GetLastPInvokeError()}");
        }
        try
        {
            if (call(fd) != 0)
            {
                throw new IOException($"{name} {path}: errno {Marshal.GetLastPInvokeError()}");
            }
        }
        finally
        {
            _ = Close(fd);
        }
    }
}
