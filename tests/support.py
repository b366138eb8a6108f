"""Test support: sidecars started through the CLI as users start them, real servers on loopback.

Nothing here sleeps for synchronisation: `wait_for` polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.procs import free_port

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    poll: float = 0.05,
) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds.

    The interval grows from 5 ms to `poll`: a cheap condition awaited often (a log line) can
    poll faster, so that the wait ends closer to the moment it came true."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # a poll interval, not a synchronisation sleep
        delay = min(delay * 2, poll)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def dataplane(
    name: str,
    inbounds: Iterable[Mapping[str, Any]] = (),
    outbounds: Iterable[Mapping[str, Any]] = (),
    *,
    mesh: str = "default",
    address: str = LOOPBACK,
    admin_port: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A Dataplane document; admin gets a free port so parallel sidecars never collide."""
    networking: dict[str, Any] = {"address": address}
    if inbounds:
        networking["inbound"] = [dict(i) for i in inbounds]
    if outbounds:
        networking["outbound"] = [dict(o) for o in outbounds]
    networking["admin"] = {"port": admin_port or free_port()}
    doc = {"type": "Dataplane", "mesh": mesh, "name": name, "networking": networking}
    doc.update(extra)
    return doc


def write_yaml(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write atomically, so a watching sidecar never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    os.replace(tmp, path)
    return path


class Sidecar:
    """A `pysidecar` process, started as a user starts it, stopped by the test."""

    def __init__(
        self,
        dataplane_file: Path,
        *args: str,
        loop: str = "auto",
        # Short, so that stopping a test's sidecars does not wait on connections its servers
        # still hold; the tests of draining itself set their own.
        drain_timeout: float = 1.0,
        log_dir: Path | None = None,
        prefix: Sequence[str] = (),
        group: int | None = None,
    ) -> None:
        """`prefix`: what runs the sidecar (`ip netns exec NS`: in a network namespace);
        `group`: the group it runs as (the one transparent proxying's rules let through)."""
        self.dataplane_file = dataplane_file
        self.log_path = (log_dir or dataplane_file.parent) / f"{dataplane_file.stem}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.terminated = False  # SIGTERM sent by terminate()
        self.proc = subprocess.Popen(
            [
                *prefix, sys.executable, "-m", "sidecar", "--log-level", "debug",
                "run", "--dataplane", str(dataplane_file), "--loop", loop,
                "--drain-timeout", str(drain_timeout), *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            group=group,
        )  # fmt: skip

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> Sidecar:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.log}")
            return "event=ready" in self.log

        # Polled every 10 ms at most (a read of a short file): a suite starts ~700 sidecars.
        wait_for(ready, timeout, f"{self.dataplane_file.name} to be ready", poll=0.01)
        return self

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: text in self.log, timeout, f"log line {text!r}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM (a drain) without waiting for it, once: `stop` waits."""
        if self.proc.poll() is None and not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def memory(self, field: str = "VmRSS") -> int:
        """A /proc/<pid>/status memory figure in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")


def stop_all(*sidecars: Sidecar) -> None:
    """Stop every one of `sidecars`: all are told first, so that their drains (up to their
    drain timeout each, while a pooled mesh connection stays open) run side by side, not one
    after another."""
    for sidecar in sidecars:
        sidecar.terminate()
    for sidecar in sidecars:
        sidecar.stop()


def wait_ready(*sidecars: Sidecar, timeout: float = 15.0) -> tuple[Sidecar, ...]:
    """Wait until every one of `sidecars` is ready. Started together (`ready=False`), sidecars
    that do not depend on each other boot side by side instead of one after the other."""
    for sidecar in sidecars:
        sidecar.wait_ready(timeout)
    return sidecars


class TcpServer:
    """A threaded TCP server on loopback; `handler(conn)` runs per connection."""

    def __init__(self, handler: Callable[[socket.socket], None], port: int = 0) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.connections: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.connections:
            try:
                conn.close()
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(256 * 1024):
        conn.sendall(data)


def http_call(
    port: int, method: str = "GET", path: str = "/", body: bytes | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a connection of its own: (status, body)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def recv_all(conn: socket.socket, limit: int | None = None) -> bytes:
    chunks = []
    total = 0
    while limit is None or total < limit:
        data = conn.recv(256 * 1024)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def _pattern_unit(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest()


def pattern(size: int, seed: int = 0) -> Iterable[bytes]:
    """`size` bytes of a repeatable pattern, in 1 MiB blocks: a 32-byte unit over and over."""
    block = _pattern_unit(seed) * (1024 * 1024 // 32)
    left = size
    while left > 0:
        n = min(left, len(block))
        yield block[:n]
        left -= n


@functools.cache
def digest_of(size: int, seed: int = 0) -> str:
    """SHA-256 of `pattern(size, seed)`, computed once per run (tests under both loops and
    both relays ask for the same ones: a GiB costs the best part of a second)."""
    h = hashlib.sha256()
    for block in pattern(size, seed):
        h.update(block)
    return h.hexdigest()


class PatternCheck:
    """Checks a received stream against `pattern(size, seed)` byte for byte as it arrives.

    As exact as comparing digests, at the cost of a copy and a compare per piece instead of
    SHA-256 over it twice (here, and for the expected digest): on two cores, what the test's
    own threads spend is taken from the sidecars under test. `bytes` counts what came;
    `mismatch` is the offset of the first byte that differs (None while all agree)."""

    def __init__(self, seed: int = 0) -> None:
        unit = _pattern_unit(seed)
        self._unit = len(unit)
        # Any piece of up to 1 MiB, starting anywhere in the unit, is a slice of this.
        self._reference = unit * (2 * 1024 * 1024 // len(unit))
        self.bytes = 0
        self.mismatch: int | None = None

    def update(self, data: bytes) -> None:
        step = 1024 * 1024
        for at in range(0, len(data), step):
            # bytes against bytes: a memcmp (comparing memoryviews goes item by item)
            piece = bytes(data[at : at + step]) if len(data) > step else bytes(data)
            start = self.bytes % self._unit
            expected = self._reference[start : start + len(piece)]
            if self.mismatch is None and piece != expected:
                pairs = zip(piece, expected, strict=True)
                first = next(i for i, (a, b) in enumerate(pairs) if a != b)
                self.mismatch = self.bytes + first
            self.bytes += len(piece)

    def verdict(self) -> tuple[int, int | None]:
        """(bytes received, offset of the first difference or None): `(size, None)` is intact."""
        return self.bytes, self.mismatch


def wait_for_stall(sent: dict[str, int], timeout: float = 30.0) -> None:
    """Wait until a sending app is held by back-pressure: its count `sent["bytes"]` (bumped
    after each `sendall`) has started and then stays put for 0.3 s."""

    def stalled() -> bool:
        before = sent["bytes"]
        wait_for(lambda: sent["bytes"] > 0, what="app to start sending")
        try:
            wait_for(lambda: sent["bytes"] != before, timeout=0.3)
        except AssertionError:
            return True
        return False

    wait_for(stalled, timeout=timeout, what="the app to be blocked by back-pressure")


async def start_echo_server() -> tuple[asyncio.Server, int]:
    """An asyncio echo server on loopback in this process (close it when done): the upstream
    of the in-process relay tests."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, LOOPBACK, 0)
    return server, server.sockets[0].getsockname()[1]


def client_hello(server_name: str) -> bytes:
    """A real ClientHello (the ssl module's) asking for `server_name`: the first bytes of a TLS
    client, for what judges a connection by them (sniffing, MeshPassthrough)."""
    out = ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()
