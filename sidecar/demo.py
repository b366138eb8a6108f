"""`pysidecar demo`: a small mesh on loopback, each demo service with its own sidecar process.

The Dataplane files are written to a temporary mesh directory, exactly as a user would write them;
the sidecars are started as a user starts them (`pysidecar run --dataplane …`). The mesh runs with
mTLS: the demo makes a mesh CA (`certs/ca.crt`, `certs/ca.key` in the mesh directory) and starts
every sidecar in dev mode (`--ca … --ca-key …`), so each issues its own SPIFFE certificate. Then
traffic goes app → outbound → (mTLS) → peer's inbound → app, and the demo prints what went where
and which verified identity each inbound saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar import demoapps
from sidecar.identity import spiffe

LOOPBACK = "127.0.0.1"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="bring up a small demo mesh on loopback")
    parser.add_argument(
        "--once", action="store_true", help="exit after the demo traffic: 0 if it all succeeded"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="mesh directory to use (default: a temporary one)"
    )
    parser.add_argument("--verbose", action="store_true", help="show the sidecars' logs")
    parser.set_defaults(func=run)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one handed out before in this run: the kernel may give a
    port it gave a moment ago once that socket is closed, and two listeners on one port would
    stop a sidecar from starting."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class Service:
    """One demo instance: its app, its sidecar, its Dataplane."""

    name: str  # dataplane name, e.g. backend-v1
    service: str  # kuma.io/service
    tags: dict[str, str] = field(default_factory=dict)
    app: Callable[..., Awaitable[None]] = demoapps.line_echo
    outbounds: dict[str, int] = field(default_factory=dict)  # service → local port
    inbound_port: int = field(default_factory=free_port)
    app_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)

    def dataplane(self) -> dict[str, Any]:
        return {
            "type": "Dataplane",
            "mesh": "default",
            "name": self.name,
            "networking": {
                "address": LOOPBACK,
                "inbound": [{
                    "port": self.inbound_port,
                    "servicePort": self.app_port,
                    "tags": {"kuma.io/service": self.service, **self.tags},
                }],
                "outbound": [
                    {"port": port, "tags": {"kuma.io/service": service}}
                    for service, port in self.outbounds.items()
                ],
                "admin": {"port": self.admin_port},
            },
        }  # fmt: skip


class Demo:
    def __init__(self, directory: Path, verbose: bool) -> None:
        self.dir = directory
        self.verbose = verbose
        self.backends = [
            Service("backend-v1", "backend", {"version": "v1", "kuma.io/protocol": "tcp"}),
            Service("backend-v2", "backend", {"version": "v2", "kuma.io/protocol": "tcp"}),
        ]
        # An HTTP/1.1 app and a websocket app, both declared `http`: between the sidecars their
        # requests ride HTTP/2 (the websocket as an RFC 8441 extended CONNECT stream).
        self.api = Service("api-1", "api", {"kuma.io/protocol": "http"}, app=demoapps.http_app)
        self.chat = Service(
            "chat-1", "chat", {"kuma.io/protocol": "http"}, app=demoapps.websocket_echo
        )
        self.web = Service(
            "web-1",
            "web",
            {"kuma.io/protocol": "tcp"},
            outbounds={"backend": free_port(), "api": free_port(), "chat": free_port()},
        )
        self.services = [*self.backends, self.api, self.chat, self.web]
        self.processes: list[asyncio.subprocess.Process] = []
        self.servers: list[asyncio.Server] = []
        self.log_tasks: list[asyncio.Task[None]] = []
        self.certs = self.dir / "certs"
        self.callers: dict[str, list[str]] = {}  # dataplane → identities its inbound verified

    def make_ca(self) -> None:
        """The mesh CA the sidecars issue their own certificates from (dev mode)."""
        from sidecar.identity import ca  # cryptography: not for `pysidecar run` (see credentials)

        authority = ca.create_ca("default")
        ca.write_certificate(self.certs / "ca.crt", authority.cert)
        ca.write_private_key(self.certs / "ca.key", authority.key)

    async def start(self) -> None:
        self.make_ca()
        for svc in self.services:
            await self._start_app(svc)
            path = self.dir / f"{svc.name}.yaml"
            path.write_text(yaml.safe_dump(svc.dataplane(), sort_keys=False))
        await asyncio.gather(*(self._start_sidecar(svc) for svc in self.services))

    async def _start_app(self, svc: Service) -> None:
        version = svc.tags.get("version")
        label = f"{svc.name} ({svc.service} {version})" if version else svc.name

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await svc.app(label, reader, writer)

        self.servers.append(await asyncio.start_server(handle, LOOPBACK, svc.app_port))

    async def _start_sidecar(self, svc: Service) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "--log-level", "debug", "run",
            "--dataplane", str(self.dir / f"{svc.name}.yaml"), "--drain-timeout", "2",
            "--ca", str(self.certs / "ca.crt"), "--ca-key", str(self.certs / "ca.key"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.processes.append(proc)
        ready = asyncio.get_running_loop().create_future()
        self.log_tasks.append(asyncio.create_task(self._follow(svc, proc, ready)))
        await asyncio.wait_for(ready, 30)

    async def _follow(
        self, svc: Service, proc: asyncio.subprocess.Process, ready: asyncio.Future[None]
    ) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            # (a sidecar that cannot start says why in a `pysidecar: ...` line, then exits)
            shown = "ERROR" in text or "WARNING" in text or text.startswith("pysidecar:")
            if self.verbose or shown:
                print(f"  [{svc.name}] {text}", file=sys.stderr)
            if "event=mtls_accepted" in text:
                identity = text.partition(" identity=")[2].split(" ")[0]
                self.callers.setdefault(svc.name, []).append(identity)
            if "event=ready" in text and not ready.done():
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(RuntimeError(f"sidecar {svc.name} exited with {proc.returncode}"))

    async def traffic(self, rounds: int = 4) -> bool:
        """web's app calls backend through its outbound; True when every call was answered."""
        port = self.web.outbounds["backend"]
        ok = True
        print(
            f"\nweb-1 app → outbound 127.0.0.1:{port} (backend) → mTLS hop between sidecars → "
            "backend inbound → backend app\n"
        )
        for i in range(rounds):
            try:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                writer.write(f"hello #{i}\n".encode())
                await writer.drain()
                reply = (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip()
                writer.close()
            except (OSError, TimeoutError) as exc:
                reply, ok = f"FAILED: {exc!r}", False
            if not reply:
                reply, ok = "FAILED: connection closed without a reply", False
            print(f"  call {i}: {reply}")
        return ok

    async def l7_traffic(self) -> bool:
        """HTTP/1.1 and a websocket from web's app, both over the mesh's HTTP/2 connection."""
        ok = True
        api_port, chat_port = self.web.outbounds["api"], self.web.outbounds["chat"]
        print(
            f"\nweb-1 app → HTTP/1.1 → outbound 127.0.0.1:{api_port} (api, http) → "
            "HTTP/2 over mTLS → api inbound → HTTP/1.1 → api app\n"
        )
        try:
            for line in await demoapps.http_get(LOOPBACK, api_port, ["/hello", "/again"]):
                print(f"  {line}")
            stats = await self._stats(self.api)
            prefix = f"http.inbound_{LOOPBACK}_{self.api.inbound_port}"
            h2 = stats.get(f"{prefix}.downstream_rq_http2_total", 0)
            conns = stats.get(f"listener.{LOOPBACK}_{self.api.inbound_port}.downstream_cx_total")
            print(
                f"  the upgrade: api's inbound received {h2} request(s) over HTTP/2 on "
                f"{conns} mesh connection(s); its app spoke HTTP/1.1"
            )
            ok = ok and h2 == 2
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            print(f"  FAILED: {exc!r}")
            ok = False
        print(
            f"\nweb-1 app → websocket → outbound 127.0.0.1:{chat_port} (chat, http) → "
            "extended CONNECT stream over mTLS → chat inbound → websocket upgrade → chat app\n"
        )
        try:
            status, echoes = await demoapps.websocket_call(LOOPBACK, chat_port, ["hi", "bye"])
            print(f"  handshake: {status}")
            for echo in echoes:
                print(f"  {echo}")
            ok = ok and status.startswith("HTTP/1.1 101") and len(echoes) == 2
        except (OSError, asyncio.IncompleteReadError, ConnectionError, KeyError) as exc:
            print(f"  FAILED: {exc!r}")
            ok = False
        return ok

    async def _stats(self, svc: Service) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(LOOPBACK, svc.admin_port)
        writer.write(b"GET /stats?format=json HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        doc = json.loads(data.partition(b"\r\n\r\n")[2])
        return {s["name"]: s["value"] for s in doc["stats"] if "name" in s}

    async def mtls_report(self, calls: int) -> bool:
        """What each backend inbound verified: True when every call came in over mTLS as web."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while sum(len(v) for v in self.callers.values()) < calls and loop.time() < deadline:
            await asyncio.sleep(0.05)  # the sidecars' log lines arrive through a pipe
        print("\nmTLS on every hop: what the backend inbounds verified")
        seen = 0
        for svc in self.backends:
            identities = self.callers.get(svc.name, [])
            seen += len(identities)
            who = ", ".join(sorted(set(identities))) or "-"
            print(f"  {svc.name}: {len(identities)} mTLS connection(s) from {who}")
        web_id = spiffe.spiffe_id("default", self.web.service)
        return seen == calls and all(i == web_id for ids in self.callers.values() for i in ids)

    def describe(self) -> None:
        print(f"demo mesh in {self.dir}")
        for svc in self.services:
            outs = ", ".join(f"{s} at 127.0.0.1:{p}" for s, p in svc.outbounds.items()) or "-"
            print(
                f"  {svc.name:<11} service={svc.service:<8} app=127.0.0.1:{svc.app_port} "
                f"inbound=127.0.0.1:{svc.inbound_port} admin=127.0.0.1:{svc.admin_port} "
                f"outbounds: {outs}"
            )
        print(
            f"mTLS: on (strict), mesh CA {self.certs / 'ca.crt'}; each sidecar issued its own "
            "certificate (dev mode):"
        )
        from sidecar.identity import ca

        for svc in self.services:
            path = self.certs / f"{svc.name}.crt"
            try:
                ids = spiffe.identities_of(ca.load_certificate(path))
            except ca.CredentialsError as exc:
                ids = [f"unreadable: {exc}"]
            print(f"  {svc.name:<11} {path.name:<15} {' '.join(ids)}")

    async def stop(self) -> None:
        for proc in self.processes:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for server in self.servers:
            server.close()
        for task in self.log_tasks:
            task.cancel()


async def main(args: argparse.Namespace, directory: Path) -> int:
    demo = Demo(directory, args.verbose)
    try:
        await demo.start()
        demo.describe()
        rounds = 4
        ok = await demo.traffic(rounds)
        mtls_ok = await demo.mtls_report(rounds)
        l7_ok = await demo.l7_traffic()
        ok = ok and mtls_ok and l7_ok
        print(
            "\nall demo calls answered through the mesh, over mTLS"
            if ok
            else "\nsome demo calls FAILED (or did not ride mTLS)"
        )
        if args.once:
            return 0 if ok else 1
        print(
            "\nthe mesh stays up; try it: "
            f"printf 'hi\\n' | nc 127.0.0.1 {demo.web.outbounds['backend']}   (Ctrl-C to stop)"
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"pysidecar demo: {exc}", file=sys.stderr)
        return 1
    finally:
        await demo.stop()


def run(args: argparse.Namespace) -> int:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(main(args, args.dir))
    with tempfile.TemporaryDirectory(prefix="pysidecar-demo-") as tmp:
        os.chmod(tmp, 0o755)
        return asyncio.run(main(args, Path(tmp)))
