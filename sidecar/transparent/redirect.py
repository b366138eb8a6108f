"""The redirect listeners of transparent proxying (Kuma's `outbound:passthrough:ipv4` on
`redirectPortOutbound` and `inbound:passthrough:ipv4` on `redirectPortInbound`, and their `:ipv6`
twins on `::` when IPv6 is redirected).

iptables sends every TCP connection of the app (outbound) or to it (inbound) here. Each one's
original destination (`sidecar.transport.origdst`) picks what serves it, as Envoy's
`use_original_dst` hands a connection to the listener bound, or not bound, at that address:

- outbound: the outbound planned at that exact address and port (a service's VIP);
- inbound: the inbound planned on that port (the app's), whatever local address was asked for;
- neither: the bytes are relayed to the original destination as they are (passthrough, Kuma's
  default), counted in the `outbound:passthrough:ipv4` / `inbound:passthrough:ipv4` cluster
  (`…:ipv6`). The inbound direction connects from 127.0.0.6 or ::6 (the plan's source address),
  which the rules let through to the app. Outbound, what may pass is the MeshPassthrough
  policies' (`sidecar.transparent.passthrough`), else the Mesh's switch: a connection that
  passthroughMode None or `networking.outbound.passthrough: false` allows none of is closed and
  counted in `downstream_cx_no_route`, as Envoy's is when Kuma leaves the passthrough cluster
  out; one that no `appendMatch` entry allows, in the listener's `no_filter_chain_match`, as
  Envoy's is when its filter-chain matcher finds nothing. A Domain entry is judged on the
  connection's first bytes (SNI, Host, :authority), waited for up to the protocol detection
  timeout.

A connection made to the redirect port itself (not redirected) has no destination of its own:
passing it through would connect to this very port again, so it is closed and counted
(`no_filter_chain_match`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

from sidecar import defaults
from sidecar.addresses import host_port
from sidecar.cluster import Cluster, Target
from sidecar.listener import ListenerStack, Refused, StackOptions, adopt_socket
from sidecar.observe.stats import ListenerStats
from sidecar.observe.throttle import LogThrottle
from sidecar.plan import ListenerPlan
from sidecar.transparent.passthrough import ALL, Passthrough
from sidecar.transport.detect import Detected, detect, requested_name
from sidecar.transport.origdst import original_destination

log = logging.getLogger("sidecar.transparent")

# Serves one accepted socket: a listener's `adopt`.
Adopt = Callable[[socket.socket, Any], None]
# The listener planned for an original destination, as its `Adopt`; None: passthrough.
Find = Callable[[ListenerPlan, tuple[str, int]], Adopt | None]
# What the mesh lets the app reach outside it now (MeshPassthrough, else the Mesh's switch).
Allowed = Callable[[], Passthrough]


class RedirectStack(ListenerStack):
    """The stack of one redirect listener, bound with an `Acceptor` (raw sockets: the original
    destination is read from the socket before any protocol sees it)."""

    def __init__(
        self,
        plan: ListenerPlan,
        cluster: Cluster,
        stats: ListenerStats,
        options: StackOptions,
        find: Find,
        passthrough: Allowed = lambda: Passthrough(ALL),
    ) -> None:
        super().__init__(plan, cluster, stats, options)
        self.find = find
        self.passthrough = passthrough
        # Passthrough destinations are not a cluster's endpoints to eject (Envoy's ORIGINAL_DST
        # cluster has no outlier detection): a refusing one fails its own connections only.
        cluster.outlier.disable()
        self._throttle = LogThrottle()

    def plain_tcp(self) -> bool:
        return True  # passthrough relays the bytes as they come

    def accept_socket(
        self, sock: socket.socket, address: object, destination: Target | None = None
    ) -> None:
        found = original_destination(sock)
        if found is None or _is_own(sock, found):
            self._not_redirected(sock, address)
            return
        adopt = self.find(self.plan, found)
        if adopt is not None:
            adopt(sock, address)
        elif self.plan.direction == "outbound":
            self.pass_outbound(sock, address, found)
        else:
            super().accept_socket(sock, address, Target(*found))  # passthrough

    def pass_outbound(self, sock: socket.socket, address: object, found: tuple[str, int]) -> None:
        """A connection of the app to a destination outside the mesh: relayed there when what is
        in force allows it, by its address or, after its first bytes, by the name it asks for."""
        rules = self.passthrough()
        allowed = rules.allows_address(*found)
        timeout = self.options.detection_timeout
        if allowed is None and timeout > 0:
            judge = functools.partial(self._by_name, rules, address, found)

            def peek() -> asyncio.Protocol:
                if not self.admit():
                    return Refused()
                return self.peek(judge, timeout, silent_closes=False)

            asyncio.get_running_loop().create_task(adopt_socket(peek, sock))
        elif allowed:
            super().accept_socket(sock, address, Target(*found))
        else:
            sock.close()
            self._blocked(rules, address, found, None)

    def _by_name(
        self,
        rules: Passthrough,
        address: object,
        found: tuple[str, int],
        first: bytes,
        final: bool,
    ) -> asyncio.Protocol | None:
        """The Peek's verdict: the relay when a Domain entry allows the name asked for."""
        told, name = requested_name(first)
        if not told and not final:
            return None
        if rules.allows_name(name, found[1], tls=detect(first) is Detected.TLS) is not None:
            return self.tcp(Target(*found))
        self._blocked(rules, address, found, name)
        return Refused()

    def _not_redirected(self, sock: socket.socket, address: object) -> None:
        self.stats.no_filter_chain_match += 1
        sock.close()
        held_back = self._throttle.allow(self.plan.name)
        if held_back is not None:
            log.warning(
                "event=not_redirected listener=%s peer=%s since_last_line=%d reason=%r",
                self.plan.name,
                address,
                held_back,
                "no original destination: a connection made to the redirect port itself",
            )

    def _blocked(
        self, rules: Passthrough, address: object, found: tuple[str, int], name: str | None
    ) -> None:
        """A connection closed for leaving the mesh where nothing in force lets it."""
        if rules.matched:
            self.stats.no_filter_chain_match += 1
        else:
            self.stats.tcp_downstream_cx_no_route += 1
        held_back = self._throttle.allow("blocked")
        if held_back is not None:
            log.warning(
                "event=passthrough_blocked listener=%s peer=%s destination=%s name=%s "
                "since_last_line=%d reason=%r",
                self.plan.name,
                address,
                host_port(*found),
                name or "-",
                held_back,
                rules.describe(),
            )


class Unbound:
    """A listener with no socket of its own: what the runtime asks of a server (`close`,
    `sockets`, `wait_closed`), for a listener that a redirect listener hands connections to."""

    sockets: tuple[socket.socket, ...] = ()

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    def close(self) -> None:
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


def _is_own(sock: socket.socket, destination: tuple[str, int]) -> bool:
    """The original destination is this socket's own address: the connection was not
    redirected (the kernel reports the local address when conntrack saw no rewrite)."""
    try:
        local = sock.getsockname()
    except OSError:
        return True
    return (local[0], local[1]) == destination


def missing_source_v6() -> str | None:
    """Why the sidecar cannot connect to an IPv6 app from ::6, or None when it can. 127.0.0.6 is
    local on every Linux (all of 127.0.0.0/8 is), ::6 only once given to the loopback interface
    (`ip -6 addr add ::6/128 dev lo`, in the pod's set-up); without it the inbound
    direction of IPv6 redirection cannot reach the app."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((defaults.TRANSPARENT_SOURCE_ADDRESS_V6, 0))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
