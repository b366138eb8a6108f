"""The demo, as a new user runs it."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def test_demo_once_sends_traffic_through_the_mesh_over_mtls_and_exits_0():
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all demo calls answered through the mesh, over mTLS" in result.stdout
    assert "mTLS: on (strict)" in result.stdout
    for backend in ("backend-v1", "backend-v2"):
        assert f"{backend}: 2 mTLS connection(s) from spiffe://default/web" in result.stdout
    replies = [line for line in result.stdout.splitlines() if "got: hello" in line]
    assert len(replies) == 4
    assert any("backend-v1" in r for r in replies) and any("backend-v2" in r for r in replies)
    # HTTP/1.1 at both apps, HTTP/2 between the sidecars: the upgrade, shown.
    assert "api-1 saw `GET /hello HTTP/1.1` from URI=spiffe://default/web" in result.stdout
    assert "api's inbound received 2 request(s) over HTTP/2 on 1 mesh connection(s)" in (
        result.stdout
    )
    # A websocket over an http-tagged service.
    assert "handshake: HTTP/1.1 101 Switching Protocols" in result.stdout
    assert "chat-1 echoes: hi" in result.stdout and "chat-1 echoes: bye" in result.stdout
