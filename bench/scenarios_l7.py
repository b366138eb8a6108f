"""The L7 scenarios (HTTP/1.1, h2c, gRPC), websocket echo and TLS passthrough.

Load generators are real tools where one exists: h2load (nghttp2) for HTTP/1.1 (`--h1`), h2c and
fixed-rate HTTP/1.1 (`--rps`); Python clients, each a process of its own, only for gRPC (grpcio),
websockets (`websockets`) and the TLS bulk transfer (ssl). The apps:

- HTTP/1.1: `bench.tools http-server`, a minimal uvloop server with a fixed 64-byte answer
  (bench/tools_http.py says why not hypercorn); its own cost is the `direct` row.
- h2c: nghttpd (C) serving a 64-byte file.
- gRPC: a grpcio asyncio server with raw-bytes methods (bench/tools_grpc.py).
- websockets: a `websockets` echo server (bench/tools_ws.py).
- TLS: a Python ssl server with its own certificate (bench/tools_tls.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from array import array
from collections.abc import Iterator

from bench.context import Context
from bench.procs import BenchError, Proc, free_port
from bench.scenarios import HOST, IdleConnections, Scenario, Server, Work
from bench.tools import percentiles


@contextlib.contextmanager
def http_app(scenario: Scenario, ctx: Context, label: str) -> Iterator[Server]:
    """The HTTP/1.1 app (`bench.tools http-server`, a 64-byte answer), stopped on leaving."""
    port = free_port()
    argv = [ctx.python, "-m", "bench.tools", "http-server", "--port", str(port),
            "--body-size", "64"]
    proc = scenario._spawn_server(ctx, argv, port, label, "HTTP/1.1 app")
    try:
        yield Server(port, proc)
    finally:
        ctx.procs.stop(proc)


# -- HTTP through h2load --------------------------------------------------------------------------


class H2Load(Scenario):
    """h2load against an HTTP app; req/s, and each request's time from its log file."""

    kind = "http"
    protocol = "http"
    rate_key, rate_unit = "requests_per_s", "req/s"
    latency_key = "latency_us"
    tools = ("h2load",)
    h1 = True
    clients = 16  # connections
    streams = 1  # requests in flight per connection (HTTP/1.1: 1 = no pipelining)
    rps: int | None = None  # per connection, for the fixed-rate scenario
    stagger_ms: int = 0  # open one connection every this many ms, so their --rps ticks interleave
    url_path = "/"

    def server(self, ctx: Context, label: str) -> contextlib.AbstractContextManager[Server]:
        return http_app(self, ctx, label)

    def _argv(self, port: int) -> list[str]:
        argv = ["h2load", "-t", "1", "-c", str(self.clients), "-m", str(self.streams)]
        if self.h1:
            argv.append("--h1")
        return argv + [f"http://{HOST}:{port}{self.url_path}"]

    def warmup(self, ctx: Context, port: int, label: str) -> None:
        argv = self._argv(port)
        argv[1:1] = ["-n", str(max(200, 20 * self.clients))]
        self._run_raw(ctx, argv, 10, f"{label}-warmup")

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        log = ctx.work / f"{label}-h2load.tsv"
        argv = self._argv(port)
        millis = max(100, int(duration * 1000))
        extra = ["-D", f"{millis}ms", "--log-file", str(log)]
        if self.rps:
            extra += ["--rps", str(self.rps)]
        if self.stagger_ms:
            # h2load's -D and -r exclude each other: the run is bounded by its request count.
            count = int(self.rps * self.clients * duration)
            extra = ["-n", str(count), "--log-file", str(log), "--rps", str(self.rps),
                     "-r", "1", "--rate-period", f"{self.stagger_ms}ms"]
        argv[1:1] = extra
        out, proc = self._run_raw(ctx, argv, duration, label)
        text = out.decode(errors="replace")
        figures = parse_h2load(text, log)
        if self.rps:
            figures["target_rps"] = self.rps * self.clients
        if os.environ.get("BENCH_KEEP_LOGS") and log.exists():
            log.replace(ctx.out / log.name)  # h2load's per-request log, for a closer look
        else:
            log.unlink(missing_ok=True)
        if figures["requests"] == 0:
            raise BenchError(f"h2load: no request succeeded:\n{text[-2000:]}")
        return figures, proc

    def work(self, figures: dict) -> Work:
        return Work(figures["requests"] / 1000, "1k reqs", 1000, "req")


def parse_h2load(text: str, log) -> dict:
    finished = re.search(r"finished in ([\d.]+)(m?s)", text)
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if not finished or not counts:
        raise BenchError(f"h2load printed no summary:\n{text[-2000:]}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    succeeded = int(counts.group(4))
    failed = int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    non2xx = sum(int(codes.group(i)) for i in (2, 3, 4)) if codes else 0
    latencies = array("q")
    try:
        with open(log) as fh:
            for line in fh:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].startswith("2"):
                    latencies.append(int(parts[2]) * 1000)  # µs → ns for percentiles()
    except OSError:
        pass
    ok = succeeded - non2xx
    return {
        "requests": ok,
        "requests_per_s": ok / seconds if seconds else 0.0,
        "seconds": seconds,
        "failed": failed + non2xx,
        "non_2xx": non2xx,
        "latency_us": percentiles(latencies) if latencies else {},
    }


class Http1(H2Load):
    name = "http1"
    title = ("HTTP/1.1 keep-alive, as fast as it goes (h2load --h1, 16 connections, one request "
             "in flight each); through the sidecars it rides HTTP/2 between them")
    measures = (
        "h2load --h1 -c 16 -m 1 for the duration against a minimal uvloop HTTP/1.1 app with a "
        "fixed 64-byte answer (its own cost is the direct row). Requests/s, each request's time "
        "(h2load's per-request log), and requests per CPU-second of the proxies: the cost figure "
        "to compare with the HAProxy pair."
    )


class Http1Rate(H2Load):
    name = "http1-rate"
    kind = "rate"
    clients = 10
    rps = 100  # per connection: 1,000 requests/s in all
    title = "HTTP/1.1 at a fixed 1,000 requests/s (h2load --h1 --rps): latency percentiles"
    measures = (
        "h2load --h1 -c 10 --rps 100 (10 keep-alive connections, 100 requests/s each, one in "
        "flight) for the duration. The figure is the latency each path adds at that load, and "
        "the CPU the proxies need for it (cores per 1,000 requests/s). h2load paces on a ~10 ms "
        "tick: the requests arrive in bursts of 10 (one per connection) every 10 ms (measured "
        "from its per-request log), so the 10th request of a burst waits for the 9 before it "
        "at every proxy — a path's added latency here is about its per-request time × the "
        "burst, where http1-rr shows the per-request time alone. A path that cannot keep up "
        "shows a rate below 1,000 and latencies that include queueing (h2load times a request "
        "from when it is sent, not from when it was due)."
    )

    def headline(self, figures: dict) -> float:
        # Repeats are ranked by their p99 (the median run is the one with the median p99): lower
        # is better, hence the sign.
        return -figures["latency_us"].get("p99", math.inf)


class Http1Paced(Http1Rate):
    name = "http1-paced"
    stagger_ms = 1
    title = ("HTTP/1.1 at a fixed 1,000 requests/s, evenly paced (h2load --h1 --rps, "
             "connections opened 1 ms apart): latency percentiles")
    measures = (
        "h2load --h1 -c 10 --rps 100 -r 1 --rate-period 1ms -n 1000×duration: the same load as "
        "http1-rate, but the 10 connections are opened 1 ms apart, so their 10 ms --rps ticks "
        "interleave and a request arrives about every millisecond (checked in h2load's "
        "per-request log) instead of ten at once: the fixed rate a constant-throughput load "
        "generator (fortio -qps, wrk2 -R, as Istio's and Linkerd's published latency figures "
        "use) applies. The added latency here is what one request pays at that rate, with "
        "little queueing behind its neighbours; http1-rate keeps the bursty form."
    )


class Http1Serial(H2Load):
    name = "http1-rr"
    clients = 1
    title = "HTTP/1.1, one request at a time (h2load --h1 -c 1): latency without queueing"
    measures = (
        "h2load --h1 -c 1 -m 1: one keep-alive connection, the next request sent when the "
        "previous answer arrived, for the duration. The lowest load there is: each request's "
        "time is what the path adds with no other request queued ahead of it (the HTTP "
        "counterpart of tcp-rr)."
    )


class IdleHttp(IdleConnections):
    name = "idle-http"
    protocol = "http"
    title = "10,000 idle HTTP/1.1 keep-alive connections held through the path (memory)"
    measures = (
        "As idle-conns, with the HTTP/1.1 app behind the path and its service tagged `http`: on "
        "each connection one keep-alive GET is answered, the connections are held idle for the "
        "duration, then a second GET is answered on each (in batches of 200, as they were "
        "opened: all at once would meet the sidecars' circuit breakers, Envoy's 1,024 requests "
        "per cluster). Between two sidecars the requests share the mesh's multiplexed HTTP/2 "
        "connections, so an idle client connection costs the pair its own socket and HTTP/1.1 "
        "state, not a TLS session of its own."
    )
    client_flags = ("--http",)

    def app(self, ctx: Context, label: str) -> contextlib.AbstractContextManager[Server]:
        return http_app(self, ctx, label)


class H2c(H2Load):
    name = "h2c"
    protocol = "http2"
    h1 = False
    clients = 4
    streams = 16
    tools = ("h2load", "nghttpd")
    url_path = "/index.html"
    title = ("h2c (HTTP/2 prior knowledge) app to app: h2load -c 4 -m 16 against nghttpd; "
             "service tagged http2")
    measures = (
        "h2load -c 4 -m 16 (4 HTTP/2 connections, 16 streams in flight each) for the duration "
        "against nghttpd serving a 64-byte file. Requests/s and each request's time."
    )

    @contextlib.contextmanager
    def server(self, ctx: Context, label: str) -> Iterator[Server]:
        docroot = ctx.work / "htdocs"
        docroot.mkdir(exist_ok=True)
        (docroot / "index.html").write_bytes(b"pysidecar-bench " * 4)
        port = free_port()
        argv = ["nghttpd", "--no-tls", "-a", HOST, "-d", str(docroot), str(port)]
        proc = self._spawn_server(ctx, argv, port, label, "nghttpd")
        try:
            yield Server(port, proc)
        finally:
            ctx.procs.stop(proc)


# -- gRPC -----------------------------------------------------------------------------------------


class Grpc(Scenario):
    kind = "grpc"
    protocol = "grpc"
    modules = ("grpc",)
    latency_key = "call_us"
    mode = "unary"
    concurrency = 16

    @contextlib.contextmanager
    def server(self, ctx: Context, label: str) -> Iterator[Server]:
        port = free_port()
        argv = [ctx.python, "-m", "bench.tools", "grpc-server", "--port", str(port)]
        proc = self._spawn_server(ctx, argv, port, label, "gRPC server")
        try:
            yield Server(port, proc)
        finally:
            ctx.procs.stop(proc)

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        argv = [ctx.python, "-m", "bench.tools", "grpc-client", "--port", str(port),
                "--duration", str(duration), "--mode", self.mode,
                "--concurrency", str(self.concurrency)]
        figures, proc = self._run_client(ctx, argv, duration, label)
        if figures["calls"] == 0:
            raise BenchError(f"no gRPC call succeeded: {figures.get('failed_by_status')}")
        return figures, proc


class GrpcUnary(Grpc):
    name = "grpc-unary"
    rate_key, rate_unit = "calls_per_s", "calls/s"
    title = "gRPC unary calls (grpcio client, 16 calls in flight on one channel)"
    measures = (
        "A grpcio (asyncio) client process keeps 16 unary calls (64-byte request, echoed) in "
        "flight on one channel for the duration, against a grpcio asyncio server; service tagged "
        "grpc. Calls/s and each call's round trip."
    )

    def work(self, figures: dict) -> Work:
        # The warm-up calls crossed the proxies inside the CPU window too.
        calls = figures["calls"] + figures.get("warmup_calls", 0)
        return Work(calls / 1000, "1k calls", 1000, "call")


class GrpcStream(Grpc):
    name = "grpc-stream"
    mode = "stream"
    concurrency = 4
    rate_key, rate_unit = "messages_per_s", "msgs/s"
    title = "gRPC server streaming (100 messages of 64 bytes per call, 4 calls in flight)"
    measures = (
        "The grpcio client keeps 4 server-streaming calls in flight, each answered with 100 "
        "messages of 64 bytes. Streamed messages/s, and each call's time (request to last "
        "message)."
    )

    def work(self, figures: dict) -> Work:
        messages = figures["messages"] + figures.get("warmup_messages", 0)
        return Work(messages / 1000, "1k msgs", 1000, "msg")


# -- websockets -----------------------------------------------------------------------------------


class WsEcho(Scenario):
    name = "ws-echo"
    kind = "ws"
    protocol = "http"
    modules = ("websockets",)
    rate_key, rate_unit = "messages_per_s", "msgs/s"
    latency_key = "rtt_us"
    connections = 1
    title = ("websocket echo, service tagged http (HTTP/1.1 upgrade; RFC 8441 extended CONNECT "
             "on the HTTP/2 hop): 64-byte messages, one at a time")
    measures = (
        "A `websockets` client process opens one websocket and sends 64-byte binary messages, "
        "each after the echo of the previous one, for the duration, to a `websockets` echo "
        "server. Messages/s and each round trip."
    )

    @contextlib.contextmanager
    def server(self, ctx: Context, label: str) -> Iterator[Server]:
        port = free_port()
        argv = [ctx.python, "-m", "bench.tools", "ws-server", "--port", str(port)]
        proc = self._spawn_server(ctx, argv, port, label, "websocket server")
        try:
            yield Server(port, proc)
        finally:
            ctx.procs.stop(proc)

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        argv = [ctx.python, "-m", "bench.tools", "ws-client", "--port", str(port),
                "--duration", str(duration), "--connections", str(self.connections)]
        return self._run_client(ctx, argv, duration, label)

    def work(self, figures: dict) -> Work:
        messages = figures["messages"] + figures.get("warmup_messages", 0)
        return Work(messages / 1000, "1k msgs", 1000, "msg")


class WsEchoTcp(WsEcho):
    name = "ws-echo-tcp"
    protocol = "tcp"
    title = "websocket echo, service tagged tcp (the L4 relay): 64-byte messages, one at a time"
    measures = "As ws-echo, with the service tagged `tcp`: the sidecars relay the bytes."


# -- TLS passthrough ------------------------------------------------------------------------------


class TlsPassthrough(Scenario):
    name = "tls-passthrough"
    kind = "bulk"
    protocol = "tcp"
    modules = ("cryptography",)
    rate_key, rate_unit, rate_digits = "gbit_per_s", "Gbit/s", 2
    title = ("TLS passthrough bulk: the app's own TLS end to end through a tcp service "
             "(server sends)")
    measures = (
        "A Python ssl server (its own certificate for bench-tls.example) sends 256 KiB writes "
        "for the duration over one TLS 1.3 connection; the client verifies the certificate and "
        "the name it asked for (SNI) and counts what arrives. Through the pair the TLS records "
        "pass untouched (inside the mesh's mTLS on pair-mtls). Gbit/s as the client received."
    )

    def _dir(self, ctx: Context) -> str:
        return str(ctx.work / "tls-app")

    @contextlib.contextmanager
    def server(self, ctx: Context, label: str) -> Iterator[Server]:
        port = free_port()
        argv = [ctx.python, "-m", "bench.tools", "tls-server", "--port", str(port),
                "--cert-dir", self._dir(ctx)]
        proc = self._spawn_server(ctx, argv, port, label, "TLS server")
        try:
            yield Server(port, proc)
        finally:
            ctx.procs.stop(proc)

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        argv = [ctx.python, "-m", "bench.tools", "tls-client", "--port", str(port),
                "--cert-dir", self._dir(ctx), "--duration", str(duration)]
        figures, proc = self._run_client(ctx, argv, duration, label)
        if not figures["bytes"]:
            raise BenchError("the TLS client received nothing")
        return figures, proc

    def work(self, figures: dict) -> Work:
        return Work(figures["bytes"] / 1e9, "GB", 1, "GB")


L7_SCENARIOS: list[Scenario] = [
    TlsPassthrough(), Http1(), Http1Rate(), Http1Paced(), Http1Serial(), H2c(), GrpcUnary(),
    GrpcStream(), WsEcho(), WsEchoTcp(), IdleHttp(),
]
