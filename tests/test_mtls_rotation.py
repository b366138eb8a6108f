"""Credential rotation under continuous traffic: new connections pick up new certificates and a
new CA within seconds, connections already open live on, and not one connection fails."""

from __future__ import annotations

import socket
import threading

from sidecar.identity import ca
from tests.pki import Pki, ask, client_context, mtls_pair, tls_ask
from tests.support import LOOPBACK, wait_for


class Traffic:
    """New connections through a port, one after another, until stopped; counts outcomes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            data = b"call %d\n" % i
            try:
                reply = ask(self.port, data, timeout=5)
            except OSError as exc:
                self.failed.append(repr(exc))
                continue
            if reply == data:
                self.ok += 1
            else:
                self.failed.append(f"call {i}: {reply!r}")

    def wait_more(self, n: int = 20) -> None:
        target = self.ok + n
        wait_for(lambda: self.ok >= target or self.failed, 20, f"{n} more calls")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def served_serial(port: int, pki: Pki, client: str) -> int:
    """The serial of the certificate an inbound presents to a new connection now."""
    from cryptography import x509

    der, reply = tls_ask(port, client_context(pki, client))
    assert reply == b"ping\n"
    return x509.load_der_x509_certificate(der).serial_number


def test_certificate_rotation_under_traffic_fails_no_connection(mesh, pki):
    pair = mtls_pair(mesh, pki)
    old_serial = pki.serial("backend-1")
    long_lived = socket.create_connection((LOOPBACK, pair.outbound), timeout=10)
    long_lived.sendall(b"before\n")
    assert long_lived.recv(100) == b"before\n"
    traffic = Traffic(pair.outbound)
    try:
        traffic.wait_more()
        pki.issue("backend-1", "backend")
        pki.issue("web-1", "web")
        for sidecar in (pair.backend, pair.web):
            sidecar.wait_log("event=credentials_loaded generation=2")
        new_serial = pki.serial("backend-1")
        assert new_serial != old_serial
        assert served_serial(pair.inbound, pki, "web-1") == new_serial
        traffic.wait_more()
    finally:
        traffic.stop()
    assert traffic.failed == []
    assert traffic.ok >= 40
    long_lived.sendall(b"after\n")  # opened with the old certificates: it lives on
    assert long_lived.recv(100) == b"after\n"
    long_lived.close()


def test_ca_rotation_with_a_bundle_fails_no_connection(mesh, pki):
    pair = mtls_pair(mesh, pki)
    old_ca = pki.ca
    new_ca = ca.create_ca("default")
    traffic = Traffic(pair.outbound)
    try:
        traffic.wait_more()
        # 1. Trust both CAs everywhere.
        ca.write_certificate(pki.ca_path, old_ca.cert, new_ca.cert)
        for sidecar in (pair.backend, pair.web):
            sidecar.wait_log("event=credentials_loaded generation=2")
        traffic.wait_more()
        # 2. New certificates from the new CA, one sidecar after the other.
        pki.issue("backend-1", "backend", authority=new_ca)
        pair.backend.wait_log("event=credentials_loaded generation=3")
        traffic.wait_more()
        pki.issue("web-1", "web", authority=new_ca)
        pair.web.wait_log("event=credentials_loaded generation=3")
        traffic.wait_more()
        # 3. Retire the old CA.
        ca.write_certificate(pki.ca_path, new_ca.cert)
        for sidecar in (pair.backend, pair.web):
            sidecar.wait_log("event=credentials_loaded generation=4")
        traffic.wait_more()
    finally:
        traffic.stop()
    assert traffic.failed == []
    # A client still holding a certificate of the old CA is refused now.
    pki.issue("straggler", "web", authority=old_ca)
    old_bundle = pki.dir / "old-bundle.crt"
    ca.write_certificate(old_bundle, old_ca.cert, new_ca.cert)
    _, reply = tls_ask(pair.inbound, client_context(pki, "straggler", old_bundle))
    assert reply == b""
    pair.backend.wait_log("certificate verify failed")
    assert ask(pair.outbound) == b"ping\n"
