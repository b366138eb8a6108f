"""Soak: mixed traffic through a pair of sidecars for a bounded time, watching their memory and
file descriptors. A sidecar that leaks shows it here long before production does.

    python3 -m bench.soak                      # 10 minutes
    python3 -m bench.soak --duration 180 --out /tmp/soak

Topology (loopback, a fresh mesh directory): the apps run in this process, each behind the
backend sidecar's inbound, and the clients call them through the web sidecar's outbounds:

    clients ──▶ web (outbounds) ──mesh──▶ backend (inbounds) ──▶ apps
      tcp        echo, new connection per exchange plus long-lived connections
      http       HTTP/1.1 requests, kept-alive and new connections, bodies up to 256 KiB
      grpc       unary and server-streaming calls (grpcio, raw bytes; skipped without grpcio)
      websocket  echo messages over an http-tagged service (skipped without `websockets`)

Every `--interval` seconds each sidecar's RSS (VmRSS) and open descriptors (/proc/PID/fd) are
sampled with the traffic counters, into `soak.csv`. The summary (`summary.txt`, also printed)
judges each sidecar after the warm-up: the median of the last quarter of the samples against the
median of the first quarter of the post-warm-up samples. Flat means RSS grew less than
max(8 MiB, 10 %) and descriptors by at most 4; a leak of a few KiB per connection or request
shows as steady growth (the least-squares slope per minute is printed too). The soak passes
(exit 0) when both sidecars are flat and no operation of the traffic failed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h11
import yaml

from bench.procs import free_port

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent



# -- apps (in this process, on their own event loop) ---------------------------------------------


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class _HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 app: GET /bytes/N answers N bytes, anything else a small body."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn = h11.Connection(h11.SERVER)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                self.transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                self.target = event.target
            elif isinstance(event, h11.EndOfMessage):
                self._answer()
                if self.conn.our_state is h11.MUST_CLOSE:
                    self.transport.close()
                    return
                self.conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _answer(self) -> None:
        size = 12
        if self.target.startswith(b"/bytes/"):
            size = int(self.target[7:] or 0)
        body = b"x" * size
        out = self.conn.send(
            h11.Response(status_code=200, headers=[(b"content-length", str(size).encode())])
        )
        out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        self.transport.write(out)  # type: ignore[attr-defined]


class Apps:
    """The backend's apps on a thread of their own."""

    def __init__(self) -> None:
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.ws_port = free_port()
        self.grpc_server = None
        self.grpc = _try_import("grpc")
        self.websockets = _try_import("websockets")
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self.grpc is not None:
            self._start_grpc()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(_EchoProtocol, HOST, self.tcp_port)
        await loop.create_server(_HttpProtocol, HOST, self.http_port)
        if self.websockets is not None:
            from websockets.asyncio.server import serve

            async def echo(ws) -> None:  # type: ignore[no-untyped-def]
                async for message in ws:
                    await ws.send(message)

            self._ws = await serve(echo, HOST, self.ws_port, max_size=None).__aenter__()

    def _start_grpc(self) -> None:
        grpc = self.grpc
        from concurrent import futures

        def unary(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
            return request

        def stream(request: bytes, context):  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield request

        handler = grpc.method_handlers_generic_handler(
            "soak.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Stream": grpc.unary_stream_rpc_method_handler(stream),
            },
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"{HOST}:{self.grpc_port}")
        server.start()
        self.grpc_server = server

    def close(self) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _try_import(name: str):  # type: ignore[no-untyped-def]
    try:
        return __import__(name)
    except ImportError:
        return None


# -- the sidecars --------------------------------------------------------------------------------


@dataclass
class Sidecar:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def start_mesh(work: Path, apps: Apps, loop: str) -> tuple[list[Sidecar], dict[str, int]]:
    services = [("echo", "tcp", apps.tcp_port), ("web-app", "http", apps.http_port)]
    if apps.grpc is not None:
        services.append(("grpc-app", "grpc", apps.grpc_port))
    if apps.websockets is not None:
        services.append(("ws-app", "http", apps.ws_port))
    inbounds = [
        {"port": free_port(), "servicePort": port,
         "tags": {"kuma.io/service": name, "kuma.io/protocol": protocol}}
        for name, protocol, port in services
    ]  # fmt: skip
    outbound_ports = {name: free_port() for name, _, _ in services}
    docs = {
        "backend": {
            "type": "Dataplane", "mesh": "default", "name": "backend",
            "networking": {"address": HOST, "inbound": inbounds,
                           "admin": {"port": free_port()}},
        },
        "web": {
            "type": "Dataplane", "mesh": "default", "name": "web",
            "networking": {
                "address": HOST,
                "inbound": [{"port": free_port(), "servicePort": free_port(),
                             "tags": {"kuma.io/service": "soak-client"}}],
                "outbound": [{"port": port, "tags": {"kuma.io/service": name}}
                             for name, port in outbound_ports.items()],
                "admin": {"port": free_port()},
            },
        },
    }  # fmt: skip
    sidecars = []
    for name, doc in docs.items():
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        log = work / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run", "--dataplane", str(path),
                 "--mesh", str(work), "--loop", loop, "--drain-timeout", "1"],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, process_group=0,
            )  # fmt: skip
        sidecars.append(Sidecar(name, proc, log))
    deadline = time.monotonic() + 30
    for sidecar in sidecars:
        while "event=ready" not in sidecar.log.read_text(errors="replace"):
            if sidecar.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"soak: {sidecar.name} did not start:\n{sidecar.log.read_text()}")
            time.sleep(0.05)
    return sidecars, outbound_ports


def stop(sidecars: list[Sidecar]) -> None:
    for sidecar in sidecars:
        if sidecar.proc.poll() is None:
            os.killpg(sidecar.proc.pid, signal.SIGTERM)
    for sidecar in sidecars:
        try:
            sidecar.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(sidecar.proc.pid, signal.SIGKILL)
            sidecar.proc.wait()


# -- traffic -------------------------------------------------------------------------------------


@dataclass
class Counter:
    ok: int = 0
    errors: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the soak
            with self.lock:
                self.errors += 1
                self.last_error = repr(exc)[:200]
        else:
            with self.lock:
                self.ok += 1


class Traffic:
    """Paced clients on threads: `rate` operations per second per kind, roughly."""

    def __init__(self, ports: dict[str, int], rate: float) -> None:
        self.ports = ports
        self.pause = 1.0 / rate
        self.stop_event = threading.Event()
        self.counters = {kind: Counter() for kind in ("tcp", "http", "grpc", "websocket")}
        self.threads: list[threading.Thread] = []
        self._kinds: set[str] = set()
        self._spawn(self._tcp_short, "tcp")
        self._spawn(self._tcp_long, "tcp")
        self._spawn(self._http, "http")
        if "grpc-app" in ports:
            self._spawn(self._grpc, "grpc")
        if "ws-app" in ports:
            self._spawn(self._websocket, "websocket")

    def running(self, kind: str) -> bool:
        return kind in self._kinds

    def _spawn(self, target: Callable[[Counter], None], kind: str) -> None:
        self._kinds.add(kind)
        thread = threading.Thread(target=target, args=(self.counters[kind],), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _tcp_short(self, counter: Counter) -> None:
        port = self.ports["echo"]

        def once() -> None:
            with socket.create_connection((HOST, port), timeout=10) as conn:
                conn.sendall(b"x" * 1000)
                got = 0
                while got < 1000:
                    data = conn.recv(65536)
                    if not data:
                        raise ConnectionError("closed early")
                    got += len(data)

        while not self.stop_event.wait(self.pause):
            counter.run(once)

    def _tcp_long(self, counter: Counter) -> None:
        port = self.ports["echo"]
        conns: list[socket.socket] = []

        def once(n: int) -> None:
            if len(conns) < 20:
                conns.append(socket.create_connection((HOST, port), timeout=10))
            conn = conns[n % len(conns)]
            conn.sendall(b"long-lived\n")
            if conn.recv(64) != b"long-lived\n":
                conns.remove(conn)
                raise ConnectionError("echo mismatch")
            if n % 200 == 0:  # renew one now and then: connections come and go
                conns.remove(conn)
                conn.close()

        n = 0
        while not self.stop_event.wait(self.pause):
            n += 1
            counter.run(partial(once, n))
        for conn in conns:
            conn.close()

    def _http(self, counter: Counter) -> None:
        port = self.ports["web-app"]
        kept: list[http.client.HTTPConnection] = [
            http.client.HTTPConnection(HOST, port, timeout=10)
        ]

        def once(path: str, fresh: bool) -> None:
            conn = http.client.HTTPConnection(HOST, port, timeout=10) if fresh else kept[0]
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise ConnectionError(f"status {response.status}")
            except Exception:
                if not fresh:  # a broken kept-alive connection is replaced
                    kept[0].close()
                    kept[0] = http.client.HTTPConnection(HOST, port, timeout=10)
                raise
            finally:
                if fresh:
                    conn.close()

        n = 0
        while not self.stop_event.wait(self.pause):
            n += 1
            counter.run(partial(once, "/bytes/262144" if n % 50 == 0 else "/hello", n % 5 == 0))
        kept[0].close()

    def _grpc(self, counter: Counter) -> None:
        import grpc

        target = f"{HOST}:{self.ports['grpc-app']}"
        state: dict[str, Any] = {}

        def connect() -> None:
            channel = grpc.insecure_channel(target)
            state["channel"] = channel
            state["unary"] = channel.unary_unary("/soak.Echo/Unary")
            state["stream"] = channel.unary_stream("/soak.Echo/Stream")

        def once(n: int) -> None:
            if n % 4 == 0:
                if len(list(state["stream"](b"s" * 100, timeout=10))) != 10:
                    raise ConnectionError("short stream")
            elif state["unary"](b"u" * 100, timeout=10) != b"u" * 100:
                raise ConnectionError("echo mismatch")
            if n % 300 == 0:  # a new channel now and then: a new connection
                state["channel"].close()
                connect()

        connect()
        n = 0
        while not self.stop_event.wait(self.pause):
            n += 1
            counter.run(partial(once, n))
        state["channel"].close()

    def _websocket(self, counter: Counter) -> None:
        from websockets.sync.client import connect

        url = f"ws://{HOST}:{self.ports['ws-app']}/"

        def exchange(ws) -> None:  # type: ignore[no-untyped-def]
            ws.send(b"w" * 500)
            if ws.recv(timeout=10) != b"w" * 500:
                raise ConnectionError("echo mismatch")

        while not self.stop_event.is_set():
            try:
                with connect(url, open_timeout=10, max_size=None) as ws:
                    for _ in range(100):  # then a new tunnel: they come and go
                        if self.stop_event.wait(self.pause):
                            break
                        counter.run(lambda ws=ws: exchange(ws))
            except Exception as exc:  # noqa: BLE001 - counted, and the next tunnel is tried
                with counter.lock:
                    counter.errors += 1
                    counter.last_error = repr(exc)[:200]
                self.stop_event.wait(self.pause)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(15)


# -- judging -------------------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of value over time, per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return (
        0.0
        if den == 0
        else 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den
    )


def judge(rows: list[dict[str, float]], name: str, warmup: float) -> tuple[bool, str]:
    mine = [r for r in rows if r["sidecar"] == name and r["t"] >= warmup]
    if len(mine) < 4:
        return False, f"{name}: too few samples after the warm-up ({len(mine)}) to judge"
    quarter = max(1, len(mine) // 4)
    first, last = mine[:quarter], mine[-quarter:]
    rss0 = statistics.median(r["rss_kb"] for r in first)
    rss1 = statistics.median(r["rss_kb"] for r in last)
    fd0 = statistics.median(r["fds"] for r in first)
    fd1 = statistics.median(r["fds"] for r in last)
    rss_ok = rss1 - rss0 < max(8 * 1024, 0.10 * rss0)
    fd_ok = fd1 - fd0 <= 4
    rss_slope = slope_per_minute([(r["t"], r["rss_kb"]) for r in mine])
    fd_slope = slope_per_minute([(r["t"], r["fds"]) for r in mine])
    verdict = "flat" if rss_ok and fd_ok else "NOT flat"
    low = min(r["rss_kb"] for r in mine) / 1024
    high = max(r["rss_kb"] for r in mine) / 1024
    text = (
        f"{name}: {verdict} after the {warmup:g} s warm-up — RSS {rss0 / 1024:.1f} → "
        f"{rss1 / 1024:.1f} MiB (slope {rss_slope:+.0f} KiB/min, min {low:.1f}, max {high:.1f}), "
        f"fds {fd0:g} → {fd1:g} (slope {fd_slope:+.2f}/min, max {max(r['fds'] for r in mine):g})"
    )
    return rss_ok and fd_ok, text


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds not judged (default: a fifth of the duration, at most 120)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=40.0,
        help="operations per second per traffic thread (default 40)",
    )
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for soak.csv and summary.txt (default: a new temp dir)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    warmup = args.warmup if args.warmup is not None else min(120.0, args.duration / 5)
    out = args.out or Path(tempfile.mkdtemp(prefix="pysidecar-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pysidecar-soak-mesh-"))

    apps = Apps()
    sidecars: list[Sidecar] = []
    rows: list[dict[str, float]] = []
    traffic = None
    try:
        sidecars, ports = start_mesh(work, apps, args.loop)
        traffic = Traffic(ports, args.rate)
        kinds = sorted(traffic.counters)
        started = time.monotonic()
        running = [k for k in kinds if traffic.running(k)]
        print(
            f"soak: {args.duration:g} s of {', '.join(running)} traffic; samples every "
            f"{args.interval:g} s into {out / 'soak.csv'}",
            flush=True,
        )
        with open(out / "soak.csv", "w", newline="") as fh:
            fields = ["t", "sidecar", "rss_kb", "fds", *(f"{k}_ok" for k in kinds),
                      *(f"{k}_errors" for k in kinds)]  # fmt: skip
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            while True:
                t = time.monotonic() - started
                for sidecar in sidecars:
                    if sidecar.proc.poll() is not None:
                        raise SystemExit(
                            f"soak: {sidecar.name} exited:\n{sidecar.log.read_text()[-2000:]}"
                        )
                    row: dict[str, float] = {
                        "t": round(t, 1), "sidecar": sidecar.name,  # type: ignore[dict-item]
                        "rss_kb": sidecar.rss_kb(), "fds": sidecar.fds(),
                    }  # fmt: skip
                    for kind, counter in traffic.counters.items():
                        row[f"{kind}_ok"] = counter.ok
                        row[f"{kind}_errors"] = counter.errors
                    writer.writerow(row)
                    rows.append(row)
                fh.flush()
                if t >= args.duration:
                    break
                time.sleep(min(args.interval, max(0.0, args.duration - t)))
    finally:
        if traffic is not None:
            traffic.stop()
        stop(sidecars)
        apps.close()
        shutil.rmtree(work, ignore_errors=True)

    lines = []
    all_flat = True
    for sidecar in sidecars:
        flat, text = judge(rows, sidecar.name, warmup)
        all_flat &= flat
        lines.append(text)
    assert traffic is not None
    lost = 0
    for kind, counter in sorted(traffic.counters.items()):
        lost += counter.errors
        if counter.ok or counter.errors:
            lines.append(
                f"traffic {kind}: {counter.ok} ok, {counter.errors} errors"
                + (f" (last: {counter.last_error})" if counter.errors else "")
            )
    # A sidecar that stays flat by dropping traffic has not passed: every error fails the soak.
    verdict = "flat" if all_flat else "NOT flat"
    lines.append(
        f"verdict: {verdict}, " + (f"{lost} operations failed" if lost else "nothing lost")
    )
    all_flat &= lost == 0
    summary = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(summary)
    print(summary, end="")
    print(f"soak: CSV and summary in {out}")
    return 0 if all_flat else 1


if __name__ == "__main__":
    sys.exit(main())
