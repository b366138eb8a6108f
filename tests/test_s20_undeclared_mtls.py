"""HTTP through an mTLS hop into an undeclared service: the inbound tells HTTP/2 from bytes after
the handshake, on the relay's own TLS transport (`sidecar.transport.tls_transport`), which it
keeps for either (bytes get half-close: tests/test_mtls_relay.py). HTTP/2 rides that transport
here, so what the HTTP path relies on must hold on it: requests and answers whole, large bodies
both ways under flow control, HTTP/1.1 back to the app when the caller spoke it (the orig-proto
header), h2c when it spoke h2c, the verified caller in x-forwarded-client-cert, and many
requests at once on the one mesh connection. Every test runs under uvloop and asyncio."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.apps import Hypercorn
from tests.pki import mtls_pair
from tests.support import LOOPBACK, http_call

MiB = 1024 * 1024


@pytest.fixture
def app():
    server = Hypercorn()
    yield server
    server.close()


def test_http1_through_the_hop_into_an_undeclared_service(mesh, pki, app):
    pair = mtls_pair(mesh, pki, protocol=None, app_port=app.port)
    upload = bytes(range(256)) * (16 * MiB // 256)
    status, body = http_call(pair.outbound, "POST", "/upload", upload, timeout=30)
    assert status == 200, body
    seen: dict[str, Any] = json.loads(body)
    assert seen["http_version"] == "1.1", "sniffed HTTP/1.1 reaches the app as HTTP/1.1"
    assert (seen["body_size"], seen["body_sha256"]) == (
        len(upload),
        hashlib.sha256(upload).hexdigest(),
    )
    headers = dict(seen["headers"])
    assert headers["x-forwarded-client-cert"] == "URI=spiffe://default/web"
    assert "l5d-orig-proto" not in headers, "the inbound strips the hop's own header"

    status, body = http_call(pair.outbound, "GET", f"/bytes/{32 * MiB}", timeout=30)
    assert (status, len(body), body.count(b"x")) == (200, 32 * MiB, 32 * MiB)


def test_many_requests_at_once_share_the_hop(mesh, pki, app):
    pair = mtls_pair(mesh, pki, protocol=None, app_port=app.port)

    def one(i: int) -> tuple[int, str]:
        status, body = http_call(pair.outbound, "GET", f"/n/{i}")
        return status, json.loads(body)["path"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    assert results == [(200, f"/n/{i}") for i in range(200)]


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_h2c_through_the_hop_into_an_undeclared_service(mesh, pki, app):
    pair = mtls_pair(mesh, pki, protocol=None, app_port=app.port)
    out = subprocess.run(
        ["curl", "-sS", "--fail", "--http2-prior-knowledge", "--max-time", "20",
         f"http://{LOOPBACK}:{pair.outbound}/h2c"],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    seen = json.loads(out.stdout)
    assert (seen["path"], seen["http_version"]) == ("/h2c", "2")
