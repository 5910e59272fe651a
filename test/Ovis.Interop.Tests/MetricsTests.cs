using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>Prometheus <c>/metrics</c> on the admin port (docs/metrics.md): the counters move by what fio did.</summary>
public sealed partial class MetricsTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Fact]
    public async Task A_fio_run_moves_the_volume_counters_by_its_requests_and_bytes()
    {
        var name = await CreateVolume(UniqueName("metrics"), "16M");
        var before = await Scrape();

        // 4 MiB in 4 KiB random writes (1024, each block once), then one flush; the verify
        // phase reads every block back.
        await RunOk("fio", ["--ioengine=nbd", $"--uri={Daemon.NbdUri(name)}", "--name=m", "--rw=randwrite", "--bs=4k", "--size=4M",
            "--iodepth=8", "--end_fsync=1", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json"], TimeSpan.FromSeconds(120));
        var after = await Scrape();

        long Moved(string metric, params (string, string)[] labels) => Value(after, metric, [("volume", name), .. labels]) - Value(before, metric, [("volume", name), .. labels]);
        Assert.Equal(1024, Moved("ovis_volume_writes_total"));
        Assert.Equal(4L * MiB, Moved("ovis_volume_write_bytes_total"));
        Assert.Equal(1024, Moved("ovis_volume_reads_total"));
        Assert.Equal(4L * MiB, Moved("ovis_volume_read_bytes_total"));
        Assert.True(Moved("ovis_volume_flushes_total") >= 1, "fio's end_fsync flushed");
        Assert.Equal(1024, Moved("ovis_volume_request_duration_seconds_count", ("op", "write")));
        Assert.Equal(1024, Moved("ovis_volume_request_duration_seconds_bucket", ("op", "write"), ("le", "+Inf")));
        Assert.Equal(0, Value(after, "ovis_volume_requests_in_flight", [("volume", name)]));

        // The node's own figures are there too.
        Assert.True(Value(after, "ovis_node_objects", []) >= 1, after);
        Assert.True(Value(after, "ovis_node_space_total_bytes", []) > 0, after);
        Assert.Equal(0, Value(after, "ovis_node_space_full", []));
        Assert.Contains("# TYPE ovis_volume_request_duration_seconds histogram", after, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_large_write_into_a_fresh_volume_counts_as_direct_and_its_flush_as_one_data_sync()
    {
        var name = await CreateVolume(UniqueName("direct"), "16M");
        var before = await Scrape();
        // nbdcopy, not qemu-io: qemu-io's default writethrough cache sends every write with FUA,
        // which the journal takes (a FUA write needs its own sync either way).
        var dir = ScratchDirectory();
        var image = Path.Combine(dir, "image.raw");
        await File.WriteAllBytesAsync(image, RandomBytes(MiB, seed: 3));
        await RunOk("nbdcopy", ["--flush", image, Daemon.NbdUri(name)]);
        var fresh = await Scrape();
        Assert.True(Value(fresh, "ovis_node_direct_writes_total", []) - Value(before, "ovis_node_direct_writes_total", []) >= 1, fresh);
        Assert.True(Value(fresh, "ovis_node_data_syncs_total", []) - Value(before, "ovis_node_data_syncs_total", []) >= 1, fresh);

        // An overwrite of the same blocks goes through the journal, and its flush syncs nothing more.
        await File.WriteAllBytesAsync(image, RandomBytes(MiB, seed: 4));
        await RunOk("nbdcopy", ["--flush", image, Daemon.NbdUri(name)]);
        var over = await Scrape();
        await RunOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, Daemon.NbdUri(name)]);
        Assert.Equal(Value(fresh, "ovis_node_direct_writes_total", []), Value(over, "ovis_node_direct_writes_total", []));
        Assert.Equal(Value(fresh, "ovis_node_data_syncs_total", []), Value(over, "ovis_node_data_syncs_total", []));
    }

    [Fact]
    public async Task Metrics_need_no_token()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
        using var answer = await http.GetAsync(new Uri(Daemon.AdminUrl + "/metrics"));
        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        Assert.StartsWith("text/plain", answer.Content.Headers.ContentType?.MediaType, StringComparison.Ordinal);
    }

    private async Task<string> Scrape()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
        return await http.GetStringAsync(new Uri(Daemon.AdminUrl + "/metrics"));
    }

    /// <summary>The sum of the series of <paramref name="metric"/> that carry all of <paramref name="labels"/>
    /// (in any order: the exporter adds its own); 0 when there is none yet.</summary>
    private static long Value(string scrape, string metric, (string Name, string Value)[] labels)
    {
        double sum = 0;
        foreach (Match line in Series().Matches(scrape))
        {
            if (line.Groups["name"].Value != metric)
            {
                continue;
            }
            var present = Label().Matches(line.Groups["labels"].Value).ToDictionary(l => l.Groups["k"].Value, l => l.Groups["v"].Value);
            if (labels.All(l => present.TryGetValue(l.Name, out var v) && v == l.Value))
            {
                sum += double.Parse(line.Groups["value"].Value, CultureInfo.InvariantCulture);
            }
        }
        return (long)sum;
    }

    [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>[^\n]*)\})? (?<value>\S+)", RegexOptions.Multiline)]
    private static partial Regex Series();

    [GeneratedRegex(@"(?<k>[a-zA-Z_][a-zA-Z0-9_]*)=""(?<v>(?:[^""\\]|\\.)*)""")]
    private static partial Regex Label();
}
