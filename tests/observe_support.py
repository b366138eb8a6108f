"""Helpers for the observability tests: talk to a sidecar's admin API and metrics endpoint."""

from __future__ import annotations

import http.client
import json
import re
import socket
from pathlib import Path
from typing import Any

import yaml

from tests.support import LOOPBACK, recv_all


def request(
    port: int, path: str, method: str = "GET", host: str = LOOPBACK, timeout: float = 10
) -> tuple[int, str, dict[str, str]]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read().decode()
        return response.status, body, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def get(port: int, path: str) -> str:
    status, body, _ = request(port, path)
    assert status == 200, f"GET {path}: {status} {body}"
    return body


def post(port: int, path: str) -> str:
    status, body, _ = request(port, path, "POST")
    assert status == 200, f"POST {path}: {status} {body}"
    return body


def start_all(mesh: Any, *files: Any) -> list[Any]:
    """Start sidecars at once and wait until all are ready; a file may be (file, {kwargs})."""
    started = []
    for item in files:
        path, kw = item if isinstance(item, tuple) else (item, {})
        started.append(mesh.start(path, *kw.pop("args", ()), ready=False, **kw))
    return [s.wait_ready() for s in started]


def admin_port(dataplane_file: Path) -> int:
    return int(yaml.safe_load(dataplane_file.read_text())["networking"]["admin"]["port"])


def stats(port: int) -> dict[str, Any]:
    """Counters and gauges by Envoy stat name, from /stats?format=json."""
    doc = json.loads(get(port, "/stats?format=json"))
    return {item["name"]: item["value"] for item in doc["stats"] if "name" in item}


_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def series(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (labels exactly as written)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SERIES.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def exchange(port: int, payload: bytes, timeout: float = 10) -> bytes:
    """One TCP connection: send, half-close, read to EOF."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        return recv_all(c)
