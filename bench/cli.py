"""`python3 -m bench`: every scenario over every path, one report.

For each scenario the server starts once; each path is then brought up in front of it, the
client runs for the duration, and the proxies' CPU time and peak memory are read before and after.
Whatever happens (a failure, Ctrl-C, SIGTERM), every process the run started is stopped before it
exits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import charts, profile, report
from bench.catalog import SCENARIOS
from bench.context import REPO_ROOT, Context, Pinning, child_env
from bench.paths import PATH_ALIASES, PATHS
from bench.procs import BenchError, Processes, machine_busy_s, memory_map, sample
from bench.scenarios import Scenario, Server

PROXY_LABELS = {"sidecar-a": "A", "sidecar-b": "B", "haproxy-a": "A", "haproxy-b": "B"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description="Measure what a pysidecar hop costs: each scenario, direct versus through "
                    "a sidecar pair (plaintext and mTLS) and a reference HAProxy pair, on "
                    "127.0.0.1.",
    )
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                        help=f"run this scenario (repeatable; default: all of "
                             f"{', '.join(SCENARIOS)})")
    parser.add_argument("--path", action="append", choices=[*PATHS, *PATH_ALIASES],
                        metavar="NAME",
                        help=f"measure this path (repeatable; default: all of {', '.join(PATHS)}; "
                             f"direct is always measured, ratios need it)")
    parser.add_argument("--duration", type=float, default=10.0, metavar="SECONDS",
                        help="length of each measurement (default 10)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="measure each path N times, the paths taking turns, and report the "
                             "median run (default 1)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where report.md, results.json and the logs go "
                             "(default bench/out/<timestamp>)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="the sidecars' event loop (default: uvloop when installed)")
    parser.add_argument("--profile", choices=profile.TOOLS,
                        help="attach this profiler to every proxy while it is measured and "
                             "summarise where its CPU went (perturbs the figures)")
    parser.add_argument("--pin", action="store_true",
                        help="pin each proxy to a core of its own (and client and server too "
                             "where there are enough cores)")
    return parser


class Interrupted(BaseException):
    """SIGTERM or SIGINT: unwind through every `finally`, then report what was measured."""


def _on_signal(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.duration <= 0:
        raise SystemExit("python3 -m bench: --duration must be positive")
    if args.repeat < 1:
        raise SystemExit("python3 -m bench: --repeat must be at least 1")
    if args.profile and (reason := profile.unavailable(args.profile)):
        raise SystemExit(f"python3 -m bench: --profile {args.profile}: {reason}")
    scenarios = [SCENARIOS[n] for n in dict.fromkeys(args.scenario or SCENARIOS)]
    path_names = list(dict.fromkeys(
        ["direct", *(PATH_ALIASES.get(p, p) for p in (args.path or PATHS))]
    ))
    started = dt.datetime.now().astimezone()
    out = args.out or REPO_ROOT / "bench" / "out" / started.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="pysidecar-bench-"))
    procs = Processes(out / "logs", child_env())
    ctx = Context(procs, Pinning(args.pin), args.loop, out, work, profile=args.profile)
    results: dict = {
        "schema": 2,
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join(["python3", "-m", "bench", *argv]),
        "machine": report.machine(),
        "versions": report.versions(args.loop, ctx.python),
        "settings": {
            "duration": args.duration,
            "repeat": args.repeat,
            "loop": args.loop,
            "pin": args.pin,
            "pinning": ctx.pinning.description,
            "profile": args.profile,
            "paths": {n: PATHS[n].description for n in path_names},
        },
        "notes": [],
        "scenarios": [],
    }
    cores = results["machine"]["usable_cores"]
    background = background_load()
    results["machine"]["busy_before_run_cores"] = background
    if background > 0.1:
        results["notes"].append(
            f"the machine was already busy before the run: {background:.2f} cores in use by other "
            f"processes (measured over 1 s); figures that share cores with them read low"
        )
    if args.profile:
        results["notes"].append(
            f"{args.profile} was attached to the proxies: their figures are perturbed"
        )
    for name in path_names:
        reason = PATHS[name].unavailable()
        if reason:
            results["notes"].append(f"path `{name}` skipped: {reason}")
    if cores < 4:
        results["notes"].append(
            f"this machine has {cores} cores: the pair path runs four busy processes (client, "
            f"sidecar A, sidecar B, server) on them, so the proxies share cores with the load "
            f"generator and the server; figures from a machine with ≥ 4 cores will be higher"
        )

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        for scenario in scenarios:
            entry = run_scenario(ctx, scenario, path_names, args.duration, args.repeat)
            results["scenarios"].append(entry)
            failed |= any(
                (not p.get("ok") and not p.get("skipped")) or p.get("repeats", {}).get("failed")
                for p in entry["paths"]
            )
    except Interrupted as exc:
        print(f"bench: interrupted by {exc}; stopping every process", file=sys.stderr)
        results["notes"].append(f"interrupted by {exc}")
        failed = True
    finally:
        procs.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(work, ignore_errors=True)

    results["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    results["targets"] = report.targets(results)
    results["processes"] = procs.describe()
    results["charts"] = charts.draw(results, out)
    text = report.markdown(results)
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    print(f"bench: wrote {out / 'report.md'} and {out / 'results.json'}", file=sys.stderr)
    return 1 if failed else 0


def background_load(seconds: float = 1.0) -> float:
    """How many cores other processes keep busy now, before this run starts anything."""
    before = machine_busy_s()[0]
    time.sleep(seconds)
    return (machine_busy_s()[0] - before) / seconds


def run_scenario(ctx: Context, scenario: Scenario, path_names: list[str], duration: float,
                 repeat: int = 1) -> dict:
    entry: dict = {
        "name": scenario.name,
        "kind": scenario.kind,
        "title": scenario.title,
        "measures": scenario.measures,
        "protocol": scenario.protocol,
        "rate_key": scenario.rate_key,
        "rate_unit": scenario.rate_unit,
        "rate_digits": scenario.rate_digits,
        "latency_key": scenario.latency_key,
        "skipped": scenario.unavailable(),
        "paths": [],
    }
    if entry["skipped"]:
        print(f"bench: {scenario.name} skipped: {entry['skipped']}", file=sys.stderr)
        return entry
    runs: dict[str, list[dict]] = {name: [] for name in path_names}
    try:
        with scenario.server(ctx, scenario.name) as server:
            # Rounds interleave the paths, so that a change in the machine's other load during
            # the run falls on every path alike.
            for round_ in range(1, repeat + 1):
                for name in path_names:
                    label = f"{scenario.name}-{name}" + (f"-r{round_}" if repeat > 1 else "")
                    runs[name].append(measure(ctx, scenario, name, server, duration, label))
    except BenchError as exc:  # the server itself failed
        entry["paths"].append({"path": "server", "ok": False, "error": str(exc)})
        print(f"bench: {scenario.name}: {exc}", file=sys.stderr)
    for measured in runs.values():
        if measured:
            entry["paths"].append(_median_run(scenario, measured))
    compare_paths(scenario, entry["paths"])
    return entry


def compare_paths(scenario: Scenario, paths: list[dict]) -> None:
    """Each path against direct and against the HAProxy pair: figures and cost per unit."""
    ok = {p["path"]: p for p in paths if p.get("ok")}
    for reference in ("direct", "haproxy", "haproxy-plain"):
        ref = ok.get(reference)
        if ref is None:
            continue
        for p in ok.values():
            if p is ref and reference == "direct":
                continue
            vs = scenario.compare(p["figures"], ref["figures"])
            mine, theirs = p.get("per_proxy_cpu_s"), ref.get("per_proxy_cpu_s")
            if mine and theirs:
                vs["efficiency_ratio"] = mine / theirs
            p[f"vs_{reference.replace('-', '_')}"] = vs


def _median_run(scenario: Scenario, measured: list[dict]) -> dict:
    """The run whose headline figure is the median (the lower one of two), with the others'."""
    ok = [r for r in measured if r.get("ok")]
    if not ok:
        return measured[0]
    ok.sort(key=lambda r: scenario.headline(r["figures"]))
    chosen = ok[(len(ok) - 1) // 2]
    if len(measured) > 1:
        chosen["repeats"] = {
            "runs": len(measured),
            "failed": len(measured) - len(ok),
            "headline_sorted": [scenario.headline(r["figures"]) for r in ok],
            "errors": [r.get("error") for r in measured if not r.get("ok")],
        }
    return chosen


def measure(ctx: Context, scenario: Scenario, name: str, server: Server,
            duration: float, label: str) -> dict:
    path = PATHS[name]
    result: dict = {"path": name, "ok": False}
    reason = path.unavailable()
    if reason:
        result["skipped"] = reason
        return result
    try:
        with path.open(ctx, server.port, label, scenario.protocol,
                       scenario.connections) as route:
            scenario.warmup(ctx, route.port, label)
            watched = [server.proc, *route.proxies]
            before = {p.pid: sample(p.pid) for p in watched}
            profiling = None
            if ctx.profile and route.proxies:
                profiling = profile.Profiling(ctx, ctx.profile, route.proxies, duration, label)
            busy0, t0 = machine_busy_s(), time.monotonic()
            try:
                figures, client = scenario.client(ctx, route.port, duration, label)
            finally:
                busy1, elapsed = machine_busy_s(), time.monotonic() - t0
                if profiling is not None:
                    result["profile"] = profiling.finish()
            after = {p.pid: sample(p.pid) for p in watched}
            # where each proxy's memory is, at the end of the measurement (results.json only)
            memory = {p.pid: memory_map(p.pid) for p in route.proxies}
    except BenchError as exc:
        result["error"] = str(exc)
        print(f"bench: {label} FAILED: {exc}", file=sys.stderr)
        return result
    except Exception as exc:  # a bug of ours: report it, keep the other measurements
        result["error"] = "".join(traceback.format_exception(exc))
        print(f"bench: {label} FAILED:\n{result['error']}", file=sys.stderr)
        return result
    work = scenario.work(figures)
    processes = []
    client_usage = client.usage()
    processes.append({
        "role": "client", "pid": client.pid, "proxy": False,
        "cpu_s": client_usage.cpu_s if client_usage else None,
        "peak_rss_mb": client_usage.peak_rss_kb / 1024 if client_usage else None,
    })
    proxy_total = 0.0
    for proc in watched:
        b, a = before[proc.pid], after[proc.pid]
        is_proxy = proc is not server.proc
        item: dict = {
            "role": proc.role, "pid": proc.pid, "proxy": is_proxy,
            "label": PROXY_LABELS.get(proc.role, proc.role),
            "cpus": sorted(proc.cpus) if proc.cpus else None,
            "cpu_s": a.cpu_s - b.cpu_s if a and b else None,
            "peak_rss_mb": a.peak_rss_kb / 1024 if a else None,
        }
        if item["cpu_s"] is not None and elapsed:
            item["cores"] = item["cpu_s"] / elapsed
        if is_proxy and memory.get(proc.pid):
            item["memory_kb"] = memory[proc.pid]
        if is_proxy and item["cpu_s"] is not None and work.amount:
            item["cpu_s_per_unit"] = item["cpu_s"] / work.amount
            proxy_total += item["cpu_s"]
        processes.append(item)
    ours = sum(p["cpu_s"] or 0 for p in processes)
    busy, irq = busy1[0] - busy0[0], busy1[1] - busy0[1]
    result.update({
        "ok": True,
        "machine_cpu": {
            "busy_s": busy,
            "cores": len(os.sched_getaffinity(0)),
            # Interrupts and softirqs (TCP receive on loopback among them): charged to no process.
            "irq_softirq_s": irq,
            # Processes outside this run: other load on the machine while we measured.
            "outside_run_s": max(0.0, busy - irq - ours),
        },
        "figures": figures,
        "elapsed_s": elapsed,
        "work": {"amount": work.amount, "unit": work.unit, "scale": work.scale,
                 "each": work.each},
        "processes": processes,
        "proxy_cpu_s_per_unit": proxy_total / work.amount if route.proxies and work.amount
        else None,
        # Requests (messages, GB, ...) per CPU-second of all proxies together.
        "per_proxy_cpu_s": work.amount * work.scale / proxy_total
        if route.proxies and proxy_total > 0 else None,
    })
    print(f"bench: {label}: {scenario.describe(figures)}", file=sys.stderr)
    return result
