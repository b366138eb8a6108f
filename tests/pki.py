"""Certificates for the mTLS tests, made in process with `sidecar.identity.ca` (ECDSA: fast).

`Pki(dir)` holds one mesh CA; `issue(name, service, ...)` writes `<name>.crt`/`.key` for a
dataplane serving `service`, and `args(name)` are the sidecar's command-line flags for them.
`mtls_pair` starts app <- backend sidecar <- web sidecar with credentials; `ask`/`tls_ask` are
one-connection clients; `s_client` drives `openssl s_client`.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from sidecar.config.dataplane import dataplane_from_document
from sidecar.identity import ca
from tests.support import LOOPBACK, Sidecar, TcpServer, echo, wait_ready

if TYPE_CHECKING:
    from tests.conftest import Mesh

OPENSSL = shutil.which("openssl")


def workload_dataplane(name: str, service: str, mesh: str = "default", **tags: str):
    """A Dataplane model with one inbound, only to name a certificate's identities."""
    doc = {
        "type": "Dataplane",
        "mesh": mesh,
        "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {"port": 1, "servicePort": 2, "tags": {"kuma.io/service": service, **tags}}
            ],
        },
    }
    return dataplane_from_document(doc, f"{name}.yaml")


class Pki:
    def __init__(self, directory: Path, mesh: str = "default") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mesh = mesh
        self.ca = ca.create_ca(mesh)
        self.ca_path = self.dir / "ca.crt"
        self.ca_key_path = self.dir / "ca.key"
        ca.write_certificate(self.ca_path, self.ca.cert)
        ca.write_private_key(self.ca_key_path, self.ca.key)

    def issue(
        self,
        name: str,
        service: str,
        *,
        mesh: str | None = None,
        authority: ca.CertKey | None = None,
        now: datetime | None = None,
        valid_for: timedelta = timedelta(hours=24),
        **tags: str,
    ) -> tuple[Path, Path]:
        """`<name>.crt` and `.key` for a workload of `service` (signed by this CA unless
        `authority` is given; `now` moves its validity window)."""
        dp = workload_dataplane(name, service, mesh or self.mesh, **tags)
        authority = authority or self.ca
        issued = ca.issue_workload(authority.cert, authority.key, dp, valid_for=valid_for, now=now)
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        ca.write_cert_key(cert, key, issued)
        return cert, key

    def args(self, name: str, ca_path: Path | None = None) -> list[str]:
        return [
            "--ca", str(ca_path or self.ca_path),
            "--cert", str(self.dir / f"{name}.crt"),
            "--key", str(self.dir / f"{name}.key"),
        ]  # fmt: skip

    def serial(self, name: str) -> int:
        return x509.load_pem_x509_certificate((self.dir / f"{name}.crt").read_bytes()).serial_number


def server_certificate(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """An app's own TLS: a CA (not the mesh's) and a server certificate for `host` (DNS SAN).

    Returns (ca.crt, server.crt, server.key) under `directory`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    app_ca = ca.create_ca(f"app-ca-{host}")
    key = ca.new_key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(app_ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(ca.random_serial())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(app_ca.key, hashes.SHA256())
    )
    paths = (directory / "app-ca.crt", directory / f"{host}.crt", directory / f"{host}.key")
    ca.write_certificate(paths[0], app_ca.cert)
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca.write_private_key(paths[2], key)
    return paths


def s_client(
    port: int, data: bytes, *args: str, expect: bytes | None = None, timeout: float = 15
) -> bytes:
    """`openssl s_client` to 127.0.0.1:port sending `data`: what it printed (stdout, stderr).

    It runs until the server closes the connection or, when `expect` is given, until that
    appears on stdout (then it is stopped: the connection of a good client stays open).
    """
    assert OPENSSL is not None
    proc = subprocess.Popen(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = bytearray()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it ended already (the server refused it): read what it printed
        while chunk := proc.stdout.read1(65536):
            out += chunk
            if expect is not None and expect in out:
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    return bytes(out)


# --- sidecars and clients -------------------------------------------------------------------


def ask(port: int, data: bytes = b"ping\n", timeout: float = 10.0) -> bytes:
    """One connection: send a line, return the first reply (b"" if closed without one)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as conn:
        conn.sendall(data)
        try:
            return conn.recv(1024)
        except ConnectionResetError:
            return b""


def answer(text: bytes, received: list[bytes] | None = None):
    """An app answering `text` to anything; what it got goes to `received`."""

    def handler(conn: socket.socket) -> None:
        while data := conn.recv(1024):
            if received is not None:
                received.append(data)
            conn.sendall(text)

    return handler


@dataclass
class Pair:
    backend: Sidecar
    web: Sidecar
    inbound: int  # the backend sidecar's inbound port (mTLS)
    outbound: int  # web's outbound to backend (plaintext, from the app)
    app: TcpServer | None  # None when the caller brought its own app


def mtls_pair(
    mesh: Mesh,
    pki: Pki,
    handler=echo,
    *,
    protocol: str | None = "tcp",
    backend_args: tuple[str, ...] = (),
    app_port: int | None = None,
) -> Pair:
    """app <- backend-1 (service backend) <- web-1 (service web), both with credentials; the
    app is a TcpServer running `handler`, or whatever listens on `app_port`. `protocol` None:
    backend's protocol is not declared (its sidecars sniff)."""
    app = mesh.server(handler) if app_port is None else None
    port = app.port if app is not None else app_port
    assert port is not None
    tags = {"kuma.io/protocol": protocol} if protocol is not None else {}
    backend, inbound = mesh.backend("backend-1", port, tags=tags)
    web, outbound = mesh.client("web-1")
    pki.issue("backend-1", "backend")
    pki.issue("web-1", "web")
    b = mesh.start(backend, *pki.args("backend-1"), *backend_args, ready=False)
    w = mesh.start(web, *pki.args("web-1"), ready=False)
    wait_ready(b, w)
    return Pair(b, w, inbound, outbound, app)


def client_context(pki: Pki, name: str, ca_path: Path | None = None) -> ssl.SSLContext:
    """A hand-made mesh client (what a peer sidecar presents), for direct inbound checks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca_path or pki.ca_path))
    ctx.load_cert_chain(str(pki.dir / f"{name}.crt"), str(pki.dir / f"{name}.key"))
    ctx.set_alpn_protocols(["kuma"])
    return ctx


def tls_ask(port: int, ctx: ssl.SSLContext, data: bytes = b"ping\n") -> tuple[bytes, bytes]:
    """mTLS straight to an inbound: (the server's certificate DER, the reply or b"")."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="backend{mesh=default}") as conn:
            der = conn.getpeercert(binary_form=True) or b""
            conn.sendall(data)
            try:
                return der, conn.recv(1024)
            except (ssl.SSLError, ConnectionResetError):
                return der, b""


def log_count(sidecar: Sidecar, text: str) -> int:
    return sidecar.log.count(text)
