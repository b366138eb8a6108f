"""Pieces of the benchmark harness that need no process: the HTTP/1.1 app's parser, h2load's
output, the comparisons with direct and HAProxy, the targets and the report."""

from __future__ import annotations

import asyncio

from bench import report
from bench.cli import compare_paths
from bench.scenarios_l7 import Http1, parse_h2load
from bench.tools_http import FixedResponse, response_bytes


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return default


def _app(*chunks: bytes) -> tuple[FakeTransport, bytes]:
    response = response_bytes(8)
    proto = FixedResponse(response)
    transport = FakeTransport()
    proto.connection_made(transport)
    for chunk in chunks:
        proto.data_received(chunk)
    return transport, response


def test_app_answers_pipelined_requests_in_one_write() -> None:
    t, response = _app(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
    assert t.out == response * 3 and not t.closed


def test_app_skips_bodies_split_across_reads() -> None:
    t, response = _app(
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234", b"56789GET / HTTP/1.1\r\n", b"\r\n"
    )
    assert t.out == response * 2


def test_app_skips_chunked_bodies_with_trailers() -> None:
    body = b"4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nx-t: 1\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    t, response = _app(head + body[:9], body[9:] + b"GET / HTTP/1.1\r\n\r\n")
    assert t.out == response * 2


def test_app_closes_after_connection_close_and_http10() -> None:
    t, response = _app(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert t.out == response and t.closed
    t, response = _app(b"GET / HTTP/1.0\r\n\r\n")
    assert t.out == response and t.closed


H2LOAD_OUT = """\
finished in 3.00s, 777.00 req/s, 97.88KB/s
requests: 2331 total, 2347 started, 2331 done, 2329 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 2329 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_parse_h2load_counts_and_percentiles(tmp_path) -> None:
    log = tmp_path / "log.tsv"
    log.write_text(
        "".join(f"1700000000{i:06d}\t200\t{100 + i}\n" for i in range(100))
        + "1700000000999999\t503\t5\n"
    )
    figures = parse_h2load(H2LOAD_OUT, log)
    assert figures["requests"] == 2329 and figures["failed"] == 2
    assert abs(figures["requests_per_s"] - 2329 / 3) < 1e-9
    assert figures["latency_us"]["p50"] == 149 and figures["latency_us"]["max"] == 199


def _entry(path: str, rate: float, cpu: float | None, p99: float = 1000.0) -> dict:
    lat = {"p50": p99 / 2, "p90": p99 * 0.9, "p99": p99, "max": p99 * 2}
    return {
        "path": path,
        "ok": True,
        "figures": {"requests": rate * 10, "requests_per_s": rate, "latency_us": lat, "failed": 0},
        "elapsed_s": 10.0,
        "work": {"amount": rate * 10 / 1000, "unit": "1k reqs", "scale": 1000, "each": "req"},
        "per_proxy_cpu_s": rate * 10 / cpu if cpu else None,
        "proxy_cpu_s_per_unit": cpu / (rate * 10 / 1000) if cpu else None,
        "processes": []
        if cpu is None
        else [
            {
                "role": "sidecar-a",
                "proxy": True,
                "label": "A",
                "cpu_s": cpu / 2,
                "cores": cpu / 20,
                "peak_rss_mb": 39.0,
            },
            {
                "role": "sidecar-b",
                "proxy": True,
                "label": "B",
                "cpu_s": cpu / 2,
                "cores": cpu / 20,
                "peak_rss_mb": 41.0,
            },
        ],
        "machine_cpu": {"busy_s": 0, "irq_softirq_s": 0, "outside_run_s": 0},
    }


def _results() -> dict:
    scenario = Http1()
    paths = [
        _entry("direct", 40000, None, 400),
        _entry("pair", 1000, 10.0, 10000),
        _entry("pair-mtls", 900, 10.0, 12000),
        _entry("haproxy", 20000, 8.0, 1000),
        _entry("haproxy-plain", 25000, 8.0, 800),
    ]
    compare_paths(scenario, paths)
    entry = {
        "name": "http1",
        "kind": "http",
        "title": "t",
        "measures": "m",
        "protocol": "http",
        "rate_key": "requests_per_s",
        "rate_unit": "req/s",
        "rate_digits": 0,
        "latency_key": "latency_us",
        "skipped": None,
        "paths": paths,
    }
    return {
        "started": "2026-11-23T00:00:00+00:00",
        "command": "python3 -m bench",
        "machine": {
            "cpu_model": "x",
            "cores": 2,
            "usable_cores": 2,
            "memory_gib": 1,
            "kernel": "k",
        },
        "versions": {
            "python": "3",
            "uvloop": None,
            "sidecar_loop": "asyncio",
            "pysidecar": "0",
            "pysidecar_commit": None,
        },
        "settings": {"duration": 10, "repeat": 1, "pinning": "not pinned", "paths": {}},
        "notes": [],
        "scenarios": [entry],
    }


def test_comparisons_are_like_for_like() -> None:
    results = _results()
    by_path = {p["path"]: p for p in results["scenarios"][0]["paths"]}
    pair, mtls = by_path["pair"], by_path["pair-mtls"]
    assert pair["vs_direct"]["ratio"] == 1000 / 40000
    assert abs(pair["vs_direct"]["added_p99_ms"] - 9.6) < 1e-9
    # Requests per proxy CPU-second: pair 1,000, haproxy-plain 31,250, haproxy 25,000.
    assert report.like_for_like(pair) == "haproxy_plain"
    assert abs(pair["vs_haproxy_plain"]["efficiency_ratio"] - 1000 / 31250) < 1e-9
    assert report.like_for_like(mtls) == "haproxy"
    assert abs(mtls["vs_haproxy"]["efficiency_ratio"] - 900 / 25000) < 1e-9
    assert "vs_direct" not in by_path["direct"]


def test_targets_prefer_the_mtls_pair_and_render() -> None:
    results = _results()
    results["targets"] = report.targets(results)
    found = {t["target"]: t for t in results["targets"]}
    eff = found["http1: requests per proxy CPU-second ≥ 0.25 × the HAProxy pair's (with mTLS)"]
    assert eff["path"] == "pair-mtls vs haproxy" and eff["met"] is False
    per_worker = found["http1: maximum req/s per worker (one worker per sidecar; reported)"]
    assert per_worker["met"] is None and "900" in per_worker["measured"]
    text = report.markdown(results)
    assert "| pair | 1,000 | 0.03 | 0.04 (plain) |" in text
    assert "| reported |" in text and "| NOT met |" in text


def test_memory_map_splits_this_process_resident_memory() -> None:
    """The bench records where a proxy's RSS is (anonymous vs file-backed, largest mappings), so
    that a peak RSS measured on another machine can be explained from results.json alone."""
    import os

    from bench.procs import memory_map

    memory = memory_map(os.getpid(), top=50)
    assert memory is not None
    status, rollup, mappings = memory["status"], memory["rollup"], memory["mappings"]
    assert status["RssAnon"] + status["RssFile"] <= status["VmRSS"] + 4  # RssShmem aside
    assert status["Threads"] >= 1
    assert 0 <= rollup["AnonHugePages"] <= rollup["Anonymous"] <= rollup["Rss"]
    rss = [row[1] for row in mappings]
    assert rss == sorted(rss, reverse=True)
    assert all(0 <= anon <= size for _, size, anon in mappings)
    names = {row[0] for row in mappings}
    assert "[heap]" in names or "[anon]" in names
    assert memory_map(2**22 + 12345) is None  # no such process


def test_the_sidecars_interpreter_describes_itself(tmp_path) -> None:
    """The report names the interpreter the sidecars run on (BENCH_PYTHON may differ from the
    harness's), how it was built and how fast it ran a fixed loop: on the 2-core machine an
    optimised build made a request 14-20 % cheaper (bench/README.md, "The interpreter")."""
    import os
    import platform
    import sys

    from bench import interpreter

    # A wrapper script, as BENCH_PYTHON may be: the interpreter behind it is described.
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    described = report.interpreter(str(wrapper))
    assert described["version"] == platform.python_version()
    assert os.path.realpath(described["executable"]) == os.path.realpath(sys.executable)
    assert described["libpython"] == interpreter.libpython()  # the same build as this process
    assert described["loop_ms"] > 0 and described["loop_rounds"] == interpreter.LOOP_ROUNDS
    assert described["modules"]["h2"] == interpreter.module_version("h2")
    line = report._interpreter_line(described)
    assert described["executable"] in line and f"{described['loop_ms']} ms" in line
    assert ("shared" in line) == (described["libpython"] is not None)

    missing = report.interpreter(str(tmp_path / "no-such-python"))
    assert "error" in missing and "not described" in report._interpreter_line(missing)


def test_idle_connection_targets_scale_up_what_fewer_connections_held() -> None:
    """Issue 8's 10,000 idle connections in ≤ 200 MB, per sidecar and path: where a descriptor
    limit held fewer, the whole RSS is scaled up (an overstatement, never an understatement)."""

    def entry(path: str, held: int, a_mb: float, b_mb: float) -> dict:
        proxies = [{"proxy": True, "label": label, "peak_rss_mb": mb}
                   for label, mb in (("A", a_mb), ("B", b_mb))]  # fmt: skip
        return {"path": path, "ok": True, "figures": {"held": held}, "processes": proxies}

    results = {"scenarios": [
        {"name": "idle-conns", "paths": [entry("pair", 10_000, 52.0, 51.0),
                                         entry("pair-mtls", 9_500, 190.0, 255.1)]},
        {"name": "idle-http", "paths": [entry("pair-mtls", 9_500, 66.0, 35.0)]},
    ]}  # fmt: skip
    found = {(t["target"].split(":")[0], t["path"]): t for t in report.targets(results)}
    assert found[("idle-conns", "pair")]["met"] is True
    assert found[("idle-conns", "pair")]["measured"] == "A 52.0 · B 51.0 MB, 10,000 held"
    mtls = found[("idle-conns", "pair-mtls")]
    assert mtls["met"] is False and "(≤ 269 MB at 10,000)" in mtls["measured"]
    assert found[("idle-http", "pair-mtls")]["met"] is True  # 66 × 10,000 / 9,500 ≈ 69.5
    assert ("idle-http", "pair") not in found  # not measured: no line


def test_scaling_compares_like_loads_and_finds_each_worker_counts_peak() -> None:
    """`bench.scaling --connections 64,256`: each row against one worker at the same load; the
    peaks take each worker count's best load, which need not be the same load."""
    from bench import scaling

    def row(workers: int, connections: int | None, rate: float, scenario: str = "http1") -> dict:
        path = "direct" if workers == 0 else "pair"
        return {"scenario": scenario, "path": path, "workers": workers,
                "connections": connections, "rate": rate, "unit": "req/s"}  # fmt: skip

    assert scaling._loads(["http1", "tcp-bulk"], [64, 256]) == [
        ("http1", 64), ("http1", 256), ("tcp-bulk", None)]  # fmt: skip
    rows = [row(0, 64, 300_000.0), row(0, 256, 310_000.0),
            row(1, 64, 12_000.0), row(1, 256, 10_000.0),
            row(4, 64, 33_000.0), row(4, 256, 40_000.0),
            row(1, None, 5.0, "tcp-bulk"), row(4, None, 10.0, "tcp-bulk")]  # fmt: skip
    peaks = scaling._scaling(rows)
    assert [r.get("scaling") for r in rows[2:6]] == [1.0, 1.0, 2.75, 4.0]
    assert "scaling" not in rows[0]
    http = {p["workers"]: p for p in peaks if p["scenario"] == "http1"}
    assert (http[1]["connections"], http[4]["connections"]) == (64, 256)
    assert http[4]["scaling"] == 40_000.0 / 12_000.0
    assert [p["scaling"] for p in peaks if p["scenario"] == "tcp-bulk"] == [1.0, 2.0]
    results = {"machine": {"cores": 16, "cpu": "x", "kernel": "k", "python": "3.12",
                           "pinned": False}, "duration": 6, "loop": "uvloop",
               "rows": rows, "peaks": peaks}  # fmt: skip
    report = scaling._markdown(results)
    assert "| http1 -c 256 | pair, --workers 4 | 40,000.0 req/s | 4.00 |" in report
    assert "| http1 | 4 | 40,000.0 req/s | -c 256 | 3.33 |" in report
