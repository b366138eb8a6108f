"""The ways from a client to a server that a run compares, each measured in the same run.

A `Path`, given the address of a server that a scenario started and the protocol the scenario
speaks (`tcp`, `http`, `http2`, `grpc`: what the server's inbound is tagged with,
`kuma.io/protocol`), brings up whatever sits between client and server and yields a `Route`: the
port the client dials, and the proxy processes whose CPU and memory are measured. Scenarios need
no change when a path is added: a class here, named in `PATHS`.

- `direct`: nothing in between.
- `pair`: two pysidecars, plaintext hop (Kuma's mesh without mTLS); HTTP/1.1 is upgraded to
  HTTP/2 (h2c prior knowledge) between them.
- `pair-mtls`: the same with mesh credentials (`--ca/--cert/--key`, certificates issued as
  `pysidecar certs` issues them): every hop is mTLS with SPIFFE identities. Skipped with a note
  when this checkout's sidecar has no mTLS options.
- `haproxy`: the reference, two HAProxy instances doing the same job: HTTP/1.1 (or h2c) in,
  HTTP/2 over mTLS between the two (ALPN h2, client certificate required and verified against the
  mesh CA, the same certificates as the mTLS pair), HTTP/1.1 (or h2c) out; `mode tcp` with mTLS
  for L4 scenarios. One thread each (`nbthread 1`), the match of one pysidecar worker. Skipped
  with a note when `haproxy` is not installed.
- `haproxy-plain`: the same pair with a plaintext hop (h2c prior knowledge between the two for
  L7): the like-for-like reference of `pair`.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path as FilePath

from bench.context import Context
from bench.procs import BenchError, Proc, free_port, listening, wait_until

HOST = "127.0.0.1"
MESH = "bench"
L7_PROTOCOLS = ("http", "http2", "grpc")


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
        self, ctx: Context, server_port: int, label: str, protocol: str = "tcp",
        capacity: int | None = None,
    ) -> contextlib.AbstractContextManager[Route]:
        """Bring the path up in front of the server; leaving the context stops what it started.

        `capacity`: the most connections the scenario holds open at once, when that is more than
        the proxies' default limits allow (they are raised to it)."""
        raise NotImplementedError


class Direct(Path):
    name = "direct"
    description = "client → server"

    @contextlib.contextmanager
    def open(self, ctx: Context, server_port: int, label: str, protocol: str = "tcp",
             capacity: int | None = None) -> Iterator[Route]:
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
        kuma.io/protocol: {protocol}
"""


class SidecarPair(Path):
    """client → outbound of sidecar A → inbound of sidecar B → server.

    The two Dataplane files sit in a fresh mesh directory; A finds B's inbound through it, as in a
    real mesh. Every port is a free ephemeral one on 127.0.0.1. B's inbound is tagged with the
    scenario's protocol, so A's outbound treats the service as Kuma would (tcp relay, or HTTP
    upgraded to HTTP/2 on the hop).
    """

    name = "pair"
    description = ("client → sidecar A outbound → sidecar B inbound → server (no mTLS; "
                   "HTTP/1.1 rides h2c between the sidecars)")
    bind_attempts = 3
    mtls = False

    @contextlib.contextmanager
    def open(self, ctx: Context, server_port: int, label: str, protocol: str = "tcp",
             capacity: int | None = None) -> Iterator[Route]:
        for attempt in range(1, self.bind_attempts + 1):
            try:
                port, procs = self._start(ctx, server_port, f"{label}-{attempt}", protocol,
                                          capacity)
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

    def _credentials(self, ctx: Context, dataplane: FilePath) -> list[str]:
        return []

    def _start(self, ctx: Context, server_port: int, label: str,
               protocol: str, capacity: int | None = None) -> tuple[int, list[Proc]]:
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
            protocol=protocol,
        ))
        procs = []
        try:
            for role, slot, dataplane in (("sidecar-b", 1, server_dp), ("sidecar-a", 0, client_dp)):
                argv = [
                    ctx.python, "-m", "sidecar", "--dataplane", str(dataplane),
                    "--mesh", str(mesh), "--loop", ctx.loop, "--drain-timeout", "0.2",
                    *self._credentials(ctx, dataplane), *_capacity_limits(capacity),
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


def _capacity_limits(capacity: int | None) -> list[str]:
    """`--limit` flags that let a sidecar hold `capacity` connections on one listener and to one
    cluster (Envoy's and Kuma's defaults, 8192 and 1024, are below what some scenarios hold)."""
    if not capacity:
        return []
    room = str(capacity + 100)
    return ["--limit", f"max_connections={room}", "--limit", f"max_upstream_connections={room}"]


@functools.cache
def _sidecar_run_help(python: str) -> str:
    from bench.context import REPO_ROOT, child_env

    try:
        done = subprocess.run([python, "-m", "sidecar", "run", "--help"], capture_output=True,
                              text=True, timeout=60, cwd=REPO_ROOT, env=child_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"error: {exc}"
    return done.stdout


class Pki:
    """The mesh CA of one run and the workload certificates it issued, in the run's work dir.

    Made with the functions `pysidecar certs init|issue` use (`sidecar.identity.ca`: an ECDSA
    P-256 CA, workload certificates with the Dataplane's SPIFFE and `kuma://` URIs, as Kuma issues
    them), in this process: a `certs` subprocess per certificate would add seconds to every
    mTLS measurement's start."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.dir = ctx.work / "pki"
        self.ca = self.dir / "ca.crt"
        self._authority = None

    def issue(self, dataplane: FilePath) -> tuple[FilePath, FilePath]:
        """The certificate and key for this Dataplane file (the CA is made on first use)."""
        from sidecar.config.dataplane import ConfigError, load_dataplane
        from sidecar.identity import ca

        if self._authority is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._authority = ca.create_ca(MESH)
            ca.write_cert_key(self.ca, self.dir / "ca.key", self._authority)
        try:
            loaded = load_dataplane(dataplane)
            issued = ca.issue_workload(self._authority.cert, self._authority.key, loaded)
        except (ConfigError, ca.IssueError) as exc:
            raise BenchError(f"cannot issue a certificate for {dataplane}: {exc}") from exc
        out = self.dir / dataplane.parent.name
        out.mkdir(parents=True, exist_ok=True)
        cert, key = out / f"{loaded.name}.crt", out / f"{loaded.name}.key"
        ca.write_cert_key(cert, key, issued)
        return cert, key


def _pki(ctx: Context) -> Pki:
    pki = getattr(ctx, "_pki", None)
    if pki is None:
        pki = Pki(ctx)
        ctx._pki = pki  # type: ignore[attr-defined]
    return pki


class SidecarPairMtls(SidecarPair):
    name = "pair-mtls"
    description = ("as `pair`, with mesh mTLS on the hop (SPIFFE identities, ECDSA P-256 "
                   "certificates as `pysidecar certs` issues them, TLS 1.3; HTTP/1.1 rides HTTP/2 "
                   "inside it)")
    mtls = True

    def unavailable(self) -> str | None:
        import sys

        text = _sidecar_run_help(sys.executable)
        if "--cert" not in text or "--ca" not in text:
            return ("this checkout's sidecar has no mTLS options yet (`--ca/--cert/--key`: "
                    "the mtls branch has not landed)")
        return None

    def _credentials(self, ctx: Context, dataplane: FilePath) -> list[str]:
        pki = _pki(ctx)
        cert, key = pki.issue(dataplane)
        return ["--ca", str(pki.ca), "--cert", str(cert), "--key", str(key)]


HAPROXY_GLOBAL = """\
global
    nbthread 1
    maxconn {maxconn}
    tune.bufsize 16384
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-server-options ssl-min-ver TLSv1.2

defaults
    mode {mode}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    timeout http-keep-alive 120s
{http_defaults}
"""

HAPROXY_A = HAPROXY_GLOBAL + """
frontend app_in
    bind {host}:{port}{bind_proto}
{reason}    default_backend mesh

backend mesh
    server peer {host}:{peer}{hop_client}
"""

HAPROXY_B = HAPROXY_GLOBAL + """
frontend mesh_in
    bind {host}:{port}{hop_server}
    default_backend app

backend app
    server app {host}:{app}{server_proto}
"""


class HAProxyPair(Path):
    """client → HAProxy A → (mTLS; HTTP/2 for L7) → HAProxy B → server: the reference pair."""

    name = "haproxy"
    description = ("client → HAProxy A → HAProxy B → server: the reference C proxy pair, one "
                   "thread each; HTTP/1.1 (h2c for http2/grpc) in and out, HTTP/2 over mTLS "
                   "between the two (ALPN h2, client certificates verified against the mesh CA); "
                   "mode tcp over mTLS for tcp scenarios")
    tls = True

    def unavailable(self) -> str | None:
        if shutil.which("haproxy") is None:
            return "haproxy is not installed"
        return None

    @contextlib.contextmanager
    def open(self, ctx: Context, server_port: int, label: str, protocol: str = "tcp",
             capacity: int | None = None) -> Iterator[Route]:
        work = ctx.work / f"haproxy-{label}"
        work.mkdir(parents=True)
        front, peer = free_port(), free_port()
        l7 = protocol in L7_PROTOCOLS
        h2_app = protocol in ("http2", "grpc")
        if self.tls:
            # The same certificates as the mTLS sidecar pair: workload certificates of the two
            # Dataplanes, from the mesh CA (HAProxy checks the chain, not the SPIFFE URI).
            pki = _pki(ctx)
            pems = {}
            for name, text in (("bench-client", DATAPLANE_CLIENT),
                               ("bench-server", DATAPLANE_SERVER)):
                dp = work / f"{name}.yaml"
                dp.write_text(text.format(host=HOST, admin=free_port(), inbound=free_port(),
                                          service=free_port(), outbound=free_port(),
                                          protocol=protocol))
                cert, key = pki.issue(dp)
                pem = work / f"{name}.pem"
                pem.write_bytes(cert.read_bytes() + key.read_bytes())
                pems[name] = pem
            alpn = " alpn h2" if l7 else ""
            # Workload certificates carry SPIFFE URIs, no DNS name: A checks that B's chain leads
            # to the mesh CA and sends no SNI (with one, HAProxy would match it to DNS names).
            hop_client = f" ssl verify required ca-file {pki.ca} crt {pems['bench-client']}{alpn}"
            hop_server = f" ssl crt {pems['bench-server']} ca-file {pki.ca} verify required{alpn}"
        else:
            # h2c prior knowledge on the hop for L7, as the plaintext sidecar pair does.
            hop_client = hop_server = " proto h2" if l7 else ""
        common = {
            "host": HOST,
            # HAProxy counts a proxied connection once and reserves two descriptors for it.
            "maxconn": max(4000, (capacity or 0) + 100),
            "mode": "http" if l7 else "tcp",
            "http_defaults": "    option http-keep-alive\n    http-reuse always\n" if l7 else "",
        }
        config_b = HAPROXY_B.format(**common, port=peer, hop_server=hop_server, app=server_port,
                                    server_proto=" proto h2" if h2_app else "")
        # A status line that comes from HTTP/2 has no reason phrase ("HTTP/1.1 200 "), which is
        # valid, but h2load (llhttp) then records no status and counts the request as failed:
        # A puts "OK" back on 200s for HTTP/1.1 clients (one cheap rule per response).
        reason = ("    http-response set-status 200 reason OK if { status 200 }\n"
                  if l7 and not h2_app else "")
        config_a = HAPROXY_A.format(**common, port=front, peer=peer, hop_client=hop_client,
                                    bind_proto=" proto h2" if h2_app else "", reason=reason)
        procs: list[Proc] = []
        try:
            for role, slot, config, port in (("haproxy-b", 1, config_b, peer),
                                             ("haproxy-a", 0, config_a, front)):
                path = work / f"{role}.cfg"
                path.write_text(config)
                check = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)],
                                       capture_output=True, text=True, timeout=30)
                if check.returncode != 0:
                    raise BenchError(f"haproxy rejected {path.name}:\n{check.stdout}"
                                     f"{check.stderr}\n{config}")
                proc = ctx.procs.spawn(role, ["haproxy", "-db", "-f", str(path)],
                                       log_name=f"{label}-{role}",
                                       cpus=ctx.pinning.cpus_for(f"proxy{slot}"))
                procs.append(proc)
                wait_until(lambda p=port: listening(p), 15, f"{role} listening", proc)
            procs.reverse()
            yield Route(front, procs)
        finally:
            for proc in procs:
                ctx.procs.stop(proc)


def _read(proc: Proc) -> str:
    try:
        return proc.log.read_text(errors="replace") if proc.log else ""
    except OSError:
        return ""


class HAProxyPlainPair(HAProxyPair):
    name = "haproxy-plain"
    description = ("as `haproxy` with a plaintext hop (h2c prior knowledge between the two for "
                   "L7, plain mode tcp for tcp scenarios): the like-for-like reference of `pair`")
    tls = False


PATHS: dict[str, Path] = {
    p.name: p
    for p in (Direct(), SidecarPair(), SidecarPairMtls(), HAProxyPair(), HAProxyPlainPair())
}

# Other names a path is known by (`--path mtls-pair`, as the mtls branch called it).
PATH_ALIASES: dict[str, str] = {"mtls-pair": "pair-mtls"}
