using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.Playwright;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// The admin port of a cluster's nodes: every node accepts the cluster's one admin token, kept in
/// etcd by the first node to start; each reports recovery and scrub in /metrics and shows every
/// member on its dashboard (docs/dashboard-cluster.png).
/// </summary>
public sealed class ClusterAdminTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    [Fact]
    public async Task Every_node_accepts_the_token_the_first_one_stored_in_etcd()
    {
        await using var nodes = await StartCluster(copies: 2, nodes: 2);
        var token = nodes[0].Token;
        Assert.False(string.IsNullOrEmpty(token));
        Assert.Equal(token, nodes[1].Token);

        // A token from the first node's directory changes state on the second.
        using var http = new HttpClient { BaseAddress = new Uri(nodes[1].AdminUrl + "/"), Timeout = TimeSpan.FromSeconds(15) };
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri("api/v1/volumes", UriKind.Relative))
        {
            Content = new StringContent("""{"name":"shared","size":16777216}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var created = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);

        using var refused = await http.DeleteAsync(new Uri("api/v1/volumes/shared", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
    }

    [Fact]
    public async Task A_clustered_node_reports_recovery_in_metrics_and_every_member_on_its_dashboard()
    {
        await using var nodes = await StartCluster(copies: 2, nodes: 3);
        await Create(nodes[0], "db", "64M");
        await RunOk("qemu-io", QemuIoArgs(nodes[0].NbdUri("db"), ["write -P 0x5a 0 8M"]));

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
        var scrape = await http.GetStringAsync(new Uri(nodes[0].AdminUrl + "/metrics"));
        foreach (var metric in new[] { "ovis_recovery_objects_queued_total", "ovis_recovery_paused", "ovis_scrub_objects_total", "ovis_node_objects" })
        {
            Assert.Contains("\n" + metric + "{", scrape, StringComparison.Ordinal);
        }

        // Peer round trips: each node pings the others every 5 s.
        await Eventually(async () => (await http.GetStringAsync(new Uri(nodes[0].AdminUrl + "/metrics"))).Split('\n')
                .Count(l => l.StartsWith("ovis_peer_round_trip_seconds_count{", StringComparison.Ordinal)) == 2,
            TimeSpan.FromSeconds(30), "round trips to both other nodes in /metrics");
        using (var members = JsonDocument.Parse(await http.GetStringAsync(new Uri(nodes[0].AdminUrl + "/api/v1/nodes"))))
        {
            var trips = members.RootElement.EnumerateArray()
                .Select(m => m.TryGetProperty("roundTripMs", out var t) && t.ValueKind == JsonValueKind.Number ? t.GetDouble() : -1).ToList();
            Assert.Equal(2, trips.Count(t => t > 0));
        }

        Assert.True(File.Exists("/usr/bin/chromium"), "/usr/bin/chromium is missing: apt-get install -y chromium");
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions { ExecutablePath = "/usr/bin/chromium", Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1100, Height = 820 } });
        page.PageError += (_, error) => Log($"browser page error: {error}");
        await page.GotoAsync(nodes[1].AdminUrl + "/dashboard", new PageGotoOptions { Timeout = 15_000 });
        await page.WaitForFunctionAsync("() => document.querySelectorAll('#nodes tbody tr').length === 3 && document.querySelector('tr[data-volume=\"db\"]') && Number(document.body.dataset.polled) >= 2",
            null, new PageWaitForFunctionOptions { Timeout = 20_000 });
        var zones = await page.EvalOnSelectorAllAsync<string[]>("#nodes tbody tr td:nth-child(2)", "cells => cells.map(c => c.textContent)");
        Assert.Equal(["a", "b", "c"], zones.Order());
        Assert.Equal("healthy", await page.TextContentAsync("#health"));
        await page.WaitForFunctionAsync("() => [...document.querySelectorAll('#nodes tbody tr td:last-child')].filter(c => c.textContent.endsWith(' ms')).length === 2",
            null, new PageWaitForFunctionOptions { Timeout = 20_000 });
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(DashboardTests.DocsDirectory(), "dashboard-cluster.png"), FullPage = true });
    }
}
