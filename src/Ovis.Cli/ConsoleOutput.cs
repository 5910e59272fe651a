using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Ovis.Node.Admin;
using Ovis.Volumes;
using Spectre.Console;

namespace Ovis.Cli;

/// <summary>
/// What commands print on stdout: tables and key/value lists for people, or with <c>--json</c>
/// the admin API's own objects for scripts. Errors never come here (see <see cref="CliException"/>).
/// </summary>
internal sealed class ConsoleOutput(TextWriter writer)
{
    // Same names and shapes as the API; only indented, for reading.
    private static readonly AdminJsonContext IndentedJson = new(new JsonSerializerOptions(JsonSerializerDefaults.Web) { WriteIndented = true });

    private readonly IAnsiConsole _console = CreateConsole(writer);

    public static ConsoleOutput Stdout { get; } = new(Console.Out);

    public static JsonTypeInfo<T> JsonType<T>() => (JsonTypeInfo<T>)IndentedJson.GetTypeInfo(typeof(T))!;

    public void Json<T>(T value) => writer.WriteLine(JsonSerializer.Serialize(value, JsonType<T>()));

    public void Line(string text) => writer.WriteLine(text);

    public void Volumes(IReadOnlyList<VolumeInfo> volumes)
    {
        if (volumes.Count == 0)
        {
            Line("no volumes");
            return;
        }

        // Borderless, like `docker ps`: one line per volume, easy to grep and cut.
        var table = new Table().Border(TableBorder.None);
        table.AddColumn(Column("NAME"));
        table.AddColumn(Column("SIZE").RightAligned());
        table.AddColumn(Column("USED").RightAligned());
        table.AddColumn(Column("OBJECT SIZE").RightAligned());
        table.AddColumn(Column("CONNECTIONS").RightAligned());
        table.AddColumn(Column("CREATED"));
        foreach (var volume in volumes)
        {
            // Text, not markup: a volume named "[red]" must print as itself.
            table.AddRow(
                new Text(volume.Name),
                new Text(Sizes.Format(volume.Size)),
                new Text(Sizes.Format(volume.UsedBytes)),
                new Text(Sizes.Format(volume.ObjectSize)),
                new Text(volume.Connections.ToString(CultureInfo.InvariantCulture)),
                new Text(Time(volume.Created)));
        }

        _console.Write(table);
    }

    public void Volume(VolumeInfo volume) => KeyValues(
    [
        ("Name", volume.Name),
        ("Id", volume.Id.ToString(CultureInfo.InvariantCulture)),
        ("Size", SizeWithBytes(volume.Size)),
        ("Used", SizeWithBytes(volume.UsedBytes)),
        ("Object size", Sizes.Format(volume.ObjectSize)),
        ("Connections", volume.Connections.ToString(CultureInfo.InvariantCulture)),
        ("Created", Time(volume.Created)),
    ]);

    public void Node(NodeInfo node) => KeyValues(
    [
        ("Version", node.Version),
        ("Data directory", node.DataDirectory),
        ("NBD", string.Join(", ", node.Listeners.Nbd)),
        ("Admin", string.Join(", ", node.Listeners.Admin)),
        ("Volumes", node.VolumeCount.ToString(CultureInfo.InvariantCulture)),
        ("Used", SizeWithBytes(node.UsedBytes)),
        ("Started", Time(node.Started)),
        ("Uptime", Uptime(TimeSpan.FromSeconds(node.UptimeSeconds))),
    ]);

    // Plain aligned lines rather than a Spectre grid, which pads every line to the widest
    // value: this output is grepped and diffed as often as it is read.
    private void KeyValues(ReadOnlySpan<(string Key, string Value)> rows)
    {
        var width = 0;
        foreach (var (key, _) in rows)
        {
            width = Math.Max(width, key.Length + 1);
        }

        foreach (var (key, value) in rows)
        {
            writer.WriteLine($"{(key + ":").PadRight(width)}  {value}");
        }
    }

    private static IAnsiConsole CreateConsole(TextWriter writer)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(writer) });

        // Piped into grep or a file there is no terminal width to respect; Spectre would
        // assume 80 columns and wrap long names across lines.
        if (Console.IsOutputRedirected)
        {
            console.Profile.Width = 1000;
        }

        return console;
    }

    private static TableColumn Column(string header) => new(header) { Padding = new Padding(0, 0, 3, 0) };

    private static string SizeWithBytes(long bytes)
        => bytes < 1024
            ? Sizes.Format(bytes)
            : $"{Sizes.Format(bytes)} ({bytes.ToString(CultureInfo.InvariantCulture)} bytes)";

    private static string Time(DateTimeOffset time)
        => time.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);

    private static string Uptime(TimeSpan uptime) => uptime.TotalDays >= 1
        ? $"{(int)uptime.TotalDays}d {uptime.Hours}h {uptime.Minutes}m"
        : uptime.TotalHours >= 1
            ? $"{uptime.Hours}h {uptime.Minutes}m {uptime.Seconds}s"
            : $"{uptime.Minutes}m {uptime.Seconds}s";
}
