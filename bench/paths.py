"""The ways from a client to a server that a run compares, each measured in the same run.

A `Path`, given the address of a server that a scenario started, brings up whatever sits between
client and server and yields a `Route`: the port the client dials, and the proxy processes whose
CPU and memory are measured. Adding a path (the pysidecar pair with mTLS, an HAProxy reference
pair — issue 8) means adding a class here and naming it in `PATHS`; scenarios need no change.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.context import Context
from bench.procs import BenchError, Proc, free_port, wait_until

HOST = "127.0.0.1"


@dataclass
class Route:
    port: int  # what the client dials on 127.0.0.1
    proxies: list[Proc] = field(default_factory=list)


class Path:
    name = ""
    description = ""

    def unavailable(self) -> str | None:
        """Why this path cannot run here (a tool missing), or None."""
        return None

    def open(
        self, ctx: Context, server_port: int, label: str
    ) -> contextlib.AbstractContextManager[Route]:
        """Bring the path up in front of the server; leaving the context stops what it started."""
        raise NotImplementedError


class Direct(Path):
    name = "direct"
    description = "client → server"

    @contextlib.contextmanager
    def open(self, ctx: Context, server_port: int, label: str) -> Iterator[Route]:
        yield Route(server_port)


DATAPLANE_CLIENT = """\
type: Dataplane
mesh: bench
name: bench-client
networking:
  address: {host}
  admin:
    port: {admin}
  inbound:
    - port: {inbound}
      servicePort: {service}
      tags:
        kuma.io/service: bench-client
        kuma.io/protocol: tcp
  outbound:
    - port: {outbound}
      tags:
        kuma.io/service: bench-server
"""

DATAPLANE_SERVER = """\
type: Dataplane
mesh: bench
name: bench-server
networking:
  address: {host}
  admin:
    port: {admin}
  inbound:
    - port: {inbound}
      servicePort: {service}
      tags:
        kuma.io/service: bench-server
        kuma.io/protocol: tcp
"""


class SidecarPair(Path):
    """client → outbound of sidecar A → inbound of sidecar B → server, plaintext TCP.

    The two Dataplane files sit in a fresh mesh directory; A finds B's inbound through it, as in a
    real mesh. Every port is a free ephemeral one on 127.0.0.1.
    """

    name = "pair"
    description = "client → sidecar A outbound → sidecar B inbound → server (tcp, no mTLS)"
    bind_attempts = 3

    def sidecar_args(self, mesh: pathlib.Path) -> list[str]:
        """Extra command-line flags for both sidecars (none: plaintext hops)."""
        return []

    @contextlib.contextmanager
    def open(self, ctx: Context, server_port: int, label: str) -> Iterator[Route]:
        for attempt in range(1, self.bind_attempts + 1):
            try:
                port, procs = self._start(ctx, server_port, f"{label}-{attempt}")
            except BenchError as exc:
                # A free port may have been taken between our probe and the sidecar's bind.
                if "cannot bind" in str(exc) and attempt < self.bind_attempts:
                    continue
                raise
            break
        try:
            yield Route(port, procs)
        finally:
            for proc in procs:
                ctx.procs.stop(proc)

    def _start(self, ctx: Context, server_port: int, label: str) -> tuple[int, list[Proc]]:
        mesh = ctx.work / f"mesh-{label}"
        mesh.mkdir(parents=True)
        outbound = free_port()
        client_dp = mesh / "bench-client.yaml"
        server_dp = mesh / "bench-server.yaml"
        client_dp.write_text(DATAPLANE_CLIENT.format(
            host=HOST, admin=free_port(), inbound=free_port(), service=free_port(),
            outbound=outbound,
        ))
        server_dp.write_text(DATAPLANE_SERVER.format(
            host=HOST, admin=free_port(), inbound=free_port(), service=server_port,
        ))
        procs = []
        extra = self.sidecar_args(mesh)
        try:
            for role, slot, dataplane in (("sidecar-b", 1, server_dp), ("sidecar-a", 0, client_dp)):
                argv = [
                    ctx.python, "-m", "sidecar", "--dataplane", str(dataplane),
                    "--mesh", str(mesh), "--loop", ctx.loop, "--drain-timeout", "1", *extra,
                ]
                cpus = ctx.pinning.cpus_for(f"proxy{slot}")
                procs.append(ctx.procs.spawn(role, argv, log_name=f"{label}-{role}", cpus=cpus))
            for proc in procs:
                wait_until(lambda p=proc: "event=ready" in _read(p), 30, f"{proc.role} ready", proc)
        except BaseException:
            for proc in procs:
                ctx.procs.stop(proc)
            raise
        procs.reverse()  # A, then B: the order a byte from the client meets them
        return outbound, procs


class MtlsSidecarPair(SidecarPair):
    """The pair with mesh mTLS on the hop between A and B (strict, TLS 1.3, SPIFFE checks).

    A mesh CA (ECDSA P-256, as `pysidecar certs init` makes by default) is created in the mesh
    directory and both sidecars run in dev mode (`--ca`, `--ca-key`): each issues its own
    workload certificate at start. Every new connection through the pair is one mTLS handshake
    at A (client side) and one at B (server side).
    """

    name = "mtls-pair"
    description = (
        "client → sidecar A outbound → mTLS → sidecar B inbound → server (tcp, strict mTLS, "
        "ECDSA P-256 certificates, TLS 1.3)"
    )

    def sidecar_args(self, mesh: pathlib.Path) -> list[str]:
        from sidecar.identity import ca

        certs = mesh / "certs"
        authority = ca.create_ca("bench")
        ca.write_certificate(certs / "ca.crt", authority.cert)
        ca.write_private_key(certs / "ca.key", authority.key)
        return ["--ca", str(certs / "ca.crt"), "--ca-key", str(certs / "ca.key")]


def _read(proc: Proc) -> str:
    try:
        return proc.log.read_text(errors="replace") if proc.log else ""
    except OSError:
        return ""


PATHS: dict[str, Path] = {p.name: p for p in (Direct(), SidecarPair(), MtlsSidecarPair())}
