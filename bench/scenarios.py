"""What a run measures. Each scenario owns a server, a client, and how its figures read.

A scenario starts its server once, then for each path runs its client against the port the path
gives it, and turns the client's output into figures. The harness (`bench.cli`) does the rest:
paths, CPU and memory of the proxies, ratios to direct, the report.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from bench.context import Context
from bench.procs import BenchError, Proc, collect_output, free_port, listening, wait_until

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Server:
    port: int
    proc: Proc


@dataclass(frozen=True)
class Work:
    """How much a measurement carried, in the unit CPU time is divided by."""

    amount: float
    unit: str  # "GB", "1k msgs", "1k conns"


class Scenario:
    name = ""
    kind = ""  # how its figures read and render: "bulk", "rr", "connect"
    title = ""
    measures = ""

    def unavailable(self) -> str | None:
        return None

    def server(self, ctx: Context, label: str) -> contextlib.AbstractContextManager[Server]:
        """Start the server and wait until it listens. Leaving the context stops it."""
        raise NotImplementedError

    def client(self, ctx: Context, port: int, duration: float, label: str) -> tuple[dict, Proc]:
        """Run the client to its end against `port`; its figures and its (reaped) process."""
        raise NotImplementedError

    def work(self, figures: dict) -> Work:
        raise NotImplementedError

    def compare(self, figures: dict, direct: dict) -> dict:
        """This path's figures against direct's, measured in the same run."""
        raise NotImplementedError

    def headline(self, figures: dict) -> float:
        """The one figure (higher is better) by which repeated runs are ranked."""
        raise NotImplementedError

    def _run_client(self, ctx: Context, argv: list[str], duration: float, label: str) -> tuple[
        dict, Proc
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
        try:
            return json.loads(out), proc
        except ValueError:
            raise BenchError(f"{argv[0]} printed no JSON:\n{out[-2000:]!r}") from None


# -- tcp-bulk: iperf3 --------------------------------------------------------------------------


class TcpBulk(Scenario):
    name = "tcp-bulk"
    kind = "bulk"
    title = "TCP bulk throughput (iperf3, one stream, client sends)"
    measures = (
        "iperf3 with one TCP stream for the duration; throughput as the receiver counted it. "
        "The control connection and the data connection both go through the path."
    )
    reverse = False

    def unavailable(self) -> str | None:
        return None if shutil.which("iperf3") else "iperf3 is not installed"

    @contextlib.contextmanager
    def server(self, ctx: Context, label: str) -> Iterator[Server]:
        port = free_port()
        argv = ["iperf3", "-s", "-B", HOST, "-p", str(port)]
        proc = ctx.procs.spawn(
            "server", argv, log_name=f"{label}-server", cpus=ctx.pinning.cpus_for("server")
        )
        try:
            wait_until(lambda: listening(port), 10, "iperf3 -s listening", proc)
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
        return Work(figures["bytes"] / 1e9, "GB")

    def headline(self, figures: dict) -> float:
        return figures["gbit_per_s"]

    def compare(self, figures: dict, direct: dict) -> dict:
        return {"throughput_ratio": _ratio(figures["gbit_per_s"], direct["gbit_per_s"])}


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
        proc = ctx.procs.spawn(
            "server", argv, log_name=f"{label}-server", cpus=ctx.pinning.cpus_for("server")
        )
        try:
            wait_until(lambda: listening(port), 10, "echo server listening", proc)
            yield Server(port, proc)
        finally:
            ctx.procs.stop(proc)


class TcpRR(EchoScenario):
    name = "tcp-rr"
    kind = "rr"
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
        return Work(figures["messages"] / 1000, "1k msgs")

    def headline(self, figures: dict) -> float:
        return figures["messages_per_s"]

    def compare(self, figures: dict, direct: dict) -> dict:
        return {
            "rate_ratio": _ratio(figures["messages_per_s"], direct["messages_per_s"]),
            **_added(figures["rtt_us"], direct["rtt_us"]),
        }


class TcpConnect(EchoScenario):
    name = "tcp-connect"
    kind = "connect"
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
        return Work(figures["connections"] / 1000, "1k conns")

    def headline(self, figures: dict) -> float:
        return figures["connections_per_s"]

    def compare(self, figures: dict, direct: dict) -> dict:
        return {
            "rate_ratio": _ratio(figures["connections_per_s"], direct["connections_per_s"]),
            **_added(figures["connect_rtt_us"], direct["connect_rtt_us"]),
        }


class TcpConnectParallel(TcpConnect):
    name = "tcp-connect-c16"
    title = "New TCP connections per second, 16 at a time"
    measures = (
        "As tcp-connect with 16 client threads side by side, so that the path's capacity, not the "
        "client's round trips, sets the rate. Through the mTLS pair every connection is one TLS "
        "handshake at each sidecar: its rate is the sidecars' mTLS handshakes per second."
    )
    concurrency = 16


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


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (TcpBulk(), TcpBulkReverse(), TcpRR(), TcpConnect(), TcpConnectParallel())
}
