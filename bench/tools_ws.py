"""Websocket echo server and client for the ws-echo scenarios (the `websockets` library).

    python3 -m bench.tools ws-server --port PORT
    python3 -m bench.tools ws-client --port PORT --duration S [--connections 1] [--size 64]

The server echoes every message. The client opens `--connections` websockets (HTTP/1.1 upgrade on
`ws://127.0.0.1:PORT/echo`, no compression, as small-message apps usually run), and on each sends
a `--size`-byte binary message and waits for its echo before sending the next, for the duration,
after an uncounted warm-up. It prints messages, messages/s and the round trip of each message in
µs. Both ends run on uvloop when it is installed; keep-alive pings are off so that only the
measured messages cross the path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array

HOST = "127.0.0.1"


def _run(coro) -> object:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def ws_server(args: argparse.Namespace) -> int:
    from websockets.asyncio.server import serve

    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(echo, HOST, args.port, compression=None, ping_interval=None,
                         max_size=None) as server:
            await server.serve_forever()

    _run(main())
    return 0


def ws_client(args: argparse.Namespace) -> int:
    from bench.tools import percentiles

    figures = _run(_client(args))
    figures["rtt_us"] = percentiles(figures.pop("_samples"))
    json.dump(figures, sys.stdout)
    return 0


async def _client(args: argparse.Namespace) -> dict:
    from websockets.asyncio.client import connect

    clock = time.perf_counter_ns
    samples = array("q")
    message = b"w" * args.size
    sockets = [
        await asyncio.wait_for(
            connect(f"ws://{HOST}:{args.port}/echo", compression=None, ping_interval=None,
                    max_size=None),
            10,
        )
        for _ in range(args.connections)
    ]
    try:
        for ws in sockets:
            for _ in range(args.warmup):
                await ws.send(message)
                await ws.recv()
        started = clock()
        deadline = started + int(args.duration * 1e9)

        async def pingpong(ws) -> None:
            send, recv, append = ws.send, ws.recv, samples.append
            while True:
                for _ in range(16):  # the clock is read per message anyway
                    t0 = clock()
                    await send(message)
                    if len(await recv()) != len(message):
                        raise ConnectionError("echo of the wrong size")
                    append(clock() - t0)
                if clock() >= deadline:
                    return

        await asyncio.gather(*(pingpong(ws) for ws in sockets))
        elapsed = (clock() - started) / 1e9
    finally:
        for ws in sockets:
            await ws.close()
    return {
        "connections": args.connections,
        "message_bytes": args.size,
        "messages": len(samples),
        "messages_per_s": len(samples) / elapsed,
        "warmup_messages": args.warmup * args.connections,  # carried, not in the figures
        "elapsed_s": elapsed,
        "_samples": samples,
    }


def add_parsers(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("ws-server")
    server.add_argument("--port", type=int, required=True)
    server.set_defaults(func=ws_server)
    client = sub.add_parser("ws-client")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--duration", type=float, required=True)
    client.add_argument("--connections", type=int, default=1)
    client.add_argument("--size", type=int, default=64)
    client.add_argument("--warmup", type=int, default=200, help="messages per connection")
    client.set_defaults(func=ws_client)
