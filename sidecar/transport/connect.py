"""Connecting upstream: the one seam through which every data path opens a connection.

A `Connector` dials one endpoint and returns the connected transport, its protocol made by the
given factory. The TCP relay and the HTTP pools take one, so how a hop is made (plain TCP toward
a local app, mTLS with SPIFFE checks toward a peer sidecar: `sidecar.identity.mesh`) is chosen
where the listener is built, not in the data path. A connector counts the cluster's connect stats
(`upstream_cx_total`, `_connect_fail`, `_connect_timeout`, `_connect_ms`) and raises
`ConnectError`, whose message names the endpoint and the reason, when the endpoint cannot be
used; the caller then tries the next endpoint.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sidecar import defaults
from sidecar.observe.stats import ClusterStats

if TYPE_CHECKING:
    from sidecar.cluster import Target

ProtocolFactory = Callable[[], asyncio.Protocol]
Connector = Callable[["Target", ProtocolFactory], Awaitable[asyncio.BaseTransport]]


class ConnectError(Exception):
    """This endpoint could not be used (refused, timed out, wrong identity): try the next."""


def source_for(source: str | None, host: str) -> tuple[str, int] | None:
    """The local address to bind before connecting to `host`: `source` (an IPv4 address) when
    `host` is an IPv4 address too, its IPv6 counterpart (::6) when `host` is an IPv6 address,
    else None (let the kernel choose). Transparent proxying binds the sidecar's connections to
    its app to 127.0.0.6 or ::6, as Kuma's Envoy does, so that the redirection rules let them
    through instead of sending them back to the sidecar."""
    if source is None:
        return None
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:  # a name: its family is not known before it is resolved
        return None
    return (source, 0) if version == 4 else (defaults.TRANSPARENT_SOURCE_ADDRESS_V6, 0)


def plain_connector(
    timeout: float, stats: ClusterStats | None = None, source: str | None = None
) -> Connector:
    """Connect over plain TCP, bounded by the connect timeout, counted in the cluster's stats;
    from `source` (`source_for`) when given."""

    async def connect(target: Target, factory: ProtocolFactory) -> asyncio.BaseTransport:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if stats is not None:
            stats.upstream_cx_total += 1
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    factory, target.host, target.port, local_addr=source_for(source, target.host)
                )
        except TimeoutError:
            if stats is not None:
                stats.upstream_cx_connect_timeout += 1
                stats.upstream_cx_connect_fail += 1
            raise ConnectError(f"{target}: connect timeout") from None
        except OSError as exc:
            if stats is not None:
                stats.upstream_cx_connect_fail += 1
            raise ConnectError(f"{target}: {exc.strerror or exc}") from None
        if stats is not None:
            stats.upstream_cx_connect_ms.observe((loop.time() - started) * 1000)
        return transport

    connect.plain = True  # type: ignore[attr-defined]  # the splice relay may dial it itself
    connect.source = source  # type: ignore[attr-defined]  # ... from this address
    return connect
