"""Python calls per ws-echo message in each sidecar of a pair, under cProfile (exact counts).

Run from a checkout's root: `python bench/results/2026-11-23-tunnel/profile_ws.py TAG [mtls]`.
Both sidecars run under wrap.py (cProfile enabled on SIGUSR1, dumped on SIGUSR2); a 1 s client
run warms the tunnel path up, then a 4 s client run is profiled, and the calls are divided by
the messages that run reports. Work files go to /tmp/tunnel-prof/TAG.
"""

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
WRAP = str(Path(__file__).resolve().parent / "wrap.py")
PACKAGES = ("/h2/", "/hyperframe/", "/hpack/", "tls_transport", "/sidecar/", "asyncio")


def main() -> None:
    os.environ["PYTHONPATH"] = os.getcwd()
    tag = sys.argv[1]
    mtls = sys.argv[2:] == ["mtls"]
    work = Path(f"/tmp/tunnel-prof/{tag}")
    mesh = work / "mesh"
    mesh.mkdir(parents=True, exist_ok=True)
    app, outbound = free_port(), free_port()
    files = {"a": mesh / "bench-client.yaml", "b": mesh / "bench-server.yaml"}
    files["a"].write_text(
        DATAPLANE_CLIENT.format(
            host=HOST, admin=free_port(), inbound=free_port(), service=free_port(),
            outbound=outbound,
        )
    )  # fmt: skip
    files["b"].write_text(
        DATAPLANE_SERVER.format(
            host=HOST, admin=free_port(), inbound=free_port(), service=app, protocol="http"
        )
    )
    credentials: dict[str, list[str]] = {"a": [], "b": []}
    if mtls:
        pki = Pki(SimpleNamespace(work=work))
        for role, dataplane in files.items():
            cert, key = pki.issue(dataplane)
            credentials[role] = ["--ca", str(pki.ca), "--cert", str(cert), "--key", str(key)]
    procs = [subprocess.Popen([PY, "-m", "bench.tools", "ws-server", "--port", str(app)])]
    sidecars = {}
    for role in ("b", "a"):
        log = open(work / f"{role}.log", "w")  # noqa: SIM115 - the child's log
        argv = [PY, WRAP, str(work / f"{role}.prof"), "--dataplane", str(files[role]),
                "--mesh", str(mesh), "--loop", "uvloop", *credentials[role]]  # fmt: skip
        sidecars[role] = subprocess.Popen(argv, stdout=log, stderr=log)
        procs.append(sidecars[role])
    try:
        for role in ("b", "a"):
            deadline = time.monotonic() + 30
            while "event=ready" not in (work / f"{role}.log").read_text():
                assert time.monotonic() < deadline, f"sidecar {role} not ready"
                time.sleep(0.1)

        def client(duration: float) -> dict:
            argv = [PY, "-m", "bench.tools", "ws-client", "--port", str(outbound),
                    "--duration", str(duration), "--warmup", "0"]  # fmt: skip
            return json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)

        client(1)
        for proc in sidecars.values():
            proc.send_signal(signal.SIGUSR1)
        figures = client(4)
        for proc in sidecars.values():
            proc.send_signal(signal.SIGUSR2)
        time.sleep(1)  # the dump is written by the sidecars' signal handlers
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    messages = figures["messages"]
    print(tag, "messages", messages, "msgs/s", round(figures["messages_per_s"]))
    for role in ("a", "b"):
        stats = pstats.Stats(str(work / f"{role}.prof")).stats  # type: ignore[attr-defined]
        total = 0
        by_package: collections.Counter[str] = collections.Counter()
        for (file, _, _), (_, calls, _, _, _) in stats.items():
            total += calls
            package = next((p.strip("/") for p in PACKAGES if p in file), "C functions")
            by_package[package] += calls
        shares = {k: round(v / messages, 1) for k, v in by_package.items()}
        print(role, f"calls per message {total / messages:.1f}", shares)


if __name__ == "__main__":
    main()
