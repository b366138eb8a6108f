"""What a run measures. Each scenario owns a server, a client, and how its figures read.

A scenario starts its server once, then for each path runs its client against the port the path
gives it, and turns the client's output into figures. The harness (`bench.cli`) does the rest:
paths, CPU and memory of the proxies, ratios to direct and to the HAProxy pair, the report.

Every scenario names its headline figure (`rate_key`, higher is better, e.g. `gbit_per_s`,
`requests_per_s`), the latency percentiles it has (`latency_key`, a dict of µs, or None) and the
unit its proxies' CPU time is divided by (`work`). The TCP scenarios are here; the L7, websocket
and TLS ones in `bench.scenarios_l7`; the list of all of them in `bench.catalog`.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from bench.context import Context
from bench.procs import (
    BenchError,
    Proc,
    collect_output,
    free_port,
    listening,
    raise_fd_limit,
    wait_until,
)

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Server:
    port: int
    proc: Proc


@dataclass(frozen=True)
class Work:
    """How much a measurement carried, in the unit CPU time is divided by."""

    amount: float
    unit: str  # "GB", "1k msgs", "1k conns", "1k reqs", "1k calls"
    # `amount * scale` counts `each` (1k reqs → requests): the report's "per proxy CPU-second"
    scale: float = 1.0
    each: str = ""


class Scenario:
    name = ""
    kind = ""  # "bulk", "rr", "connect", "http", "rate", "grpc", "ws"
    title = ""
    measures = ""
    protocol = "tcp"  # what the server's inbound is tagged with (kuma.io/protocol)
    rate_key = ""  # the headline figure, higher is better
    rate_unit = ""
    rate_digits = 0
    latency_key: str | None = None  # percentiles in µs, when the scenario has them
    tools: tuple[str, ...] = ()  # executables it needs (skipped with a note without them)
    connections: int | None = None  # connections held at once, where more than proxies allow
    modules: tuple[str, ...] = ()  # Python modules it needs

    def unavailable(self) -> str | None:
        missing = [t for t in self.tools if shutil.which(t) is None]
        if missing:
            return f"{', '.join(missing)} not installed"
        import importlib.util

        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if absent:
            return f"Python module(s) {', '.join(absent)} not installed"
        return None

    def warmup(self, ctx: Context, port: int, label: str) -> None:
        """Traffic before the measurement (connections, pools, caches), not counted."""

    def server(self, ctx: Context, label: str) -> contextlib.AbstractContextManager[Server]:
        """Start the server and wait until it listens. Leaving the context stops it."""
        raise NotImplementedError

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        """Run the client to its end against `port`; its figures and its (reaped) process."""
        raise NotImplementedError

    def work(self, figures: dict) -> Work:
        raise NotImplementedError

    def compare(self, figures: dict, reference: dict) -> dict:
        """This path's figures against another path's (direct, haproxy) in the same run: the
        ratio of the headline figures and, with latencies, what this path adds to each
        percentile (µs for all, ms for p50 and p99)."""
        out = {"ratio": _ratio(figures[self.rate_key], reference[self.rate_key])}
        if self.latency_key:
            out.update(_added(figures[self.latency_key], reference[self.latency_key]))
        return out

    def headline(self, figures: dict) -> float:
        """The one figure (higher is better) by which repeated runs are ranked."""
        return figures[self.rate_key]

    def describe(self, figures: dict) -> str:
        """One line for the console."""
        text = f"{figures[self.rate_key]:,.{self.rate_digits}f} {self.rate_unit}"
        if self.latency_key:
            lat = figures[self.latency_key]
            text += f", p50 {lat['p50']:,.0f} µs, p99 {lat['p99']:,.0f} µs"
        if figures.get("failed"):
            text += f", {figures['failed']} failed"
        return text

    def _run_raw(self, ctx: Context, argv: list[str], duration: float, label: str) -> tuple[
        bytes, Proc
    ]:
        proc = ctx.procs.spawn(
            "client", argv, log_name=f"{label}-client", cpus=ctx.pinning.cpus_for("client"),
            stdout_pipe=True,
        )
        try:
            out = collect_output(proc, duration + 30)
        finally:
            ctx.procs.stop(proc)
        if proc.popen.returncode != 0:
            raise BenchError(
                f"{argv[0]} exited with {proc.popen.returncode}:\n"
                f"{out.decode(errors='replace')[-2000:]}\n{proc.log_tail()}"
            )
        return out, proc

    def _run_client(self, ctx: Context, argv: list[str], duration: float, label: str) -> tuple[
        dict, Proc
    ]:
        out, proc = self._run_raw(ctx, argv, duration, label)
        try:
            return json.loads(out), proc
        except ValueError:
            raise BenchError(f"{argv[0]} printed no JSON:\n{out[-2000:]!r}") from None

    def _spawn_server(self, ctx: Context, argv: list[str], port: int, label: str,
                      what: str, timeout: float = 20) -> Proc:
        proc = ctx.procs.spawn(
            "server", argv, log_name=f"{label}-server", cpus=ctx.pinning.cpus_for("server")
        )
        try:
            wait_until(lambda: listening(port), timeout, f"{what} listening", proc)
        except BaseException:
            ctx.procs.stop(proc)
            raise
        return proc


# -- tcp-bulk: iperf3 --------------------------------------------------------------------------


class TcpBulk(Scenario):
    name = "tcp-bulk"
    kind = "bulk"
    rate_key, rate_unit, rate_digits = "gbit_per_s", "Gbit/s", 2
    tools = ("iperf3",)
    title = "TCP bulk throughput (iperf3, one stream, client sends)"
    measures = (
        "iperf3 with one TCP stream for the duration; throughput as the receiver counted it. "
        "The control connection and the data connection both go through the path."
    )
    reverse = False

    @contextlib.contextmanager
    def server(self, ctx: Context, label: str) -> Iterator[Server]:
        port = free_port()
        proc = self._spawn_server(ctx, ["iperf3", "-s", "-B", HOST, "-p", str(port)], port,
                                  label, "iperf3 -s")
        try:
            yield Server(port, proc)
        finally:
            ctx.procs.stop(proc)

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        seconds = max(1, math.ceil(duration))
        argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-J",
                "--connect-timeout", "5000"]
        if self.reverse:
            argv.append("-R")
        report, proc = self._run_client(ctx, argv, seconds, label)
        if report.get("error"):
            raise BenchError(f"iperf3: {report['error']}")
        end = report["end"]
        received, sent = end["sum_received"], end["sum_sent"]
        cpu = end.get("cpu_utilization_percent", {})
        return {
            "gbit_per_s": received["bits_per_second"] / 1e9,
            "bytes": received["bytes"],
            "seconds": received["seconds"],
            "sender_gbit_per_s": sent["bits_per_second"] / 1e9,
            "retransmits": sent.get("retransmits"),
            "iperf3_cpu_percent": {"client": cpu.get("host_total"),
                                   "server": cpu.get("remote_total")},
        }, proc

    def work(self, figures: dict) -> Work:
        return Work(figures["bytes"] / 1e9, "GB", 1, "GB")


class TcpBulkReverse(TcpBulk):
    name = "tcp-bulk-reverse"
    title = "TCP bulk throughput, reverse (iperf3 -R: the server sends)"
    measures = "As tcp-bulk with `-R`: the bytes flow server → client, through the path backwards."
    reverse = True


# -- echo-based scenarios ----------------------------------------------------------------------


class EchoScenario(Scenario):
    @contextlib.contextmanager
    def server(self, ctx: Context, label: str) -> Iterator[Server]:
        port = free_port()
        argv = [ctx.python, "-m", "bench.tools", "echo-server", "--port", str(port)]
        proc = self._spawn_server(ctx, argv, port, label, "echo server")
        try:
            yield Server(port, proc)
        finally:
            ctx.procs.stop(proc)


class TcpRR(EchoScenario):
    name = "tcp-rr"
    kind = "rr"
    rate_key, rate_unit = "messages_per_s", "msgs/s"
    latency_key = "rtt_us"
    title = "TCP small-message round trip (64 bytes, one at a time, one connection)"
    measures = (
        "One connection; the client sends 64 bytes and waits for the echo before sending the "
        "next, for the duration (at most 2,000,000 messages). Round-trip time per message; "
        "one message in flight is the lowest load there is."
    )
    size = 64

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        argv = [ctx.python, "-m", "bench.tools", "rr-client", "--port", str(port),
                "--duration", str(duration), "--size", str(self.size)]
        return self._run_client(ctx, argv, duration, label)

    def work(self, figures: dict) -> Work:
        return Work(figures["messages"] / 1000, "1k msgs", 1000, "msg")


class TcpConnect(EchoScenario):
    name = "tcp-connect"
    kind = "connect"
    rate_key, rate_unit = "connections_per_s", "conns/s"
    latency_key = "connect_rtt_us"
    title = "New TCP connections per second (connect, 1 byte each way, close; one at a time)"
    measures = (
        "The client opens a connection, sends 1 byte, reads the echo and closes, then opens the "
        "next, for the duration (at most 500,000). Connections/s and the time of each whole "
        "exchange."
    )

    concurrency = 1

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        argv = [ctx.python, "-m", "bench.tools", "connect-client", "--port", str(port),
                "--duration", str(duration), "--concurrency", str(self.concurrency)]
        figures, proc = self._run_client(ctx, argv, duration, label)
        if figures["connections"] == 0:
            raise BenchError(f"no connection succeeded ({figures['failures']} failed)")
        return figures, proc

    def work(self, figures: dict) -> Work:
        return Work(figures["connections"] / 1000, "1k conns", 1000, "conn")


class TcpConnectParallel(TcpConnect):
    name = "tcp-connect-c16"
    title = "New TCP connections per second, 16 at a time"
    measures = (
        "As tcp-connect with 16 client threads side by side, so that the path's capacity, not the "
        "client's round trips, sets the rate. Through the mTLS pair every connection is one TLS "
        "handshake at each sidecar: its rate is the sidecars' mTLS handshakes per second."
    )
    concurrency = 16


class IdleConnections(EchoScenario):
    name = "idle-conns"
    kind = "idle"
    rate_key, rate_unit = "held", "conns held"
    title = "10,000 idle connections held through the path (memory per connection)"
    measures = (
        "The client opens 10,000 connections (fewer, with a note, where the descriptor limit is "
        "lower) through the path in batches of 200, sends one byte "
        "on each and waits for its echo (so each is connected end to end), holds them all idle "
        "for the duration, then sends one byte on each again: `held` counts those that still "
        "answer. The figure to read is each proxy's peak RSS with all of them open; the proxies' "
        "connection limits are raised to the count (the defaults, 8192 per listener and Kuma's "
        "1024 per cluster, refuse the rest — as they should)."
    )
    target = 10_000
    connections = target  # fewer where the descriptor limit cannot be raised (`server`)
    client_flags: tuple[str, ...] = ()  # `idle-client`'s: what each connection exchanges

    @contextlib.contextmanager
    def server(self, ctx: Context, label: str) -> Iterator[Server]:
        # Client and server hold one descriptor per connection, each proxy two and some to spare.
        have = raise_fd_limit(2 * self.target + 1_000)
        self.connections = min(self.target, (have - 1_000) // 2)
        if self.connections < self.target:
            ctx.notes.append(
                f"idle-conns held {self.connections:,} connections, not {self.target:,}: "
                f"RLIMIT_NOFILE here is {have:,} and cannot be raised (a proxy needs two "
                f"descriptors per connection); the RSS per connection scales to {self.target:,}"
            )
        with self.app(ctx, label) as server:
            yield server

    def app(self, ctx: Context, label: str) -> contextlib.AbstractContextManager[Server]:
        """The server the connections reach: the echo server."""
        return super().server(ctx, label)

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        argv = [ctx.python, "-m", "bench.tools", "idle-client", "--port", str(port),
                "--connections", str(self.connections), "--hold", str(duration),
                *self.client_flags]
        # Opening them is bounded by the path's connection rate (mTLS: ~150/s on 2 cores).
        opening = 60 + self.connections / 40
        figures, proc = self._run_client(ctx, argv, duration + opening, label)
        if figures["established"] == 0:
            raise BenchError(f"no connection was echoed ({figures['failed']} failed)")
        return figures, proc

    def work(self, figures: dict) -> Work:
        return Work(figures["established"] / 1000, "1k conns", 1000, "conn")


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference else None


def _added(latency_us: dict, direct_us: dict) -> dict:
    """What the path adds to each percentile: in µs for all, in ms for p50 and p99."""
    added = {k: latency_us[k] - direct_us[k] for k in latency_us if k in direct_us}
    return {
        "added_us": added,
        "added_p50_ms": added["p50"] / 1000,
        "added_p99_ms": added["p99"] / 1000,
    }


TCP_SCENARIOS: list[Scenario] = [
    TcpBulk(), TcpBulkReverse(), TcpRR(), TcpConnect(), TcpConnectParallel(), IdleConnections(),
]
