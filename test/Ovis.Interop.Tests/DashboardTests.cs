using System.Globalization;
using Microsoft.Playwright;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// The dashboard at <c>/dashboard</c> in headless Chromium (Debian's, driven by Playwright):
/// health, the node, volumes with their snapshot tree and connections, live IOPS and latency while
/// fio writes, and a backup's progress. Leaves docs/dashboard.png for readers of the docs.
/// </summary>
public sealed class DashboardTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    private const string Chromium = "/usr/bin/chromium";
    private static readonly TimeSpan FioTimeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task The_dashboard_shows_health_volumes_with_their_snapshots_and_live_iops()
    {
        Assert.True(File.Exists(Chromium), $"{Chromium} is missing: apt-get install -y chromium");
        var web = await CreateVolume(UniqueName("web"), "64M");
        await CliJson("vdi", "snapshot", web, "v1");
        var clone = UniqueName("web-clone");
        await CliJson("vdi", "clone", $"{web}@v1", clone);
        await RunOk("qemu-io", ["-f", "raw", "-c", "write -P 0x3c 0 24M", Daemon.NbdUri(web)]);

        // Writes for longer than the page takes to show two polls (the rate needs two scrapes).
        var fio = Run("fio", ["--ioengine=nbd", $"--uri={Daemon.NbdUri(web)}", "--name=live", "--rw=randwrite", "--bs=4k", "--size=64M",
            "--iodepth=4", "--time_based", "--runtime=12", "--rate_iops=400"], FioTimeout);

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium,
            Headless = true,
            Args = ["--no-sandbox"],
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1100, Height = 820 } });
        // The page's own errors, in the test's output: the first thing to read when it shows nothing.
        page.Console += (_, message) => Log($"browser console {message.Type}: {message.Text}");
        page.PageError += (_, error) => Log($"browser page error: {error}");
        await page.GotoAsync(Daemon.AdminUrl + "/", new PageGotoOptions { Timeout = 15_000 });
        Assert.EndsWith("/dashboard", page.Url, StringComparison.Ordinal);

        await page.WaitForSelectorAsync($"tr[data-volume=\"{clone}\"]", new PageWaitForSelectorOptions { Timeout = 15_000 });
        Assert.Equal("healthy", await page.TextContentAsync("#health"));

        // The layer tree: the volume and the clone both read through the snapshot, so both sit under it.
        var order = await page.EvalOnSelectorAllAsync<string[]>("#volumes tbody tr", "rows => rows.map(r => r.dataset.volume)");
        var at = Array.IndexOf(order, $"{web}@v1");
        Assert.True(at >= 0 && order.Length >= at + 3 && new[] { order[at + 1], order[at + 2] }.Order().SequenceEqual(new[] { web, clone }.Order()), string.Join(", ", order));
        Assert.Contains("└", await page.TextContentAsync($"tr[data-volume=\"{clone}\"] td"), StringComparison.Ordinal);

        // A backup paced to 2 MB/s takes about 12 s: long enough to be seen running. Started after
        // the tree is checked, since its temporary snapshot joins the tree above the volume.
        var dest = Path.Combine(ScratchDirectory(), "backup.raw");
        var backup = Cli("vdi", "backup", web, dest, "--rate", "2M", "--json");

        // fio's connection, and its writes as a rate.
        await page.WaitForFunctionAsync(
            $"() => Number(document.querySelector('#write-iops').textContent.replace(/,/g, '')) > 50 && document.querySelector('tr[data-volume=\"{web}\"] td:last-child').textContent === '1'",
            null, new PageWaitForFunctionOptions { Timeout = 20_000 });
        Assert.Equal("1", await page.TextContentAsync("#connections"));
        Assert.Equal(1, await page.Locator("#nodes tbody tr").CountAsync());
        var iops = double.Parse((await page.TextContentAsync("#write-iops"))!.Replace(",", "", StringComparison.Ordinal), CultureInfo.InvariantCulture);
        Log($"dashboard write IOPS while fio wrote at 400: {iops}");

        // Latency of the same writes, as mean / p99 in milliseconds, and the backup with its bar.
        await page.WaitForFunctionAsync("() => /^[0-9.]+ \\/ [0-9.]+$/.test(document.querySelector('#write-latency').textContent)",
            null, new PageWaitForFunctionOptions { Timeout = 20_000 });
        Log($"dashboard write latency (mean / p99 ms): {await page.TextContentAsync("#write-latency")}");
        await page.WaitForSelectorAsync("#jobs tr[data-job] progress", new PageWaitForSelectorOptions { Timeout = 20_000 });
        var job = await page.TextContentAsync("#jobs tbody tr");
        Assert.Contains("backup", job, StringComparison.Ordinal);
        Assert.Contains(web, job, StringComparison.Ordinal);

        // A few more polls, so that the screenshot has a line in its chart.
        await page.WaitForFunctionAsync("() => Number(document.body.dataset.polled) >= 5", null, new PageWaitForFunctionOptions { Timeout = 20_000 });
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(DocsDirectory(), "dashboard.png"), FullPage = true });
        var done = await fio;
        Assert.True(done.Succeeded, done.Describe());
        var backedUp = await backup;
        Assert.True(backedUp.Succeeded, backedUp.Describe());
    }

    /// <summary>The repository's docs/, where the screenshots go.</summary>
    internal static string DocsDirectory()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ovis.slnx")))
            {
                return Path.Combine(dir.FullName, "docs");
            }
        }
        throw new DirectoryNotFoundException($"no Ovis.slnx above {AppContext.BaseDirectory}");
    }
}
