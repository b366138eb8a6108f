"""Multi-core scaling of a pysidecar pair: `--workers 1, 2, 4` on each sidecar, cores of their own.

    python3 -m bench.scaling                      # workers 1,2,4; http1, tcp-connect, tcp-bulk
    python3 -m bench.scaling --workers 1,4 --duration 5 --scenario http1 --out DIR

For each worker count N one pair is started (client → sidecar A outbound → sidecar B inbound →
server), A pinned to N cores, B to N other cores (sched_setaffinity on the supervisor; its
workers inherit the set), the servers and the load generators to cores of their own, so that
only the sidecars' cores change between rows. Each scenario reports its rate, its ratio to N=1
(the scaling factor) and the sidecars' CPU seconds (every worker's utime + stime) per unit:

- `http1`: `h2load --h1 -c 64 -t 4` (`--connections`) for the duration, HTTP/1.1 keep-alive;
  the sidecars carry it as HTTP/2 between them (kuma.io/protocol: http). Server: a small
  multi-process uvloop responder. `--connections 32,64,256` measures every row at each load and
  adds each worker count's peak over them: what N workers can carry, whatever load suits them
  best (a worker batches more requests per turn of its loop the more connections it holds).
  Each sidecar's CPU and read/write system calls per request are read over h2load's counted
  seconds (after its warm-up), per worker too (`process_cpu_s`).
- `tcp-connect`: processes that each connect, send 1 byte, read the echo and close, in a loop
  (kuma.io/protocol: tcp: the splice relay). Server: a multi-process uvloop echo.
- `tcp-bulk`: `iperf3 -P 8` (eight streams, so that every worker gets some).

A `direct` row (client → server, no sidecar) is measured once per scenario and load for
reference. Needs ≥ 2 × max(N) + 4 cores to pin as described (else runs unpinned and says so),
`h2load` and `iperf3` on PATH (a scenario whose tool is missing is skipped with a note).
Every process is stopped at the end of its row, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.procs import free_port

HOST = "127.0.0.1"
SCENARIOS = ("http1", "tcp-connect", "tcp-bulk")
WARM_UP = 1  # seconds of h2load's warm-up, not counted
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


# -- servers and clients run as processes (python3 -m bench.scaling --serve ...) ---------------


def _serve(kind: str, port: int) -> None:
    """One server process (several share the port with SO_REUSEPORT)."""
    import asyncio

    import uvloop

    class Http(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t, self.buf = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            n = self.buf.count(b"\r\n\r\n")  # GETs without bodies
            if n:
                self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4 :]
                self.t.write(RESPONSE * n)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.t.write(data)

        def eof_received(self) -> bool:
            return False

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            Http if kind == "http" else Echo, HOST, port, reuse_port=True, backlog=4096
        )
        await server.serve_forever()

    uvloop.run(main())


def _connect_loop(port: int, seconds: float, out: Any) -> None:
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.create_connection((HOST, port)) as c:
            c.sendall(b"x")
            if c.recv(1) != b"x":
                raise SystemExit("bad echo")
        done += 1
    out.put(done)


# -- process helpers ---------------------------------------------------------------------------


def _pin(cpus: list[int] | None) -> Any:
    """A preexec_fn that pins the child (and what it starts) to `cpus`."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


class Procs:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, argv: list[str], cpus: list[int] | None = None, **kw: Any):
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_pin(cpus),  # noqa: PLW1509 - single-threaded parent
            **kw,
        )
        proc.log_path = self.logs / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return pids


@dataclasses.dataclass
class Usage:
    """One sidecar's processes so far: CPU seconds (utime + stime), of them in user mode, read
    and write system calls (syscr + syscw in /proc/PID/io), and each process's CPU seconds (the
    supervisor first, then its workers: how evenly the kernel spread the connections)."""

    cpu: float = 0.0
    user: float = 0.0
    calls: int = 0
    each: list[float] = dataclasses.field(default_factory=list)


class Meter:
    """Each sidecar's CPU seconds and read and write system calls from `mark()` to `read()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.trees = {role: _tree(pid) for role, pid in pids.items()}
        self.mark()

    def mark(self) -> None:
        self.start = _usage(self.trees)

    def read(self, row: dict) -> None:
        end, start = _usage(self.trees), self.start
        row["cpu_s"] = {r: end[r].cpu - start[r].cpu for r in end}
        row["user_s"] = {r: end[r].user - start[r].user for r in end}
        row["syscalls"] = {r: end[r].calls - start[r].calls for r in end}
        row["proxy_cpu_s"] = sum(row["cpu_s"].values())
        row["process_cpu_s"] = {
            r: [round(b - a, 2) for a, b in zip(start[r].each, end[r].each, strict=False)]
            for r in end
        }


def _usage(trees: dict[str, list[int]]) -> dict[str, Usage]:
    usage = {}
    tick = os.sysconf("SC_CLK_TCK")
    for role, pids in trees.items():
        usage[role] = total = Usage()
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user, system = int(fields[11]) / tick, int(fields[12]) / tick
                with open(f"/proc/{pid}/io") as f:
                    io = dict(line.split(": ") for line in f.read().splitlines())
                total.cpu += user + system
                total.user += user
                total.calls += int(io["syscr"]) + int(io["syscw"])
                total.each.append(user + system)
    return usage


def _wait_log(proc: Any, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args}: no {text!r}:\n{proc.log_path.read_text()[-3000:]}")


# -- the pair ----------------------------------------------------------------------------------

BACKEND = """\
type: Dataplane
mesh: scaling
name: backend
networking:
  address: 127.0.0.1
  admin: {{port: {admin}}}
  inbound:
    - {{port: {http_in}, servicePort: {http_app}, tags: {{kuma.io/service: web, kuma.io/protocol: http}}}}
    - {{port: {echo_in}, servicePort: {echo_app}, tags: {{kuma.io/service: echo, kuma.io/protocol: tcp}}}}
    - {{port: {bulk_in}, servicePort: {bulk_app}, tags: {{kuma.io/service: bulk, kuma.io/protocol: tcp}}}}
"""  # noqa: E501
CLIENT = """\
type: Dataplane
mesh: scaling
name: client
networking:
  address: 127.0.0.1
  admin: {{port: {admin}}}
  inbound:
    - {{port: {inbound}, servicePort: {service}, tags: {{kuma.io/service: client, kuma.io/protocol: tcp}}}}
  outbound:
    - {{port: {http_out}, tags: {{kuma.io/service: web}}}}
    - {{port: {echo_out}, tags: {{kuma.io/service: echo}}}}
    - {{port: {bulk_out}, tags: {{kuma.io/service: bulk}}}}
"""  # noqa: E501


@contextlib.contextmanager
def pair(
    procs: Procs, work: Path, apps: dict[str, int], workers: int, cpus: dict[str, Any], loop: str
) -> Iterator[tuple[dict[str, int], list[Any]]]:
    mesh = work / f"mesh-w{workers}"
    mesh.mkdir()
    ports = {k: free_port() for k in ("http_in", "echo_in", "bulk_in", "http_out", "echo_out",
                                      "bulk_out")}  # fmt: skip
    (mesh / "backend.yaml").write_text(BACKEND.format(
        admin=free_port(), http_app=apps["http"], echo_app=apps["echo"], bulk_app=apps["bulk"],
        **ports))  # fmt: skip
    (mesh / "client.yaml").write_text(CLIENT.format(
        admin=free_port(), inbound=free_port(), service=free_port(), **ports))  # fmt: skip
    sidecars = []
    for name, role in (("backend", "B"), ("client", "A")):
        argv = [sys.executable, "-m", "sidecar", "--log-level", "info", "--dataplane",
                str(mesh / f"{name}.yaml"), "--workers", str(workers), "--loop", loop,
                "--drain-timeout", "1"]  # fmt: skip
        sidecars.append(procs.spawn(f"w{workers}-{name}", argv, cpus[role], cwd=os.getcwd()))
    for proc in sidecars:
        _wait_log(proc, "event=ready", 60)
    yield ports, sidecars


# -- measurements ------------------------------------------------------------------------------


def measure_http(
    port: int,
    seconds: float,
    cpus: list[int] | None,
    logs: Path,
    warmed: Any,
    connections: int,
) -> dict:
    """h2load for `seconds` after a 1 s warm-up; `warmed()` is called as the warm-up ends, so
    that the sidecars' CPU and system calls are read over the counted requests alone."""
    argv = ["h2load", "--h1", "-c", str(connections), "-t", "4", "-D", str(int(seconds)),
            "--warm-up-time", str(WARM_UP), f"http://{HOST}:{port}/"]  # fmt: skip
    load = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=_pin(cpus)
    )
    if warmed is not None:
        time.sleep(WARM_UP)  # h2load's own warm-up: it counts nothing before it ends
        warmed()
    out = load.communicate(timeout=seconds + 60)[0]
    (logs / f"h2load-{port}.txt").write_text(out)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"requests: .* (\d+) succeeded, (\d+) failed", out)
    if rate is None or ok is None:
        raise RuntimeError(f"h2load output not understood:\n{out[-2000:]}")
    return {"rate": float(rate.group(1)), "unit": "req/s", "done": int(ok.group(1)),
            "failed": int(ok.group(2))}  # fmt: skip


def measure_connect(port: int, seconds: float, cpus: list[int] | None, clients: int) -> dict:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    workers = [ctx.Process(target=_connect_loop, args=(port, seconds, out)) for _ in range(clients)]
    for i, w in enumerate(workers):
        w.start()
        if cpus:
            os.sched_setaffinity(w.pid, {cpus[i % len(cpus)]})
    done = sum(out.get(timeout=seconds + 60) for _ in workers)
    for w in workers:
        w.join()
    return {"rate": done / seconds, "unit": "conns/s", "done": done}


def measure_bulk(port: int, seconds: float, cpus: list[int] | None, logs: Path) -> dict:
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-P", "8", "-t", str(int(seconds)), "-J"]
    run = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=_pin(cpus)
    )
    (logs / f"iperf3-{port}.json").write_text(run.stdout)
    doc = json.loads(run.stdout)
    if "error" in doc:
        raise RuntimeError(f"iperf3: {doc['error']}")
    bits = doc["end"]["sum_received"]["bits_per_second"]
    return {"rate": bits / 1e9, "unit": "Gbit/s", "done": doc["end"]["sum_received"]["bytes"]}


def run(args: argparse.Namespace) -> int:
    counts = [int(x) for x in args.workers.split(",")]
    loads = [int(x) for x in args.connections.split(",")]
    scenarios = args.scenario or list(SCENARIOS)
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="scaling-"))
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scaling-work-"))
    cores = sorted(os.sched_getaffinity(0))
    top = max(counts)
    pinned = not args.no_pin and len(cores) >= 2 * top + 4
    if pinned:
        rest = cores[2 * top :]
        half = len(rest) // 2
        cpus: dict[str, Any] = {"apps": rest[:half], "load": rest[half:]}
    else:
        cpus = {"apps": None, "load": None}
    missing = {s: t for s, t in (("http1", "h2load"), ("tcp-bulk", "iperf3"))
               if s in scenarios and shutil.which(t) is None}  # fmt: skip
    for scenario, tool in missing.items():
        print(f"scaling: {scenario} skipped: {tool} not found", file=sys.stderr)
    scenarios = [s for s in scenarios if s not in missing]
    results: dict[str, Any] = {
        "machine": {"cores": len(cores), "pinned": pinned, "cpu": _cpu_model(),
                    "siblings": _siblings(cores),
                    "python": sys.version.split()[0], "kernel": os.uname().release},
        "command": " ".join(sys.argv), "duration": args.duration, "loop": args.loop,
        "cpus": {k: v for k, v in cpus.items()}, "rows": [],
    }  # fmt: skip
    procs = Procs(logs)
    apps = {"http": free_port(), "echo": free_port(), "bulk": free_port()}
    try:
        servers = max(2, len(cpus["apps"] or [0, 0]))
        for i in range(servers):
            for kind in ("http", "echo"):
                procs.spawn(f"app-{kind}-{i}", [sys.executable, "-m", "bench.scaling", "--serve",
                            kind, "--port", str(apps[kind])], cpus["apps"])  # fmt: skip
        if "tcp-bulk" in scenarios:
            procs.spawn("iperf3-server", ["iperf3", "-s", "-p", str(apps["bulk"])], cpus["apps"])
        time.sleep(1.5)
        direct = {"http1": apps["http"], "tcp-connect": apps["echo"], "tcp-bulk": apps["bulk"]}
        for scenario, connections in _loads(scenarios, loads):
            row = _measure(scenario, direct[scenario], args, cpus["load"], logs, connections)
            row.update(path="direct", workers=0)
            results["rows"].append(row)
            print(_line(row), flush=True)
        app_procs = list(procs.procs)
        for n in counts:
            side = {"A": cores[:n], "B": cores[top : top + n]} if pinned else {"A": None, "B": None}
            with pair(procs, work, apps, n, side, args.loop) as (ports, sidecars):
                outs = {"http1": ports["http_out"], "tcp-connect": ports["echo_out"],
                        "tcp-bulk": ports["bulk_out"]}  # fmt: skip
                for scenario, connections in _loads(scenarios, loads):
                    meter = Meter({"B": sidecars[0].pid, "A": sidecars[1].pid})
                    row = _measure(scenario, outs[scenario], args, cpus["load"], logs,
                                   connections, meter.mark)  # fmt: skip
                    meter.read(row)
                    row.update(path="pair", workers=n, cpus_a=side["A"], cpus_b=side["B"])
                    results["rows"].append(row)
                    print(_line(row), flush=True)
            for proc in sidecars:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            procs.procs = [p for p in procs.procs if p not in sidecars]
        del app_procs
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    results["peaks"] = _scaling(results["rows"])
    (out_dir / "scaling.json").write_text(json.dumps(results, indent=2))
    report = _markdown(results)
    (out_dir / "scaling.md").write_text(report)
    print(report)
    return 0


def _loads(scenarios: list[str], loads: list[int]) -> list[tuple[str, int | None]]:
    """Each scenario with each of its loads: http1 at every `--connections`, the others once."""
    return [(s, c) for s in scenarios for c in (loads if s == "http1" else [None])]


def _measure(
    scenario: str,
    port: int,
    args: argparse.Namespace,
    cpus: Any,
    logs: Path,
    connections: int | None,
    warmed: Any = None,
) -> dict:
    """One scenario's row; `warmed()` is called where the counted part begins (h2load's warm-up
    ends), else the whole run is counted."""
    if scenario == "http1":
        assert connections is not None  # `_loads` gives http1 each of its loads
        row = measure_http(port, args.duration, cpus, logs, warmed, connections)
    elif scenario == "tcp-connect":
        row = measure_connect(port, args.duration, cpus, args.connect_clients)
    else:
        row = measure_bulk(port, args.duration, cpus, logs)
    row["scenario"], row["connections"] = scenario, connections
    return row


def _scaling(rows: list[dict]) -> list[dict]:
    """Each pair row's ratio to one worker at the same load, and its CPU per unit; returns each
    scenario's peaks: per worker count the best rate over the loads, and its ratio to one
    worker's best."""
    base = {(r["scenario"], r.get("connections")): r["rate"]
            for r in rows if r["path"] == "pair" and r["workers"] == 1}  # fmt: skip
    for r in rows:
        load = (r["scenario"], r.get("connections"))
        if r["path"] == "pair" and base.get(load):
            r["scaling"] = r["rate"] / base[load]
        if r.get("proxy_cpu_s") is not None and r.get("done"):
            unit = 1e9 if r["unit"] == "Gbit/s" else 1000  # CPU s per GB or per 1,000
            r["cpu_per_unit"] = r["proxy_cpu_s"] / (r["done"] / unit)
    best: dict[tuple[str, int], dict] = {}
    for r in rows:
        key = (r["scenario"], r["workers"])
        if r["path"] == "pair" and (key not in best or r["rate"] > best[key]["rate"]):
            best[key] = r
    peaks = []
    for (scenario, workers), r in sorted(best.items()):
        one = best.get((scenario, 1))
        ratio = r["rate"] / one["rate"] if one and one["rate"] else None
        peaks.append({"scenario": scenario, "workers": workers, "rate": r["rate"],
                      "unit": r["unit"], "connections": r.get("connections"),
                      "scaling": ratio})  # fmt: skip
    return peaks


def _line(row: dict) -> str:
    who = "direct" if row["path"] == "direct" else f"pair --workers {row['workers']}"
    load = f" -c {row['connections']}" if row.get("connections") else ""
    return f"{row['scenario'] + load:20} {who:20} {row['rate']:>12,.1f} {row['unit']}"


def _markdown(results: dict) -> str:
    m = results["machine"]
    if m["pinned"]:
        cpus = results["cpus"]
        pinning = (
            f"pinned: sidecar A on cores [0, N), B on [{max(r['workers'] for r in results['rows'])}"
            f", +N), servers on {cpus['apps']}, load generators on {cpus['load']}"
        )
    else:
        pinning = "not pinned"
    lines = [
        f"Machine: {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}; "
        f"{pinning}; {results['duration']:g} s per row; loop {results['loop']}; hardware "
        f"threads per core: {_threads(m.get('siblings', {}))}.",
        "",
        "| scenario | path | rate | × workers=1 at this load | sidecar CPU s (A+B) "
        "| CPU s per unit | CPU ms per unit A · B | read+write calls per unit A · B |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        who = "direct" if r["path"] == "direct" else f"pair, --workers {r['workers']}"
        scenario = r["scenario"] + (f" -c {r['connections']}" if r.get("connections") else "")
        unit = "GB" if r["unit"] == "Gbit/s" else ("1k conns" if "conn" in r["unit"] else "1k req")
        scaling = f"{r['scaling']:.2f}" if "scaling" in r else "–"
        cpu = f"{r['proxy_cpu_s']:.1f}" if r.get("proxy_cpu_s") is not None else "–"
        per = f"{r['cpu_per_unit']:.3f} s/{unit}" if "cpu_per_unit" in r else "–"
        rate = f"{r['rate']:,.1f} {r['unit']}"
        sides = calls = "–"
        if r.get("cpu_s") and r.get("done"):
            n = r["done"] / (1e9 if r["unit"] == "Gbit/s" else 1)  # per GB, or per request
            sides = " · ".join(f"{r['cpu_s'][s] * 1000 / n:.3f}" for s in "AB")
            if r.get("user_s"):
                user = " · ".join(f"{r['user_s'][s] * 1000 / n:.3f}" for s in "AB")
                sides += f" (user {user})"
            calls = " · ".join(f"{r['syscalls'][s] / n:.2f}" for s in "AB")
        lines.append(
            f"| {scenario} | {who} | {rate} | {scaling} | {cpu} | {per} | {sides} | {calls} |"
        )
    loads = {r.get("connections") for r in results["rows"]}
    if len(loads) > 1:
        lines += ["", "Each worker count's peak over the loads:", "",
                  "| scenario | --workers | peak rate | at | × one worker's peak |",
                  "|---|---:|---:|---|---:|"]  # fmt: skip
        for p in results.get("peaks", []):
            at = f"-c {p['connections']}" if p.get("connections") else "–"
            scaling = f"{p['scaling']:.2f}" if p.get("scaling") else "–"
            lines.append(f"| {p['scenario']} | {p['workers']} | {p['rate']:,.1f} {p['unit']} "
                         f"| {at} | {scaling} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _siblings(cores: list[int]) -> dict[int, str]:
    """Each core's hardware threads (the kernel's thread_siblings_list): two pinned sets that
    share physical cores share their execution units too."""
    siblings = {}
    for core in cores:
        with contextlib.suppress(OSError):
            path = f"/sys/devices/system/cpu/cpu{core}/topology/thread_siblings_list"
            siblings[core] = Path(path).read_text().strip()
    return siblings


def _threads(siblings: dict) -> str:
    sets = set(siblings.values())
    if not sets:
        return "?"
    shared = sorted(s for s in sets if "," in s or "-" in s)
    return "1" if not shared else f"2 ({', '.join(shared)})"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.scaling", description=__doc__)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connect-clients", type=int, default=8)
    parser.add_argument(
        "--connections",
        default="64",
        help="http1: h2load's connections (-c), comma-separated: every row at each",
    )
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--serve", choices=("http", "echo"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
