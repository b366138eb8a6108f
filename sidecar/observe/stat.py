"""`pysidecar stat`: a live view of a running sidecar via its admin API, like `linkerd viz stat`.

Per listener: its protocol, the rate of requests (HTTP, gRPC, Kafka) or of connections (TCP), the
success rate, p50/p99 latency, open connections and bytes per second, all over the last interval.
Latency is the request time for HTTP, the response time for Kafka and the upstream connect time for
TCP; success is non-5xx answers for HTTP, and for TCP and Kafka the upstream connect attempts that
succeeded (a connection with no healthy endpoint counts as a failure).

It reads `/config_dump` (which listener feeds which stats) and
`/stats?format=json&histogram_buckets=cumulative`, the same Envoy formats a script would read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar import defaults
from sidecar.observe.stats import quantile_of


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("stat", help="live traffic statistics of a running sidecar")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--admin",
        default=None,
        metavar="HOST:PORT",
        help=f"the sidecar's admin API (default {defaults.ADMIN_ADDRESS}:{defaults.ADMIN_PORT})",
    )
    where.add_argument(
        "--dataplane",
        type=Path,
        default=None,
        metavar="FILE",
        help="find the admin port in this Dataplane file (networking.admin.port)",
    )
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    parser.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (default 1)"
    )
    parser.set_defaults(func=run)


@dataclass
class Snapshot:
    at: float
    listeners: list[dict[str, Any]]
    values: dict[str, float]
    histograms: dict[str, list[tuple[float, int]]]


def admin_address(args: argparse.Namespace) -> str:
    if args.admin:
        return args.admin
    if args.dataplane is not None:
        from sidecar.config.dataplane import load_dataplane

        dataplane = load_dataplane(args.dataplane)
        return f"{defaults.ADMIN_ADDRESS}:{dataplane.networking.admin_port}"
    return f"{defaults.ADMIN_ADDRESS}:{defaults.ADMIN_PORT}"


def _get(admin: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as response:
        return json.load(response)


def fetch(admin: str) -> Snapshot:
    dump = _get(admin, "/config_dump")
    stats = _get(admin, "/stats?format=json&histogram_buckets=cumulative")
    listeners = []
    for config in dump.get("configs", []):
        for entry in config.get("dynamic_listeners", []):
            listeners.append(entry["active_state"]["listener"])
    values: dict[str, float] = {}
    histograms: dict[str, list[tuple[float, int]]] = {}
    for item in stats.get("stats", []):
        if "name" in item:
            values[item["name"]] = item["value"]
        elif isinstance(item.get("histograms"), list):
            for hist in item["histograms"]:
                buckets = [(b["upper_bound"], b["cumulative"]) for b in hist["buckets"]]
                buckets.append((float("inf"), hist["count"]))
                histograms[hist["name"]] = buckets
    return Snapshot(time.monotonic(), listeners, values, histograms)


def _delta(a: Snapshot, b: Snapshot, name: str) -> float:
    return b.values.get(name, 0) - a.values.get(name, 0)


def _hist_delta(a: Snapshot, b: Snapshot, names: list[str]) -> list[tuple[float, int]]:
    """The window's buckets: the later cumulative counts minus the earlier, summed over names."""
    merged: dict[float, int] = {}
    for name in names:
        before = dict(a.histograms.get(name, []))
        for bound, count in b.histograms.get(name, []):
            merged[bound] = merged.get(bound, 0) + count - before.get(bound, 0)
    return sorted(merged.items())


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}/s" if unit == "B" else f"{value:.1f}{unit}/s"
        value /= 1024
    return f"{value:.1f}GiB/s"


def rows(a: Snapshot, b: Snapshot) -> list[list[str]]:
    seconds = max(b.at - a.at, 1e-6)
    out = []
    for listener in b.listeners:
        protocol = listener.get("protocol", "tcp")
        prefix = listener["stat_prefix"]
        cluster = "cluster." + listener["cluster"].replace(":", "_")
        connections = _delta(a, b, f"tcp.{prefix}.downstream_cx_total")
        attempts = _delta(a, b, f"{cluster}.upstream_cx_total")
        failed = _delta(a, b, f"{cluster}.upstream_cx_connect_fail")
        none_healthy = _delta(a, b, f"{cluster}.upstream_cx_none_healthy")
        active = b.values.get(f"listener.{listener['listener_address']}.downstream_cx_active", 0)
        moved = _delta(a, b, f"tcp.{prefix}.downstream_cx_rx_bytes_total") + _delta(
            a, b, f"tcp.{prefix}.downstream_cx_tx_bytes_total"
        )
        success: float | None = None
        if protocol in ("http", "http2", "grpc"):
            http = f"http.{prefix}"
            rate = _delta(a, b, f"{http}.downstream_rq_total") / seconds
            total = sum(_delta(a, b, f"{http}.downstream_rq_{c}xx") for c in range(1, 6))
            errors = _delta(a, b, f"{http}.downstream_rq_5xx")
            success = (total - errors) / total if total else None
            latency = _hist_delta(a, b, [f"{http}.downstream_rq_time"])
            unit = "rq/s"
        elif protocol == "kafka":
            kafka = f"kafka.{listener['cluster'].replace(':', '_')}"
            requests = [n for n in b.values if n.startswith(f"{kafka}.request.")]
            rate = sum(_delta(a, b, n) for n in requests) / seconds
            durations = [n for n in b.histograms if n.startswith(f"{kafka}.response.")]
            latency = _hist_delta(a, b, durations)
            unit = "rq/s"
        else:
            rate = connections / seconds
            latency = _hist_delta(a, b, [f"{cluster}.upstream_cx_connect_ms"])
            unit = "cx/s"
        if success is None and attempts + none_healthy:
            success = (attempts - failed) / (attempts + none_healthy)
        out.append(
            [
                listener["name"],
                protocol,
                listener["cluster"],
                f"{rate:.1f} {unit}",
                "-" if success is None else f"{success * 100:.2f}%",
                _ms(quantile_of(latency, 0.5)),
                _ms(quantile_of(latency, 0.99)),
                str(int(active)),
                _bytes(moved / seconds),
            ]
        )
    return out


HEADER = ["LISTENER", "PROTOCOL", "CLUSTER", "RATE", "SUCCESS", "P50", "P99", "ACTIVE", "BYTES"]


def table(body: list[list[str]]) -> str:
    all_rows = [HEADER, *body]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in all_rows
    )


def run(args: argparse.Namespace) -> int:
    try:
        admin = admin_address(args)
    except Exception as exc:
        print(f"pysidecar stat: {exc}", file=sys.stderr)
        return 1
    try:
        previous = fetch(admin)
        while True:
            time.sleep(args.interval)  # the measuring window, not a synchronisation
            current = fetch(admin)
            output = table(rows(previous, current))
            if args.once:
                print(output)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + f"pysidecar stat  {admin}  (Ctrl-C to stop)\n\n")
            sys.stdout.write(output + "\n")
            sys.stdout.flush()
            previous = current
    except KeyboardInterrupt:
        return 0
    except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
        print(f"pysidecar stat: cannot read the admin API at {admin}: {exc}", file=sys.stderr)
        return 1
