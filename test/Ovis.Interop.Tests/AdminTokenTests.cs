using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>The admin token (docs/admin-api.md, "Token"): who may change state, and what the CLI says when refused.</summary>
public sealed class AdminTokenTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    private const string Refused = "ovis: the admin API refused the request: ";

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void The_token_file_is_created_at_first_start_readable_by_its_owner_only()
    {
        Assert.True(File.Exists(Daemon.TokenFile), $"no {Daemon.TokenFile}\n{DaemonState()}");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Daemon.TokenFile));
        Assert.Equal(64, Daemon.Token!.Length);
    }

    [Fact]
    public async Task A_mutation_without_the_token_or_with_a_wrong_one_gets_401_and_with_it_succeeds()
    {
        var name = UniqueName("token");
        using var open = new HttpClient { BaseAddress = new Uri(Daemon.AdminUrl + "/"), Timeout = TimeSpan.FromSeconds(15) };

        using (var missing = await open.PostAsync(new Uri("api/v1/volumes", UriKind.Relative), CreateBody(name)))
        {
            await AssertUnauthorized(missing, "no token");
        }

        using (var wrong = new HttpRequestMessage(HttpMethod.Post, new Uri("api/v1/volumes", UriKind.Relative)) { Content = CreateBody(name) })
        {
            wrong.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "not-the-token");
            using var answer = await open.SendAsync(wrong);
            await AssertUnauthorized(answer, "wrong token");
        }

        // Reads stay open, and nothing was created by the refused requests.
        using (var list = await open.GetAsync(new Uri($"api/v1/volumes/{name}", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.NotFound, list.StatusCode);
        }

        using var authorized = Daemon.AdminHttp(TimeSpan.FromSeconds(15));
        using (var created = await authorized.PostAsync(new Uri("api/v1/volumes", UriKind.Relative), CreateBody(name)))
        {
            Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        }

        using (var deleted = await open.DeleteAsync(new Uri($"api/v1/volumes/{name}", UriKind.Relative)))
        {
            await AssertUnauthorized(deleted, "no token");
        }
    }

    [Fact]
    public async Task The_cli_finds_the_token_of_a_node_on_this_machine_by_itself()
    {
        var name = UniqueName("found");
        var r = await RunCli(["vdi", "create", name, "16M"]);
        Assert.True(r.Succeeded, r.Describe());
    }

    [Fact]
    public async Task The_cli_says_in_one_line_that_its_token_is_wrong()
    {
        var wrongFile = Path.Combine(ScratchDirectory(), "wrong-token");
        await File.WriteAllTextAsync(wrongFile, "0123456789abcdef\n");

        var fromFile = await RunCli(["vdi", "create", UniqueName("wrong"), "16M", "--token-file", wrongFile]);
        AssertOneLine(fromFile, Refused + "wrong token (the one from --token-file " + wrongFile);

        var fromEnvironment = await RunCli(["vdi", "delete", "anything"], new Dictionary<string, string> { ["OVIS_TOKEN"] = "nope" });
        AssertOneLine(fromEnvironment, Refused + "wrong token (the one from OVIS_TOKEN");
    }

    [Fact]
    public async Task The_cli_says_in_one_line_that_it_has_no_token()
    {
        // A node whose token file is gone by the time the CLI looks (the node keeps the token it read).
        var scratch = ScratchDirectory();
        var tokenFile = Path.Combine(scratch, "cluster-token");
        await File.WriteAllTextAsync(tokenFile, "a-token-given-to-every-node\n");
        await using var node = await OvisDaemon.StartNewAsync(extraArguments: ["--token-file", tokenFile]);
        File.Delete(tokenFile);

        var r = await ProcessRunner.Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, "vdi", "create", "x", "16M", "--admin", node.AdminUrl], OvisDaemon.CliTimeout);
        Log(r.Describe());
        AssertOneLine(r, Refused + "no token (set OVIS_TOKEN or --token-file");

        var withToken = await ProcessRunner.Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, "vdi", "create", "x", "16M", "--admin", node.AdminUrl], OvisDaemon.CliTimeout,
            new Dictionary<string, string> { ["OVIS_TOKEN"] = "a-token-given-to-every-node" });
        Assert.True(withToken.Succeeded, withToken.Describe() + "\n" + node.Log);
    }

    [Fact]
    public async Task An_admin_api_without_a_token_is_refused_off_loopback_unless_insecure()
    {
        var data = Path.Combine(ScratchDirectory(), "data");
        var r = await Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, "serve", "--data", data, "--nbd", "127.0.0.1:0", "--admin", "0.0.0.0:0", "--no-token"], OvisDaemon.CliTimeout);
        Assert.Equal(1, r.ExitCode);
        Assert.StartsWith("ovis: refusing to serve the admin API on 0.0.0.0:0 without a token", r.Stderr.Trim(), StringComparison.Ordinal);
        Assert.Contains("--insecure", r.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(data, "admin-token")));
    }

    [Fact]
    public async Task With_no_token_on_loopback_mutations_are_open()
    {
        await using var node = await OvisDaemon.StartNewAsync(extraArguments: ["--no-token"]);
        Assert.False(File.Exists(node.TokenFile));
        using var open = new HttpClient { BaseAddress = new Uri(node.AdminUrl + "/"), Timeout = TimeSpan.FromSeconds(15) };
        using var created = await open.PostAsync(new Uri("api/v1/volumes", UriKind.Relative), CreateBody("open"));
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
    }

    private static StringContent CreateBody(string name)
        => new($$"""{"name":"{{name}}","size":16777216}""", Encoding.UTF8, "application/json");

    private static async Task AssertUnauthorized(HttpResponseMessage answer, string reason)
    {
        Assert.Equal(HttpStatusCode.Unauthorized, answer.StatusCode);
        Assert.Equal("Bearer", answer.Headers.WwwAuthenticate.Single().Scheme);
        using var doc = JsonDocument.Parse(await answer.Content.ReadAsStringAsync());
        Assert.StartsWith(reason, doc.RootElement.GetProperty("error").GetString(), StringComparison.Ordinal);
    }

    // Without the harness's --token-file: what an operator's shell would run.
    private async Task<ProcessResult> RunCli(string[] args, IDictionary<string, string>? environment = null)
    {
        var r = await ProcessRunner.Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, .. args, "--admin", Daemon.AdminUrl], OvisDaemon.CliTimeout, environment);
        Log(r.Describe());
        return r;
    }

    private static void AssertOneLine(ProcessResult r, string expectedStart)
    {
        Assert.Equal(1, r.ExitCode);
        var err = r.Stderr.TrimEnd('\n', '\r');
        Assert.False(err.Contains('\n', StringComparison.Ordinal), $"expected exactly one line on stderr:\n{r.Describe()}");
        Assert.StartsWith(expectedStart, err, StringComparison.Ordinal);
    }
}
