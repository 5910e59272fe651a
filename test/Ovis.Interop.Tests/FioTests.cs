using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>fio's nbd engine with crc32c verification, one and many connections.</summary>
public sealed class FioTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    private static readonly TimeSpan FioTimeout = TimeSpan.FromSeconds(120);

    [Theory]
    [InlineData("randwrite")]
    [InlineData("randrw")]
    public async Task Verified_random_io_at_queue_depth_16(string rw)
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("fio-" + rw), "64M"));

        var jobs = await Fio(uri, $"--name={rw}", $"--rw={rw}", "--bs=4k", "--size=64M", "--iodepth=16");

        var job = Assert.Single(jobs);
        var written = job.GetProperty("write").GetProperty("io_bytes").GetInt64();
        var read = job.GetProperty("read").GetProperty("io_bytes").GetInt64();
        if (rw == "randwrite")
        {
            Assert.Equal(64L * MiB, written);
            // The verify phase read every block back.
            Assert.Equal(64L * MiB, read);
        }
        else
        {
            Assert.True(written > 0 && read > 0, $"randrw moved read={read} write={written}");
        }
    }

    [Fact]
    public async Task Four_connections_on_disjoint_ranges_exercise_multi_conn()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("fio-mc"), "64M"));

        var jobs = await Fio(uri, "--name=mc", "--rw=randwrite", "--bs=4k", "--size=16M",
            "--numjobs=4", "--offset_increment=16M", "--iodepth=16");

        Assert.Equal(4, jobs.Count);
        foreach (var job in jobs)
        {
            Assert.Equal(16L * MiB, job.GetProperty("write").GetProperty("io_bytes").GetInt64());
            Assert.Equal(16L * MiB, job.GetProperty("read").GetProperty("io_bytes").GetInt64());
        }
        // The four ranges together cover the volume: each job left its own verified data.
        Assert.Equal([(0L, 64L * MiB, 0)], await NbdMap(uri));
    }

    [Fact]
    public async Task Mixed_block_sizes_with_fua_and_trim()
    {
        var uri = Daemon.NbdUri(await CreateVolume(UniqueName("fio-mix"), "32M"));

        await Fio(uri, "--name=mix", "--rw=randwrite", "--bsrange=512-256k", "--size=32M", "--iodepth=8",
            "--fsync=16");
        // fio cannot verify trims; run them on their own and check that they left a hole.
        await Fio(uri, "--name=trim", "--rw=randtrim", "--bs=64k", "--size=8M", "--iodepth=4", "--verify=0");

        var map = await NbdMap(uri);
        Assert.True(map[0] is { Offset: 0, Type: 3 } && map[0].Length >= 8L * MiB, $"expected a hole over the first 8 MiB: {string.Join(", ", map)}");
    }

    /// <summary>Runs fio with --output-format=json and crc32c verification unless overridden; returns the jobs.</summary>
    private async Task<List<JsonElement>> Fio(string uri, params string[] args)
    {
        var all = new List<string> { "--ioengine=nbd", $"--uri={uri}", "--output-format=json", "--verify_fatal=1", "--verify_state_save=0" };
        if (!args.Any(a => a.StartsWith("--verify=", StringComparison.Ordinal)))
        {
            all.Add("--verify=crc32c");
        }
        all.AddRange(args);
        var r = await Run("fio", all, FioTimeout);
        if (!r.Succeeded || r.Stderr.Contains("verify", StringComparison.OrdinalIgnoreCase) || r.Stderr.Contains("error", StringComparison.OrdinalIgnoreCase))
        {
            Assert.Fail($"fio failed:\n{r.Describe()}\n{DaemonState()}");
        }
        // fio prints "fio: connected to NBD server" before the JSON document.
        var start = r.Stdout.IndexOf('{', StringComparison.Ordinal);
        Assert.True(start >= 0, $"no JSON in fio output:\n{r.Describe()}");
        using var doc = JsonDocument.Parse(r.Stdout[start..]);
        var jobs = doc.RootElement.GetProperty("jobs").EnumerateArray().Select(j => j.Clone()).ToList();
        foreach (var job in jobs)
        {
            Assert.True(job.GetProperty("error").GetInt32() == 0, $"fio job {job.GetProperty("jobname")} error {job.GetProperty("error")}:\n{r.Describe()}");
        }
        return jobs;
    }
}
