"""One-off measurements of HTTP/1.1 through a sidecar pair (session 4), not part of the harness.

Run from a checkout's root:

    python bench/results/2026-11-23-2core-session4/pair_http.py [--mtls] [--grpc]
        [--profile N [--profile-connections C] [--opcodes] | --callgrind N
         | --concurrency 1,4,16 --requests 5000]

The pair is the harness's (its Dataplane templates and PKI), with `bench.tools http-server
--body-size 64` (or `grpc-server` with `--grpc`) behind B. Two modes:

- `--concurrency C,...`: `h2load --h1 -c C -m 1 -n REQUESTS` per value; prints req/s, each
  sidecar's CPU ms per request and cores busy (from /proc/PID/stat), and h2load's request times.
  This is how the convoy was found: at -c 4 and 16 both sidecars were ~0.45 core busy.
- `--profile N` (HTTP/1.1: N requests; gRPC: N seconds of 16 calls in flight): both sidecars under
  cProfile (`../2026-11-23-tunnel/wrap.py`: enabled on SIGUSR1, dumped on SIGUSR2) after a
  warm-up; prints Python calls per request by package — exact counts.
- `--profile N --opcodes`: the same window, counting bytecodes per function instead
  (`../2026-11-23-2core-session9/opwrap.py`; `ops.sh` there prints the table) — exact.
- `--callgrind N`: both sidecars under callgrind, counting only while N requests run
  (`callgrind_control -i on/off`): user-space instructions per request — exact to ±0.3 %.
  With `--grpc`, N seconds of 16 unary calls in flight: instructions per call (session 12).
Work files go to /tmp/pair-http/ ($PAIR_HTTP_WORK when set: one per concurrent run).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, os.getcwd())
from bench.paths import DATAPLANE_CLIENT, DATAPLANE_SERVER, HOST, Pki  # noqa: E402
from bench.procs import free_port  # noqa: E402

PY = sys.executable
WRAP = str(Path(__file__).resolve().parent.parent / "2026-11-23-tunnel" / "wrap.py")
OPWRAP = str(Path(__file__).resolve().parent.parent / "2026-11-23-2core-session9" / "opwrap.py")
PACKAGES = ("/h2/", "/hyperframe/", "/hpack/", "/sidecar/http/h2", "/sidecar/http/h1",
            "/sidecar/", "asyncio", "logging", "enum")  # fmt: skip


def cpu_seconds(proc: subprocess.Popen) -> float:
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2load(port: int, connections: int, requests: int) -> str:
    argv = ["h2load", "--h1", "-t", "1", "-c", str(connections), "-m", "1", "-n", str(requests),
            f"http://{HOST}:{port}/"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, check=True, text=True).stdout
    assert f"{requests} succeeded" in out, out
    return out


def grpc_calls(port: int, seconds: float) -> int:
    argv = [PY, "-m", "bench.tools", "grpc-client", "--port", str(port), "--duration",
            str(seconds), "--concurrency", "16", "--warmup", "0"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, check=True, text=True).stdout
    return json.loads(out)["messages"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mtls", action="store_true")
    parser.add_argument("--grpc", action="store_true")
    parser.add_argument("--profile", type=float)
    parser.add_argument("--profile-connections", type=int, default=16, help="h2load -c to profile")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--hold", type=float, help="keep the pair up N seconds (for perf)")
    parser.add_argument(
        "--opcodes",
        action="store_true",
        help="with --profile: count bytecodes per function instead (opwrap.py)",
    )
    parser.add_argument(
        "--callgrind",
        type=int,
        metavar="N",
        help="N HTTP/1.1 requests (with --grpc: N seconds of calls) with both sidecars "
        "under callgrind: exact instructions per request (user space)",
    )
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.getcwd()
    work = Path(os.environ.get("PAIR_HTTP_WORK", "/tmp/pair-http"))
    mesh = work / "mesh"
    mesh.mkdir(parents=True, exist_ok=True)
    app, outbound = free_port(), free_port()
    files = {"a": mesh / "bench-client.yaml", "b": mesh / "bench-server.yaml"}
    files["a"].write_text(
        DATAPLANE_CLIENT.format(
            host=HOST,
            admin=free_port(),
            inbound=free_port(),
            service=free_port(),
            outbound=outbound,
        )
    )
    files["b"].write_text(DATAPLANE_SERVER.format(
        host=HOST, admin=free_port(), inbound=free_port(), service=app,
        protocol="grpc" if args.grpc else "http"))  # fmt: skip
    credentials: dict[str, list[str]] = {"a": [], "b": []}
    if args.mtls:
        pki = Pki(SimpleNamespace(work=work))
        for role, dataplane in files.items():
            cert, key = pki.issue(dataplane)
            credentials[role] = ["--ca", str(pki.ca), "--cert", str(cert), "--key", str(key)]
    server = ["grpc-server", "--port", str(app)] if args.grpc else [
        "http-server", "--port", str(app), "--body-size", "64"]  # fmt: skip
    procs = [subprocess.Popen([PY, "-m", "bench.tools", *server])]
    sidecars = {}
    for role in ("b", "a"):
        log = open(work / f"{role}.log", "w")  # noqa: SIM115 - the child's log
        runner = ["-m", "sidecar"]
        if args.profile:
            runner = [OPWRAP, str(work / f"{role}.ops")] if args.opcodes else [
                WRAP, str(work / f"{role}.prof")]  # fmt: skip
        grind = (
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={work / role}.callgrind",
            ]
            if args.callgrind
            else []
        )
        argv = [*grind, PY, *runner, "--dataplane", str(files[role]), "--mesh", str(mesh),
                "--loop", "uvloop", *credentials[role]]  # fmt: skip
        sidecars[role] = subprocess.Popen(argv, stdout=log, stderr=log)
        procs.append(sidecars[role])
    try:
        for role in ("b", "a"):
            deadline = time.monotonic() + (600 if args.callgrind else 30)
            while "event=ready" not in (work / f"{role}.log").read_text():
                assert time.monotonic() < deadline, f"sidecar {role} not ready"
                time.sleep(0.1)
        if args.grpc:
            grpc_calls(outbound, 1)
        else:
            h2load(outbound, 16, 500)  # warm-up
        if args.hold:
            pids = " ".join(f"{role}={proc.pid}" for role, proc in sidecars.items())
            print(f"outbound={outbound} {pids}", flush=True)
            time.sleep(args.hold)
            return
        if args.callgrind:
            report_instructions(
                work, sidecars, outbound, args.callgrind, args.profile_connections, args.grpc
            )
            return
        if args.profile:
            for proc in sidecars.values():
                proc.send_signal(signal.SIGUSR1)
            if args.grpc:
                requests = grpc_calls(outbound, args.profile)
            else:
                requests = int(args.profile)
                h2load(outbound, args.profile_connections, requests)
            for proc in sidecars.values():
                proc.send_signal(signal.SIGUSR2)
            time.sleep(1)  # the dumps are written by the sidecars' signal handlers
            if not args.opcodes:
                report_calls(work, requests)
            return
        for connections in (int(c) for c in args.concurrency.split(",")):
            before = {role: cpu_seconds(proc) for role, proc in sidecars.items()}
            start = time.monotonic()
            out = h2load(outbound, connections, args.requests)
            elapsed = time.monotonic() - start
            line = f"c={connections} req/s={args.requests / elapsed:.0f}"
            for role, proc in sidecars.items():
                used = cpu_seconds(proc) - before[role]
                per_request = used / args.requests * 1e3
                line += f" {role}: {per_request:.3f} ms/req {used / elapsed:.2f} core"
            times = next(x for x in out.splitlines() if "time for request" in x)
            print(line, "|", " ".join(times.split()))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def report_instructions(
    work: Path,
    sidecars: dict[str, subprocess.Popen],
    outbound: int,
    requests: int,
    connections: int,
    grpc: bool = False,
) -> None:
    """Instructions per request (callgrind's Ir, user space only): counted only while the
    requests run, after the warm-up. With one connection (`--profile-connections 1`) every
    request is served alone and the count repeats to ±0.3 %; with more, how many requests
    share a loop turn depends on the machine's load (±2 %)."""

    def control(*args: str) -> None:
        for proc in sidecars.values():
            subprocess.run(["callgrind_control", *args, str(proc.pid)], check=True,
                           capture_output=True)  # fmt: skip

    control("-i", "on")
    if grpc:
        requests = grpc_calls(outbound, requests)  # N seconds: the calls made
    else:
        h2load(outbound, connections, requests)
    control("-i", "off")
    control("-d")
    for role in ("a", "b"):
        dumps = sorted(work.glob(f"{role}.callgrind*"), key=lambda p: p.stat().st_mtime)
        total = 0
        for line in dumps[-1].read_text().splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
        print(role, f"instructions per request {total / requests:,.0f}", dumps[-1],
              f"({requests} {'calls' if grpc else 'requests'})")  # fmt: skip


def report_calls(work: Path, requests: int) -> None:
    for role in ("a", "b"):
        stats = pstats.Stats(str(work / f"{role}.prof")).stats  # type: ignore[attr-defined]
        total = 0
        by_package: collections.Counter[str] = collections.Counter()
        for (file, _, _), (_, calls, _, _, _) in stats.items():
            total += calls
            by_package[next((p.strip("/") for p in PACKAGES if p in file), "C functions")] += calls
        shares = {k: round(v / requests, 1) for k, v in by_package.most_common()}
        print(role, f"calls per request {total / requests:.1f}", shares)


if __name__ == "__main__":
    main()
