"""Docker HEALTHCHECK of a pysidecar container: healthy when the sidecar says it is ready.

Finds the running sidecar's Dataplane from its command line, then asks the admin API
(`GET http://127.0.0.1:<networking.admin.port>/ready`, 200 = ready).

TEMPORARY FALLBACK, until the admin API lands (sidecar.observe.admin): when this build has no
admin module, healthy means every listener of the Dataplane (inbounds and outbounds) is in LISTEN
state in this network namespace (read from /proc/net/tcp*, so the check sends no traffic through
the mesh). Remove the fallback once every image has the admin API.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import sys
from pathlib import Path

# Kept cheap on purpose (Docker runs it every few seconds in every sidecar container): no import
# of sidecar's config loader or of http.client, just PyYAML and a raw HTTP/1.0 request.


def sidecar_argv() -> list[str] | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a in ("--dataplane", "--dataplane-file") for a in argv) and any(
            "pysidecar" in a or a == "sidecar" for a in argv
        ):
            return argv
    return None


def dataplane_of(argv: list[str]) -> dict:
    """The Dataplane document, with `{{ KEY }}` filled from --dataplane-var as the sidecar does."""
    import yaml

    path, variables = None, {}
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--dataplane", "--dataplane-file"):
            path = argv[i + 1]
        elif arg == "--dataplane-var":
            key, _, value = argv[i + 1].partition("=")
            variables[key] = value
    if path is None:
        raise ValueError("no --dataplane in the sidecar's command line")
    text = Path(path).read_text()
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: variables.get(m.group(1), m.group(0)), text)
    return yaml.safe_load(text)


def admin_ready(port: int) -> tuple[bool, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.settimeout(2)
        sock.sendall(b"GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        status_line = sock.makefile("rb").readline().decode(errors="replace").strip()
    parts = status_line.split()
    return len(parts) > 1 and parts[1] == "200", status_line


def listening_ports() -> set[int]:
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def main() -> int:
    argv = sidecar_argv()
    if argv is None:
        print("unhealthy: no pysidecar process with --dataplane")
        return 1
    net = dataplane_of(argv).get("networking") or {}
    admin_port = int((net.get("admin") or {}).get("port") or 9901)  # Kuma's default
    if importlib.util.find_spec("sidecar.observe.admin") is not None:
        try:
            ready, status = admin_ready(admin_port)
        except OSError as exc:
            print(f"unhealthy: admin 127.0.0.1:{admin_port}/ready: {exc}")
            return 1
        print(f"admin /ready: {status}")
        return 0 if ready else 1
    # Temporary fallback (no admin API in this build): the listeners are bound.
    wanted = {int(x["port"]) for x in (net.get("inbound") or []) + (net.get("outbound") or [])}
    missing = wanted - listening_ports()
    if missing:
        print(f"unhealthy: not listening yet on {sorted(missing)} (no admin API in this build)")
        return 1
    print(f"listening on {sorted(wanted)} (fallback check: no admin API in this build)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # a health check reports, it never tracebacks
        print(f"unhealthy: {exc!r}")
        sys.exit(1)
