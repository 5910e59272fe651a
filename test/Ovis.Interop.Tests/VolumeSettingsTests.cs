using System.Net;
using System.Text;
using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>
/// <c>ovis vdi set</c> on a single node, where the writeback cache has nothing to offer, and the
/// cache options of <c>ovis serve</c>.
/// </summary>
public sealed class VolumeSettingsTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Fact]
    public async Task A_single_node_refuses_writeback_in_one_line_and_accepts_writethrough()
    {
        var v = await CreateVolume(UniqueName("set"), "16M");

        var refused = await Cli("vdi", "set", v, "cache=writeback");
        Assert.Equal(1, refused.ExitCode);
        Assert.Single(refused.Stderr.Trim().Split('\n'));
        Assert.Contains("cache=writeback is for cluster gateways: a single node's journal already acknowledges writes at local-disk speed", refused.Stderr, StringComparison.Ordinal);
        Assert.Equal("writethrough", (await CliJson("vdi", "info", v)).GetProperty("cache").GetString());

        var accepted = await CliJson("vdi", "set", v, "cache=writethrough");
        Assert.Equal("writethrough", accepted.GetProperty("cache").GetString());
        var text = await Cli("vdi", "info", v);
        Assert.Matches(@"(?m)^Cache:\s+writethrough$", text.Stdout);
    }

    [Fact]
    public async Task The_settings_route_needs_the_token_and_names_a_bad_value()
    {
        var v = await CreateVolume(UniqueName("set-http"), "16M");
        using var anonymous = new HttpClient { BaseAddress = new Uri(Daemon.AdminUrl + "/"), Timeout = TimeSpan.FromSeconds(15) };
        using var noToken = await anonymous.PostAsync(new Uri($"api/v1/volumes/{v}/settings", UriKind.Relative), Body("""{"cache":"writethrough"}"""));
        Assert.Equal(HttpStatusCode.Unauthorized, noToken.StatusCode);

        using var http = Daemon.AdminHttp();
        using var bad = await http.PostAsync(new Uri($"api/v1/volumes/{v}/settings", UriKind.Relative), Body("""{"cache":"fast"}"""));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        using var error = JsonDocument.Parse(await bad.Content.ReadAsStringAsync());
        Assert.Equal("field 'cache' must be writeback or writethrough, not 'fast'", error.RootElement.GetProperty("error").GetString());

        using var ok = await http.PostAsync(new Uri($"api/v1/volumes/{v}/settings", UriKind.Relative), Body("""{"cache":"writethrough"}"""));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        using var info = JsonDocument.Parse(await ok.Content.ReadAsStringAsync());
        Assert.Equal("writethrough", info.RootElement.GetProperty("cache").GetString());
    }

    [Theory]
    [InlineData("--cache-size", "8M", "--cache-size: 8M is too small: use at least 16M")]
    [InlineData("--cache-size", "lots", "--cache-size: invalid size 'lots'")]
    [InlineData("--cache-size", "0", "--cache-size: invalid size '0': a size must be greater than zero")]
    [InlineData("--cache-dir", "", "--cache-dir: the directory is empty")]
    public async Task A_bad_cache_option_is_a_one_line_usage_error(string option, string value, string error)
    {
        var r = await Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, "serve", "--data", ScratchDirectory(), "--nbd", "127.0.0.1:0", "--admin", "127.0.0.1:0", option, value]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(error, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Trim().Split('\n'));
    }

    private static StringContent Body(string json) => new(json, Encoding.UTF8, "application/json");
}
