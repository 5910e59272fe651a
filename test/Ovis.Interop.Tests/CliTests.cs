using System.Globalization;
using System.Net;
using System.Text.Json;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;
using static Ovis.Interop.Tests.Infrastructure.TestData;

namespace Ovis.Interop.Tests;

/// <summary>The `ovis vdi` commands against a running daemon, and the admin HTTP API under them.</summary>
public sealed class CliTests(OvisDaemon daemon, ITestOutputHelper output)
    : InteropTest(daemon, output), IClassFixture<OvisDaemon>
{
    [Fact]
    public async Task Create_list_info_resize_delete_round_trip()
    {
        var a = UniqueName("cli-a");
        var b = UniqueName("cli-b");

        var created = VolumeJson.From(await CliJson("vdi", "create", a, "1G"));
        Assert.Equal(a, created.Name);
        Assert.Equal(1L << 30, created.Size);
        Assert.Equal(4L * MiB, created.ObjectSize);
        var createdB = VolumeJson.From(await CliJson("vdi", "create", b, "512M", "--object-size", "1M"));
        Assert.Equal(512L * MiB, createdB.Size);
        Assert.Equal(MiB, createdB.ObjectSize);

        var list = VolumeJson.ListFrom(await CliJson("vdi", "list")).ToDictionary(v => v.Name);
        Assert.Equal(1L << 30, list[a].Size);
        Assert.Equal(512L * MiB, list[b].Size);

        var info = await VolumeInfo(a);
        Assert.Equal(1L << 30, info.Size);
        Assert.Equal(0, info.Connections);
        Assert.True(info.UsedBytes >= 0, $"usedBytes missing from vdi info --json: {info}");

        // Grow; a new NBD connection sees the new size.
        await CliJson("vdi", "resize", a, "2G");
        Assert.Equal(2L << 30, (await VolumeInfo(a)).Size);
        Assert.Equal((2L << 30).ToString(CultureInfo.InvariantCulture), (await RunOk("nbdinfo", ["--size", Daemon.NbdUri(a)])).Stdout.Trim());

        // Shrink needs --allow-shrink.
        var refused = await Cli("vdi", "resize", a, "1G");
        AssertRefused(refused, 1);
        Assert.Equal(2L << 30, (await VolumeInfo(a)).Size);
        await CliJson("vdi", "resize", a, "1G", "--allow-shrink");
        Assert.Equal(1L << 30, (await VolumeInfo(a)).Size);

        var deleted = await Cli("vdi", "delete", b);
        Assert.True(deleted.Succeeded, deleted.Describe());
        Assert.DoesNotContain(b, VolumeJson.ListFrom(await CliJson("vdi", "list")).Select(v => v.Name));
        AssertRefused(await Cli("vdi", "info", b), 1);
        var nbd = await Run("nbdinfo", ["--size", Daemon.NbdUri(b)]);
        Assert.NotEqual(0, nbd.ExitCode);
    }

    [Fact]
    public async Task Human_output_mentions_the_volumes()
    {
        var a = await CreateVolume(UniqueName("cli-human"), "3M");

        var list = await Cli("vdi", "list");
        var info = await Cli("vdi", "info", a);

        Assert.True(list.Succeeded, list.Describe());
        Assert.Contains(a, list.Stdout, StringComparison.Ordinal);
        Assert.True(info.Succeeded, info.Describe());
        Assert.Contains(a, info.Stdout, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("4096", 4096L)]
    [InlineData("1536K", 1536L * 1024)]
    [InlineData("5M", 5L * 1024 * 1024)]
    [InlineData("2G", 2L << 30)]
    [InlineData("2T", 2L << 40)]
    public async Task Sizes_in_bytes_and_binary_units(string size, long bytes)
    {
        var v = VolumeJson.From(await CliJson("vdi", "create", UniqueName("cli-size"), size));

        Assert.Equal(bytes, v.Size);
        Assert.Equal(bytes.ToString(CultureInfo.InvariantCulture), (await RunOk("nbdinfo", ["--size", Daemon.NbdUri(v.Name)])).Stdout.Trim());
    }

    [Theory]
    [InlineData("12Q")]
    [InlineData("abc")]
    [InlineData("1.5.3G")]
    [InlineData("")]
    [InlineData("99999999999T")]
    public async Task Bad_sizes_are_refused_with_one_line(string size)
    {
        var name = UniqueName("cli-badsize");

        var r = await Cli("vdi", "create", name, size);

        AssertRefused(r, 1, 2);
        AssertRefused(await Cli("vdi", "info", name), 1);
        Daemon.AssertAlive("after a bad size");
    }

    [Theory]
    [InlineData("a/b")]
    [InlineData("a b")]
    [InlineData("../up")]
    [InlineData("name?socket=x")]
    [InlineData("")]
    [InlineData("x123456789012345678901234567890123456789012345678901234567890abcd")]   // 65 characters
    public async Task Names_that_cannot_be_export_names_are_refused(string name)
    {
        var r = await Cli("vdi", "create", name, "1M");

        AssertRefused(r, 1, 2);
        Assert.DoesNotContain(name, VolumeJson.ListFrom(await CliJson("vdi", "list")).Select(v => v.Name));
    }

    [Fact]
    public async Task Shrinking_an_exported_volume_is_refused_growing_is_not()
    {
        var name = await CreateVolume(UniqueName("cli-rs"), "16M");
        await QemuIo(Daemon.NbdUri(name), "write -P 0x77 0 16M");
        await using (var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, name))
        {
            AssertRefused(await Cli("vdi", "resize", name, "8M", "--allow-shrink"), 1);
            await CliJson("vdi", "resize", name, "32M");
            // The open connection keeps the size it negotiated, and its data.
            Assert.Equal(16L * MiB, c.ExportSize);
            Assert.Equal(Enumerable.Repeat((byte)0x77, 4096), await c.ReadOkAsync(16L * MiB - 4096, 4096));
        }
        Assert.Equal(32L * MiB, (await VolumeInfo(name)).Size);
        await QemuIo(Daemon.NbdUri(name), "read -P 0x77 0 16M", "read -P 0 16M 16M");
    }

    [Theory]
    [InlineData("vdi create")]
    [InlineData("vdi create only-a-name")]
    [InlineData("vdi info")]
    [InlineData("vdi resize x")]
    [InlineData("vdi delete")]
    [InlineData("vdi frobnicate")]
    public async Task Missing_or_unknown_arguments_are_usage_errors(string commandLine)
    {
        var r = await Cli(commandLine.Split(' '));

        AssertRefused(r, 2);
    }

    [Fact]
    public async Task Unknown_volumes_are_refused()
    {
        AssertRefused(await Cli("vdi", "info", "no-such-volume"), 1);
        AssertRefused(await Cli("vdi", "resize", "no-such-volume", "1G"), 1);
        AssertRefused(await Cli("vdi", "delete", "no-such-volume"), 1);
        Daemon.AssertAlive("after requests for unknown volumes");
    }

    [Fact]
    public async Task Duplicate_create_is_refused_and_leaves_the_first()
    {
        var name = await CreateVolume(UniqueName("cli-dup"), "8M");

        AssertRefused(await Cli("vdi", "create", name, "16M"), 1);

        Assert.Equal(8L * MiB, (await VolumeInfo(name)).Size);
    }

    [Fact]
    public async Task Delete_while_exported_is_refused_until_the_client_leaves()
    {
        var name = await CreateVolume(UniqueName("cli-busy"), "8M");
        var c = await RawNbdClient.ConnectAsync(Daemon.NbdPort, name);
        try
        {
            Assert.Equal(1, (await VolumeInfo(name)).Connections);
            AssertRefused(await Cli("vdi", "delete", name), 1);
            Assert.Equal(8L * MiB, (await VolumeInfo(name)).Size);
            // The connection that blocked the delete still works.
            await c.WriteOkAsync(0, new byte[4096]);
            await c.DisconnectAsync();
            await c.ExpectCloseAsync(TimeSpan.FromSeconds(10), "NBD_CMD_DISC");
        }
        finally
        {
            await c.DisposeAsync();
        }

        await Eventually(async () => (await VolumeInfo(name)).Connections == 0, TimeSpan.FromSeconds(15),
            "the volume's connection count returns to 0 after NBD_CMD_DISC");
        var deleted = await Cli("vdi", "delete", name);
        Assert.True(deleted.Succeeded, deleted.Describe());
    }

    [Fact]
    public async Task No_daemon_at_the_admin_address_is_one_line_and_non_zero()
    {
        var r = await ProcessRunner.Run(OvisDaemon.DotnetHost, [OvisDaemon.OvisDll, "vdi", "list", "--admin", "http://127.0.0.1:1"], OvisDaemon.CliTimeout);
        Log(r.Describe());

        AssertRefused(r, 1);
    }

    [Fact]
    public async Task Admin_api_lists_and_describes_volumes()
    {
        var name = await CreateVolume(UniqueName("api"), "24M");
        using var http = Daemon.AdminHttp(TimeSpan.FromSeconds(15));

        using (var list = await http.GetAsync(new Uri("api/v1/volumes", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.OK, list.StatusCode);
            using var doc = JsonDocument.Parse(await list.Content.ReadAsStringAsync());
            Assert.Contains(name, VolumeJson.ListFrom(doc.RootElement).Select(v => v.Name));
        }
        using (var one = await http.GetAsync(new Uri($"api/v1/volumes/{name}", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.OK, one.StatusCode);
            using var doc = JsonDocument.Parse(await one.Content.ReadAsStringAsync());
            Assert.Equal(24L * MiB, VolumeJson.From(doc.RootElement).Size);
        }
        using (var missing = await http.GetAsync(new Uri("api/v1/volumes/no-such-volume", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        }
        using (var del = await http.DeleteAsync(new Uri($"api/v1/volumes/{name}", UriKind.Relative)))
        {
            Assert.True(del.IsSuccessStatusCode, $"DELETE answered {(int)del.StatusCode}");
        }
        using (var gone = await http.GetAsync(new Uri($"api/v1/volumes/{name}", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
        }
    }

    /// <summary>Non-zero exit (one of <paramref name="codes"/>) and exactly one non-empty line on stderr.</summary>
    private void AssertRefused(ProcessResult r, params int[] codes)
    {
        Assert.True(codes.Contains(r.ExitCode), $"expected exit code {string.Join(" or ", codes)}:\n{r.Describe()}");
        var err = r.Stderr.TrimEnd('\n', '\r');
        Assert.True(err.Length > 0 && !err.Contains('\n', StringComparison.Ordinal), $"expected exactly one line on stderr:\n{r.Describe()}");
        Assert.False(err.Contains("   at ", StringComparison.Ordinal), $"a stack trace leaked to stderr:\n{r.Describe()}");
        Daemon.AssertAlive($"after `{r.CommandLine}`");
    }
}
