"""mTLS on the hop between sidecars, end to end: sidecars started through the CLI with mesh
credentials, real sockets on 127.0.0.1, `openssl s_client` as the foreign client.

Data-path tests run under uvloop and asyncio (the `mesh` fixture)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from sidecar.identity import ca
from sidecar.identity.tls import peer_uris
from tests.observe_support import admin_port, get
from tests.pki import (
    OPENSSL,
    Pki,
    answer,
    ask,
    client_context,
    log_count,
    mtls_pair,
    s_client,
    tls_ask,
)
from tests.support import LOOPBACK, Sidecar, echo, free_port, recv_all, wait_for, wait_ready

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl CLI")


# --- the hop -------------------------------------------------------------------------------------


def test_tcp_rides_mtls_between_sidecars_with_the_callers_identity_and_resumes(mesh, pki):
    pair = mtls_pair(mesh, pki)
    for i in range(3):
        assert ask(pair.outbound, b"hello %d\n" % i) == b"hello %d\n" % i
    log = pair.backend.log
    assert "event=mtls_enabled mode=strict mesh=default identity=spiffe://default/backend" in log
    accepted = [line for line in log.splitlines() if "event=mtls_accepted" in line]
    assert len(accepted) == 3
    assert all(
        "identity=spiffe://default/web version=TLSv1.3 alpn=kuma" in line for line in accepted
    )
    # The first connection is a full handshake; the next ones resume its TLS 1.3 session (and
    # the identity is still the verified one).
    assert [line.endswith("resumed=True") for line in accepted] == [False, True, True]


def test_outbound_speaks_kumas_wire_conventions(mesh, pki, tmp_path):
    """A hand-made peer (Python ssl) records what our outbound presents: SNI, ALPN, version and
    the client certificate's SPIFFE id."""
    seen: dict[str, object] = {}
    pki.issue("backend-1", "backend")
    pki.issue("web-1", "web")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(pki.dir / "backend-1.crt"), str(pki.dir / "backend-1.key"))
    server_ctx.load_verify_locations(str(pki.ca_path))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.set_alpn_protocols(["kuma"])

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen["sni"] = name

    server_ctx.sni_callback = sni

    def handler(raw: socket.socket) -> None:
        with server_ctx.wrap_socket(raw, server_side=True) as conn:
            seen["alpn"] = conn.selected_alpn_protocol()
            seen["version"] = conn.version()
            seen["uris"] = peer_uris(conn)
            while data := conn.recv(1024):
                conn.sendall(data)

    peer = mesh.server(handler)
    mesh.write(
        "backend-1",
        [{"port": peer.port, "servicePort": free_port(), "tags": {"kuma.io/service": "backend"}}],
    )
    web, outbound = mesh.client("web-1")
    mesh.start(web, *pki.args("web-1"))
    assert ask(outbound) == b"ping\n"
    assert seen["sni"] == "backend{mesh=default}"
    assert seen["alpn"] == "kuma"
    assert seen["version"] == "TLSv1.3"
    assert seen["uris"] == ["spiffe://default/web", "kuma://kuma.io/service/web"]


# --- strict inbound ------------------------------------------------------------------------


@needs_openssl
def test_strict_inbound_refuses_plaintext_foreign_ca_and_wrong_identity(mesh, pki):
    pair = mtls_pair(mesh, pki)
    backend = pair.backend
    args = ["-CAfile", str(pki.ca_path), "-servername", "backend{mesh=default}", "-alpn", "kuma"]

    # The control: openssl with a mesh workload certificate gets through.
    good = s_client(pair.inbound, b"ping\n", *args, *_cert_args(pki, "web-1"), expect=b"ping")
    assert b"ping" in good

    # Plaintext.
    assert ask(pair.inbound, b"plain hello\n") == b""
    backend.wait_log("not TLS: first byte 0x70")

    # A certificate from another CA (same mesh name, same service name).
    foreign = Pki(pki.dir / "foreign")
    foreign.issue("web-1", "web")
    result = s_client(pair.inbound, b"ping\n", *args, *_cert_args(foreign, "web-1"))
    assert b"ping" not in result
    backend.wait_log("certificate verify failed: unable to get local issuer certificate")

    # Our CA, but the identity of another mesh: no spiffe://default/ id.
    pki.issue("intruder", "web", mesh="other")
    result = s_client(pair.inbound, b"ping\n", *args, *_cert_args(pki, "intruder"))
    assert b"ping" not in result
    backend.wait_log("client certificate has no spiffe://default/ identity")
    assert "found spiffe://other/web" in backend.log

    # No client certificate at all.
    result = s_client(pair.inbound, b"ping\n", *args)
    assert b"ping" not in result
    backend.wait_log("peer did not return a certificate")

    # Each refusal is one line naming the peer's address; the sidecar serves on.
    refusals = [line for line in backend.log.splitlines() if "event=tls_refused" in line]
    assert len(refusals) == 4, refusals
    assert all(f"listener=inbound:127.0.0.1:{pair.inbound} peer=127.0.0.1:" in r for r in refusals)
    assert ask(pair.outbound) == b"ping\n"


def _cert_args(pki: Pki, name: str) -> list[str]:
    return ["-cert", str(pki.dir / f"{name}.crt"), "-key", str(pki.dir / f"{name}.key")]


@needs_openssl
def test_mesh_hops_negotiate_aes_128_gcm(mesh, pki):
    """TLS 1.3 hops prefer TLS_AES_128_GCM_SHA256 (Envoy's choice on AES hardware; OpenSSL's
    default order starts with AES-256-GCM): between two sidecars (the inbound logs the suite),
    and when an OpenSSL client offers AES-256-GCM first (the inbound's order wins)."""
    pair = mtls_pair(mesh, pki)
    assert ask(pair.outbound) == b"ping\n"
    pair.backend.wait_log("cipher=TLS_AES_128_GCM_SHA256")
    args = ["-CAfile", str(pki.ca_path), "-servername", "backend{mesh=default}", "-alpn", "kuma"]
    out = s_client(
        pair.inbound, b"ping\n", "-brief", *args, *_cert_args(pki, "web-1"), expect=b"ping\n"
    )
    assert b"Ciphersuite: TLS_AES_128_GCM_SHA256" in out
    assert b"Protocol version: TLSv1.3" in out


@needs_openssl
def test_expired_and_not_yet_valid_client_certificates_are_refused(mesh, pki):
    pair = mtls_pair(mesh, pki)
    args = ["-CAfile", str(pki.ca_path), "-alpn", "kuma"]
    now = datetime.now(UTC)
    pki.issue("expired", "web", now=now - timedelta(days=2), valid_for=timedelta(hours=1))
    pki.issue("early", "web", now=now + timedelta(days=2))
    for name, reason in (
        ("expired", "certificate has expired"),
        ("early", "certificate is not yet valid"),
    ):
        result = s_client(pair.inbound, b"ping\n", *args, *_cert_args(pki, name))
        assert b"ping" not in result
        pair.backend.wait_log(f"certificate verify failed: {reason}")
    assert ask(pair.outbound) == b"ping\n"


def test_garbage_instead_of_a_client_hello_is_refused_and_the_listener_serves_on(mesh, pki):
    pair = mtls_pair(mesh, pki)
    garbage = [
        b"\x16\x03\x01\x00\x20" + bytes(range(32)),  # a handshake record holding no ClientHello
        b"\x16\xff\xff\xff\xff" + b"\xaa" * 64,  # a TLS-looking first byte, then nonsense
        bytes(range(255, 0, -1)),  # not TLS at all
    ]
    for data in garbage:
        # Nothing but, for a TLS-looking start, OpenSSL's alert (on a tcp inbound the handshake
        # runs on the socket itself, as Envoy's does, and the alert is sent before the close).
        reply = ask(pair.inbound, data)
        assert reply == b"" or (reply[:1] == b"\x15" and len(reply) == 7), reply
    wait_for(
        lambda: log_count(pair.backend, "event=tls_refused") == len(garbage),
        what="one refusal per connection",
    )
    assert ask(pair.outbound) == b"ping\n"
    # A handshake that stops half-way does not hold other connections up either.
    with socket.create_connection((LOOPBACK, pair.inbound)) as stuck:
        stuck.sendall(b"\x16\x03\x01")
        assert ask(pair.outbound) == b"ping\n"


# --- outbound identity checks and failover ---------------------------------------------------


def test_outbound_refuses_a_peer_with_the_wrong_identity_and_fails_over(mesh, pki):
    good_app = mesh.server(answer(b"good\n"))
    leaked: list[bytes] = []
    evil_app = mesh.server(answer(b"evil\n", leaked))
    good, _ = mesh.backend("backend-good", good_app.port)
    evil, _ = mesh.backend("backend-evil", evil_app.port)
    web, outbound = mesh.client("web-1")
    pki.issue("backend-good", "backend")
    pki.issue("backend-evil", "payments")  # a mesh member, but not a backend
    pki.issue("web-1", "web")
    _, impostor, client = wait_ready(
        mesh.start(good, *pki.args("backend-good"), ready=False),
        mesh.start(evil, *pki.args("backend-evil"), ready=False),
        mesh.start(web, *pki.args("web-1"), ready=False),
    )
    assert "event=certificate_misses_services" in impostor.log  # it says so at start
    assert [ask(outbound) for _ in range(8)] == [b"good\n"] * 8
    client.wait_log("peer is not spiffe://default/backend (found spiffe://default/payments")
    # The evil peer's sidecar may have started its app connection, but no byte reached it.
    assert leaked == []


def http_answer(text: bytes):
    """A minimal keep-alive HTTP/1.1 app answering `text` to every request."""
    response = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(text), text)

    def handler(conn: socket.socket) -> None:
        buffer = b""
        while data := conn.recv(65536):
            buffer += data
            while b"\r\n\r\n" in buffer:
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                conn.sendall(response)

    return handler


def test_http_outbound_fails_over_from_a_peer_with_the_wrong_identity(mesh, pki):
    """The same check on the HTTP/2 connections of the mesh pool: requests go to the good peer."""
    good_app = mesh.server(http_answer(b"good"))
    evil_app = mesh.server(http_answer(b"evil"))
    tags = {"kuma.io/protocol": "http"}
    good, _ = mesh.backend("backend-good", good_app.port, tags=tags)
    evil, _ = mesh.backend("backend-evil", evil_app.port, tags=tags)
    web, outbound = mesh.client("web-1")
    pki.issue("backend-good", "backend")
    pki.issue("backend-evil", "payments")
    pki.issue("web-1", "web")
    _, _, client = wait_ready(
        mesh.start(good, *pki.args("backend-good"), ready=False),
        mesh.start(evil, *pki.args("backend-evil"), ready=False),
        mesh.start(web, *pki.args("web-1"), ready=False),
    )
    conn = http.client.HTTPConnection(LOOPBACK, outbound, timeout=10)
    answers = []
    for _ in range(8):
        conn.request("GET", "/")
        answers.append(conn.getresponse().read())
    conn.close()
    assert answers == [b"good"] * 8
    client.wait_log("peer is not spiffe://default/backend (found spiffe://default/payments")


@needs_openssl
def test_a_peer_refusing_our_certificate_after_a_tls13_handshake_fails_that_endpoint(
    mesh, pki, tmp_path
):
    """TLS 1.3: the client's handshake ends before the server checks the client certificate.
    A peer that trusts another CA refuses us with an alert only then; the outbound still treats
    it as a failed connect and moves on."""
    import subprocess

    good_app = mesh.server(answer(b"good\n"))
    good, _ = mesh.backend("backend-good", good_app.port)
    picky_port = free_port()
    mesh.write(
        "backend-picky",
        [{"port": picky_port, "servicePort": free_port(), "tags": {"kuma.io/service": "backend"}}],
    )
    web, outbound = mesh.client("web-1")
    pki.issue("backend-good", "backend")
    pki.issue("backend-picky", "backend")
    pki.issue("web-1", "web")
    foreign = Pki(tmp_path / "foreign")
    picky = subprocess.Popen(
        [
            OPENSSL, "s_server", "-accept", str(picky_port), "-naccept", "100",
            "-cert", str(pki.dir / "backend-picky.crt"), "-key", str(pki.dir / "backend-picky.key"),
            "-CAfile", str(foreign.ca_path), "-Verify", "1", "-verify_return_error",
            "-alpn", "kuma", "-tls1_3", "-rev", "-quiet",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: _port_listening(picky_port), what="openssl s_server")
        _, client = wait_ready(
            mesh.start(good, *pki.args("backend-good"), ready=False),
            mesh.start(web, *pki.args("web-1"), ready=False),
        )
        assert [ask(outbound) for _ in range(6)] == [b"good\n"] * 6
        client.wait_log("peer refused our certificate right after the handshake")
    finally:
        picky.kill()
        picky.wait()


def _port_listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


# --- permissive ----------------------------------------------------------------------------


def test_permissive_inbound_takes_mtls_from_peers_and_plaintext_from_others(mesh, pki):
    pair = mtls_pair(mesh, pki, backend_args=("--mtls", "permissive"))
    assert "event=mtls_enabled mode=permissive" in pair.backend.log
    for _ in range(2):
        assert ask(pair.outbound, b"via mesh\n") == b"via mesh\n"
        assert ask(pair.inbound, b"plaintext\n") == b"plaintext\n"
    der, reply = tls_ask(pair.inbound, client_context(pki, "web-1"))
    assert reply == b"ping\n"
    assert der == ca.load_certificate(pki.dir / "backend-1.crt").public_bytes(Encoding.DER)
    accepted = log_count(pair.backend, "event=mtls_accepted")
    assert accepted == 3  # two through web's sidecar, one by hand; plaintext is not mTLS
    # A plaintext client of a server that speaks first: silent, it is taken as plaintext.
    greeter = mesh.server(lambda conn: conn.sendall(b"welcome\n") or conn.recv(10))
    greeted, port = mesh.backend("greeter-1", greeter.port, service="greeter")
    pki.issue("greeter-1", "greeter")
    mesh.start(greeted, *pki.args("greeter-1"), "--mtls", "permissive")
    with socket.create_connection((LOOPBACK, port), timeout=10) as conn:
        assert conn.recv(100) == b"welcome\n"


def test_listeners_stay_plaintext_without_credentials(mesh):
    app = mesh.server(echo)
    backend, inbound = mesh.backend("backend-1", app.port)
    web, outbound = mesh.client("web-1")
    b, _ = wait_ready(
        mesh.start(backend, ready=False),
        mesh.start(web, ready=False),
    )
    assert ask(outbound) == b"ping\n"
    assert ask(inbound, b"direct\n") == b"direct\n"
    assert "event=mtls_enabled" not in b.log


def test_half_close_crosses_an_mtls_hop(mesh_uvloop, pki):
    def reply_after_eof(conn: socket.socket) -> None:
        conn.sendall(recv_all(conn).upper())

    pair = mtls_pair(mesh_uvloop, pki, reply_after_eof)
    with socket.create_connection((LOOPBACK, pair.outbound), timeout=10) as conn:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        assert recv_all(conn) == b"HELLO"


# --- what a sidecar loads ------------------------------------------------------------------------


def maps_cryptography(sidecar: Sidecar) -> bool:
    """Whether the sidecar process has the `cryptography` package's native code mapped: any import
    of `cryptography.x509` or `.hazmat` loads its Rust extension (some 10 MB of RSS)."""
    maps = Path(f"/proc/{sidecar.proc.pid}/maps").read_text()
    return f"{os.sep}cryptography{os.sep}" in maps


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/<pid>/maps")
def test_sidecars_with_credentials_from_files_serve_mtls_without_loading_cryptography(mesh, pki):
    pair = mtls_pair(mesh, pki)
    assert ask(pair.outbound, b"hello\n") == b"hello\n"
    pair.backend.wait_log("event=mtls_accepted")
    assert "identity=spiffe://default/web" in pair.backend.log
    # /certs reads the certificates in use too.
    certs = json.loads(get(admin_port(pair.backend.dataplane_file), "/certs"))
    [chain] = certs["certificates"][0]["cert_chain"]
    assert chain["subject_alt_names"][0] == {"uri": "spiffe://default/backend"}
    assert not maps_cryptography(pair.backend)
    assert not maps_cryptography(pair.web)
    # The check sees it where it is loaded: in dev mode the sidecar issues its own certificate.
    app = mesh.server(echo)
    dev_file, _ = mesh.backend("dev-1", app.port, service="dev")
    dev = mesh.start(dev_file, "--ca", str(pki.ca_path), "--ca-key", str(pki.ca_key_path))
    assert "dev_mode=issued" in dev.log
    assert maps_cryptography(dev)
