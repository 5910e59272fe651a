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
        var layers = new Layers(volumes);
        var table = new Table().Border(TableBorder.None);
        table.AddColumn(Column("NAME"));
        table.AddColumn(Column("TYPE"));
        table.AddColumn(Column("SIZE").RightAligned());
        table.AddColumn(Column("USED").RightAligned());
        table.AddColumn(Column("OBJECT SIZE").RightAligned());
        table.AddColumn(Column("CONNECTIONS").RightAligned());
        table.AddColumn(Column("PARENT"));
        table.AddColumn(Column("CREATED"));
        foreach (var volume in volumes)
        {
            // Text, not markup: a volume named "[red]" must print as itself.
            table.AddRow(
                new Text(volume.Name),
                new Text(layers.KindOf(volume)),
                new Text(Sizes.Format(volume.Size)),
                new Text(Sizes.Format(volume.UsedBytes)),
                new Text(Sizes.Format(volume.ObjectSize)),
                new Text(volume.Connections.ToString(CultureInfo.InvariantCulture)),
                new Text(volume.Parent ?? "-"),
                new Text(Time(volume.Created)));
        }

        _console.Write(table);
    }

    public void Bitmaps(string volume, IReadOnlyList<BitmapInfo> bitmaps)
    {
        if (bitmaps.Count == 0)
        {
            Line($"no bitmaps on '{volume}'");
            return;
        }

        var table = new Table().Border(TableBorder.None);
        table.AddColumn(Column("NAME"));
        table.AddColumn(Column("GRANULARITY").RightAligned());
        table.AddColumn(Column("DIRTY").RightAligned());
        table.AddColumn(Column("BACKUP"));
        table.AddColumn(Column("CREATED"));
        foreach (var b in bitmaps)
        {
            table.AddRow(new Text(b.Name), new Text(Sizes.Format(b.Granularity)), new Text(Sizes.Format(b.DirtyBytes)),
                new Text(b.BackupPending ? "pending" : "-"), new Text(Time(b.Created)));
        }

        _console.Write(table);
    }

    /// <summary>
    /// The trees of <paramref name="roots"/>: every layer under the one it inherits from, with its
    /// kind, size and the space only it uses; live volumes also with their connections.
    /// </summary>
    public void Trees(Layers layers, IReadOnlyList<VolumeInfo> roots)
    {
        if (roots.Count == 0)
        {
            Line("no volumes");
            return;
        }

        foreach (var root in roots)
        {
            var tree = new Tree(Label(layers, root)) { Guide = TreeGuide.Line };
            AddChildren(layers, root, tree);
            _console.Write(tree);
        }

        static void AddChildren(Layers layers, VolumeInfo parent, IHasTreeNodes node)
        {
            foreach (var child in layers.ChildrenOf(parent))
            {
                AddChildren(layers, child, node.AddNode(Label(layers, child)));
            }
        }

        static Markup Label(Layers layers, VolumeInfo layer)
        {
            var kind = layers.KindOf(layer);
            var details = $"size {Sizes.Format(layer.Size)}, used {Sizes.Format(layer.UsedBytes)}";
            if (!layer.IsSnapshot)
            {
                details += layer.Connections == 1 ? ", 1 connection" : $", {layer.Connections.ToString(CultureInfo.InvariantCulture)} connections";
            }
            if (layer.Deleting)
            {
                details += ", being deleted ('vdi delete' it again to finish)";
            }

            // Live volumes stand out; names are escaped, a volume named "[red]" prints as itself.
            var name = Markup.Escape(layer.Name);
            return new Markup($"{(layer.IsSnapshot ? name : $"[bold]{name}[/]")}  [dim]{kind}[/]  {details}");
        }
    }

    /// <summary>Runs <paramref name="work"/> under a progress bar of bytes, with the rate and the time left.</summary>
    public Task<T> BytesProgressAsync<T>(string description, Func<IProgress<(long Done, long Total)>, Task<T>> work)
        => _console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .StartAsync(async context =>
            {
                var task = context.AddTask(Markup.Escape(description), maxValue: 1);
                var result = await work(new BytesReporter(task));
                task.Value = task.MaxValue;
                return result;
            });

    /// <summary>Runs <paramref name="work"/> under a progress bar fed with fractions from 0 to 1.</summary>
    public Task<T> ProgressAsync<T>(string description, Func<IProgress<double>, Task<T>> work)
        => _console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .StartAsync(async context =>
            {
                var task = context.AddTask(Markup.Escape(description), maxValue: 1);
                var result = await work(new ProgressTaskReporter(task));
                task.Value = task.MaxValue;
                return result;
            });

    /// <summary>
    /// Runs <paramref name="work"/> under a bar of work done out of work found, both reported as
    /// counts of <paramref name="unit"/>; the total may grow while it runs (recovery finds more).
    /// </summary>
    public Task<T> CountProgressAsync<T>(string description, string unit, Func<IProgress<(long Done, long Total)>, Task<T>> work)
        => _console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new SpinnerColumn())
            .StartAsync(async context =>
            {
                var task = context.AddTask(Markup.Escape(description), maxValue: 1);
                return await work(new CountReporter(task, description, unit));
            });

    public void Volume(VolumeInfo volume, string kind) => KeyValues(
    [
        ("Name", volume.Name),
        ("Type", kind),
        ("Id", volume.Id.ToString(CultureInfo.InvariantCulture)),
        ("Parent", volume.Parent ?? "-"),
        ("Size", SizeWithBytes(volume.Size)),
        ("Used", SizeWithBytes(volume.UsedBytes)),
        ("Object size", Sizes.Format(volume.ObjectSize)),
        ("Connections", volume.Connections.ToString(CultureInfo.InvariantCulture)),
        ("Cache", CacheModes.Name(volume.Cache) + (volume.CacheStats is { } c ? CacheStats(c) : "")),
        ("Created", Time(volume.Created)),
    ]);

    // What the node asked holds of the volume unpushed, how far behind the copies are, and how many reads it answered.
    private static string CacheStats(VolumeCacheStats c) => string.Create(CultureInfo.InvariantCulture,
        $" (dirty {Sizes.Format(c.DirtyBytes)}, push lag {c.PushLagSeconds * 1000:0} ms, hit ratio {c.HitRatio:P0} of {c.ReadBlocks} blocks read, {(c.Around ? "writing around it" : "writing through it")}, {c.AroundWrites} writes around)");

    public void Node(NodeInfo node) => KeyValues(
    [
        ("Version", node.Version),
        ("Data directory", node.DataDirectory),
        ("NBD", string.Join(", ", node.Listeners.Nbd)),
        ("Admin", string.Join(", ", node.Listeners.Admin)),
        ("Volumes", node.VolumeCount.ToString(CultureInfo.InvariantCulture)),
        ("Snapshots", node.SnapshotCount.ToString(CultureInfo.InvariantCulture)),
        ("Used", SizeWithBytes(node.UsedBytes)),
        ("Disk", node.Space is { } space ? Disk(space) : "-"),
        ("Copy-on-write", SizeWithBytes(node.CopyOnWriteBytes)),
        ("Started", Time(node.Started)),
        ("Uptime", Uptime(TimeSpan.FromSeconds(node.UptimeSeconds))),
    ]);

    /// <summary>"nearfull: 88 % of 1.0 GiB used (nearfull 85 %, full 95 %)".</summary>
    private static string Disk(NodeSpace s)
        => string.Create(CultureInfo.InvariantCulture,
            $"{s.State}: {s.Ratio * 100:0.#} % of {Sizes.Format(s.TotalBytes)} used, {Sizes.Format(s.RoomBytes)} left for data (nearfull {s.NearFullRatio * 100:0.#} %, full {s.FullRatio * 100:0.#} %)");

    public void Cluster(ClusterInfo cluster)
    {
        KeyValues(
        [
            ("Cluster", cluster.Name),
            ("Copies", cluster.Copies.ToString(CultureInfo.InvariantCulture)),
            ("Min copies", cluster.MinCopies.ToString(CultureInfo.InvariantCulture)),
            ("Epoch", cluster.Epoch.ToString(CultureInfo.InvariantCulture)),
            ("Formatted", Time(cluster.FormattedAt)),
            ("Nodes", cluster.Nodes.Count.ToString(CultureInfo.InvariantCulture)),
            ("Placement", cluster.PlacementError ?? "ok"),
        ]);
    }

    public void Members(IReadOnlyList<MemberInfo> nodes)
    {
        var table = new Table().Border(TableBorder.None);
        table.AddColumn(Column("ID"));
        table.AddColumn(Column("ADDRESS"));
        table.AddColumn(Column("ZONE"));
        table.AddColumn(Column("STATE"));
        table.AddColumn(Column("USED").RightAligned());
        table.AddColumn(Column("OBJECTS").RightAligned());
        table.AddColumn(Column("DISK").RightAligned());
        table.AddColumn(Column("RTT").RightAligned());
        foreach (var n in nodes)
        {
            // A stale node is up but not read from until its copies are brought up to date.
            var state = n.OutIn is { } outIn ? $"{n.State} (out in {outIn.ToString(CultureInfo.InvariantCulture)}s)" : n.State;
            state = n.Stale ? $"{state}, stale" : state;
            state = n.Drain is { } drain ? $"{state}, {drain}" : state;
            state = n.Space is { State: not "ok" } space ? $"{state}, {space.State}" : state;
            table.AddRow(Markup.Escape(n.Id), Markup.Escape(n.Address), Markup.Escape(n.Zone), Markup.Escape(state),
                n.UsedBytes is { } used ? Sizes.Format(used) : "-",
                n.Objects?.ToString(CultureInfo.InvariantCulture) ?? "-",
                n.Space is { } disk ? string.Create(CultureInfo.InvariantCulture, $"{disk.Ratio * 100:0} %") : "-",
                n.RoundTripMs is { } rtt ? string.Create(CultureInfo.InvariantCulture, $"{rtt:0.00} ms") : "-");
        }

        _console.Write(table);
    }

    public void Recovery(RecoveryStatus status)
    {
        KeyValues(
        [
            ("Recovery", status.Paused ? $"paused by {status.PausedBy ?? "?"}{(status.PausedAt is { } at ? $" since {Time(at)}" : "")}" : "running"),
            ("Objects", $"{Count(status.ObjectsDone)} of {Count(status.ObjectsQueued)} done"),
            ("Moved", SizeWithBytes(status.BytesMoved)),
            ("Resynced", SizeWithBytes(status.BytesResynced)),
            ("Scrubbed", $"{Count(status.ObjectsScrubbed)} objects"),
            ("Repaired", $"{Count(status.CopiesRepaired)} copies"),
        ]);

        // Live nodes only: a node's figures go with its lease.
        var table = new Table().Border(TableBorder.None);
        table.AddColumn(Column("NODE"));
        table.AddColumn(Column("STATE"));
        table.AddColumn(Column("QUEUED").RightAligned());
        table.AddColumn(Column("DONE").RightAligned());
        table.AddColumn(Column("MOVED").RightAligned());
        table.AddColumn(Column("RESYNCED").RightAligned());
        table.AddColumn(Column("SCRUBBED").RightAligned());
        table.AddColumn(Column("REPAIRED").RightAligned());
        table.AddColumn(Column("UPDATED"));
        foreach (var n in status.Nodes)
        {
            table.AddRow(Markup.Escape(n.Node), n.Paused ? "paused" : "running", Count(n.ObjectsQueued), Count(n.ObjectsDone),
                Sizes.Format(n.BytesMoved), Sizes.Format(n.BytesResynced), Count(n.ObjectsScrubbed), Count(n.CopiesRepaired), Time(n.At));
        }

        _console.Write(table);
    }

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
        // Piped into grep or a file, escape codes are noise (Spectre decides from $TERM alone),
        // and a progress bar that redraws itself becomes Spectre's plain fallback lines.
        var redirected = Console.IsOutputRedirected;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = redirected ? AnsiSupport.No : AnsiSupport.Detect,
            Interactive = redirected ? InteractionSupport.No : InteractionSupport.Detect,
        });

        // There is no terminal width to respect either; Spectre would assume 80 columns and
        // wrap long names across lines.
        if (redirected)
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

    private static string Count(long value) => value.ToString(CultureInfo.InvariantCulture);

    private static string Time(DateTimeOffset time)
        => time.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);

    private static string Uptime(TimeSpan uptime) => uptime.TotalDays >= 1
        ? $"{(int)uptime.TotalDays}d {uptime.Hours}h {uptime.Minutes}m"
        : uptime.TotalHours >= 1
            ? $"{uptime.Hours}h {uptime.Minutes}m {uptime.Seconds}s"
            : $"{uptime.Minutes}m {uptime.Seconds}s";

    /// <summary>Reports counts into a Spectre task: its maximum follows the total, its description says both.</summary>
    private sealed class CountReporter(ProgressTask task, string description, string unit) : IProgress<(long Done, long Total)>
    {
        public void Report((long Done, long Total) value)
        {
            // Nothing found yet counts as done, not as 0 % of nothing.
            task.MaxValue = Math.Max(1, value.Total);
            task.Value = value.Total == 0 ? task.MaxValue : Math.Min(value.Done, value.Total);
            task.Description = Markup.Escape($"{description}: {Count(value.Done)} of {Count(value.Total)} {unit}");
        }
    }

    /// <summary>Reports bytes into a Spectre task: its maximum follows the total, so Spectre works out the rate.</summary>
    private sealed class BytesReporter(ProgressTask task) : IProgress<(long Done, long Total)>
    {
        public void Report((long Done, long Total) value)
        {
            task.MaxValue = Math.Max(1, value.Total);
            task.Value = Math.Max(task.Value, Math.Min(value.Done, task.MaxValue));
        }
    }

    /// <summary>Reports into a Spectre task whose maximum is 1; progress only moves forward.</summary>
    private sealed class ProgressTaskReporter(ProgressTask task) : IProgress<double>
    {
        public void Report(double value) => task.Value = Math.Max(task.Value, Math.Clamp(value, 0, 1));
    }
}
