"""The DNS proxy on the event loop: UDP and TCP on one port (Kuma: 127.0.0.1:15053; ::1 too when
IPv6 is redirected), the mesh's names answered from `DnsTable`, every other query forwarded as it
is to the upstream resolvers.

The upstreams are the host's (`nameserver` lines of /etc/resolv.conf, read at start, as kuma-dp's
CoreDNS forwards to them) unless given. Under transparent proxying the sidecar's own queries are
not redirected (the rules let its user or group through), so forwarding reaches them and not this
proxy again. Each upstream is tried in turn, `DNS_UPSTREAM_TIMEOUT` each, over the transport the
client used; when none answers the client gets SERVFAIL, never silence. The answer is relayed as
it came: its size was negotiated between the client and the upstream (EDNS, TC).

A message that is not a readable query gets FORMERR when its header can be read, and is dropped
otherwise (an answer is never answered). Every message is counted (`DnsStats`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence

from sidecar import defaults
from sidecar.dns import message
from sidecar.dns.message import FormatError, Query
from sidecar.dns.table import DnsTable
from sidecar.dns.upstreams import Upstream
from sidecar.observe.stats import DnsStats
from sidecar.observe.throttle import LogThrottle

log = logging.getLogger("sidecar.dns")

_Send = Callable[[bytes], None]  # sends an answer to the client that asked
_LENGTH = 2  # DNS over TCP: each message after its length (RFC 1035 4.2.2)
_MAX_MESSAGE = 65535  # the most a DNS message can be: a datagram's, or TCP's length field's
# Port 0: how many free UDP ports are tried before one is also free for TCP on every address.
_FREE_PORT_ATTEMPTS = 8


class DnsProxy:
    def __init__(
        self,
        table: DnsTable,
        upstreams: Sequence[Upstream],
        stats: DnsStats,
        timeout: float = defaults.DNS_UPSTREAM_TIMEOUT,
        max_pending: int = defaults.DNS_MAX_PENDING_LOOKUPS,
    ) -> None:
        self.table = table  # replaced whole on reload
        self.upstreams = tuple(upstreams)
        self.stats = stats
        self.timeout = timeout
        self.max_pending = max_pending
        self._forwarding = 0  # queries waiting on upstreams, UDP and TCP
        self._pending: set[asyncio.Task[None]] = set()  # UDP's, cancelled on close
        self.addresses: tuple[str, ...] = ()  # where it listens, once started
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._throttle = LogThrottle()

    # -- the decision, shared by both transports ----------------------------------------------

    def receive(self, data: bytes, limit: int) -> bytes | Query | None:
        """Our answer to `data`; the query when it is to be forwarded; None: drop it."""
        stats = self.stats
        stats.downstream_rx_queries += 1
        try:
            query = message.parse_query(data)
        except FormatError:
            stats.downstream_rx_invalid_queries += 1
            return message.error_for(data, message.FORMERR)
        if query.type == message.A:
            stats.a_record_queries += 1
        elif query.type == message.AAAA:
            stats.aaaa_record_queries += 1
        else:
            stats.unsupported_queries += 1
        answer = self.table.answer(query, limit)
        if answer is None:
            return query
        if self.table.owns(query.name):
            stats.known_domain_queries += 1
            records = int.from_bytes(answer[6:8], "big")
            if query.type == message.A:
                stats.local_a_record_answers += records
            elif query.type == message.AAAA:
                stats.local_aaaa_record_answers += records
        return answer

    async def forward(self, query: Query, data: bytes, tcp: bool) -> bytes:
        """The first upstream's answer to `data`, or SERVFAIL (at once when `max_pending`
        queries already wait on upstreams)."""
        if self._forwarding >= self.max_pending:
            self.stats.unanswered_queries += 1
            return message.reply(query, message.SERVFAIL)
        self._forwarding += 1
        try:
            answer, errors = await self._ask_upstreams(data, tcp)
        finally:
            self._forwarding -= 1
        if answer is not None:
            self.stats.externally_resolved_queries += 1
            return answer
        self.stats.unanswered_queries += 1
        held_back = self._throttle.allow("unanswered")
        if held_back is not None:
            log.warning(
                "event=dns_upstream_failed name=%s since_last_line=%d errors=%r",
                query.name,
                held_back,
                "; ".join(errors) or "no upstream resolver",
            )
        return message.reply(query, message.SERVFAIL)

    async def _ask_upstreams(self, data: bytes, tcp: bool) -> tuple[bytes | None, list[str]]:
        ask = _ask_tcp if tcp else _ask_udp
        errors = []
        for upstream in self.upstreams:
            try:
                return await asyncio.wait_for(ask(upstream, data), self.timeout), errors
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                errors.append(f"{upstream[0]}:{upstream[1]} {type(exc).__name__} {exc}".strip())
        return None, errors

    # -- the servers --------------------------------------------------------------------------

    async def start(self, addresses: Sequence[str], port: int, reuse_port: bool = False) -> None:
        """Bind UDP and TCP on `port` of each address (port 0: the first free UDP port, then the
        same for TCP and every other address, tried again with another port when that number is
        taken for TCP); nothing stays bound when one fails (OSError)."""
        for attempt in range(1, _FREE_PORT_ATTEMPTS + 1):
            try:
                await self._bind(addresses, port, reuse_port)
                return
            except OSError as exc:
                if port != 0 or exc.errno != errno.EADDRINUSE or attempt == _FREE_PORT_ATTEMPTS:
                    raise

    async def _bind(self, addresses: Sequence[str], port: int, reuse_port: bool) -> None:
        loop = asyncio.get_running_loop()
        reuse = reuse_port or None
        try:
            for address in addresses:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpServer(self), local_addr=(address, port), reuse_port=reuse
                )
                self._udp.append(udp)
                port = udp.get_extra_info("sockname")[1]
                tcp = await asyncio.start_server(
                    self._serve_tcp, address, port, reuse_address=True, reuse_port=reuse
                )
                self._tcp.append(tcp)
        except OSError:
            self.close()
            raise
        self.addresses = tuple(addresses)

    @property
    def port(self) -> int:
        return int(self._udp[0].get_extra_info("sockname")[1])

    def close(self) -> None:
        for udp in self._udp:
            udp.close()
        for tcp in self._tcp:
            tcp.close()
        self._udp.clear()
        self._tcp.clear()
        for task in self._pending:
            task.cancel()

    def answer_later(self, query: Query, data: bytes, send: _Send) -> None:
        task = asyncio.get_running_loop().create_task(self._answer_later(query, data, send))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _answer_later(self, query: Query, data: bytes, send: _Send) -> None:
        answer = await self.forward(query, data, tcp=False)
        self.stats.downstream_tx_responses += 1
        send(answer)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle = defaults.DNS_TCP_IDLE_TIMEOUT
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(_LENGTH), idle)
                data = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")), idle)
                answer = self.receive(data, _MAX_MESSAGE)
                if isinstance(answer, Query):
                    answer = await self.forward(answer, data, tcp=True)
                if answer is None:
                    break
                self.stats.downstream_tx_responses += 1
                writer.write(len(answer).to_bytes(_LENGTH, "big") + answer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass  # the client went, or stayed silent past the idle timeout
        finally:
            writer.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.proxy.receive(data, message.UDP_LIMIT)
        if answer is None:
            return
        transport = self.transport
        assert transport is not None
        if isinstance(answer, Query):
            self.proxy.answer_later(answer, data, lambda b: transport.sendto(b, addr))
            return
        self.proxy.stats.downstream_tx_responses += 1
        transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an answer sent to a client that has gone: nothing to do


async def _ask_udp(upstream: Upstream, data: bytes) -> bytes:
    """`data` to `upstream` over UDP; its answer (the datagram with the same id)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(upstream)  # a connected socket takes datagrams from the upstream only
        await loop.sock_sendall(sock, data)
        while True:
            answer = await loop.sock_recv(sock, _MAX_MESSAGE)
            if answer[:2] == data[:2]:
                return answer


async def _ask_tcp(upstream: Upstream, data: bytes) -> bytes:
    """`data` to `upstream` over TCP; its answer."""
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(len(data).to_bytes(_LENGTH, "big") + data)
        length = int.from_bytes(await reader.readexactly(_LENGTH), "big")
        return await reader.readexactly(length)
    finally:
        writer.close()
