#!/usr/bin/env python3
"""delay-proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_MS — a TCP proxy on 127.0.0.1 that holds every
byte DELAY_MS milliseconds in each direction before passing it on: latency without a bandwidth
cap (many chunks in flight at once), the stand-in for netem, which this machine lacks. The
interop tests use the same idea in C# (test/Ovis.Interop.Tests/Infrastructure/DelayProxy.cs)."""
import asyncio
import socket
import sys
import time


async def pump(reader, writer, delay):
    held = asyncio.Queue()

    async def send():
        while True:
            item = await held.get()
            if item is None:
                break
            arrived, data = item
            wait = arrived + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            held.put_nowait((time.monotonic(), data))
    except ConnectionError:
        pass
    held.put_nowait(None)
    try:
        await sender
    except ConnectionError:
        pass


async def main(listen, upstream, delay):
    async def relay(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_writer.close()
            return
        for w in (client_writer, server_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pump(client_reader, server_writer, delay), pump(server_reader, client_writer, delay))

    server = await asyncio.start_server(relay, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000))
