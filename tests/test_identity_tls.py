"""Real mTLS handshakes on 127.0.0.1 between server_context and client_context.

The test server accepts plain TCP and upgrades with `start_tls` per connection, reading
`CredentialStore.server_context` each time, as the inbound will. It reports every outcome on a
queue, so the tests wait on outcomes, never on time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sidecar.config.dataplane import parse_dataplane
from sidecar.identity import ca, spiffe, tls
from sidecar.identity.spiffe import IdentityError
from sidecar.identity.tls import CredentialsError, CredentialStore, MeshCredentials

MESH = "default"
TIMEOUT = 10.0


def der(cert: x509.Certificate) -> bytes:
    """The DER of a `cryptography` certificate, to compare with `MeshCredentials` (which holds
    `certinfo.Certificate`s: a sidecar does not load `cryptography`)."""
    return cert.public_bytes(Encoding.DER)


def dataplane(name: str, service: str, mesh: str = MESH, **tags: str):
    extra = "".join(f"\n        {k}: {v}" for k, v in tags.items())
    return parse_dataplane(
        f"""
type: Dataplane
mesh: {mesh}
name: {name}
networking:
  address: 127.0.0.1
  inbound:
    - port: 10001
      servicePort: 8080
      tags:
        kuma.io/service: {service}{extra}
""",
        f"{name}.yaml",
    )


@dataclass
class Party:
    """A directory holding one CA bundle, one certificate and its key."""

    dir: Path

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.dir / "ca.crt", self.dir / "tls.crt", self.dir / "tls.key"

    def creds(self) -> MeshCredentials:
        return MeshCredentials.load(*self.paths)


def make_party(
    root: Path,
    name: str,
    issuer: ca.CertKey,
    service: str,
    *,
    trust: tuple[ca.CertKey, ...] | None = None,
    mesh: str = MESH,
    rsa: bool = False,
    **tags: str,
) -> Party:
    party = Party(root / name)
    party.dir.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_workload(
        issuer.cert, issuer.key, dataplane(name, service, mesh, **tags), rsa=rsa
    )
    ca.write_certificate(party.paths[0], *(t.cert for t in (trust or (issuer,))))
    ca.write_cert_key(party.paths[1], party.paths[2], issued)
    return party


def rotate_cert(party: Party, issuer: ca.CertKey, service: str) -> x509.Certificate:
    issued = ca.issue_workload(issuer.cert, issuer.key, dataplane("rotated", service))
    ca.write_cert_key(party.paths[1], party.paths[2], issued)
    return issued.cert


@dataclass
class Outcome:
    kind: str  # "ok" | "handshake" | "identity"
    service: str | None = None
    alpn: str | None = None
    version: str | None = None
    error: BaseException | None = None
    peer_serial: int | None = None


class MeshServer:
    """Plain TCP accept, then start_tls with the context of the moment, then the SPIFFE check."""

    def __init__(
        self, context: Callable[[], ssl.SSLContext], mesh: str = MESH, *, echo: bool = True
    ):
        self.context = context
        self.echo = echo
        self.mesh = mesh
        self.outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> MeshServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                await writer.start_tls(self.context(), ssl_handshake_timeout=TIMEOUT)
            except (TimeoutError, ssl.SSLError, OSError) as exc:
                self.outcomes.put_nowait(Outcome("handshake", error=exc))
                return
            ssl_object = writer.get_extra_info("ssl_object")
            try:
                service = tls.check_client(ssl_object, self.mesh)
            except IdentityError as exc:
                self.outcomes.put_nowait(Outcome("identity", error=exc))
                return
            self.outcomes.put_nowait(
                Outcome(
                    "ok",
                    service=service,
                    alpn=ssl_object.selected_alpn_protocol(),
                    version=ssl_object.version(),
                )
            )
            writer.write(f"hello {service}\n".encode())
            await writer.drain()
            while self.echo and (data := await reader.read(65536)):  # until the client closes
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def outcome(self) -> Outcome:
        return await asyncio.wait_for(self.outcomes.get(), TIMEOUT)


async def connect(port: int, context: ssl.SSLContext, service: str = "web"):
    return await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=context,
            server_hostname=tls.server_hostname(service, MESH),
            ssl_handshake_timeout=TIMEOUT,
        ),
        TIMEOUT,
    )


def raw_client_context(party: Party) -> ssl.SSLContext:
    """A client context built straight from files, for peers `MeshCredentials` would refuse."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(party.paths[0])
    ctx.load_cert_chain(party.paths[1], party.paths[2])
    ctx.set_alpn_protocols(["kuma"])
    return ctx


async def read_refused(reader: asyncio.StreamReader) -> bool:
    """True when the server refused us: an alert or EOF instead of its greeting."""
    try:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    except (ssl.SSLError, ConnectionError):
        return True
    return line == b""


def close(writer: asyncio.StreamWriter) -> None:
    writer.close()


@pytest.fixture
def mesh_ca() -> ca.CertKey:
    return ca.create_ca(MESH)


@pytest.fixture
def pair(tmp_path, mesh_ca):
    server = make_party(tmp_path, "backend", mesh_ca, "backend", version="v1")
    client = make_party(tmp_path, "web", mesh_ca, "web", version="v2")
    return server, client


# --- contexts -----------------------------------------------------------------------------------


def test_context_settings(pair):
    server, client = pair
    sctx = tls.server_context(server.creds())
    cctx = tls.client_context(client.creds())
    for ctx in (sctx, cctx):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.maximum_version in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3)
        assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert cctx.check_hostname is False
    assert tls.server_context(server.creds(), require_client_cert=False).verify_mode == (
        ssl.CERT_OPTIONAL
    )
    assert tls.server_hostname("db", "default", {"role": "primary"}) == (
        "db{mesh=default,role=primary}"
    )
    assert tls.server_hostname("x" * 70, "default") is None


async def test_mtls_handshake_identity_alpn_and_tls13(pair):
    server, client = pair
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        reader, writer = await connect(srv.port, tls.client_context(client.creds()), "backend")
        ssl_object = writer.get_extra_info("ssl_object")
        tls.check_server(ssl_object, MESH, "backend")
        assert ssl_object.selected_alpn_protocol() == "kuma"
        assert ssl_object.version() == "TLSv1.3"
        assert tls.peer_uris(ssl_object) == [
            "spiffe://default/backend",
            "kuma://kuma.io/service/backend",
            "kuma://version/v1",
        ]
        assert await reader.readline() == b"hello web\n"
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        outcome = await srv.outcome()
        assert (outcome.kind, outcome.service, outcome.alpn, outcome.version) == (
            "ok",
            "web",
            "kuma",
            "TLSv1.3",
        )
        close(writer)


async def test_tls12_peer_is_accepted(pair):
    server, client = pair
    cctx = tls.client_context(client.creds())
    cctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        reader, writer = await connect(srv.port, cctx)
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        assert await reader.readline() == b"hello web\n"
        assert (await srv.outcome()).alpn == "kuma"
        close(writer)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_tls11_peer_is_refused(pair):
    server, client = pair
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    try:
        cctx.minimum_version = ssl.TLSVersion.TLSv1_1
        cctx.maximum_version = ssl.TLSVersion.TLSv1_1
        cctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await connect(srv.port, cctx)
        assert (await srv.outcome()).kind == "handshake"


async def test_client_with_foreign_ca_certificate_is_refused(tmp_path, pair, mesh_ca):
    server, _ = pair
    foreign_ca = ca.create_ca(MESH)  # same mesh name, same subject, other key
    # The intruder trusts our CA (so its side of the handshake completes) and even claims the
    # right SPIFFE id, but its certificate is signed by another CA.
    intruder = make_party(tmp_path, "intruder", foreign_ca, "web", trust=(mesh_ca,))
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        try:
            reader, writer = await connect(srv.port, raw_client_context(intruder))
        except (ssl.SSLError, ConnectionError):
            pass  # TLS 1.2 would fail here; TLS 1.3 fails on the first read
        else:
            assert await read_refused(reader)
            close(writer)
        outcome = await srv.outcome()
        assert outcome.kind == "handshake"
        assert isinstance(outcome.error, ssl.SSLError)
        assert (
            "certificate verify failed" in str(outcome.error)
            or "unknown ca" in str(outcome.error).lower()
        )


@pytest.mark.parametrize(
    ("shift", "reason"), [(timedelta(days=-2), "expired"), (timedelta(days=1), "not yet valid")]
)
async def test_client_with_expired_or_future_certificate_is_refused(
    tmp_path, pair, mesh_ca, shift, reason
):
    server, _ = pair
    stale = Party(tmp_path / "stale")
    stale.dir.mkdir()
    issued = ca.issue_workload(
        mesh_ca.cert, mesh_ca.key, dataplane("stale", "web"), now=datetime.now(UTC) + shift
    )
    ca.write_certificate(stale.paths[0], mesh_ca.cert)
    ca.write_cert_key(stale.paths[1], stale.paths[2], issued)
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        try:
            reader, writer = await connect(srv.port, raw_client_context(stale))
        except (ssl.SSLError, ConnectionError):
            pass
        else:
            assert await read_refused(reader)
            close(writer)
        outcome = await srv.outcome()
        assert outcome.kind == "handshake"
        assert reason in str(outcome.error)


async def test_client_without_certificate_is_refused(pair):
    server, client = pair
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.load_verify_locations(server.paths[0])
    cctx.set_alpn_protocols(["kuma"])
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        try:
            reader, writer = await connect(srv.port, cctx)
        except (ssl.SSLError, ConnectionError):
            pass
        else:
            assert await read_refused(reader)
            close(writer)
        outcome = await srv.outcome()
        assert outcome.kind == "handshake"
        assert "certificate" in str(outcome.error).lower()


async def test_plaintext_client_is_refused(pair):
    server, _ = pair
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
        await writer.drain()
        outcome = await srv.outcome()
        assert outcome.kind == "handshake"
        assert isinstance(outcome.error, ssl.SSLError)
        try:
            rest = await asyncio.wait_for(reader.read(), TIMEOUT)
        except ConnectionError:
            rest = b""
        assert b"hello" not in rest and b"HTTP/1.1 200" not in rest
        close(writer)


async def test_garbage_instead_of_client_hello_is_refused(pair):
    server, _ = pair
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"\x16\x03\x01\x00\x05garbage-garbage-garbage")
        await writer.drain()
        assert (await srv.outcome()).kind == "handshake"
        close(writer)


async def test_client_of_another_mesh_is_refused_by_spiffe_check(tmp_path, pair, mesh_ca):
    server, _ = pair
    stranger = make_party(tmp_path, "stranger", mesh_ca, "web", mesh="other")
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        reader, writer = await connect(srv.port, tls.client_context(stranger.creds()))
        assert await read_refused(reader)
        outcome = await srv.outcome()
        assert outcome.kind == "identity"
        assert "spiffe://other/web" in str(outcome.error)
        assert "spiffe://default/" in str(outcome.error)
        close(writer)


async def test_wrong_server_identity_is_rejected_by_verify_server(pair):
    server, client = pair  # the server is backend; the client wanted payments
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        _, writer = await connect(srv.port, tls.client_context(client.creds()), "payments")
        with pytest.raises(IdentityError) as info:
            tls.check_server(writer.get_extra_info("ssl_object"), MESH, "payments")
        assert "spiffe://default/payments" in str(info.value)
        assert "spiffe://default/backend" in str(info.value)
        assert "spiffe://default/backend" in info.value.found
        close(writer)
        await srv.outcome()


async def test_server_from_foreign_ca_is_refused_by_client(tmp_path, pair):
    _, client = pair
    foreign = make_party(tmp_path, "fake-backend", ca.create_ca(MESH), "backend")
    async with MeshServer(lambda: tls.server_context(foreign.creds())) as srv:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(srv.port, tls.client_context(client.creds()), "backend")
        assert (await srv.outcome()).kind == "handshake"


async def test_rsa_and_ecdsa_peers_interoperate(tmp_path, mesh_ca):
    rsa_ca = ca.create_ca(MESH, rsa=True)
    server = make_party(tmp_path, "backend", rsa_ca, "backend", rsa=True, trust=(rsa_ca, mesh_ca))
    client = make_party(tmp_path, "web", mesh_ca, "web", trust=(rsa_ca, mesh_ca))
    async with MeshServer(lambda: tls.server_context(server.creds())) as srv:
        reader, writer = await connect(srv.port, tls.client_context(client.creds()), "backend")
        tls.check_server(writer.get_extra_info("ssl_object"), MESH, "backend")
        assert await reader.readline() == b"hello web\n"
        close(writer)


# --- openssl s_client as a third-party client --------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


async def run_openssl(*args: str, stdin: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT * 3)
    return proc.returncode, out.decode(errors="replace")


def openssl_foreign_client(directory: Path) -> tuple[Path, Path]:
    """A CA and a client certificate made by the openssl CLI alone, claiming our identity."""
    import subprocess

    directory.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=default", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2")  # fmt: skip
    run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=web", "-addext", "subjectAltName=URI:spiffe://default/web",
        "-keyout", "client.key", "-out", "client.csr")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "1",
        "-CAcreateserial", "-copy_extensions", "copy", "-out", "client.crt")  # fmt: skip
    return directory / "client.crt", directory / "client.key"


@needs_openssl
async def test_openssl_s_client_with_mesh_certificate_negotiates_kuma(pair):
    server, client = pair
    async with MeshServer(lambda: tls.server_context(server.creds()), echo=False) as srv:
        code, out = await run_openssl(
            "s_client", "-connect", f"127.0.0.1:{srv.port}", "-alpn", "kuma",
            "-servername", "backend{mesh=default}", "-CAfile", str(client.paths[0]),
            "-cert", str(client.paths[1]), "-key", str(client.paths[2]),
            "-verify_return_error", "-ign_eof",
        )  # fmt: skip
        outcome = await srv.outcome()
        assert outcome.kind == "ok" and outcome.service == "web"
        assert "ALPN protocol: kuma" in out
        assert "TLSv1.3" in out
        assert "hello web" in out


@needs_openssl
async def test_openssl_s_client_with_foreign_certificate_is_refused(tmp_path, pair):
    server, _ = pair
    cert, key = openssl_foreign_client(tmp_path / "openssl-foreign")
    async with MeshServer(lambda: tls.server_context(server.creds()), echo=False) as srv:
        code, out = await run_openssl(
            "s_client", "-connect", f"127.0.0.1:{srv.port}", "-alpn", "kuma",
            "-CAfile", str(server.paths[0]), "-cert", str(cert), "-key", str(key), "-ign_eof",
        )  # fmt: skip
        outcome = await srv.outcome()
        assert outcome.kind == "handshake"
        assert "certificate verify failed" in str(outcome.error)
        assert "hello" not in out
        assert "alert" in out.lower() or code != 0


@needs_openssl
async def test_openssl_s_client_without_certificate_is_refused(pair):
    server, _ = pair
    async with MeshServer(lambda: tls.server_context(server.creds()), echo=False) as srv:
        code, out = await run_openssl(
            "s_client", "-connect", f"127.0.0.1:{srv.port}", "-alpn", "kuma",
            "-CAfile", str(server.paths[0]), "-ign_eof",
        )  # fmt: skip
        assert (await srv.outcome()).kind == "handshake"
        assert "hello" not in out


# --- credentials --------------------------------------------------------------------------------


def test_credentials_load_errors_name_the_file(tmp_path, pair, mesh_ca):
    server, client = pair
    ca_path, cert_path, key_path = server.paths
    missing = tmp_path / "nope.crt"
    with pytest.raises(CredentialsError, match=f"^{missing}: CA certificate file not found"):
        MeshCredentials.load(missing, cert_path, key_path)
    with pytest.raises(CredentialsError, match=f"^{missing}: certificate file not found"):
        MeshCredentials.load(ca_path, missing, key_path)
    with pytest.raises(CredentialsError, match=f"^{missing}: private key file not found"):
        MeshCredentials.load(ca_path, cert_path, missing)
    # A key of another certificate.
    with pytest.raises(CredentialsError, match=f"^{client.paths[2]}: this key does not belong"):
        MeshCredentials.load(ca_path, cert_path, client.paths[2])
    # A certificate from another CA.
    other = make_party(tmp_path, "other", ca.create_ca(MESH), "x")
    with pytest.raises(CredentialsError, match="is not issued by any CA in"):
        MeshCredentials.load(ca_path, other.paths[1], other.paths[2])
    # Expired, and not yet valid.
    with pytest.raises(CredentialsError, match=f"^{cert_path}: certificate expired"):
        MeshCredentials.load(*server.paths, now=datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(CredentialsError, match="not valid before"):
        MeshCredentials.load(*server.paths, now=datetime.now(UTC) - timedelta(hours=1))
    # Unreadable.
    if os.geteuid() != 0:
        os.chmod(key_path, 0)
        with pytest.raises(CredentialsError, match="cannot read private key file"):
            MeshCredentials.load(*server.paths)


def test_credentials_expose_identity_and_expiry(pair, mesh_ca):
    server, _ = pair
    creds = server.creds()
    assert creds.identities[0] == "spiffe://default/backend"
    assert creds.first_expiring() == creds.not_after
    now = creds.not_before
    assert creds.days_until_first_expiring(now) == 1  # 24 h + 10 s from not-before
    assert creds.days_until_first_expiring(now + timedelta(hours=1)) == 0
    assert creds.days_until_first_expiring(now + timedelta(days=5)) == 0  # expired: 0
    assert tls.days_until_first_expiring([mesh_ca.cert], mesh_ca.cert.not_valid_before_utc) in (
        3649,
        3650,
    )
    assert tls.days_until_first_expiring([]) == 0


# --- rotation -----------------------------------------------------------------------------------


def peer_serial(writer: asyncio.StreamWriter) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def test_store_refresh_picks_up_a_rotated_certificate(pair, mesh_ca):
    server, client = pair
    store = CredentialStore.from_files(*server.paths)
    first_serial = store.credentials.cert.serial_number
    assert store.refresh() is False  # nothing changed
    cctx = tls.client_context(client.creds())
    async with MeshServer(lambda: store.server_context) as srv:
        old_reader, old_writer = await connect(srv.port, cctx, "backend")
        assert peer_serial(old_writer) == first_serial
        assert await old_reader.readline() == b"hello web\n"

        rotated = rotate_cert(server, mesh_ca, "backend")
        assert store.refresh() is True
        assert store.generation == 2
        assert store.credentials.cert.der == der(rotated)

        new_reader, new_writer = await connect(srv.port, cctx, "backend")
        assert peer_serial(new_writer) == rotated.serial_number
        assert await new_reader.readline() == b"hello web\n"
        # The connection opened before the rotation lives on.
        old_writer.write(b"still here")
        assert await old_reader.readexactly(10) == b"still here"
        close(old_writer)
        close(new_writer)


async def test_half_rotated_files_keep_the_working_credentials(pair, mesh_ca):
    server, client = pair
    store = CredentialStore.from_files(*server.paths)
    before = store.server_context
    # A new certificate lands before its key (a non-atomic rotation tool).
    issued = ca.issue_workload(mesh_ca.cert, mesh_ca.key, dataplane("r", "backend"))
    ca.write_certificate(server.paths[1], issued.cert)
    assert store.refresh() is False
    assert store.server_context is before
    assert "this key does not belong" in str(store.last_error)
    async with MeshServer(lambda: store.server_context) as srv:
        reader, writer = await connect(srv.port, tls.client_context(client.creds()), "backend")
        assert await reader.readline() == b"hello web\n"
        close(writer)
    # The key follows: the next refresh takes both.
    ca.write_private_key(server.paths[2], issued.key)
    assert store.refresh() is True
    assert store.credentials.cert.der == der(issued.cert)
    assert store.last_error is None
    # A file that disappears does not break the store either.
    os.unlink(server.paths[0])
    assert store.refresh() is False
    assert "CA certificate file not found" in str(store.last_error)


async def test_ca_bundle_with_old_and_new_ca_accepts_both(tmp_path, mesh_ca):
    old_ca, new_ca = mesh_ca, ca.create_ca(MESH)  # same subject name, different keys
    both = (old_ca, new_ca)
    server_new = make_party(tmp_path, "backend-new", new_ca, "backend", trust=both)
    server_old = make_party(tmp_path, "backend-old", old_ca, "backend", trust=both)
    client_old = make_party(tmp_path, "web-old", old_ca, "web", trust=both)
    client_new = make_party(tmp_path, "web-new", new_ca, "web", trust=both)
    for server in (server_old, server_new):
        async with MeshServer(lambda s=server: tls.server_context(s.creds())) as srv:
            for client in (client_old, client_new):
                reader, writer = await connect(srv.port, tls.client_context(client.creds()))
                tls.check_server(writer.get_extra_info("ssl_object"), MESH, "backend")
                assert await reader.readline() == b"hello web\n"
                assert (await srv.outcome()).kind == "ok"
                close(writer)
    # Without the new CA in its bundle, a server refuses clients of the new CA.
    only_old = make_party(tmp_path, "backend-only-old", old_ca, "backend")
    async with MeshServer(lambda: tls.server_context(only_old.creds())) as srv:
        try:
            reader, writer = await connect(srv.port, tls.client_context(client_new.creds()))
        except (ssl.SSLError, ConnectionError):
            pass
        else:
            assert await read_refused(reader)
            close(writer)
        assert (await srv.outcome()).kind == "handshake"


async def test_ca_rotation_through_the_store(tmp_path, mesh_ca):
    """Old CA -> bundle (old+new) -> certificate from the new CA, with no refused connection."""
    new_ca = ca.create_ca(MESH)
    server = make_party(tmp_path, "backend", mesh_ca, "backend")
    client = make_party(tmp_path, "web", mesh_ca, "web", trust=(mesh_ca, new_ca))
    store = CredentialStore.from_files(*server.paths)
    async with MeshServer(lambda: store.server_context) as srv:

        async def one() -> None:
            reader, writer = await connect(srv.port, tls.client_context(client.creds()))
            assert await reader.readline() == b"hello web\n"
            assert (await srv.outcome()).kind == "ok"
            close(writer)

        await one()
        ca.write_certificate(server.paths[0], mesh_ca.cert, new_ca.cert)
        assert store.refresh() is True
        await one()
        rotate_cert(server, new_ca, "backend")
        assert store.refresh() is True
        await one()


async def test_front_server_context_follows_rotation(pair, mesh_ca):
    server, client = pair
    store = CredentialStore.from_files(*server.paths)
    front = store.front_server_context()
    assert store.front_server_context() is front
    served = asyncio.Queue()

    async def handle(reader, writer):
        served.put_nowait(tls.check_client(writer.get_extra_info("ssl_object"), MESH))
        writer.write(b"hi\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=front)
    port = srv.sockets[0].getsockname()[1]
    try:
        cctx = tls.client_context(client.creds())
        reader, writer = await connect(port, cctx, "backend")
        assert peer_serial(writer) == store.credentials.cert.serial_number
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "kuma"
        assert await asyncio.wait_for(served.get(), TIMEOUT) == "web"
        close(writer)

        rotated = rotate_cert(server, mesh_ca, "backend")
        assert store.refresh() is True
        reader, writer = await connect(port, cctx, "backend")
        assert peer_serial(writer) == rotated.serial_number
        assert await reader.readline() == b"hi\n"
        assert await asyncio.wait_for(served.get(), TIMEOUT) == "web"
        close(writer)
        # Client verification is still on through the front context.
        bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bare.check_hostname = False
        bare.load_verify_locations(server.paths[0])
        try:
            reader, writer = await connect(port, bare, "backend")
        except (ssl.SSLError, ConnectionError):
            pass
        else:
            assert await read_refused(reader)
            close(writer)
        assert served.empty()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_front_server_context_follows_ca_rotation(tmp_path):
    old_ca, new_ca = ca.create_ca(MESH), ca.create_ca(MESH)
    server = make_party(tmp_path, "backend", old_ca, "backend")
    client = make_party(tmp_path, "web", new_ca, "web", trust=(old_ca, new_ca))
    store = CredentialStore.from_files(*server.paths)
    front = store.front_server_context()  # built while only the old CA is trusted
    served = asyncio.Queue()

    async def handle(reader, writer):
        served.put_nowait(tls.check_client(writer.get_extra_info("ssl_object"), MESH))
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=front)
    port = srv.sockets[0].getsockname()[1]
    try:
        ca.write_certificate(server.paths[0], old_ca.cert, new_ca.cert)
        assert store.refresh() is True
        reader, writer = await connect(port, tls.client_context(client.creds()), "backend")
        assert await asyncio.wait_for(served.get(), TIMEOUT) == "web"
        close(writer)
    finally:
        srv.close()
        await srv.wait_closed()


async def test_watch_notices_rotation(pair, mesh_ca):
    server, _ = pair
    store = CredentialStore.from_files(*server.paths)
    swapped = asyncio.Event()
    store.subscribe(lambda creds: swapped.set())
    task = asyncio.create_task(store.watch(interval=0.01))
    try:
        rotated = rotate_cert(server, mesh_ca, "backend")
        await asyncio.wait_for(swapped.wait(), TIMEOUT)
        assert store.credentials.cert.der == der(rotated)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_store_start_up_errors_name_the_file(tmp_path, pair):
    server, _ = pair
    with pytest.raises(CredentialsError, match=str(tmp_path / "missing.key")):
        CredentialStore.from_files(server.paths[0], server.paths[1], tmp_path / "missing.key")


# --- dev mode -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_dev_mode_issues_at_start_and_renews_at_80_percent(tmp_path, mesh_ca):
    ca.write_certificate(tmp_path / "ca.crt", mesh_ca.cert)
    ca.write_private_key(tmp_path / "ca.key", mesh_ca.key)
    clock = FakeClock(datetime.now(UTC))
    start = clock.now
    store = CredentialStore.dev(
        tmp_path / "ca.crt",
        tmp_path / "ca.key",
        dataplane("web-1", "web", version="v1"),
        tmp_path / "work",
        valid_for=timedelta(hours=10),
        clock=clock,
    )
    cert_file, key_file = tmp_path / "work" / "web-1.crt", tmp_path / "work" / "web-1.key"
    assert cert_file.exists()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    creds = store.credentials
    assert creds.identities == [
        "spiffe://default/web",
        "kuma://kuma.io/service/web",
        "kuma://version/v1",
    ]
    assert creds.not_before == (start - timedelta(seconds=10)).replace(microsecond=0)
    lifetime = creds.not_after - creds.not_before
    renew_at = store.renew_at()
    assert renew_at == creds.not_before + lifetime * 0.8
    assert store.renew_due(start) is False
    assert store.renew_due(renew_at - timedelta(seconds=1)) is False
    assert store.renew_due(renew_at) is True
    # Nothing due: a tick is only a file check.
    clock.now = start + timedelta(hours=7)
    assert store.tick() is False
    assert store.generation == 1
    # At 80 %: a new certificate, loaded.
    clock.now = start + timedelta(hours=8, seconds=1)
    assert store.tick() is True
    assert store.generation == 2
    assert store.credentials.cert.serial_number != creds.cert.serial_number
    assert store.credentials.not_after > creds.not_after
    assert store.renew_due() is False
    assert der(ca.load_certificate(cert_file)) == store.credentials.cert.der


def test_renew_is_a_no_op_outside_dev_mode(pair):
    server, _ = pair
    store = CredentialStore.from_files(*server.paths)
    assert store.renew_at() is None
    assert store.renew_due(datetime.now(UTC) + timedelta(days=365)) is False
    assert store.renew() is False


def test_dev_mode_errors(tmp_path, mesh_ca):
    ca.write_certificate(tmp_path / "ca.crt", mesh_ca.cert)
    with pytest.raises(CredentialsError, match="ca.key: private key file not found"):
        CredentialStore.dev(
            tmp_path / "ca.crt", tmp_path / "ca.key", dataplane("w", "web"), tmp_path / "work"
        )


async def test_dev_mode_peers_talk_mtls(tmp_path, mesh_ca):
    ca.write_certificate(tmp_path / "ca.crt", mesh_ca.cert)
    ca.write_private_key(tmp_path / "ca.key", mesh_ca.key)
    backend = CredentialStore.dev(
        tmp_path / "ca.crt", tmp_path / "ca.key", dataplane("b", "backend"), tmp_path / "b"
    )
    web = CredentialStore.dev(
        tmp_path / "ca.crt", tmp_path / "ca.key", dataplane("w", "web"), tmp_path / "w"
    )
    async with MeshServer(lambda: backend.server_context) as srv:
        reader, writer = await connect(srv.port, web.client_context, "backend")
        tls.check_server(writer.get_extra_info("ssl_object"), MESH, "backend")
        assert await reader.readline() == b"hello web\n"
        tags = spiffe.source_tags_from_uris(
            ["spiffe://default/web", "kuma://kuma.io/service/web"], MESH
        )
        assert tags == {"kuma.io/service": frozenset({"web"})}
        close(writer)
