"""The benchmark harness runs end to end, measures every path asked for and leaves no process
behind.

One short run (`python3 -m bench --duration 0.2 --path pair --path pair-mtls`: tcp-rr, tcp-bulk
and the L7 `http1` scenario, direct and through the sidecar pair with and without mTLS) is shared
by the tests of this module; it takes 15-25 seconds. 0.2 s still gives hundreds of requests and
messages per path (iperf3 runs its one-second minimum whatever is asked). The figures themselves
are not judged here: performance is a harness, not a timed assert (DESIGN.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAVE_IPERF3 = shutil.which("iperf3") is not None
HAVE_H2LOAD = shutil.which("h2load") is not None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "out"
    scenarios = ["tcp-rr", "tcp-bulk", "http1"]
    argv = [
        sys.executable,
        "-m",
        "bench",
        "--duration",
        "0.2",
        "--path",
        "pair",
        "--path",
        "pair-mtls",
        "--out",
        str(out),
    ]
    for name in scenarios:
        argv += ["--scenario", name]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    results = json.loads((out / "results.json").read_text())
    return {"results": results, "stdout": done.stdout, "out": out}


def _paths(results: dict, scenario: str) -> dict[str, dict]:
    entry = next(s for s in results["scenarios"] if s["name"] == scenario)
    return {p["path"]: p for p in entry["paths"]}


def _assert_proxies_measured(pair: dict) -> None:
    proxies = [p for p in pair["processes"] if p["proxy"]]
    assert [p["role"] for p in proxies] == ["sidecar-a", "sidecar-b"]
    for proxy in proxies:
        assert proxy["cpu_s"] > 0
        assert proxy["peak_rss_mb"] > 0


def test_tcp_rr_measures_both_paths(run: dict) -> None:
    paths = _paths(run["results"], "tcp-rr")
    assert set(paths) == {"direct", "pair", "pair-mtls"}
    for entry in paths.values():
        assert entry["ok"], entry.get("error")
        figures = entry["figures"]
        assert figures["messages"] > 0 and figures["messages_per_s"] > 0
        assert 0 < figures["rtt_us"]["p50"] <= figures["rtt_us"]["p99"]
    for name in ("pair", "pair-mtls"):
        _assert_proxies_measured(paths[name])
        assert "added_p99_ms" in paths[name]["vs_direct"]


def test_tcp_bulk_measures_both_paths(run: dict) -> None:
    if not HAVE_IPERF3:
        pytest.skip("iperf3 is not installed: tcp-bulk was not run")
    paths = _paths(run["results"], "tcp-bulk")
    assert set(paths) == {"direct", "pair", "pair-mtls"}
    for entry in paths.values():
        assert entry["ok"], entry.get("error")
        assert entry["figures"]["gbit_per_s"] > 0
        assert entry["figures"]["bytes"] > 0
    for name in ("pair", "pair-mtls"):
        _assert_proxies_measured(paths[name])
        assert paths[name]["vs_direct"]["ratio"] > 0
    targets = {t["target"] for t in run["results"]["targets"]}
    assert "tcp-bulk: mTLS throughput ≥ 0.35 × direct" in targets


def test_http1_through_the_h2_upgrade(run: dict) -> None:
    entry = next(s for s in run["results"]["scenarios"] if s["name"] == "http1")
    if not HAVE_H2LOAD:
        assert "h2load" in entry["skipped"]
        pytest.skip("h2load is not installed: http1 was skipped (with a note)")
    assert entry["protocol"] == "http" and entry["rate_key"] == "requests_per_s"
    paths = _paths(run["results"], "http1")
    assert set(paths) == {"direct", "pair", "pair-mtls"}
    for path in paths.values():
        assert path["ok"], path.get("error")
        figures = path["figures"]
        assert figures["requests"] > 0 and figures["requests_per_s"] > 0
        assert figures["failed"] == 0
        assert 0 < figures["latency_us"]["p50"] <= figures["latency_us"]["p99"]
    for name in ("pair", "pair-mtls"):
        pair = paths[name]
        _assert_proxies_measured(pair)
        assert pair["work"]["unit"] == "1k reqs"
        assert pair["per_proxy_cpu_s"] > 0  # requests per CPU-second of both sidecars
        assert 0 < pair["vs_direct"]["ratio"]
        assert "added_p99_ms" in pair["vs_direct"]
        for proxy in (p for p in pair["processes"] if p["proxy"]):
            assert proxy["cores"] > 0
    found = {t["target"]: t for t in run["results"]["targets"]}
    assert (
        found["http1: maximum req/s per worker (one worker per sidecar; reported)"]["path"]
        == "pair-mtls"
    )


def test_report_is_written_and_printed(run: dict) -> None:
    report = (run["out"] / "report.md").read_text()
    assert "## tcp-rr" in report
    assert "## http1 " in report
    assert "| pair |" in report and "| pair-mtls |" in report
    interpreter = run["results"]["versions"]["interpreter"]
    assert f"- Sidecars' interpreter: CPython {interpreter['version']} at " in report
    assert report.strip() in run["stdout"]
    charts = run["results"]["charts"]
    if charts["files"]:
        for name in charts["files"]:
            assert (run["out"] / name).read_bytes().startswith(b"\x89PNG")
    else:
        assert "matplotlib" in charts["note"]


def test_no_process_is_left(run: dict) -> None:
    started = run["results"]["processes"]
    roles = {p["role"] for p in started}
    assert {"server", "client", "sidecar-a", "sidecar-b"} <= roles
    for proc in started:
        assert proc["returncode"] is not None, f"{proc['role']} was never reaped"
        cmdline = Path(f"/proc/{proc['pid']}/cmdline")
        try:
            argv = cmdline.read_bytes().split(b"\0")[:-1]
        except OSError:
            continue  # gone, as it should be
        # The pid may have been reused by an unrelated process; only the same command counts.
        assert [a.decode(errors="replace") for a in argv] != proc["argv"], (
            f"{proc['role']} (pid {proc['pid']}) is still running"
        )
