"""`--profile perf|py-spy`: where each proxy spends its CPU during a measurement.

A profiler is attached to every proxy process for the measurement window only (after the path is
up, until the client ends) and its raw data is kept under <out>/profiles/. A summary goes into the
results and the report:

- perf (system-wide view, kernel included): share of samples per binary (kernel, libc, CPython,
  uvloop) and the top symbols. Needs `perf` and permission to use it (root, or
  kernel.perf_event_paranoid ≤ 1).
- py-spy (Python view, with native frames): share of samples per innermost frame, and the
  sidecar functions that were on the stack (inclusive). py-spy's native mode stops the process
  for each sample, so the figures of a profiled run read low.

Figures measured with a profiler attached are perturbed; compare them only with each other.
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

from bench.context import Context
from bench.procs import Proc

TOOLS = ("perf", "py-spy")


def unavailable(tool: str) -> str | None:
    executable = "perf" if tool == "perf" else "py-spy"
    if shutil.which(executable) is None:
        return f"{executable} is not installed"
    if tool == "perf" and os.geteuid() != 0:
        try:
            level = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
        except (OSError, ValueError):
            level = 2
        if level > 1:
            return "perf needs root or kernel.perf_event_paranoid ≤ 1"
    return None


class Profiling:
    """Profilers attached to the proxies of one measurement."""

    def __init__(self, ctx: Context, tool: str, proxies: list[Proc], duration: float,
                 label: str) -> None:
        self.ctx = ctx
        self.tool = tool
        self.dir = ctx.out / "profiles"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.runs: list[tuple[Proc, Proc, Path]] = []
        seconds = max(1, math.ceil(duration))
        for proxy in proxies:
            if tool == "py-spy" and not proxy.role.startswith("sidecar"):
                continue  # py-spy reads Python processes only (perf covers HAProxy)
            if tool == "perf":
                data = self.dir / f"{label}-{proxy.role}.perf.data"
                argv = ["perf", "record", "-F", "499", "-g", "-p", str(proxy.pid), "-o",
                        str(data), "--", "sleep", str(seconds)]
            else:
                data = self.dir / f"{label}-{proxy.role}.pyspy.txt"
                argv = ["py-spy", "record", "--pid", str(proxy.pid), "--duration", str(seconds),
                        "--rate", "200", "--native", "--format", "raw", "-o", str(data)]
            profiler = ctx.procs.spawn(f"profiler-{proxy.role}", argv,
                                       log_name=f"{label}-{proxy.role}-{tool}")
            self.runs.append((proxy, profiler, data))

    def finish(self) -> dict[str, dict]:
        """Wait for the profilers (they stop by themselves) and summarise what they saw."""
        summaries = {}
        for proxy, profiler, data in self.runs:
            if profiler.reap(30) is None:
                self.ctx.procs.stop(profiler)
            try:
                summary = summarize_perf(data) if self.tool == "perf" else summarize_pyspy(data)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                summary = {"error": f"{type(exc).__name__}: {exc}"}
            summary["file"] = str(data.relative_to(self.ctx.out))
            summaries[proxy.role] = summary
        return summaries


def _perf_report(data: Path, sort: str) -> list[tuple[float, str]]:
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
         "-g", "none", "--percent-limit", "0.5"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or not line[0].isdigit() or "%" not in line:
            continue
        share, _, rest = line.partition("%")
        rows.append((float(share), " ".join(rest.split())))
    return rows


def summarize_perf(data: Path) -> dict:
    binaries = _perf_report(data, "dso")
    symbols = _perf_report(data, "dso,sym")
    return {
        "tool": "perf",
        "by_binary": [{"share": s, "binary": _short_binary(b)} for s, b in binaries],
        "top_symbols": [{"share": s, "symbol": _short_binary(sym)} for s, sym in symbols[:15]],
    }


def _short_binary(name: str) -> str:
    name = name.replace("[kernel.kallsyms]", "kernel")
    name = re.sub(r"\bloop\.cpython-\S+\.so", "uvloop", name)
    return re.sub(r"\blibpython3\.\d+\.so\S*", "libpython", name)


SYSCALL_LEAF = re.compile(r"^(write|writev|read|readv|recv|recvfrom|send|sendto|sendmsg|"
                          r"recvmsg|epoll_wait|epoll_pwait|getpid|getrandom|connect|accept4?|"
                          r"close|shutdown|setsockopt|getsockopt) \(libc")
PY_FRAME = re.compile(r"\(([^()]*\.py):\d+\)$")


def _package(frame: str) -> str | None:
    """`Connection.send (h11/_connection.py:512)` → `h11`; a stdlib module → its file name."""
    found = PY_FRAME.search(frame)
    if not found:
        return None
    path = found.group(1)
    if path.startswith("<frozen"):
        return path
    return path.split("/", 1)[0] if "/" in path else path


def summarize_pyspy(data: Path) -> dict:
    """Shares of samples: innermost frames; time inside system calls (py-spy samples wall time
    of a running thread, so this includes being descheduled inside a write that woke the peer);
    the rest by the package of the innermost Python frame (h2, h11, hpack, sidecar, asyncio...);
    and functions on the stack (inclusive), ours and the libraries'."""
    leaf: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    libraries: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = syscalls = 0
    for line in data.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        self_time[_function(frames[-1])] += n
        if SYSCALL_LEAF.match(frames[-1]):
            syscalls += n
            packages["(in system calls)"] += n
        else:
            python = [f for f in frames if PY_FRAME.search(f)]
            packages[_package(python[-1]) if python else "(native, no Python frame)"] += n
        # Inclusive by function (line numbers dropped), counted once per stack.
        functions = {_function(f) for f in frames if PY_FRAME.search(f)}
        for function in functions:
            if "sidecar/" in function:
                inclusive[function] += n
            elif not function.startswith(("<module>", "run (", "main (")) and "asyncio/" \
                    not in function and "uvloop" not in function:
                libraries[function] += n
    if not total:
        return {"tool": "py-spy", "samples": 0}

    def shares(counter: collections.Counter[str], key: str, n: int) -> list[dict]:
        return [{"share": 100 * v / total, key: k} for k, v in counter.most_common(n)]

    return {
        "tool": "py-spy",
        "samples": total,
        "syscall_share": 100 * syscalls / total,
        "by_package": shares(packages, "package", 12),
        "top_leaf": shares(leaf, "frame", 12),
        "top_self": shares(self_time, "frame", 25),
        "sidecar_inclusive": shares(inclusive, "frame", 20),
        "library_inclusive": shares(libraries, "frame", 15),
    }


def _function(frame: str) -> str:
    """`Side.data_received (sidecar/transport/relay.py:84)` → without the `:84`."""
    return re.sub(r":\d+\)$", ")", frame)


def markdown(results: dict) -> list[str]:
    """The report's section on profiles, if the run made any."""
    lines: list[str] = []
    for scenario in results["scenarios"]:
        for entry in scenario.get("paths", []):
            for role, summary in (entry.get("profile") or {}).items():
                if not lines:
                    lines = ["", "## Where the proxies' CPU went (profiler attached: the figures "
                             "of this run are perturbed)"]
                lines += ["", f"### {scenario['name']} / {entry['path']} / {role} "
                              f"({summary.get('tool', '?')}, `{summary.get('file', '')}`)", ""]
                if "error" in summary:
                    lines.append(f"Profile failed: {summary['error']}")
                elif summary.get("tool") == "perf":
                    binaries = ", ".join(
                        f"{b['binary']} {b['share']:.1f}%" for b in summary["by_binary"]
                    )
                    lines += [f"By binary: {binaries}.", "", "| share | symbol |", "|---:|---|"]
                    lines += [f"| {s['share']:.1f}% | `{s['symbol']}` |"
                              for s in summary["top_symbols"]]
                else:
                    packages = ", ".join(f"{p['package']} {p['share']:.1f}%"
                                         for p in summary.get("by_package", []))
                    lines += [f"{summary.get('samples', 0)} samples. By package of the innermost "
                              f"Python frame: {packages}.", ""]
                    lines += ["| share | innermost function (self time) |", "|---:|---|"]
                    lines += [f"| {s['share']:.1f}% | `{s['frame']}` |"
                              for s in summary.get("top_self", summary.get("top_leaf", []))]
                    lines += ["", "| share | sidecar frame on the stack |", "|---:|---|"]
                    lines += [f"| {s['share']:.1f}% | `{s['frame']}` |"
                              for s in summary.get("sidecar_inclusive", [])]
                    if summary.get("library_inclusive"):
                        lines += ["", "| share | library frame on the stack |", "|---:|---|"]
                        lines += [f"| {s['share']:.1f}% | `{s['frame']}` |"
                                  for s in summary["library_inclusive"]]
    return lines
