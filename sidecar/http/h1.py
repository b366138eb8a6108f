"""HTTP/1.1 toward apps: the server end (an app calling its outbound) and the client end (an
inbound calling its app), both speaking the codec-neutral exchange of `sidecar.http.exchange`.

The wire format is `sidecar.http.h1wire` (sans-I/O); this module is the asyncio adapter: it
feeds the parsers from `data_received`, turns their events into heads and `Body` chunks, frames
what goes out (Content-Length, chunked, or until close for HTTP/1.0), and decides when a
connection is reused, handed over to a tunnel (Upgrade, CONNECT) or closed. Reading pauses while
a body's buffer is past its high-water mark, and while pipelined requests wait their turn.

A request the parser refuses (smuggling forms, malformed heads: see h1wire) and a request target
that is none of the four forms get 400 (431, 501, 505) and the connection is closed. Slowloris
gets 408 (`sweep`, driven by the listener).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from operator import itemgetter

from sidecar import defaults
from sidecar.cluster import Target
from sidecar.http import h1wire
from sidecar.http.exchange import (
    EMPTY_BODY,
    TUNNEL_ESTABLISHED,
    Body,
    Headers,
    RefusedStream,
    RequestHead,
    ResponseHead,
    StreamReset,
)
from sidecar.http.h1wire import BODYLESS, Closed, End, ProtocolError, Request, Response
from sidecar.http.tunnel import Relay
from sidecar.limits import DEFAULT_LIMITS, Limits
from sidecar.observe.stats import HttpStats
from sidecar.transport.relay import abort_with_reset

log = logging.getLogger("sidecar.h1")

_REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}
# Every reason phrase, looked up once here rather than through the enum per response.
_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}
# The status line of each of them, made once (a status without a phrase gets an empty one).
_STATUS_LINES = {
    status: b"HTTP/1.1 %d %s" % (status, phrase) for status, phrase in _PHRASES.items()
}

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def target_problem(method: bytes, target: bytes) -> str | None:
    """Why a request target is none of RFC 9112's four forms (3.2), or None when it is one."""
    if b"#" in target:
        return "a fragment in the request target"
    if method == b"CONNECT":
        host, colon, port = target.rpartition(b":")
        if not colon or not host or not port.isdigit() or b"/" in target:
            return "CONNECT needs host:port"
        return None
    if target == b"*":
        return None if method == b"OPTIONS" else "asterisk-form is only for OPTIONS"
    if target[:1] == b"/":
        return None
    lower = target[:8].lower()
    if lower.startswith(b"http://") or lower.startswith(b"https://"):
        host = split_target(target)[0]
        return None if host else "absolute-form without a host"
    return "not a request target (origin, absolute, authority or asterisk form)"


class _Writer(asyncio.Protocol):
    """Transport write back-pressure shared by both ends."""

    # The connection's loop, set by `connection_made`: the request path reads it several times
    # per request, and `asyncio.get_running_loop()` costs a getpid(2) each time in Python 3.11.
    loop: asyncio.AbstractEventLoop

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._write_paused: asyncio.Future[None] | None = None
        self.closed = False
        # Bytes written by `_write` and `write_now`: with the request heads `H1Client.open`
        # counts, all a client connection writes (its cluster's upstream_cx_tx_bytes_total).
        # A server writes its answers straight to the transport too: its count is not read.
        self.tx_bytes = 0

    def pause_writing(self) -> None:
        if self._write_paused is None:
            self._write_paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._write_paused = self._write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        while self._write_paused is not None:
            if self.closed:
                raise StreamReset("connection closed")
            await self._write_paused

    def _write(self, data: bytes | None) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.tx_bytes += len(data)
            self.transport.write(data)

    def write_now(self, data: bytes) -> bool:
        """Write unless the socket is paused or closing (a tunnel's relay then leaves the chunk
        to the body and the router's task, which wait for the drain)."""
        transport = self.transport
        if self._write_paused is not None or transport is None or transport.is_closing():
            return False
        self.tx_bytes += len(data)
        transport.write(data)
        return True


def _resume_when_drained(proto: H1Server | H1Client, body: Body) -> None:
    """The router read from `body` while reading is paused: it resumes once the body has drained
    to half its mark. (Called from the `on_consumed` method of the exchange or connection that
    owns the body: a bound method costs no call per request, a closure made per request did.)"""
    if body.buffered <= body.high_water // 2:
        proto.reading_paused = False
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.resume_reading()


def _feed(proto: H1Server | H1Client, body: Body, data: bytes) -> None:
    """Body (or tunnel) bytes into a body, pausing the socket when the body is full."""
    if body.feed(data) and not proto.reading_paused and proto.transport is not None:
        proto.reading_paused = True
        proto.transport.pause_reading()


def _write_eof(transport: asyncio.Transport | None) -> None:
    if transport is None or transport.is_closing():
        return
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()


def split_target(target: bytes) -> tuple[bytes | None, bytes]:
    """Absolute-form `http://host/path?query` → (host, /path?query), the path `/` when there
    is none (`http://host?q=1` → /?q=1: the authority ends at "/" or "?", RFC 3986 3.2);
    origin-form → (None, target)."""
    if target[:1] == b"/":
        return None, target
    lower = target[:8].lower()
    if lower.startswith(b"http://") or lower.startswith(b"https://"):
        rest = target.split(b"://", 1)[1]
        end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        host, path = rest[:end], rest[end:]
        return host, path if path[:1] == b"/" else b"/" + path
    return None, target


class _BodyFraming:
    """What the body being sent still owes its framing: a Content-Length counted down (sending
    more or less than declared would desynchronise the peer), or chunks."""

    __slots__ = ("chunked", "remaining")

    def __init__(self, chunked: bool, remaining: int | None) -> None:
        self.chunked = chunked
        self.remaining = remaining  # None: not counted (chunked, until close, no body)

    def frame(self, data: bytes) -> bytes:
        if self.chunked:
            return h1wire.chunk(data) if data else b""  # an empty chunk would end the body
        if self.remaining is not None and data:  # (so `_NO_BODY_FRAMING` is never written)
            size = len(data)
            if size > self.remaining:
                raise StreamReset("body longer than its Content-Length")
            self.remaining -= size
        return data

    def last(self, trailers: Headers | None, data: bytes = b"") -> bytes:
        """The end of the body, `data` its last bytes (framed with it, for one write). Nothing
        is framed after it: the owner refuses writes once the body has ended."""
        if self.chunked:
            return (h1wire.chunk(data) if data else b"") + h1wire.last_chunk(trailers)
        remaining = self.remaining
        if remaining is not None and len(data) != remaining:
            if len(data) > remaining:
                raise StreamReset("body longer than its Content-Length")
            raise StreamReset("body shorter than its Content-Length")
        return data


# No body at all (a GET, a HEAD's response, an empty response): one framing for all of them, as
# it cannot change (any byte sent through it is refused before it is counted).
_NO_BODY_FRAMING = _BodyFraming(False, 0)


# A field's name: `map(_NAME, headers)` lists the names in one C-level pass.
_NAME = itemgetter(0)


def _content_length(headers: Headers) -> int | None:
    """The Content-Length a head to send declares, the first one (None: none); one that is not a
    single decimal cannot frame the body. The names are listed and searched at C level: a loop
    over the fields cost ~8 bytecodes a field, and most heads sent to an app have none."""
    names = [*map(_NAME, headers)]
    if b"content-length" not in names:
        return None
    value = headers[names.index(b"content-length")][1]
    if not value.isdigit():
        raise StreamReset(f"cannot frame a body by Content-Length {value!r}")
    return int(value)


# A fragment's '#' as an int: `_HASH in target` is a memchr, where `b"#" in target` first makes
# and drops a TypeError (see h1wire.head_bytes).
_HASH = ord("#")


class H1Server(_Writer):
    """An HTTP/1.1 server connection: each request becomes an `H1ServerExchange`."""

    def __init__(
        self,
        handler: Callable[[H1ServerExchange], Awaitable[None]],
        default_authority: bytes,
        on_close: Callable[[H1Server], None] | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        stats: HttpStats | None = None,
    ) -> None:
        super().__init__()
        self.on_close = on_close
        self.draining = False
        self.handler = handler
        self.default_authority = default_authority
        self.limits = limits
        self.body_buffer = limits.stream_buffer_bytes  # (a property of the frozen limits)
        self.stats = stats
        self.parser = h1wire.RequestParser(
            limits.max_request_headers_bytes, limits.max_headers_count
        )
        # Timeouts (checked by `sweep`): when the request head now arriving began, and since
        # when the connection has had no request.
        self.head_started: float | None = None
        self.idle_since = 0.0
        self.exchange: H1ServerExchange | None = None
        self.reading_paused = False
        self.lingering = False  # a refusal was sent: input is dropped until the close
        self.peer_address: tuple[str, int] | None = None
        # The task that serves this connection's requests in turn (`_serve`), and the future it
        # waits on for the next one between requests (resolved with None once the connection is
        # lost).
        self.task: asyncio.Task[None] | None = None
        self._next: asyncio.Future[H1ServerExchange | None] | None = None
        self.tunnel: H1ServerExchange | None = None  # after an upgrade: raw bytes both ways

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        self.peer_address = transport.get_extra_info("peername")
        self.head_started = self.idle_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            relay = tunnel.relay
            if relay is None or not relay.offer(data):
                _feed(self, tunnel.body, data)
            return
        if self.lingering:
            return
        parser = self.parser
        try:
            # The usual read: a whole request head alone (`_request` would clear the time when
            # its first bytes came at once: not taken).
            request = parser.request_alone(data)
            if request is None:
                if self.exchange is None and self.head_started is None:
                    self.head_started = self.loop.time()  # a request's first bytes
                events = parser.receive(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        if request is not None:
            # The events `receive` would have given, handled as `_handle` does: the request,
            # then `End` if the request ended with its head (the parser paused after it).
            self._request(request)
            exchange = self.exchange
            if exchange is not None and parser.paused:
                exchange.request_ended = True
                body = exchange.body
                if body is not EMPTY_BODY and not exchange.upgrade:
                    body.end()
            return
        if events:
            self._handle(events)
        elif parser.paused and parser.buffered > self.limits.max_request_headers_bytes:
            # Pipelined requests pile up while one is served: stop reading until its turn.
            if not self.reading_paused and self.transport is not None:
                self.reading_paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.body.end()  # half-close: the other direction goes on
            return True
        if self.lingering:
            return False  # the client read our refusal and closed: so do we
        try:
            events = self.parser.receive_eof()
        except ProtocolError as exc:
            self._protocol_error(exc)
            return True
        self._handle(events)
        # Keep our side open: a client that half-closed after its request still gets the reply;
        # the connection closes once that is sent.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        if self.exchange is not None:
            self.exchange.lost(StreamReset("downstream connection closed"))
        waiter, self._next = self._next, None
        if waiter is not None:
            waiter.set_result(None)  # no next request: the serving task ends
        if self.on_close is not None:
            self.on_close(self)

    def close_when_idle(self) -> None:
        """Finish the exchange in progress, then close; an idle connection closes now."""
        self.draining = True
        if self.exchange is None and self.transport is not None:
            self.transport.close()

    def sweep(self, now: float) -> None:
        """The listener's periodic check: request headers timeout (slowloris) and idle timeout.
        A request in flight is the stream idle timeout's business (the router's)."""
        if self.closed or self.exchange is not None or self.tunnel is not None:
            return
        limits = self.limits
        if self.head_started is not None:
            timeout = limits.request_headers_timeout
            if timeout > 0 and now - self.head_started > timeout:
                log.info("event=request_headers_timeout peer=%s", self.peer_address)
                if self.stats is not None:
                    self.stats.downstream_rq_header_timeout += 1
                self._raw_reply(408, "request header timeout")
        elif limits.http_idle_timeout > 0 and now - self.idle_since > limits.http_idle_timeout:
            if self.stats is not None:
                self.stats.downstream_cx_idle_timeout += 1
            if self.transport is not None:
                self.transport.close()

    def _raw_reply(self, status: int, text: str) -> None:
        """A local error reply (no response has begun on this connection), then close."""
        body = f"{text}\n".encode()
        self._write(
            b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.head_started = None
        self._close_after_reply()

    def _close_after_reply(self) -> None:
        """Envoy's delayed close: the reply and a FIN go out, then input is read and dropped
        until the client closes or `defaults.DELAYED_CLOSE_TIMEOUT` passes. Closing at once with
        the client's input still unread makes the kernel answer with a reset, which can reach
        the client before it has read the reply (a refused request's body, pipelined requests)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        asyncio.get_running_loop().call_later(defaults.DELAYED_CLOSE_TIMEOUT, transport.close)

    def _handle(self, events: list[h1wire.Event]) -> None:
        # In the order a request without a body (the usual one) brings them: a head, then End.
        for event in events:
            kind = type(event)
            if kind is Request:
                self._request(event)  # type: ignore[arg-type]
                if self.exchange is None:  # refused: the connection is closing
                    return
            elif kind is End:
                exchange = self.exchange
                assert exchange is not None
                exchange.request_ended = True
                body = exchange.body
                # (the shared empty body has ended; an upgrade's body is the tunnel, if accepted)
                if body is not EMPTY_BODY and not exchange.upgrade:
                    body.end(event.trailers)  # type: ignore[union-attr]
            elif kind is bytes:
                assert self.exchange is not None
                _feed(self, self.exchange.body, event)  # type: ignore[arg-type]
            elif kind is Closed:
                if self.exchange is not None and not self.exchange.body.ended:
                    self.exchange.body.abort(StreamReset("client closed mid-request"))
                if self.exchange is None and self.transport is not None:
                    self.transport.close()
                return

    def _request(self, request: Request) -> None:
        self.head_started = None
        method, target = request.method, request.target
        if target[:1] == b"/" and _HASH not in target and method != b"CONNECT":
            authority, path = None, target  # the usual origin-form: no need to look further
        else:
            problem = target_problem(method, target)
            if problem is not None:
                self._protocol_error(ProtocolError(problem))
                return
            authority, path = split_target(target)
        headers: Headers = request.headers  # the parser's list: ours to change
        for i, (k, v) in enumerate(headers):
            if k == b"host":  # at most one (the parser refuses more)
                del headers[i]
                if authority is None:
                    authority = v
                break
        protocol = None
        if method == b"CONNECT":
            authority, path = target, b""
        elif request.upgrade is not None:
            upgrade = request.upgrade
            if upgrade == b"websocket":
                # Carried as an extended CONNECT (RFC 8441), the form HTTP/2 gives upgrades.
                method, protocol = b"CONNECT", upgrade
            elif upgrade != b"h2c":  # h2c: served over HTTP/1.1
                self._refuse(501, f"upgrade to {upgrade.decode(errors='replace')} is not supported")
                return
        if request.expect_continue:
            # Envoy answers `Expect: 100-continue` itself and does not forward it. HTTP/1.0
            # knows no 1xx: its expectation is ignored (RFC 9110 10.1.1).
            headers = [(k, v) for k, v in headers if k != b"expect"]
            if request.version == b"1.1":
                self._write(_CONTINUE)
        # The fields in their order (method, scheme, authority, path, headers, protocol,
        # http_version), passed by position: the dataclass's `__init__` called by keyword cost
        # ~3,000 instructions more (each keyword is matched to its parameter by name).
        head = RequestHead(
            method,
            b"http",
            authority or self.default_authority,
            path,
            headers,
            protocol,
            request.version,
        )
        exchange = H1ServerExchange(self, head, request)
        self.exchange = exchange
        waiter = self._next
        if waiter is not None:
            self._next = None
            waiter.set_result(exchange)
        elif self.task is None or self.task.done():
            self.task = self.loop.create_task(self._serve(exchange))
        # (else the serving task is in `_next_cycle` and takes this pipelined request next)

    async def _serve(self, exchange: H1ServerExchange) -> None:
        """Serve the connection's requests in turn, `exchange` first: one task for a keep-alive
        connection, not one per request (a Task's creation, and its entry in and removal from
        asyncio's weak set of all tasks, cost more than the future it waits on between
        requests). Whichever way it ends, a later request gets a task of its own."""
        try:
            while True:
                try:
                    await self.handler(exchange)
                except Exception:
                    log.exception("event=handler_failed")
                    exchange.reset()
                    return
                self._next_cycle(exchange)
                following = self.exchange
                if following is not None:
                    # A pipelined request, already here: its handler starts on the next turn
                    # of the loop, as a task's first step would.
                    await asyncio.sleep(0)
                else:
                    transport = self.transport
                    if self.closed or transport is None or transport.is_closing():
                        return
                    waiter = self._next = self.loop.create_future()
                    # Not held while the connection waits: the answered request's head, body
                    # and exchange (~1 KB an idle keep-alive connection kept for nothing).
                    del exchange
                    try:
                        following = await waiter
                    except asyncio.CancelledError:
                        self._next = None
                        raise
                    if following is None:  # the connection was lost
                        return
                exchange = following
        finally:
            self.task = None

    def _next_cycle(self, exchange: H1ServerExchange) -> None:
        self.exchange = None
        self.idle_since = self.loop.time()
        transport = self.transport
        if transport is None:
            return
        if self.tunnel is not None:
            self.tunnel = None
            transport.close()
        elif (
            self.draining
            or not exchange.request_ended  # answered before the request was read: unframed
            or not exchange.finished
            or not exchange.keep_alive
        ):
            transport.close()
        else:
            if self.reading_paused:
                self.reading_paused = False
                transport.resume_reading()
            parser = self.parser
            try:
                events = parser.next_cycle()  # a pipelined request may be waiting
            except ProtocolError as exc:
                self._protocol_error(exc)
                return
            if events:
                self._handle(events)
            elif parser.buf:
                self.head_started = self.idle_since  # part of a head came early: time it

    def _protocol_error(self, exc: ProtocolError) -> None:
        status = exc.status if exc.status in _REASONS else 400
        log.info(
            "event=bad_request peer=%s status=%d error=%r", self.peer_address, status, str(exc)
        )
        self.head_started = None
        if self.stats is not None:
            if status == 431:
                self.stats.http1_header_overflow += 1
            else:
                self.stats.downstream_cx_protocol_error += 1
        if self.exchange is not None:
            self.exchange.body.abort(StreamReset(f"malformed request: {exc}"))
        self._refuse(status, _REASONS[status].decode())

    def _refuse(self, status: int, text: str) -> None:
        """Answer with a local error (unless a response has begun) and close the connection."""
        if self.exchange is None or not self.exchange.responded:
            self._raw_reply(status, text)
        elif self.transport is not None:
            self.transport.close()


class H1ServerExchange:
    """The downstream exchange of one HTTP/1.x request."""

    # Tunnel bytes from the client, once spliced (sidecar.http.tunnel sets it): a class default,
    # not an attribute written for every request, as only a tunnel reads it.
    relay: Relay | None = None

    def __init__(self, proto: H1Server, request: RequestHead, wire: Request) -> None:
        self.proto = proto
        self.request = request
        # A websocket upgrade (a CONNECT by now, as HTTP/2 carries it) or a CONNECT: a tunnel if
        # accepted.
        self.upgrade = upgrade = request.method == b"CONNECT"
        # A request without a body (most) shares the one that has ended (no Body and no bound
        # callback made for it); an upgrade's body is the tunnel's bytes from the client.
        if wire.framing == BODYLESS and not upgrade:
            self.body = EMPTY_BODY
        else:
            self.body = Body(self._consumed, proto.body_buffer)
        self.peer_address = proto.peer_address
        self.responded = False
        self.status = 0  # the status sent downstream, for stats and the access log
        self.error: StreamReset | None = None
        self.tunnelling = False
        self.keep_alive = wire.keep_alive
        self.request_ended = False  # the request's body was read to its end
        self.finished = False  # the response was sent to its end
        self._framing = _NO_BODY_FRAMING
        # The response head, held back for a moment so that it leaves in one write with the
        # body's first bytes (or the whole body): a write(2) fewer and one wake-up of the
        # client fewer per response. `_flush_head` sends it alone if no body follows at once.
        self._head: bytes | None = None

    @property
    def cancelled(self) -> bool:
        """The client went away: nothing more should be done for this request."""
        return self.error is not None

    def _consumed(self, _: int) -> None:
        if self.proto.reading_paused:
            _resume_when_drained(self.proto, self.body)

    def lost(self, error: StreamReset) -> None:
        self.error = error
        self.body.abort(error)

    def informational(self, head: ResponseHead) -> None:
        if self.error is not None or self.responded or head.status in (100, 101):
            return  # 100 was answered when the request arrived
        if self.request.http_version != b"1.1":
            return  # no 1xx to an HTTP/1.0 client (RFC 9110 15.2)
        try:
            data = h1wire.response_head(head.status, _PHRASES.get(head.status, b""), head.headers)
        except ProtocolError:
            return  # not forwarded: an interim response is advisory
        self.proto._write(data)

    async def respond(
        self,
        head: ResponseHead,
        end: bool = False,
        last: bytes | None = None,
        trailers: Headers | None = None,
    ) -> None:
        """Send the response head: alone (`end`: no body), with `last`, the whole body (one
        write), or held for the body's first chunk (sent alone at the end of this turn of the
        loop if none comes). A whole body with `trailers`: the head, then `finish` with both
        (one write: the trailers of a chunked body; dropped under a Content-Length)."""
        if trailers:
            await self.respond(head)
            await self.finish(trailers, last or b"")
            return
        if self.error is not None:
            raise self.error
        self.responded = True
        status = self.status = head.status
        if self.upgrade:
            if status == TUNNEL_ESTABLISHED:
                self._open_tunnel(head)
                return
            self.body.end()  # declined: nothing follows the request
        headers = head.headers
        length = _content_length(headers)
        whole = None  # the Content-Length of a body sent whole with the head (`last`)
        if status in (204, 304) or self.request.method == b"HEAD":
            self._framing = _NO_BODY_FRAMING  # no body, whatever the head says
            if length is None and status not in (204, 304):
                # HEAD: the framing a GET would have had (h11 did the same).
                headers = [*headers, (b"transfer-encoding", b"chunked")]
        elif length is not None:
            if last is None:
                self._framing = _BodyFraming(False, length)
            else:
                # Nothing is written after `last`: its length is checked below, as
                # `_BodyFraming.last` would, with no framing made for one check.
                whole = length
        elif end:
            headers = [*headers, (b"content-length", b"0")]
        elif self.request.http_version == b"1.1":
            headers = [*headers, (b"transfer-encoding", b"chunked")]
            self._framing = _BodyFraming(True, None)
        else:
            self.keep_alive = False  # HTTP/1.0 without a length: the body ends at close
            self._framing = _BodyFraming(False, None)
        if not self.keep_alive or self.proto.draining:  # draining: the last response here
            headers = [*headers, (b"connection", b"close")]
        try:
            line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d " % status
            data = h1wire.head_bytes(line, headers)
        except ProtocolError as exc:
            raise StreamReset(f"cannot frame response: {exc}") from exc
        if end:
            self.finished = True
            self.proto._write(data)
            return
        if last is not None:
            self.finished = True
            if whole is None:
                self.proto._write(data + self._framing.last(None, last))
            elif len(last) == whole:
                self.proto._write(data + last)
            elif len(last) > whole:
                raise StreamReset("body longer than its Content-Length")
            else:
                raise StreamReset("body shorter than its Content-Length")
            return
        self._head = data
        self.proto.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        data, self._head = self._head, None
        if data is not None and self.error is None:
            self.proto._write(data)

    def _open_tunnel(self, head: ResponseHead) -> None:
        """Answer the upgrade (101, or 200 to a CONNECT), then carry raw bytes both ways."""
        proto = self.proto
        try:
            if self.request.protocol is None:
                data = h1wire.response_head(200, b"Connection established", head.headers)
            else:
                headers = [
                    (b"upgrade", self.request.protocol),
                    (b"connection", b"Upgrade"),
                    *head.headers,
                ]
                data = h1wire.response_head(101, b"Switching Protocols", headers)
        except ProtocolError as exc:
            raise StreamReset(f"cannot switch protocols: {exc}") from exc
        proto._write(data)
        self.tunnelling = True
        proto.tunnel = self
        parser = proto.parser
        trailing = parser.trailing
        if trailing:
            _feed(proto, self.body, trailing)
        if parser.eof:
            self.body.end()

    async def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        proto = self.proto
        if not self.tunnelling:
            if self.finished:
                raise StreamReset("the response has ended")
            data = self._framing.frame(data)
            if self._head is not None:
                data, self._head = self._head + data, None
        proto._write(data)
        if proto._write_paused is not None:
            await proto.drain()

    def write_now(self, data: bytes) -> bool:
        """Tunnel bytes toward the client from a relay: written unless the socket is paused."""
        return self.tunnelling and self.error is None and self.proto.write_now(data)

    async def finish(self, trailers: Headers | None = None, last: bytes = b"") -> None:
        """End the response, `last` its last bytes: one write with the end (a chunked body's
        last chunk and its terminator, or the head as well for a body of one chunk)."""
        if self.error is not None:
            raise self.error
        if self.tunnelling:
            if last:
                await self.write(last)
            _write_eof(self.proto.transport)
            return
        if self.finished:
            if last:
                raise StreamReset("the response has ended")
            return
        data = self._framing.last(trailers, last)
        if self._head is not None:
            data, self._head = self._head + data, None
        self.finished = True
        self.proto._write(data)

    def abandon_request(self) -> None:
        """Nothing to do: a connection whose request was not read to the end is closed."""

    def reset(self) -> None:
        """Abort: the client sees the connection close without a terminating chunk or before
        its Content-Length. A body that ends at close (HTTP/1.0, no length) ends with a reset
        (RST) instead, which a clean close of a complete body cannot be mistaken for."""
        self.error = self.error or StreamReset("reset locally")
        framing = self._framing
        if framing.remaining is None and not framing.chunked:  # the body ends at close
            abort_with_reset(self.proto.transport)
        elif self.proto.transport is not None:
            self.proto.transport.abort()


class H1ClientStream:
    """One request/response on an `H1Client` connection: the upstream stream of an exchange.

    It is its own object so that the connection can go back to the pool as soon as the response
    is complete, while the router is still reading this response's body.
    """

    # Class defaults rather than attributes written for every request: tunnel bytes from the app
    # once spliced (only a tunnel reads it), and the callback for 1xx heads (the router sets it).
    relay: Relay | None = None
    on_informational: Callable[[ResponseHead], None] | None = None
    # An upgrade or CONNECT: resolved (True) when the app switched protocols, after which bytes
    # are written raw; False when it declined (`H1Client.open` sets it).
    tunnel: asyncio.Future[bool] | None = None
    # The response never ends with its head here (the router asks; HTTP/2 streams say so).
    response_ended_with_head = False
    reset_error: StreamReset | None = None  # set by `fail`

    def __init__(self, client: H1Client, framing: _BodyFraming, sent: bool) -> None:
        self.client = client
        self.body = Body(client.on_consumed, client.body_buffer)
        # The response head, set once: the router awaits it directly (`response()` is the
        # shielded wait for other callers). A waiter that gives up leaves it done, cancelled or
        # failed with TimeoutError, and whatever comes later is ignored: the stream is reset then.
        self.response_head: asyncio.Future[ResponseHead] = client.loop.create_future()
        self.framing = framing
        self.sent = sent  # the request was sent to its end

    @property
    def answered(self) -> bool:
        return self.response_head.done()

    async def _write_tunnel(self, data: bytes) -> None:
        assert self.tunnel is not None
        if not await self.tunnel:
            return  # the app declined the upgrade: tunnel bytes have nowhere to go
        client = self.client
        client._write(data)
        if client._write_paused is not None:
            await client.drain()

    def write_now(self, data: bytes) -> bool:
        """Tunnel bytes toward the app from a relay: written unless the socket is paused."""
        client = self.client
        return (
            client.tunnelling
            and client.stream is self
            and self.reset_error is None
            and client.write_now(data)
        )

    def switched(self, accepted: bool) -> None:
        if self.tunnel is not None and not self.tunnel.done():
            self.tunnel.set_result(accepted)

    async def response(self) -> ResponseHead:
        return await asyncio.shield(self.response_head)

    def can_send_now(self, size: int) -> bool:
        """Whether a request body of `size` bytes, all of it here, is written without waiting
        (the router then sends it inline instead of from a task of its own): not a tunnel, and
        the socket not paused (a write below the transport's high-water mark cannot pause it)."""
        return self.tunnel is None and self.client._write_paused is None

    async def write(self, data: bytes) -> None:
        if self.reset_error is not None:
            raise self.reset_error
        client = self.client
        if self.tunnel is not None:
            await self._write_tunnel(data)
            return
        if self.sent or client.stream is not self:
            raise StreamReset("the request has ended")
        client._write(self.framing.frame(data))
        if client._write_paused is not None:
            await client.drain()

    async def finish(self, trailers: Headers | None = None, last: bytes = b"") -> None:
        """End the request, `last` its last bytes (written with the end, one write)."""
        if self.reset_error is not None:
            raise self.reset_error
        client = self.client
        if self.tunnel is not None:
            if last:
                await self.write(last)
            if await self.tunnel:  # accepted: half-close toward the app
                _write_eof(client.transport)
                client.eof_out = True
                if client.eof_in and client.transport is not None:
                    client.transport.close()  # the app had finished already: both ways done
            return
        if self.sent or client.stream is not self:
            if last:
                raise StreamReset("the request has ended")
            return
        data = self.framing.last(trailers, last)
        self.sent = True
        client._write(data)

    def reset(self) -> None:
        if self.client.stream is self:
            self.client.abort(StreamReset("reset locally"))

    def responded(self, head: ResponseHead) -> None:
        if not self.response_head.done():
            self.response_head.set_result(head)

    def fail(self, error: StreamReset) -> None:
        self.switched(False)
        if self.reset_error is None:
            self.reset_error = error
        if not self.response_head.done():
            self.response_head.set_exception(error)
            self.response_head.exception()  # retrieved: the router sees it as it awaits
        if not self.body.ended:
            self.body.abort(error)


class H1Client(_Writer):
    """An HTTP/1.1 connection to a local app, carrying one exchange at a time (kept alive)."""

    def __init__(
        self,
        on_idle: Callable[[H1Client], None] | None = None,
        on_lost: Callable[[H1Client], None] | None = None,
        body_buffer: int = defaults.BODY_HIGH_WATER,
    ) -> None:
        super().__init__()
        self.parser = h1wire.ResponseParser()
        self.body_buffer = body_buffer  # bytes of a response body held before reading pauses
        self.on_idle = on_idle
        self.on_lost = on_lost
        self.counted = False  # against its cluster's connections (the pool's business)
        # Bytes read from the app on this connection (and `tx_bytes`, written), as on its
        # socket: the cluster's upstream_cx_rx/tx_bytes_total (the pool adds them when the
        # connection ends, a stats read those of open connections). An add per read or write.
        self.rx_bytes = 0
        # The endpoint (set by its pool) and the requests sent: /clusters' per-host lines.
        self.target: Target | None = None
        self.requests = 0
        self.idle_mark: float | None = None  # when a sweep first found it idle (H1Pool.sweep)
        self.reading_paused = False
        self.stream: H1ClientStream | None = None
        self.reused = False  # a kept-alive connection the app may have closed meanwhile
        self.tunnelling = False  # the app switched protocols: raw bytes from here on
        # A tunnel half-closes each way; once both ways are done the socket is closed (nothing
        # else would: the transport was told to stay open after the app's EOF).
        self.eof_in = False
        self.eof_out = False
        # The pool may send the next request on it: not closed, no exchange in flight, no
        # tunnel, the app keeps it alive, and nothing of the app's since the last response (nor
        # its EOF). An attribute kept up to date, not a property: the pool asks it for every
        # request. True from the start (a new connection takes its first request); `open`, any
        # bytes or EOF from the app and the connection's loss clear it; only `_done` sets it
        # again, when the exchange ends with the connection fit for another.
        self.reusable = True
        # The `on_consumed` of every response body read from this connection: bound once here,
        # not once per request. The body is the current stream's: `_done` drops it from a body
        # once its exchange is over.
        self.on_consumed = self._consumed

    def _consumed(self, _: int) -> None:
        stream = self.stream
        if self.reading_paused and stream is not None:
            _resume_when_drained(self, stream.body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()

    def open(self, head: RequestHead, end_stream: bool) -> H1ClientStream:
        """Send a request head; the returned stream carries the rest of the exchange.

        A CONNECT (classic, or extended with :protocol) is replayed in HTTP/1.1's own form: the
        CONNECT line, or a GET with `Connection: Upgrade` and `Upgrade: <protocol>`.
        """
        self.requests += 1
        headers: Headers = [(b"host", head.authority), *head.headers]
        method, target = head.method, head.path or b"/"
        tunnel = method == b"CONNECT"
        if tunnel:
            if head.protocol is not None:
                method = b"GET"
                headers += [(b"connection", b"Upgrade"), (b"upgrade", head.protocol)]
            else:
                target = head.authority
            end_stream = True  # the request itself has no body; what follows is the tunnel
        length = _content_length(headers)
        if end_stream:
            framing = _NO_BODY_FRAMING
        elif length is None:
            headers.append((b"transfer-encoding", b"chunked"))
            framing = _BodyFraming(True, None)
        else:
            framing = _BodyFraming(False, length)
        if end_stream and length:  # a Content-Length with no body to follow (h11 refused it too)
            raise StreamReset("cannot frame request: no body for its Content-Length")
        try:
            data = h1wire.head_bytes(b"%s %s HTTP/1.1" % (method, target), headers)
        except ProtocolError as exc:
            raise StreamReset(f"cannot frame request: {exc}") from exc
        stream = self.stream = H1ClientStream(self, framing, end_stream)
        self.reusable = False
        if tunnel:
            stream.tunnel = asyncio.get_running_loop().create_future()
        self.parser.method = method  # (`ResponseParser.expect`, written out: a call fewer)
        transport = self.transport  # (`_write`, written out: a call fewer)
        if transport is not None and not transport.is_closing():
            self.tx_bytes += len(data)
            transport.write(data)
        return stream

    def abort(self, error: StreamReset) -> None:
        if self.stream is not None:
            self.stream.fail(error)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        # Bytes while idle are something no request asked for (or the start of the app's
        # close): not reusable from here on, before `connection_lost` says so. During an
        # exchange it is not reusable anyway, until `_done`.
        self.reusable = False
        stream = self.stream
        if self.tunnelling and stream is not None:
            relay = stream.relay
            if relay is None or not relay.offer(data):
                _feed(self, stream.body, data)
            return
        try:
            # The usual read: an answer to the request in flight, whole (`answer_alone`).
            answer = None if stream is None else self.parser.answer_alone(data)
            if answer is None:
                answer = self.parser.receive(data)
        except ProtocolError as exc:
            self._bad_response(exc)
            return
        if type(answer) is tuple:
            # A final response (a 1xx is never followed by body bytes, a switch by nothing),
            # its body in one chunk, its end without trailers: handled at once, as `_process`
            # would handle those three events.
            status, headers, body = answer
            assert stream is not None
            if stream.tunnel is not None:
                stream.switched(False)  # the app declined the upgrade
            response_head = stream.response_head
            if not response_head.done():  # (`responded`, written out)
                response_head.set_result(ResponseHead(status, headers))
            # Past its mark or not, reading is not paused for it: the exchange is done here, and
            # `_done` would resume it at once. Fed and ended in one call (`feed`, then `end`).
            stream.body.feed_last(body)
            self._done(stream)
        elif answer:
            self._process(answer)

    def eof_received(self) -> bool:
        self.reusable = False
        if self.tunnelling and self.stream is not None:
            self.stream.body.end()  # half-close from the app; the other direction goes on
            self.eof_in = True
            return not self.eof_out  # both ways done: let the transport close
        try:
            events = self.parser.receive_eof()
        except ProtocolError as exc:
            self._bad_response(exc)
            return False
        self._process(events)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self.resume_writing()
        if self.on_lost is not None:
            self.on_lost(self)
        if self.stream is not None:
            if self.tunnelling and exc is None:
                self.stream.body.end()
            else:
                self.stream.fail(self._closed_error())

    def _process(self, events: list[h1wire.Event]) -> None:
        stream = self.stream
        if stream is None:
            # Bytes or EOF from the app with no request outstanding: an idle kept-alive
            # connection it closed, or something no request asked for. Either way, done.
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            kind = type(event)
            if kind is bytes:
                _feed(self, stream.body, event)  # type: ignore[arg-type]
            elif kind is Response:
                status = event.status  # type: ignore[union-attr]
                head = ResponseHead(status, event.headers)  # type: ignore[union-attr]
                if status < 200:
                    if status == 101:
                        if stream.tunnel is None:
                            self._bad_response(ProtocolError("101 to a request with no Upgrade"))
                            return
                        self._switch(stream, head)
                        return
                    if stream.on_informational is not None:
                        stream.on_informational(head)
                elif self.parser.switched:  # a 2xx to a CONNECT: the app accepted
                    self._switch(stream, head)
                    return
                else:
                    if stream.tunnel is not None:
                        stream.switched(False)  # the app declined the upgrade
                    stream.responded(head)
            elif kind is End:
                stream.body.end(event.trailers)  # type: ignore[union-attr]
                self._done(stream)
                return
            elif kind is Closed:
                stream.fail(self._closed_error())
                return

    def _switch(self, stream: H1ClientStream, head: ResponseHead) -> None:
        self.tunnelling = True
        head.status = TUNNEL_ESTABLISHED
        stream.responded(head)
        stream.switched(True)
        parser = self.parser
        trailing = parser.trailing
        if trailing:
            _feed(self, stream.body, trailing)
        if parser.eof:
            stream.body.end()

    def _closed_error(self) -> StreamReset:
        """A reused connection closed before any answer is retry-safe: the app timed it out."""
        if self.reused and self.stream is not None and not self.stream.answered:
            return RefusedStream("kept-alive connection closed by the app")
        return StreamReset("upstream closed the connection")

    def _done(self, stream: H1ClientStream) -> None:
        """The exchange is done: the connection goes back to the pool, or is closed. Reading
        resumes here if it was paused, so what is left of the body no longer needs to tell when
        it is read (its callback would look at the connection's next exchange)."""
        self.stream = None
        stream.body.on_consumed = None
        transport = self.transport
        parser = self.parser
        if transport is None:
            return
        if not stream.sent or not parser.keep_alive:
            # The response ended before our request did, or the app closes after it: this
            # connection cannot be reused.
            transport.close()
        elif parser.buf or parser.eof:
            transport.close()  # bytes no request asked for, or the app's EOF
        else:
            # Nothing of a next message to parse: `parser.next_cycle()` would only resume it.
            parser.paused = False
            self.reusable = True
            if self.reading_paused:
                self.reading_paused = False
                transport.resume_reading()
            if self.on_idle is not None:
                self.on_idle(self)

    def _bad_response(self, exc: ProtocolError) -> None:
        log.info("event=bad_upstream_response error=%r", str(exc))
        self.abort(StreamReset(f"malformed response: {exc}"))
