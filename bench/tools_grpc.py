"""gRPC server and load client for the grpc-unary and grpc-stream scenarios (grpcio, asyncio API).

    python3 -m bench.tools grpc-server --port PORT
    python3 -m bench.tools grpc-client --port PORT --duration S --mode unary|stream
                                       [--concurrency 32] [--size 64] [--stream-messages 100]

Messages are raw bytes (no generated code): `/bench.Echo/Unary` echoes its request;
`/bench.Echo/Stream` answers a request holding a count N with N messages of `--size` bytes.

The client keeps `--concurrency` calls in flight on one channel (one HTTP/2 connection, as a gRPC
app does) for the duration, after a warm-up (200 unary or 20 streaming calls) that is not counted
in the figures (it is reported, for the proxies' CPU per unit), and prints
one JSON object: calls and calls/s, messages and messages/s (stream), failed calls by status, and
the time of each call in µs (unary: the round trip; stream: first request byte to last message).
grpcio's asyncio API is used on both ends: it costs less CPU per call than the thread-pool server
and client, and the client is a separate process, as a real gRPC app is.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from array import array

HOST = "127.0.0.1"
SERVICE = "bench.Echo"
OPTIONS = [("grpc.max_send_message_length", 16 << 20),
           ("grpc.max_receive_message_length", 16 << 20)]


def grpc_server(args: argparse.Namespace) -> int:
    import grpc

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext):
        message = b"s" * args.size
        for _ in range(int(request or b"1")):
            yield message

    async def main() -> None:
        server = grpc.aio.server(options=OPTIONS)
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"{HOST}:{args.port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())
    return 0


def grpc_client(args: argparse.Namespace) -> int:
    from bench.tools import percentiles

    figures = asyncio.run(_client(args))
    figures["call_us"] = percentiles(figures.pop("_samples"))
    json.dump(figures, sys.stdout)
    return 0


async def _client(args: argparse.Namespace) -> dict:
    import grpc

    clock = time.perf_counter_ns
    samples = array("q")
    failures: collections.Counter[str] = collections.Counter()
    counts = {"calls": 0, "messages": 0}
    async with grpc.aio.insecure_channel(f"{HOST}:{args.port}", options=OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        if args.mode == "unary":
            call = channel.unary_unary(f"/{SERVICE}/Unary")
            request = b"u" * args.size

            async def one() -> int:
                await call(request, timeout=10)
                return 1
        else:
            call = channel.unary_stream(f"/{SERVICE}/Stream")
            request = str(args.stream_messages).encode()

            async def one() -> int:
                n = 0
                async for _ in call(request, timeout=30):
                    n += 1
                return n

        measuring = False
        deadline = 0

        async def worker(calls: int | None) -> None:
            done = 0
            while True:
                if calls is not None:
                    if done >= calls:
                        return
                elif clock() >= deadline:
                    return
                t0 = clock()
                try:
                    n = await one()
                except grpc.aio.AioRpcError as exc:
                    failures[exc.code().name] += 1
                    if sum(failures.values()) > 1000:
                        raise
                    continue
                finally:
                    done += 1
                if measuring:
                    samples.append(clock() - t0)
                    counts["calls"] += 1
                    counts["messages"] += n

        warmup = args.warmup if args.warmup is not None else (200 if args.mode == "unary" else 20)
        warmup = max(args.concurrency, warmup)
        per_worker = -(-warmup // args.concurrency)
        await asyncio.gather(*(worker(per_worker) for _ in range(args.concurrency)))
        warmup_calls = per_worker * args.concurrency
        failures.clear()
        measuring = True
        started = clock()
        deadline = started + int(args.duration * 1e9)
        await asyncio.gather(*(worker(None) for _ in range(args.concurrency)))
        elapsed = (clock() - started) / 1e9
    return {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "message_bytes": args.size,
        "calls": counts["calls"],
        "calls_per_s": counts["calls"] / elapsed,
        "messages": counts["messages"],
        "messages_per_s": counts["messages"] / elapsed,
        # Not in the figures above, but the proxies carried them while their CPU was measured
        # (the harness samples it around the whole client process): the CPU per unit counts them.
        "warmup_calls": warmup_calls,
        "warmup_messages": warmup_calls * (1 if args.mode == "unary" else args.stream_messages),
        "failed": sum(failures.values()),
        "failed_by_status": dict(failures),
        "elapsed_s": elapsed,
        "_samples": samples,
    }


def add_parsers(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("grpc-server")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--size", type=int, default=64, help="bytes per streamed message")
    server.set_defaults(func=grpc_server)
    client = sub.add_parser("grpc-client")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--duration", type=float, required=True)
    client.add_argument("--mode", choices=("unary", "stream"), default="unary")
    client.add_argument("--concurrency", type=int, default=32)
    client.add_argument("--size", type=int, default=64, help="request bytes (unary)")
    client.add_argument("--stream-messages", type=int, default=100)
    client.add_argument("--warmup", type=int, default=None,
                        help="calls before measuring (default 200 unary, 20 streaming)")
    client.set_defaults(func=grpc_client)
