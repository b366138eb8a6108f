"""The machine and versions a run was made on, and the Markdown report of its results.

The report is rendered from the same dictionary that is written as results.json, so the two never
disagree.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess

from bench.context import REPO_ROOT, child_env
from bench.interpreter import module_version
from bench.profile import markdown as profile_markdown

# Figures the issues ask for ("Bench" sections of issues 3, 4, 5, 6 and 8): one worker per sidecar.
BULK_RATIO_TARGET = 0.5  # issues 3, 8: TCP bulk through the plaintext pair, × direct
ADDED_P99_TARGET_MS = 0.3  # issue 3: tcp-rr added round trip p99
MTLS_BULK_RATIO_TARGET = 0.35  # issue 4: bulk through the mTLS pair, × direct
RATE_ADDED_P50_MS = 0.5  # issue 5: at 1,000 req/s, added p50
RATE_ADDED_P99_MS = 1.5  # issues 5, 8: at 1,000 req/s, added p99
CORES_PER_1K_RPS = 0.3  # issue 5: CPU per sidecar per 1,000 req/s
WS_RATIO_TARGET = 0.35  # issue 6: websocket echo through the pair, × direct msgs/s
HTTP_EFFICIENCY_VS_HAPROXY = 0.25  # issue 8: HTTP/1.1 requests per proxy CPU-second, × HAProxy's
GRPC_UNARY_CALLS = 2000  # issue 8: calls/s per worker pair
RSS_MB_AT_1K = 40  # issue 8: peak RSS per sidecar at 1,000 req/s
IDLE_CONNECTIONS, IDLE_RSS_MB = 10_000, 200  # issue 8: idle connections through one sidecar


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "hostname": platform.node(),
    }


def _first_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _version(argv: list[str], pattern: str = r"[\d]+\.[\d.]+\S*") -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    line = _first_line(argv)
    if not line:
        return None
    found = re.search(pattern, line)
    return found.group(0) if found else line


def _git(*args: str) -> str | None:
    """First line of a git command's output in this checkout; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else None


def interpreter(python: str) -> dict:
    """The sidecars' interpreter as it describes itself (`bench.interpreter`), run as the sidecars
    are: its version, build and module versions can differ from the harness's own."""
    try:
        out = subprocess.run([python, "-m", "bench.interpreter"], capture_output=True, text=True,
                             timeout=60, env=child_env(), check=True)  # fmt: skip
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"executable": python, "error": f"not described: {exc}"}


def versions(loop: str, python: str) -> dict:
    """What the run used. The Python modules are the sidecars' interpreter's (`python`)."""
    sidecars = interpreter(python)
    modules = sidecars.get("modules", {})
    try:
        from sidecar import __version__ as sidecar_version
    except ImportError:
        sidecar_version = None
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "sidecar")
    if commit and dirty:
        commit += "+dirty"
    effective = loop
    if loop == "auto":
        effective = "uvloop" if modules.get("uvloop") else "asyncio"
    return {
        "python": sidecars.get("version", "unknown"),
        "interpreter": sidecars,
        "uvloop": modules.get("uvloop"),
        "sidecar_loop": effective,
        "pysidecar": sidecar_version,
        "pysidecar_commit": commit,
        "iperf3": _first_line(["iperf3", "--version"]) if shutil.which("iperf3") else None,
        "h2load": _version(["h2load", "--version"]),
        "nghttpd": _version(["nghttpd", "--version"]),
        "haproxy": _version(["haproxy", "-v"]),
        "openssl": _version(["openssl", "version"]),
        "h11": modules.get("h11"),
        "h2": modules.get("h2"),
        "grpcio": modules.get("grpcio"),
        "websockets": modules.get("websockets"),
        "matplotlib": module_version("matplotlib"),  # the harness's own: it draws the charts
    }


def _interpreter_line(i: dict) -> str:
    """The sidecars' interpreter in one line: where it is, how it was built, how fast it ran a
    fixed loop (`bench.interpreter`)."""
    if "error" in i:
        return f"{i['executable']} ({i['error']})"
    linked = f"shared {i['libpython']}" if i["libpython"] else "libpython in the executable"
    options = ", ".join(i["configure_optimisations"]) or "no optimising option recorded"
    return (f"{i['implementation']} {i['version']} at {i['executable']}: {linked}; configure: "
            f"{options}; a fixed pure-Python loop ({i['loop_rounds']:,} rounds) in "
            f"{i['loop_ms']} ms")


# -- targets ---------------------------------------------------------------------------------------


def _entry(results: dict, scenario: str, path: str) -> dict | None:
    for s in results["scenarios"]:
        if s["name"] == scenario:
            for e in s.get("paths", []):
                if e["path"] == path and e.get("ok"):
                    return e
    return None


def _secure(results: dict, scenario: str) -> tuple[dict | None, str]:
    """The mTLS pair's entry when it was measured, else the plaintext pair's (and which)."""
    e = _entry(results, scenario, "pair-mtls")
    if e is not None:
        return e, "pair-mtls"
    return _entry(results, scenario, "pair"), "pair (mTLS off: pair-mtls not measured)"


def _proxies(entry: dict) -> list[dict]:
    return [p for p in entry.get("processes", []) if p.get("proxy")]


def _peak_rss(entry: dict) -> dict[str, float]:
    """Each proxy's peak RSS in MB, by its label (A, B)."""
    return {p["label"]: p["peak_rss_mb"] for p in _proxies(entry) if p.get("peak_rss_mb")}


def _megabytes(rss: dict[str, float]) -> str:
    return " · ".join(f"{k} {v:.1f}" for k, v in rss.items()) + " MB"


def targets(results: dict) -> list[dict]:
    found: list[dict] = []

    def add(issue: str, target: str, path: str, measured: str, met: bool | None) -> None:
        found.append({"issue": issue, "target": target, "path": path, "measured": measured,
                      "met": met})

    for name in ("tcp-bulk", "tcp-bulk-reverse"):
        e = _entry(results, name, "pair")
        if e and "vs_direct" in e:
            r = e["vs_direct"]["ratio"]
            add("3, 8", f"{name}: throughput ≥ {BULK_RATIO_TARGET} × direct", "pair",
                f"{r:.2f} × direct", r >= BULK_RATIO_TARGET)
    e = _entry(results, "tcp-bulk", "pair-mtls")
    if e and "vs_direct" in e:
        r = e["vs_direct"]["ratio"]
        add("4", f"tcp-bulk: mTLS throughput ≥ {MTLS_BULK_RATIO_TARGET} × direct", "pair-mtls",
            f"{r:.2f} × direct", r >= MTLS_BULK_RATIO_TARGET)
        if "vs_haproxy" in e:
            r = e["vs_haproxy"]["ratio"]
            add("8", "tcp-bulk: mTLS throughput ≥ the HAProxy mTLS pair's", "pair-mtls",
                f"{r:.2f} × haproxy", r >= 1.0)
    e = _entry(results, "tcp-rr", "pair")
    if e and "vs_direct" in e:
        v = e["vs_direct"]["added_p99_ms"]
        add("3", f"tcp-rr: added round-trip p99 ≤ {ADDED_P99_TARGET_MS} ms", "pair",
            f"{v:.3f} ms", v <= ADDED_P99_TARGET_MS)
    plain, tls = _entry(results, "tcp-connect", "pair"), _entry(results, "tcp-connect",
                                                               "pair-mtls")
    if plain and tls:
        add("4", "tcp-connect: new connections/s (mTLS handshakes) through the mTLS pair, "
                 "against the plaintext pair (reported)", "pair-mtls",
            f"{tls['figures']['connections_per_s']:,.0f} vs "
            f"{plain['figures']['connections_per_s']:,.0f} conns/s", None)

    for name in ("http1-rate", "http1-paced"):
        e, which = _secure(results, name)
        if e and "vs_direct" in e:
            vs = e["vs_direct"]
            add("5", f"{name} (1,000 req/s): added p50 ≤ {RATE_ADDED_P50_MS} ms", which,
                f"{vs['added_p50_ms']:.2f} ms", vs["added_p50_ms"] <= RATE_ADDED_P50_MS)
            add("5, 8", f"{name} (1,000 req/s): added p99 ≤ {RATE_ADDED_P99_MS} ms", which,
                f"{vs['added_p99_ms']:.2f} ms", vs["added_p99_ms"] <= RATE_ADDED_P99_MS)
            rate = e["figures"]["requests_per_s"]
            if rate:
                per_1k = {p["label"]: p["cores"] * 1000 / rate for p in _proxies(e) if "cores" in p}
                if per_1k:
                    add("5", f"{name}: CPU ≤ {CORES_PER_1K_RPS} core per 1,000 req/s per "
                             "sidecar", which,
                        " · ".join(f"{k} {v:.2f}" for k, v in per_1k.items())
                        + f" core (at {rate:,.0f} req/s)",
                        max(per_1k.values()) <= CORES_PER_1K_RPS)
            rss = _peak_rss(e)
            if rss:
                add("8", f"peak RSS ≤ {RSS_MB_AT_1K} MB per sidecar at 1,000 req/s", which,
                    _megabytes(rss), max(rss.values()) <= RSS_MB_AT_1K)
    for name in ("idle-conns", "idle-http"):
        for path in ("pair", "pair-mtls"):
            e = _entry(results, name, path)
            rss = _peak_rss(e) if e else {}
            if not rss:
                continue
            held = e["figures"]["held"]
            measured = f"{_megabytes(rss)}, {held:,} held"
            # Fewer held (a descriptor limit): the whole RSS scaled up, which overstates it.
            scaled = max(rss.values()) * IDLE_CONNECTIONS / held if held else float("inf")
            if held < IDLE_CONNECTIONS:
                measured += f" (≤ {scaled:.0f} MB at {IDLE_CONNECTIONS:,})"
            add("8", f"{name}: {IDLE_CONNECTIONS:,} idle connections in ≤ {IDLE_RSS_MB} MB per "
                     "sidecar", path, measured, scaled <= IDLE_RSS_MB)  # fmt: skip
    e, which = _secure(results, "http1")
    if e:
        add("5", "http1: maximum req/s per worker (one worker per sidecar; reported)", which,
            f"{e['figures']['requests_per_s']:,.0f} req/s", None)
        ref = like_for_like(e)
        if ref and "efficiency_ratio" in e[f"vs_{ref}"]:
            r = e[f"vs_{ref}"]["efficiency_ratio"]
            versus = ref.replace("_", "-")
            add("8", f"http1: requests per proxy CPU-second ≥ {HTTP_EFFICIENCY_VS_HAPROXY} × "
                     "the HAProxy pair's (with mTLS)", f"{which.split(' ')[0]} vs {versus}",
                f"{r:.3f} × {versus}", r >= HTTP_EFFICIENCY_VS_HAPROXY)
    e, which = _secure(results, "grpc-unary")
    if e:
        v = e["figures"]["calls_per_s"]
        add("8", f"grpc-unary ≥ {GRPC_UNARY_CALLS:,} calls/s per worker pair", which,
            f"{v:,.0f} calls/s", v >= GRPC_UNARY_CALLS)
    for name in ("ws-echo", "ws-echo-tcp"):
        e = _entry(results, name, "pair")
        if e and "vs_direct" in e:
            r = e["vs_direct"]["ratio"]
            add("6", f"{name}: messages/s ≥ {WS_RATIO_TARGET} × direct", "pair",
                f"{r:.2f} × direct", r >= WS_RATIO_TARGET)
    return found


# -- rendering ---------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _per_proxy(entry: dict, key: str, digits: int) -> str:
    proxies = _proxies(entry)
    if not proxies:
        return "–"
    return " · ".join(f"{p['label']} {_f(p.get(key), digits)}" for p in proxies)


def _vs(entry: dict, reference: str, key: str, digits: int = 2) -> str:
    if entry["path"] == reference:
        return "–"
    return _f(entry.get(f"vs_{reference}", {}).get(key), digits)


def like_for_like(entry: dict) -> str | None:
    """Which HAProxy pair this path compares with: the one whose hop is as secure as its own
    (plaintext: `haproxy-plain`, mTLS: `haproxy`; direct: `haproxy`), falling back to the other
    when only one was measured. None when neither was."""
    plain = entry["path"] in ("pair", "haproxy-plain")
    order = ("haproxy_plain", "haproxy") if plain else ("haproxy", "haproxy_plain")
    for ref in order:
        if f"vs_{ref}" in entry:
            return ref
    return None


def _vs_haproxy(entry: dict, key: str) -> str:
    if entry["path"].startswith("haproxy"):
        return "–"
    ref = like_for_like(entry)
    if ref is None:
        return "–"
    value = entry[f"vs_{ref}"].get(key)
    if value is None:
        return "–"
    return f"{value:,.2f}" + (" (plain)" if ref == "haproxy_plain" else "")


def _efficiency(entry: dict) -> str:
    value = entry.get("per_proxy_cpu_s")
    if value is None:
        return "–"
    return _f(value, 2 if value < 100 else 0)


def _table(scenario: dict, entries: list[dict]) -> list[str]:
    unit, digits = scenario["rate_unit"], scenario["rate_digits"]
    work = entries[0].get("work", {})
    each = work.get("each") or work.get("unit", "")
    latency = scenario.get("latency_key")
    failures = any(e["figures"].get("failed") for e in entries)
    header = ["path", unit, "× direct", "× HAProxy pair"]
    align = ["---", "---:", "---:", "---:"]
    if latency:
        header += ["p50 µs", "p90 µs", "p99 µs", "max µs", "added p50 ms", "added p99 ms"]
        align += ["---:"] * 6
    if failures:
        header.append("failed")
        align.append("---:")
    header += [f"proxy CPU s/{work.get('unit', '')}", f"{each} per proxy CPU-s",
               "CPU-s eff. × HAProxy", "proxy cores", "peak RSS MB"]
    align += ["---:", "---:", "---:", "---", "---"]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for e in entries:
        fig = e["figures"]
        cells = [e["path"], _f(fig[scenario["rate_key"]], digits), _vs(e, "direct", "ratio"),
                 _vs_haproxy(e, "ratio")]
        if latency:
            lat = fig.get(latency) or {}
            cells += [_f(lat.get("p50"), 0), _f(lat.get("p90"), 0), _f(lat.get("p99"), 0),
                      _f(lat.get("max"), 0), _vs(e, "direct", "added_p50_ms", 3),
                      _vs(e, "direct", "added_p99_ms", 3)]
        if failures:
            cells.append(str(fig.get("failed", 0)))
        cells += [_f(e.get("proxy_cpu_s_per_unit"), 3), _efficiency(e),
                  _vs_haproxy(e, "efficiency_ratio"), _per_proxy(e, "cores", 2),
                  _per_proxy(e, "peak_rss_mb", 1)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _others(entries: list[dict]) -> str:
    parts = []
    for e in entries:
        procs = {p["role"]: p for p in e.get("processes", []) if not p.get("proxy")}
        seconds = e.get("elapsed_s") or 0
        bits = []
        for role in ("client", "server"):
            p = procs.get(role)
            if p and p.get("cpu_s") is not None and seconds:
                bits.append(f"{role} {100 * p['cpu_s'] / seconds:.0f}%")
        machine_cpu = e.get("machine_cpu")
        if machine_cpu and seconds:
            bits.append(f"softirq {100 * machine_cpu['irq_softirq_s'] / seconds:.0f}%")
            bits.append(f"other processes {100 * machine_cpu['outside_run_s'] / seconds:.0f}%")
        if bits:
            parts.append(f"{e['path']}: {', '.join(bits)}")
    return (
        "CPU in % of one core: load generator, server, interrupts and softirqs (charged to "
        "no process), and processes outside this run — " + "; ".join(parts)
    )


def _spread(scenario: dict, entries: list[dict]) -> str:
    digits = scenario["rate_digits"]
    unit = scenario["rate_unit"]
    if scenario["kind"] == "rate":
        unit, digits = "p99 µs (the runs are ranked by it)", 0
    parts = []
    for e in entries:
        repeats = e.get("repeats")
        if repeats:
            values = " · ".join(_f(abs(v), digits) for v in repeats["headline_sorted"])
            failed = f" ({repeats['failed']} failed)" if repeats["failed"] else ""
            parts.append(f"{e['path']} {values}{failed}")
    return f"Every run, {unit}, sorted: " + "; ".join(parts) + "." if parts else ""


def _versions_line(v: dict) -> str:
    bits = [f"Python {v['python']}", f"uvloop {v['uvloop'] or 'not installed'}",
            f"pysidecar {v['pysidecar']} ({v['pysidecar_commit'] or 'no git'})"]
    for key in ("h11", "h2", "grpcio", "websockets"):
        if v.get(key):
            bits.append(f"{key} {v[key]}")
    for key in ("h2load", "nghttpd", "haproxy", "openssl"):
        bits.append(f"{key} {v.get(key) or 'not installed'}")
    bits.append(v.get("iperf3") or "iperf3 not installed")
    return ", ".join(bits)


def markdown(results: dict) -> str:
    m, v, s = results["machine"], results["versions"], results["settings"]
    lines = [
        f"# pysidecar bench — {results['started']}",
        "",
        f"- Command: `{results['command']}`",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}",
        f"- Versions: {_versions_line(v)}",
        *([f"- Sidecars' interpreter: {_interpreter_line(v['interpreter'])}"]
          if "interpreter" in v else []),
        f"- Sidecar event loop: {v['sidecar_loop']}; {s['duration']} s per measurement"
        + (f"; each path measured {s['repeat']} times, taking turns, the median run shown"
           if s.get("repeat", 1) > 1 else ""),
        f"- CPU placement: {s['pinning']}",
    ]
    for name, description in s["paths"].items():
        lines.append(f"- Path `{name}`: {description}")
    for note in results.get("notes", []):
        lines.append(f"- Note: {note}")
    found = results.get("targets") or []
    if found:
        lines += ["", "## Targets (issues 3, 4, 5, 6, 8; one worker per sidecar)", "",
                  "| issue | target | path | measured | |", "|---|---|---|---:|---|"]
        for t in found:
            verdict = "reported" if t["met"] is None else ("met" if t["met"] else "NOT met")
            lines.append(f"| {t['issue']} | {t['target']} | {t['path']} | {t['measured']} "
                         f"| {verdict} |")
    for name in results.get("charts", {}).get("files", []):
        lines += ["", f"![{name}]({name})"]
    if results.get("charts", {}).get("note"):
        lines += ["", f"Charts: {results['charts']['note']}"]
    for scenario in results["scenarios"]:
        lines += ["", f"## {scenario['name']} — {scenario['title']}", "", scenario["measures"], ""]
        if scenario.get("skipped"):
            lines.append(f"Skipped: {scenario['skipped']}.")
            continue
        ok = [e for e in scenario["paths"] if e.get("ok")]
        if ok:
            lines += _table(scenario, ok)
            lines += ["", _others(ok) + "."]
            spread = _spread(scenario, ok)
            if spread:
                lines += ["", spread]
        for e in scenario["paths"]:
            if e.get("skipped"):
                lines.append(f"- `{e['path']}` skipped: {e['skipped']}.")
            elif not e.get("ok"):
                first = (e.get("error") or "").splitlines()[:1]
                lines.append(f"- `{e['path']}` FAILED: {first[0] if first else 'unknown error'}")
    lines += profile_markdown(results)
    lines += [
        "",
        "Ratios compare each path with `direct` and with the HAProxy pair whose hop is as "
        "secure as its own, in the same run: `pair` with `haproxy-plain` (marked \"plain\"), "
        "`pair-mtls` and `direct` with `haproxy` (mTLS). "
        "Added latencies are the path's percentile minus direct's. Proxy CPU s/unit: the CPU "
        "seconds (user + system, all threads) of the two proxy processes during the "
        "measurement over what they carried; \"per proxy CPU-s\" is the inverse (requests, "
        "messages, GB per CPU-second of both proxies together), and \"CPU-s eff. × HAProxy\" "
        "compares it with the HAProxy pair's. Proxy cores: each proxy's CPU time over the "
        "measurement's wall time. Peak RSS is VmHWM. A = the client's proxy (outbound), B = the "
        "server's proxy (inbound).",
    ]
    return "\n".join(lines) + "\n"
