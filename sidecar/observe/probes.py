"""Probes: virtual probes for the platform, service probes of the local app, and how health spreads.

- Virtual probes (Kuma's `probes`): a plain-HTTP server on `probes.port` that proxies a GET on
  each `endpoints[].path` to `127.0.0.1:<inboundPort><inboundPath>`, the query string kept, with
  the caller's headers (less hop-by-hop ones), and returns the app's status, headers and body.
  Unknown paths and methods other than GET get 404; an app that does not answer gets 503.
- Service probes (an inbound's `serviceProbe`): a TCP connect to the app every `interval`, with
  `timeout`, and Kuma's healthy/unhealthy thresholds. An inbound whose app fails turns NotReady.
- Health reaches the other members through the mesh directory, our control plane: the sidecar
  keeps `<dataplane name>.health.yaml` next to the members, written atomically (os.replace):

      type: DataplaneHealth
      mesh: default
      name: backend-1
      inbound:
        - port: 10001
          ready: false

  `MeshSnapshot.endpoints` leaves out every inbound listed `ready: false`, so peers stop opening
  new connections to it within one mesh poll of the write. While the sidecar drains (SIGTERM,
  /drain_listeners) or after /healthcheck/fail, every inbound is listed not ready, as Kuma does
  (/drain_listeners leaves /ready as it is, as Envoy does; the inbounds it drains are listed
  not ready all the same, their listeners closing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import h11
import yaml

from sidecar.config import model
from sidecar.config.mesh import HEALTH_KIND
from sidecar.http.exchange import Headers, strip_hop_by_hop
from sidecar.observe.httpserver import Request, Response, text

log = logging.getLogger("sidecar.probes")

VIRTUAL_PROBE_TIMEOUT = 10.0
MAX_PROBE_BODY = 64 * 1024


# -- virtual probes -------------------------------------------------------------------------------


async def forward(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: Headers,
    body: bytes,
    timeout: float,
) -> tuple[int, Headers, bytes]:
    """One HTTP/1.1 exchange with the app: (status, headers, body up to 64 KiB).

    Raises OSError or TimeoutError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            conn = h11.Connection(h11.CLIENT)
            writer.write(
                conn.send(h11.Request(method=method, target=target, headers=headers))
                + (conn.send(h11.Data(data=body)) if body else b"")
                + conn.send(h11.EndOfMessage())
            )
            await writer.drain()
            status, response_headers, response_body = 0, [], bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status, response_headers = event.status_code, list(event.headers)
                elif isinstance(event, h11.Data):
                    room = MAX_PROBE_BODY - len(response_body)
                    if room > 0:
                        response_body += event.data[:room]
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, response_headers, bytes(response_body)
        except h11.ProtocolError as exc:
            raise OSError(f"bad HTTP from the app: {exc}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# Framing the probes server writes itself from the body it sends: the app's are left out.
_REFRAMED = frozenset({b"content-length", b"content-type"})


class VirtualProbes:
    """The handler of the virtual probes port: Kuma's probe listener, one route per endpoint.

    As Envoy does with the route Kuma generates: an exact match on the path (the query is not
    part of it) and on `GET` (any other method, like an unknown path, is a route miss: 404); the
    path is rewritten to `inboundPath`, the query string kept; the caller's headers, Host
    included (Kuma sets no host rewrite), go to the app less the hop-by-hop ones; the app's
    status, headers (less hop-by-hop) and body come back. An app that does not answer: 503."""

    def __init__(self, probes: model.Probes) -> None:
        self.probes = probes
        # Kuma matches and rewrites with the path part of each URL (Go's url.Parse(...).Path).
        self.routes = {
            urlsplit(e.path).path: (e, urlsplit(e.inbound_path).path or "/")
            for e in reversed(probes.endpoints)  # the first endpoint with a path wins
        }

    async def handle(self, request: Request) -> Response:
        route = self.routes.get(request.path) if request.method == "GET" else None
        if route is None:
            return text(404, f"no probe at {request.method} {request.path}\n")
        endpoint, path = route
        _, mark, query = request.target.partition("?")
        target = path + mark + query
        headers = strip_hop_by_hop(
            [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in request.headers
                if k != "content-length"
            ]
        )
        if not any(k == b"host" for k, _ in headers):  # an HTTP/1.0 caller may send none
            headers = [(b"host", f"127.0.0.1:{endpoint.inbound_port}".encode()), *headers]
        headers = [*headers, (b"connection", b"close")]  # one exchange per connection
        if request.body:
            headers.append((b"content-length", str(len(request.body)).encode()))
        try:
            status, app_headers, body = await forward(
                "127.0.0.1",
                endpoint.inbound_port,
                "GET",
                target,
                headers,
                request.body,
                VIRTUAL_PROBE_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            log.info(
                "event=virtual_probe_failed path=%s app=127.0.0.1:%d%s error=%r",
                request.path,
                endpoint.inbound_port,
                path,
                str(exc) or type(exc).__name__,
            )
            return text(503, f"app 127.0.0.1:{endpoint.inbound_port}{path} did not answer\n")
        app_headers = strip_hop_by_hop(app_headers)
        content_type = next((v for k, v in app_headers if k == b"content-type"), None)
        response = Response(
            status,
            body,
            headers=[
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in app_headers
                if k not in _REFRAMED
            ],
        )
        if content_type is not None:
            response.content_type = content_type.decode("latin-1")
        return response


# -- service probes -------------------------------------------------------------------------------


async def tcp_check(host: str, port: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except (OSError, TimeoutError):
        return False
    transport.close()
    return True


class ServiceProbe:
    """Checks one inbound's app; `on_change(port, healthy)` is called on each transition."""

    def __init__(self, inbound: model.Inbound, on_change: Callable[[int, bool], None]) -> None:
        assert inbound.service_probe is not None
        self.inbound = inbound
        self.probe = inbound.service_probe
        self.on_change = on_change
        self.healthy = True  # Kuma treats an inbound as ready until its probe says otherwise
        self._successes = 0
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        inbound, probe = self.inbound, self.probe
        while True:
            ok = await tcp_check(inbound.service_address, inbound.service_port, probe.timeout)
            self.observe(ok)
            await asyncio.sleep(probe.interval)

    def observe(self, ok: bool) -> None:
        if ok:
            self._successes += 1
            self._failures = 0
            if not self.healthy and self._successes >= self.probe.healthy_threshold:
                self._transition(True)
        else:
            self._failures += 1
            self._successes = 0
            if self.healthy and self._failures >= self.probe.unhealthy_threshold:
                self._transition(False)

    def _transition(self, healthy: bool) -> None:
        self.healthy = healthy
        inbound = self.inbound
        log.info(
            "event=service_probe_%s inbound=%s:%d app=%s:%d",
            "healthy" if healthy else "unhealthy",
            inbound.address,
            inbound.port,
            inbound.service_address,
            inbound.service_port,
        )
        self.on_change(inbound.port, healthy)


# -- health document ------------------------------------------------------------------------------


def health_document(mesh: str, name: str, ready: dict[int, bool]) -> dict[str, object]:
    return {
        "type": HEALTH_KIND,
        "mesh": mesh,
        "name": name,
        "inbound": [{"port": port, "ready": ok} for port, ok in sorted(ready.items())],
    }


def health_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.health.yaml"


class HealthReporter:
    """Keeps this dataplane's health document in the mesh directory current."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._written: dict[str, object] | None = None

    def publish(self, mesh: str, name: str, ready: dict[int, bool]) -> None:
        doc = health_document(mesh, name, ready)
        if doc == self._written:
            return
        path = health_path(self.directory, name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(
                "# written by pysidecar: the health of this dataplane's inbounds\n"
                + yaml.safe_dump(doc, sort_keys=False)
            )
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("event=health_write_failed file=%s error=%s", path, exc.strerror or exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        self._written = doc
        log.info(
            "event=health_published file=%s not_ready=%s",
            path.name,
            ",".join(str(p) for p, ok in sorted(ready.items()) if not ok) or "-",
        )
