using System.Runtime.InteropServices;

namespace Ovis.Interop.Tests.Infrastructure;

/// <summary>
/// The open-file limit (RLIMIT_NOFILE) of the test process, which the daemons it starts inherit.
/// Tests that hold thousands of sockets raise the soft limit towards the hard one first.
/// </summary>
public static partial class FileDescriptorLimit
{
    private const int RlimitNofile = 7; // Linux

    /// <summary>Raises the soft limit to at least <paramref name="wanted"/> if the hard limit allows; returns the soft limit now in force.</summary>
    public static ulong EnsureAtLeast(ulong wanted)
    {
        if (!OperatingSystem.IsLinux() || GetRLimit(RlimitNofile, out var limit) != 0)
        {
            return ulong.MaxValue; // unknown: let the test find out
        }

        if (limit.Current < wanted && limit.Current < limit.Maximum)
        {
            var raised = limit with { Current = Math.Min(wanted, limit.Maximum) };
            if (SetRLimit(RlimitNofile, in raised) == 0)
            {
                return raised.Current;
            }
        }

        return limit.Current;
    }

    [StructLayout(LayoutKind.Sequential)]
    private record struct RLimit(ulong Current, ulong Maximum);

    [LibraryImport("libc", EntryPoint = "getrlimit")]
    private static partial int GetRLimit(int resource, out RLimit limit);

    [LibraryImport("libc", EntryPoint = "setrlimit")]
    private static partial int SetRLimit(int resource, in RLimit limit);
}
