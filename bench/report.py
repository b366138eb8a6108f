"""The machine and versions a run was made on, and the Markdown report of its results.

The report is rendered from the same dictionary that is written as results.json, so the two never
disagree.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from bench.context import REPO_ROOT
from bench.profile import markdown as profile_markdown

# Figures the issues ask for (issue 3, "Bench"): one core per sidecar.
BULK_RATIO_TARGET = 0.5
ADDED_P99_TARGET_MS = 0.3
# Issue 4: bulk through the pair with mTLS on the hop.
MTLS_BULK_RATIO_TARGET = 0.35


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


def versions(loop: str) -> dict:
    try:
        uvloop_version = metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        uvloop_version = None
    try:
        from sidecar import __version__ as sidecar_version
    except ImportError:
        sidecar_version = None
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "sidecar"])
    if commit and dirty:
        commit += "+dirty"
    effective = loop
    if loop == "auto":
        effective = "uvloop" if uvloop_version else "asyncio"
    return {
        "python": platform.python_version(),
        "uvloop": uvloop_version,
        "sidecar_loop": effective,
        "pysidecar": sidecar_version,
        "pysidecar_commit": commit,
        "iperf3": _first_line(["iperf3", "--version"]),
    }


# -- rendering ---------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _per_proxy(entry: dict, key: str, digits: int) -> str:
    proxies = [p for p in entry.get("processes", []) if p.get("proxy")]
    if not proxies:
        return "–"
    return " · ".join(f"{p['label']} {_f(p.get(key), digits)}" for p in proxies)


def _added(entry: dict, key: str) -> str:
    if entry["path"] == "direct":
        return "–"
    return _f(entry.get("vs_direct", {}).get(key), 3)


def _proxy_total(entry: dict) -> str:
    value = entry.get("proxy_cpu_s_per_unit")
    return _f(value, 3) if value is not None else "–"


def _bulk_rows(entries: list[dict]) -> list[str]:
    rows = [
        "| path | Gbit/s | × direct | proxy CPU s/GB (total) | CPU s/GB per proxy "
        "| CPU s per proxy | peak RSS MB per proxy |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for e in entries:
        fig, vs = e["figures"], e.get("vs_direct", {})
        rows.append(
            f"| {e['path']} | {_f(fig['gbit_per_s'])} | {_f(vs.get('throughput_ratio'))} "
            f"| {_proxy_total(e)} | {_per_proxy(e, 'cpu_s_per_unit', 3)} "
            f"| {_per_proxy(e, 'cpu_s', 2)} | {_per_proxy(e, 'peak_rss_mb', 1)} |"
        )
    return rows


def _rr_rows(entries: list[dict]) -> list[str]:
    rows = [
        "| path | msgs/s | × direct | p50 µs | p90 µs | p99 µs | max µs | added p50 ms "
        "| added p99 ms | proxy CPU s/1k msgs (total) | peak RSS MB per proxy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        fig, vs = e["figures"], e.get("vs_direct", {})
        rtt = fig["rtt_us"]
        rows.append(
            f"| {e['path']} | {_f(fig['messages_per_s'], 0)} | {_f(vs.get('rate_ratio'))} "
            f"| {_f(rtt['p50'], 1)} | {_f(rtt['p90'], 1)} | {_f(rtt['p99'], 1)} "
            f"| {_f(rtt['max'], 0)} | {_added(e, 'added_p50_ms')} "
            f"| {_added(e, 'added_p99_ms')} | {_proxy_total(e)} "
            f"| {_per_proxy(e, 'peak_rss_mb', 1)} |"
        )
    return rows


def _connect_rows(entries: list[dict]) -> list[str]:
    rows = [
        "| path | conns/s | × direct | p50 µs | p99 µs | added p50 ms | added p99 ms "
        "| proxy CPU s/1k conns (total) | peak RSS MB per proxy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        fig, vs = e["figures"], e.get("vs_direct", {})
        t = fig["connect_rtt_us"]
        rows.append(
            f"| {e['path']} | {_f(fig['connections_per_s'], 0)} | {_f(vs.get('rate_ratio'))} "
            f"| {_f(t['p50'], 1)} | {_f(t['p99'], 1)} | {_added(e, 'added_p50_ms')} "
            f"| {_added(e, 'added_p99_ms')} | {_proxy_total(e)} "
            f"| {_per_proxy(e, 'peak_rss_mb', 1)} |"
        )
    return rows


TABLES = {"bulk": _bulk_rows, "rr": _rr_rows, "connect": _connect_rows}


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


HEADLINE_UNITS = {"bulk": ("Gbit/s", 2), "rr": ("msgs/s", 0), "connect": ("conns/s", 0)}


def _spread(scenario: dict, entries: list[dict]) -> str:
    unit, digits = HEADLINE_UNITS[scenario["kind"]]
    parts = []
    for e in entries:
        repeats = e.get("repeats")
        if repeats:
            values = " · ".join(_f(v, digits) for v in repeats["headline_sorted"])
            failed = f" ({repeats['failed']} failed)" if repeats["failed"] else ""
            parts.append(f"{e['path']} {values}{failed}")
    return f"Every run, {unit}, sorted: " + "; ".join(parts) + "." if parts else ""


def targets(results: dict) -> list[dict]:
    found = []
    for scenario in results["scenarios"]:
        for e in scenario.get("paths", []):
            if e["path"] == "mtls-pair" and e.get("ok") and scenario["kind"] == "bulk":
                ratio = e.get("vs_direct", {}).get("throughput_ratio")
                if ratio is not None:
                    found.append({
                        "target": f"{scenario['name']}: mtls-pair throughput "
                                  f"≥ {MTLS_BULK_RATIO_TARGET} × direct (issue 4)",
                        "measured": f"{ratio:.2f} × direct",
                        "met": ratio >= MTLS_BULK_RATIO_TARGET,
                    })
            if e["path"] != "pair" or not e.get("ok"):
                continue
            vs = e.get("vs_direct", {})
            if scenario["kind"] == "bulk" and vs.get("throughput_ratio") is not None:
                found.append({
                    "target": f"{scenario['name']}: pair throughput ≥ {BULK_RATIO_TARGET} × direct",
                    "measured": f"{vs['throughput_ratio']:.2f} × direct",
                    "met": vs["throughput_ratio"] >= BULK_RATIO_TARGET,
                })
            if scenario["kind"] == "rr" and vs.get("added_p99_ms") is not None:
                found.append({
                    "target": f"{scenario['name']}: added round-trip p99 "
                              f"≤ {ADDED_P99_TARGET_MS} ms",
                    "measured": f"{vs['added_p99_ms']:.3f} ms",
                    "met": vs["added_p99_ms"] <= ADDED_P99_TARGET_MS,
                })
    return found


def mtls_markdown(results: dict) -> list[str]:
    """The mTLS pair against the plaintext pair and direct, and its handshake rate."""
    rows = []
    for scenario in results["scenarios"]:
        by_path = {e["path"]: e for e in scenario.get("paths", []) if e.get("ok")}
        mtls = by_path.get("mtls-pair")
        if mtls is None:
            continue
        unit, digits = HEADLINE_UNITS[scenario["kind"]]
        key = {"bulk": "gbit_per_s", "rr": "messages_per_s", "connect": "connections_per_s"}[
            scenario["kind"]
        ]
        value = mtls["figures"][key]
        cells = []
        for other in ("direct", "pair"):
            ref = by_path.get(other)
            ratio = value / ref["figures"][key] if ref and ref["figures"][key] else None
            cells.append(f"{ratio:.2f}" if ratio is not None else "–")
        cpu = mtls.get("proxy_cpu_s_per_unit")
        cpu_text = f"{cpu:.3f} CPU s/{mtls['work']['unit']}" if cpu is not None else "–"
        rows.append(
            f"| {scenario['name']} | {_f(value, digits)} {unit} | {cells[0]} | {cells[1]} "
            f"| {cpu_text} |"
        )
    if not rows:
        return []
    lines = [
        "",
        "## mTLS pair (issue 4)",
        "",
        "| scenario | mtls-pair | × direct | × plaintext pair | proxy CPU (A + B) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "Every connection through the mTLS pair is one TLS 1.3 handshake at each sidecar (A as "
        "client, B as server): the connection rates above are the handshakes per second each "
        "sidecar made, and their CPU per 1k connections is the cost of 1,000 handshakes on both.",
    ]
    return lines


def markdown(results: dict) -> str:
    m, v, s = results["machine"], results["versions"], results["settings"]
    lines = [
        f"# pysidecar bench — {results['started']}",
        "",
        f"- Command: `{results['command']}`",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}",
        f"- Versions: Python {v['python']}, uvloop {v['uvloop'] or 'not installed'}, "
        f"pysidecar {v['pysidecar']} ({v['pysidecar_commit'] or 'no git'}), "
        f"{v['iperf3'] or 'iperf3 not installed'}",
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
        lines += ["", "## Targets (issues 3, 4)", "", "| target | measured | |", "|---|---:|---|"]
        for t in found:
            verdict = "met" if t["met"] else "NOT met"
            lines.append(f"| {t['target']} | {t['measured']} | {verdict} |")
    lines += mtls_markdown(results)
    for scenario in results["scenarios"]:
        lines += ["", f"## {scenario['name']} — {scenario['title']}", "", scenario["measures"], ""]
        if scenario.get("skipped"):
            lines.append(f"Skipped: {scenario['skipped']}.")
            continue
        ok = [e for e in scenario["paths"] if e.get("ok")]
        if ok:
            lines += TABLES[scenario["kind"]](ok)
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
        "Ratios compare each path with `direct` in the same run. CPU s/GB and CPU s/1k are the "
        "CPU seconds (user + system) the proxy processes used during the measurement divided by "
        "what they carried; peak RSS is VmHWM. A = the client's sidecar (outbound), "
        "B = the server's sidecar (inbound).",
    ]
    return "\n".join(lines) + "\n"
