"""Small servers and clients for the scenarios no standalone tool covers, run as processes.

    python3 -m bench.tools echo-server --port PORT
    python3 -m bench.tools rr-client --port PORT --duration S [--size 64] [--count N]
    python3 -m bench.tools connect-client --port PORT --duration S [--count N]
    python3 -m bench.tools idle-client --port PORT --hold S [--connections 10000] [--http]
    python3 -m bench.tools http-server | grpc-server | grpc-client | ws-server | ws-client
                           | tls-server | tls-client ...   (bench/tools_*.py)

Clients print one JSON object on stdout. They are written to cost as little as possible per
operation (blocking sockets, a tight loop, `perf_counter_ns`, results kept in an `array`), so that
the path being measured, not the client, sets the figures. The echo server runs on uvloop when it
is installed; it is the same for every path, so its own cost cancels out of the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import socket
import sys
import threading
import time
from array import array
from collections.abc import Callable

HOST = "127.0.0.1"


# -- echo server -----------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side as well


async def serve_echo(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, HOST, port, reuse_address=True, backlog=4096)
    async with server:
        await server.serve_forever()


def echo_server(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_echo(args.port))
    else:
        uvloop.run(serve_echo(args.port))
    return 0


# -- percentiles -----------------------------------------------------------------------------


def percentiles(samples_ns: array, points: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict:
    """Nearest-rank percentiles and extremes, in microseconds."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    if n == 0:
        return {}
    out = {}
    for p in points:
        rank = max(0, min(n - 1, int(-(-p * n // 100)) - 1))
        out[f"p{p:g}"] = ordered[rank] / 1000
    out["min"] = ordered[0] / 1000
    out["max"] = ordered[-1] / 1000
    out["mean"] = sum(ordered) / n / 1000
    return out


# -- round trips -----------------------------------------------------------------------------


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def rr_client(args: argparse.Namespace) -> int:
    """One connection; send `size` bytes, read them back, one message at a time."""
    size = args.size
    message = b"x" * size
    buf = bytearray(size)
    view = memoryview(buf)
    sock = connect(args.port)
    sock.settimeout(5.0)
    recv_into, send = sock.recv_into, sock.send
    clock = time.perf_counter_ns

    def one() -> int:
        t0 = clock()
        send(message)
        got = recv_into(buf)
        while got < size:
            n = recv_into(view[got:])
            if n == 0:
                raise ConnectionError("the echo closed the connection")
            got += n
        return clock() - t0

    for _ in range(args.warmup):
        one()
    rtts = array("q")
    append = rtts.append
    count = args.count
    started = clock()
    deadline = started + int(args.duration * 1e9)
    # The clock is read for each message anyway: check the deadline every 64 messages.
    while len(rtts) < count:
        for _ in range(64):
            append(one())
        if clock() >= deadline:
            break
    elapsed = (clock() - started) / 1e9
    sock.close()
    json.dump(
        {
            "messages": len(rtts),
            "message_bytes": size,
            "elapsed_s": elapsed,
            "messages_per_s": len(rtts) / elapsed,
            "rtt_us": percentiles(rtts),
        },
        sys.stdout,
    )
    return 0


# -- new connections -------------------------------------------------------------------------


def connect_client(args: argparse.Namespace) -> int:
    """Open, send 1 byte, read 1 byte, close; one connection after the other.

    With `--concurrency N`, N threads do so side by side (blocking sockets: the GIL is released
    while each waits), so that the path, not the client's round trips, sets the rate.
    """
    clock = time.perf_counter_ns
    address = (HOST, args.port)
    started = clock()
    deadline = started + int(args.duration * 1e9)
    workers = max(1, args.concurrency)
    per_worker = max(1, args.count // workers)
    results: list[tuple[array, int]] = []

    def work() -> None:
        times = array("q")
        append = times.append
        failures = 0
        while len(times) < per_worker and clock() < deadline:
            t0 = clock()
            try:
                sock = socket.create_connection(address, timeout=5.0)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.sendall(b"!")
                    if sock.recv(1) != b"!":
                        raise ConnectionError("no echo")
                finally:
                    sock.close()
            except OSError:
                failures += 1
                if failures > 100 and failures > len(times):
                    break
                continue
            append(clock() - t0)
        results.append((times, failures))

    if workers == 1:
        work()
    else:
        threads = [threading.Thread(target=work) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = (clock() - started) / 1e9
    times = array("q")
    failures = 0
    for worker_times, worker_failures in results:
        times.extend(worker_times)
        failures += worker_failures
    json.dump(
        {
            "connections": len(times),
            "failures": failures,
            "elapsed_s": elapsed,
            "concurrency": workers,
            "connections_per_s": len(times) / elapsed,
            "connect_rtt_us": percentiles(times),
        },
        sys.stdout,
    )
    return 0


# -- idle connections ------------------------------------------------------------------------


def _echoed(got: bytes) -> bool:
    return True  # any byte back is the echo


# One keep-alive request: what `idle-client --http` sends on each connection, twice.
IDLE_REQUEST = b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n"


def _answered_200(got: bytes) -> bool | None:
    """None until `got` holds a whole response (the HTTP app's: its body framed by
    Content-Length), then whether it was a 200."""
    end = got.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in got[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(got) < end + 4 + length:
        return None
    return got.startswith(b"HTTP/1.1 200 ")


def _exchange(
    socks: list[socket.socket],
    message: bytes,
    judge: Callable[[bytes], bool | None],
    deadline: float,
) -> list[socket.socket]:
    """Send `message` on every socket and read until `judge` finds the answer whole (None until
    then); the sockets whose answer it found good."""
    sel = selectors.DefaultSelector()
    got: dict[socket.socket, bytes] = {}
    for sock in socks:
        try:
            sock.send(message)
        except OSError:
            continue
        sel.register(sock, selectors.EVENT_READ)
        got[sock] = b""
    answered = []
    while sel.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=left):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            good = False
            if data:
                got[sock] += data
                good = judge(got[sock])
                if good is None:
                    continue
            sel.unregister(sock)
            if good:
                answered.append(sock)
    sel.close()
    return answered


def idle_exchange(http: bool) -> tuple[bytes, Callable[[bytes], bool | None]]:
    """What an idle connection is checked with (`_exchange`'s message and judge): a byte echoed,
    or with `http` a keep-alive GET answered 200."""
    return (IDLE_REQUEST, _answered_200) if http else (b"i", _echoed)


def idle_client(args: argparse.Namespace) -> int:
    """Open `connections` through the path, make one exchange on each (a byte echoed, or with
    `--http` a keep-alive GET answered), hold them idle, then make it again on each."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    message, judge = idle_exchange(args.http)
    held: list[socket.socket] = []
    failed = 0
    started = time.monotonic()
    for first in range(0, args.connections, args.batch):
        batch = []
        for _ in range(min(args.batch, args.connections - first)):
            try:
                sock = socket.create_connection((HOST, args.port), timeout=10)
            except OSError:
                failed += 1
                continue
            sock.setblocking(False)
            batch.append(sock)
        answered = _exchange(batch, message, judge, time.monotonic() + 30)
        failed += len(batch) - len(answered)
        for sock in set(batch) - set(answered):
            sock.close()
        held.extend(answered)
    opened_s = time.monotonic() - started
    time.sleep(args.hold)  # the measurement: connections held idle while the harness samples RSS
    # Checked in batches too: 10,000 requests at once would meet the sidecars' circuit breakers
    # (Envoy's default max_requests, 1,024 per cluster), which is not what this measures.
    deadline = time.monotonic() + 60
    alive = []
    for first in range(0, len(held), args.batch):
        alive += _exchange(held[first : first + args.batch], message, judge, deadline)
    for sock in held:
        sock.close()
    json.dump(
        {
            "connections": args.connections,
            "established": len(held),
            "failed": failed,
            "held": len(alive),
            "open_s": opened_s,
            "hold_s": args.hold,
        },
        sys.stdout,
    )
    return 0


def _lazy(module: str, name: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.tools")
    sub = parser.add_subparsers(dest="tool", required=True)
    echo = sub.add_parser("echo-server")
    echo.add_argument("--port", type=int, required=True)
    echo.set_defaults(func=echo_server)
    rr = sub.add_parser("rr-client")
    rr.add_argument("--port", type=int, required=True)
    rr.add_argument("--duration", type=float, required=True)
    rr.add_argument("--size", type=int, default=64)
    rr.add_argument("--count", type=int, default=2_000_000)
    rr.add_argument("--warmup", type=int, default=200)
    rr.set_defaults(func=rr_client)
    cc = sub.add_parser("connect-client")
    cc.add_argument("--port", type=int, required=True)
    cc.add_argument("--duration", type=float, required=True)
    cc.add_argument("--count", type=int, default=500_000)
    cc.add_argument("--concurrency", type=int, default=1, help="connections side by side")
    cc.set_defaults(func=connect_client)
    idle = sub.add_parser("idle-client")
    idle.add_argument("--port", type=int, required=True)
    idle.add_argument("--connections", type=int, default=10_000)
    idle.add_argument("--batch", type=int, default=200, help="connections opened between echoes")
    idle.add_argument("--hold", type=float, required=True, help="seconds to hold them idle")
    idle.add_argument(
        "--http", action="store_true", help="a keep-alive GET answered on each, not a byte echoed"
    )
    idle.set_defaults(func=idle_client)
    http = sub.add_parser("http-server")
    http.add_argument("--port", type=int, required=True)
    http.add_argument("--body-size", type=int, default=64)
    http.set_defaults(func=_lazy("bench.tools_http", "http_server"))
    # The others import grpc / websockets / cryptography only when they run.
    from bench import tools_grpc, tools_tls, tools_ws

    tools_grpc.add_parsers(sub)
    tools_ws.add_parsers(sub)
    tools_tls.add_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
