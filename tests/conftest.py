from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pki import Pki
from tests.support import (
    Sidecar,
    TcpServer,
    dataplane,
    free_port,
    stop_all,
    wait_ready,
    write_yaml,
)

# Many tests open hundreds of sockets at once.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

# The suite starts about a thousand Python processes (sidecars, `python -m bench`, the CLI), each
# importing the whole of `sidecar`. Where PYTHONDONTWRITEBYTECODE is set (this project's machines
# set it), every one of them compiled every module from source again: ~0.15 s of CPU a start. The
# processes this run starts share a bytecode cache of their own instead, in a temporary directory
# (PYTHONPYCACHEPREFIX: nothing is written into the source tree), removed when the run ends. A
# prefix the caller set is used as it is, and kept.
_PYCACHE: str | None = None
if not os.environ.get("PYTHONPYCACHEPREFIX"):
    _PYCACHE = tempfile.mkdtemp(prefix="pysidecar-tests-pycache-")
    os.environ["PYTHONPYCACHEPREFIX"] = _PYCACHE
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PYCACHE is not None:
        shutil.rmtree(_PYCACHE, ignore_errors=True)


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Data-path tests run under both event loops."""
    return request.param


class Mesh:
    """A mesh directory with sidecars and apps that the test owns and stops."""

    def __init__(self, directory: Path, loop: str, protocol: str | None = None) -> None:
        self.dir = directory
        self.loop = loop
        self.protocol = protocol  # declared on every backend() inbound unless its tags say
        self.sidecars: list[Sidecar] = []
        self.servers: list[TcpServer] = []

    def write(self, name: str, inbounds: Any = (), outbounds: Any = (), **kw: Any) -> Path:
        return write_yaml(self.dir / f"{name}.yaml", dataplane(name, inbounds, outbounds, **kw))

    def start(self, path: Path, *args: str, ready: bool = True, **kw: Any) -> Sidecar:
        sidecar = Sidecar(path, *args, loop=self.loop, **kw)
        self.sidecars.append(sidecar)
        return sidecar.wait_ready() if ready else sidecar

    def server(self, handler: Callable[..., None], port: int = 0) -> TcpServer:
        server = TcpServer(handler, port)
        self.servers.append(server)
        return server

    def backend(
        self,
        name: str,
        app_port: int,
        service: str = "backend",
        tags: dict[str, str] | None = None,
        **kw: Any,
    ) -> tuple[Path, int]:
        """A member serving `service`, its app on app_port; returns (file, inbound port)."""
        port = free_port()
        tags = {"kuma.io/service": service, **(tags or {})}
        if self.protocol is not None:
            tags.setdefault("kuma.io/protocol", self.protocol)
        inbound = {"port": port, "servicePort": app_port, "tags": tags}
        return self.write(name, [inbound], **kw), port

    def client(
        self, name: str, service: str = "backend", tags: dict[str, str] | None = None, **kw: Any
    ) -> tuple[Path, int]:
        """A member with one outbound to `service`; returns (file, outbound port)."""
        port = free_port()
        inbound = {
            "port": free_port(),
            "servicePort": free_port(),
            "tags": {"kuma.io/service": name},
        }
        outbound = {"port": port, "tags": {"kuma.io/service": service, **(tags or {})}}
        return self.write(name, [inbound], [outbound], **kw), port

    def pair(self, handler: Callable[..., None]) -> int:
        """app ← backend sidecar ← web sidecar: returns the web outbound port to dial."""
        app = self.server(handler)
        backend, _ = self.backend("backend-1", app.port)
        web, outbound = self.client("web-1")
        wait_ready(self.start(backend, ready=False), self.start(web, ready=False))
        return outbound

    def close(self) -> None:
        stop_all(*self.sidecars)
        for server in self.servers:
            server.close()


@pytest.fixture
def mesh(tmp_path: Path, loop_kind: str) -> Iterator[Mesh]:
    m = Mesh(tmp_path, loop_kind)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def mesh_uvloop(tmp_path: Path) -> Iterator[Mesh]:
    """For tests of behaviour that does not depend on the event loop."""
    m = Mesh(tmp_path, "uvloop")
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A mesh CA (mesh `default`) in tmp_path/certs, issuing workload certificates on demand."""
    return Pki(tmp_path / "certs")


# The TCP path both ways: "splice" declares kuma.io/protocol: tcp on the backends (plain TCP from
# the first byte: the splice relay), "sniffed" leaves it undeclared (the sidecars sniff, then relay
# with the asyncio.Protocol relay).
TCP_RELAYS = ["splice", "sniffed"]
TCP_PROTOCOL = {"splice": "tcp", "sniffed": None}  # what the backends declare


def tcp_mesh(directory: Path, loop: str, relay: str) -> Iterator[Mesh]:
    m = Mesh(directory, loop, protocol=TCP_PROTOCOL[relay])
    try:
        yield m
    finally:
        m.close()
