"""Where an idle connection's memory goes in a sidecar: RSS, glibc malloc and Python objects.

    python3 -m bench.memprobe [--mtls] [--http] [--connections 9000] [--steps 3] [--tracemalloc]
                              [--loop auto|uvloop|asyncio] [--env NAME=VALUE ...] [--json FILE]

Brings up a pair as the bench's `pair`/`pair-mtls` paths do (sidecar A's outbound → B's inbound
→ an echo server; the proxies' connection limits raised), each sidecar started through this
module's `hook` (a SIGUSR2 handler that writes a dump of the process's memory), then opens
connections in batches of 200 (one byte echoed on each, as the `idle-conns` scenario does; with
`--http`, the HTTP/1.1 app behind a service tagged `http` and one GET answered on each, as
`idle-http` does) and at
each step (`connections / steps` more held) asks both sidecars for a dump. Per connection is the
difference between the last step and the first over the connections opened in between, so that
what is made once (the shared read buffers, imports, the first arena) does not count.

A dump has: `/proc/self/smaps_rollup` and `status` (RSS, anonymous, VmHWM); glibc's `mallinfo2`
(bytes in use from the heap and from mmap, free bytes kept) and the arena count from
`malloc_info`; Python's allocated blocks and the live objects by type (count and `sys.getsizeof`
bytes, gc-tracked objects and the untracked ones they refer to); with `--tracemalloc` the top
allocation sites (the tracing costs memory itself: use it for the Python split only, not RSS).
C bytes per connection ≈ malloc's bytes in use minus what tracemalloc sees from Python (run
both modes). `--env` sets variables for the sidecars (to compare settings in one build;
`PYSIDECAR_MEMPROBE_NO_MALLOC_TUNE=1`: glibc's malloc defaults instead of `sidecar.malloc`).
`--wrap 'heaptrack -o FILE'` runs one sidecar (`--wrap-role`) under a heap profiler: at the end
it exits with every connection open, so what the profiler calls leaked is what they hold.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import gc
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_DUMP_ENV = "PYSIDECAR_MEMPROBE_DUMP"


# -- inside a sidecar ------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _proc_kb(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        match = re.match(r"(\w+):\s+(\d+) kB", line)
        if match:
            out[match.group(1)] = int(match.group(2))
    return out


def _malloc(libc: Any) -> dict[str, Any]:
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    out: dict[str, Any] = {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}
    with tempfile.NamedTemporaryFile("r", suffix=".xml") as tmp:
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        stream = libc.fopen(tmp.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        xml = Path(tmp.name).read_text()
    out["arenas"] = len(re.findall(r"<heap nr=", xml))
    total = re.search(r'<system type="current" size="(\d+)"', xml.split("</heap>")[-1])
    out["system_current"] = int(total.group(1)) if total else None
    return out


def _objects() -> dict[str, list[int]]:
    """Live objects by type: [count, bytes] (gc-tracked ones and the objects they refer to)."""
    seen: set[int] = set()
    by_type: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    tracked = gc.get_objects()
    for obj in tracked:
        for item in (obj, *gc.get_referents(obj)):
            if id(item) in seen or isinstance(item, type):
                continue
            seen.add(id(item))
            entry = by_type[type(item).__qualname__]
            entry[0] += 1
            try:
                entry[1] += sys.getsizeof(item)
            except TypeError:
                pass
    return dict(by_type)


def dump(path: str) -> None:
    """Write this process's memory figures to `path` (JSON)."""
    import tracemalloc

    gc.collect()
    data: dict[str, Any] = {
        "status": _proc_kb("/proc/self/status"),
        "smaps": _proc_kb("/proc/self/smaps_rollup"),
        "malloc": _malloc(_libc()),
        "py_blocks": sys.getallocatedblocks(),
        "objects": _objects(),
    }
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("lineno")
        data["tracemalloc"] = {
            "total": sum(s.size for s in stats),
            "top": [[str(s.traceback), s.size, s.count] for s in stats[:40]],
        }
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)


def hook(argv: list[str]) -> int:
    """Run a sidecar (`python -m sidecar` arguments) that dumps its memory on SIGUSR2."""
    target = os.environ[_DUMP_ENV]
    Path(target + ".pid").write_text(str(os.getpid()))  # under a wrapper, not the child's pid
    signal.signal(signal.SIGUSR2, lambda *_: dump(target))
    # SIGUSR1: exit at once, everything still allocated (what a heap profiler calls leaked)
    signal.signal(signal.SIGUSR1, lambda *_: os._exit(0))
    if os.environ.get("PYSIDECAR_MEMPROBE_NO_MALLOC_TUNE"):
        import sidecar.malloc

        sidecar.malloc.tune = lambda: False  # glibc's defaults, to compare
    from sidecar.cli import main

    return int(main(argv) or 0)


# -- the driver ------------------------------------------------------------------------------


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"memprobe: timed out waiting for {what}")
        time.sleep(0.05)


class _Sidecar:
    def __init__(
        self, role: str, argv: list[str], work: Path, env: dict[str, str], wrapper: list[str]
    ) -> None:
        self.role = role
        self.dump_path = str(work / f"{role}.dump.json")
        self.log = work / f"{role}.log"
        env = dict(env, **{_DUMP_ENV: self.dump_path})
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "bench.memprobe", "hook", *argv],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"memprobe: {self.role} exited:\n{self.log.read_text()[-3000:]}")
        return "event=ready" in self.log.read_text()

    def pid(self) -> int:
        return int(Path(self.dump_path + ".pid").read_text())

    def probe(self) -> dict[str, Any]:
        try:
            os.unlink(self.dump_path)
        except FileNotFoundError:
            pass
        os.kill(self.pid(), signal.SIGUSR2)
        _wait(lambda: os.path.exists(self.dump_path), 120, f"{self.role}'s dump")
        return json.loads(Path(self.dump_path).read_text())

    def stop(self, wrapped: bool) -> None:
        if wrapped and self.proc.poll() is None:
            os.kill(self.pid(), signal.SIGUSR1)  # the profiler writes what is left
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _credentials(work: Path, dataplanes: list[Path]) -> list[list[str]]:
    from sidecar.config.dataplane import load_dataplane
    from sidecar.identity import ca

    authority = ca.create_ca("bench")
    ca.write_cert_key(work / "ca.crt", work / "ca.key", authority)
    out = []
    for path in dataplanes:
        loaded = load_dataplane(path)
        issued = ca.issue_workload(authority.cert, authority.key, loaded)
        cert, key = work / f"{loaded.name}.crt", work / f"{loaded.name}.key"
        ca.write_cert_key(cert, key, issued)
        out.append(["--ca", str(work / "ca.crt"), "--cert", str(cert), "--key", str(key)])
    return out


def _open(port: int, count: int, held: list[socket.socket], http: bool) -> None:
    from bench.tools import _exchange, idle_exchange

    message, judge = idle_exchange(http)

    for first in range(0, count, 200):
        batch = [
            socket.create_connection((HOST, port), timeout=10)
            for _ in range(min(200, count - first))
        ]
        for sock in batch:
            sock.setblocking(False)
        answered = _exchange(batch, message, judge, time.monotonic() + 30)
        if len(answered) != len(batch):
            raise SystemExit(f"memprobe: {len(batch) - len(answered)} connections did not answer")
        held.extend(batch)


def _summary(first: dict[str, Any], last: dict[str, Any], conns: int) -> dict[str, Any]:
    def per(a: float, b: float) -> float:
        return round((b - a) / conns)

    out = {
        "rss_kb": last["status"].get("VmRSS"),
        "hwm_kb": last["status"].get("VmHWM"),
        "rss_per_conn": per(first["status"]["VmRSS"] * 1024, last["status"]["VmRSS"] * 1024),
        "anon_per_conn": per(
            first["smaps"].get("Anonymous", 0) * 1024, last["smaps"].get("Anonymous", 0) * 1024
        ),
        "py_blocks_per_conn": per(first["py_blocks"], last["py_blocks"]),
    }
    m0, m1 = first["malloc"], last["malloc"]
    if m1:
        out["malloc_in_use_per_conn"] = per(
            m0["uordblks"] + m0["hblkhd"], m1["uordblks"] + m1["hblkhd"]
        )
        out["malloc_free_kept_per_conn"] = per(m0["fordblks"], m1["fordblks"])
        out["malloc_mmapped_per_conn"] = per(m0["hblkhd"], m1["hblkhd"])
        out["arenas"] = m1["arenas"]
    if "tracemalloc" in last and "tracemalloc" in first:
        out["tracemalloc_per_conn"] = per(
            first["tracemalloc"]["total"], last["tracemalloc"]["total"]
        )
        before = {site: size for site, size, _ in first["tracemalloc"]["top"]}
        out["tracemalloc_sites_per_conn"] = sorted(
            (
                (site, per(before.get(site, 0), size))
                for site, size, _ in last["tracemalloc"]["top"]
            ),
            key=lambda item: -item[1],
        )[:15]
    o0, o1 = first["objects"], last["objects"]
    grown = []
    for name, (count, size) in o1.items():
        c0, s0 = o0.get(name, [0, 0])
        if count - c0 >= conns // 2:
            grown.append((name, round((count - c0) / conns, 2), per(s0, size)))
    out["objects_per_conn"] = sorted(grown, key=lambda item: -item[2])
    return out


def _text(result: dict[str, Any]) -> str:
    lines = [
        f"{result['connections']} connections held (mtls={result['mtls']}, "
        f"http={result['http']}, "
        f"env={result['env']}); per connection over the last {result['per_conn_over']}:"
    ]
    for role, fig in result["sidecars"].items():
        scalars = ", ".join(f"{k}={v}" for k, v in fig.items() if not isinstance(v, list))
        lines.append(f"  {role}: {scalars}")
        objects = " ".join(f"{n}x{c}={b}" for n, c, b in fig["objects_per_conn"])
        lines.append(f"    objects: {objects}")
        for site, size in fig.get("tracemalloc_sites_per_conn", []):
            lines.append(f"    {size:>7} B  {site}")
    return "\n".join(lines)


def drive(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from bench.context import REPO_ROOT, child_env
    from bench.paths import DATAPLANE_CLIENT, DATAPLANE_SERVER
    from bench.procs import free_port

    env = child_env()
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = "1"
    work = Path(tempfile.mkdtemp(prefix="memprobe-"))
    echo_port, outbound, inbound = free_port(), free_port(), free_port()
    client_dp, server_dp = work / "bench-client.yaml", work / "bench-server.yaml"
    client_dp.write_text(
        DATAPLANE_CLIENT.format(
            host=HOST,
            admin=free_port(),
            outbound=outbound,
            inbound=free_port(),
            service=free_port(),
        )
    )
    server_dp.write_text(
        DATAPLANE_SERVER.format(
            host=HOST,
            admin=free_port(),
            inbound=inbound,
            service=echo_port,
            protocol="http" if args.http else "tcp",
        )
    )
    creds = _credentials(work, [client_dp, server_dp]) if args.mtls else [[], []]
    room = str(args.connections + 100)
    limits = ["--limit", f"max_connections={room}", "--limit", f"max_upstream_connections={room}"]
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.tools", "http-server" if args.http else "echo-server",
         "--port", str(echo_port)],  # fmt: skip
        env=child_env(),
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    sidecars: list[_Sidecar] = []
    held: list[socket.socket] = []
    try:
        for role, dataplane, cred in (("B", server_dp, creds[1]), ("A", client_dp, creds[0])):
            argv = [
                "--dataplane",
                str(dataplane),
                "--mesh",
                str(work),
                "--loop",
                args.loop,
                *cred,
                *limits,
            ]
            wrapper = args.wrap.split() if args.wrap and args.wrap_role == role else []
            sidecars.append(_Sidecar(role, argv, work, env, wrapper))
        for sidecar in sidecars:
            _wait(sidecar.ready, 60, f"{sidecar.role} ready")
        step = args.connections // args.steps
        probes: list[dict[str, dict[str, Any]]] = []
        # a first batch, so that what is made once (read buffers, first handshake) is there
        _open(outbound, step, held, args.http)
        for _ in range(args.steps):
            time.sleep(1.0)
            probes.append({s.role: s.probe() for s in sidecars})
            print(
                f"memprobe: {len(held)} held; RSS "
                + ", ".join(
                    f"{r} {p['status']['VmRSS'] / 1024:.1f} MB" for r, p in probes[-1].items()
                ),
                file=sys.stderr,
            )
            if len(held) < args.connections:
                _open(outbound, step, held, args.http)
        conns = step * (args.steps - 1)
        result = {
            "connections": len(held),
            "mtls": args.mtls,
            "http": args.http,
            "env": args.env,
            "per_conn_over": conns,
            "sidecars": {
                role: _summary(probes[0][role], probes[-1][role], conns) for role in probes[0]
            },
        }
        print(_text(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        # the sidecars first: a profiler's record of what is left must not see connections close
        for sidecar in sidecars:
            sidecar.stop(bool(args.wrap) and args.wrap_role == sidecar.role)
        for sock in held:
            sock.close()
        echo.kill()
        echo.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hook"]:
        return hook(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.memprobe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mtls", action="store_true")
    parser.add_argument(
        "--http", action="store_true", help="the HTTP/1.1 app, tagged http: a GET answered on each"
    )
    parser.add_argument("--connections", type=int, default=9000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"))
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument(
        "--wrap",
        help="a command to run one sidecar under (e.g. 'heaptrack -o "
        "FILE'); it gets SIGUSR1 at the end and exits with everything allocated",
    )
    parser.add_argument("--wrap-role", default="A", choices=("A", "B"))
    return drive(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
