"""Probes: virtual probes for the platform, service probes of the local app, and how health spreads.

- Virtual probes (Kuma's `probes`): a plain-HTTP server on `probes.port` that answers each
  `endpoints[].path` by sending a GET to `127.0.0.1:<inboundPort><inboundPath>` and returning the
  app's status and body. Unknown paths get 404; an app that does not answer gets 503.
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
  /drain_listeners) or after /healthcheck/fail, every inbound is listed not ready, as Kuma does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import h11
import yaml

from sidecar.config import model
from sidecar.config.mesh import HEALTH_KIND
from sidecar.observe.httpserver import Request, Response, text

log = logging.getLogger("sidecar.probes")

VIRTUAL_PROBE_TIMEOUT = 10.0
MAX_PROBE_BODY = 64 * 1024


# -- virtual probes -------------------------------------------------------------------------------


async def http_get(host: str, port: int, target: str, timeout: float) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET; (status, body up to 64 KiB). Raises OSError or TimeoutError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            conn = h11.Connection(h11.CLIENT)
            writer.write(
                conn.send(
                    h11.Request(
                        method="GET",
                        target=target,
                        headers=[
                            ("host", f"{host}:{port}"),
                            ("user-agent", "pysidecar-probe"),
                            ("connection", "close"),
                        ],
                    )
                )
                + conn.send(h11.EndOfMessage())
            )
            await writer.drain()
            status, body = 0, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    if len(body) < MAX_PROBE_BODY:
                        body += event.data[: MAX_PROBE_BODY - len(body)]
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, bytes(body)
        except h11.ProtocolError as exc:
            raise OSError(f"bad HTTP from the app: {exc}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class VirtualProbes:
    """The handler of the virtual probes port."""

    def __init__(self, probes: model.Probes) -> None:
        self.probes = probes

    async def handle(self, request: Request) -> Response:
        endpoint = next((e for e in self.probes.endpoints if e.path == request.path), None)
        if endpoint is None:
            return text(404, f"no probe at {request.path}\n")
        path = endpoint.inbound_path if endpoint.inbound_path.startswith("/") else "/"
        try:
            status, body = await http_get(
                "127.0.0.1", endpoint.inbound_port, path, VIRTUAL_PROBE_TIMEOUT
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
        return Response(status, body, content_type="text/plain; charset=utf-8")


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
