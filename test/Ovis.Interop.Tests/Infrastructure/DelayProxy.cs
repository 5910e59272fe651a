using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;

namespace Ovis.Interop.Tests.Infrastructure;

/// <summary>
/// A TCP proxy on loopback that delays every byte by a fixed time each way, the stand-in for
/// netem (not available here, ../shared/ENVIRONMENT.md) between two nodes: what arrives is held
/// until its time has come and then sent on, so the link has latency but keeps its bandwidth
/// (many chunks are in flight at once, as on a long wire).
/// </summary>
public sealed class DelayProxy : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _upstream;
    private long _delayTicks;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;
    private long _bytes;

    public DelayProxy(IPEndPoint upstream, TimeSpan delay)
    {
        _upstream = upstream;
        Delay = delay;
        _listener.Start();
        _accepting = AcceptAsync();
    }

    /// <summary>Where clients connect instead of the upstream.</summary>
    public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;

    /// <summary>The delay each way; a change applies to what arrives from then on.</summary>
    public TimeSpan Delay
    {
        get => TimeSpan.FromTicks(Interlocked.Read(ref _delayTicks));
        set => Interlocked.Exchange(ref _delayTicks, value.Ticks);
    }

    /// <summary>Bytes carried so far, both ways.</summary>
    public long Bytes => Interlocked.Read(ref _bytes);

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }
            _ = RelayAsync(client);
        }
    }

    private async Task RelayAsync(Socket client)
    {
        using var server = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.NoDelay = true;
        try
        {
            await server.ConnectAsync(_upstream, _stop.Token);
            // Either direction ending ends both: the peer protocol treats a lost connection as one.
            await Task.WhenAny(PumpAsync(client, server), PumpAsync(server, client));
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
        finally
        {
            client.Dispose();
        }
    }

    private async Task PumpAsync(Socket from, Socket to)
    {
        var held = Channel.CreateUnbounded<(long Due, byte[] Data)>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var sending = SendAsync(held.Reader, to);
        try
        {
            var buffer = new byte[64 * 1024];
            while (true)
            {
                int n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                if (n == 0)
                    break;
                held.Writer.TryWrite((Stopwatch.GetTimestamp() + (long)(Delay.TotalSeconds * Stopwatch.Frequency), buffer[..n]));
                Interlocked.Add(ref _bytes, n);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
        held.Writer.TryComplete();
        await sending;
    }

    private async Task SendAsync(ChannelReader<(long Due, byte[] Data)> held, Socket to)
    {
        try
        {
            await foreach (var (due, data) in held.ReadAllAsync(_stop.Token))
            {
                var wait = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), due);
                if (wait > TimeSpan.Zero)
                    await Task.Delay(wait, _stop.Token);
                await to.SendAsync(data, SocketFlags.None, _stop.Token);
            }
            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        await _accepting;
        _stop.Dispose();
    }
}
