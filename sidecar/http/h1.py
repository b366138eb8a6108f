"""HTTP/1.1 with h11: the server end (an app calling its outbound) and the client end (an inbound
calling its app), both speaking the codec-neutral exchange of `sidecar.http.exchange`.

h11 does the framing: Content-Length and chunked bodies, trailers, HTTP/1.0 and keep-alive, and
it refuses malformed messages. Reading pauses while a body's buffer is past its high-water mark.

Requests are held to more than h11 checks (`check_head`), because a proxy that accepts what the
next hop reads differently is how requests get smuggled: Content-Length together with
Transfer-Encoding, a repeated or listed Content-Length, Transfer-Encoding on HTTP/1.0, obs-fold,
bare LF or CR, control characters in values, more headers than the limit, an unknown HTTP
version, and request targets that are not one of the four forms all get 400 (431, 505) and the
connection is closed. Slowloris gets 408 (`sweep`, driven by the listener).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import h11
from h11._receivebuffer import ReceiveBuffer

from sidecar import defaults
from sidecar.http.exchange import (
    TUNNEL_ESTABLISHED,
    Body,
    Headers,
    RefusedStream,
    RequestHead,
    ResponseHead,
    StreamReset,
)
from sidecar.limits import Limits
from sidecar.observe.stats import HttpStats

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

DEFAULT_LIMITS = Limits()


# Control characters other than HTAB (CR and LF that end lines are removed before the search).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _bad(message: str, status: int = 400) -> h11.LocalProtocolError:
    # Raised inside h11's reader, h11 turns it into the RemoteProtocolError next_event raises.
    return h11.LocalProtocolError(message, error_status_hint=status)


def check_head(raw: bytes | bytearray, max_headers: int) -> None:
    """Refuse what h11 lets through in a request head or a trailer section (RFC 9112 and 9110),
    raising h11.LocalProtocolError with the status to answer. `raw` ends with the blank line."""
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raise _bad("bare LF in the request head")
    if b"\r\n " in raw or b"\r\n\t" in raw:
        raise _bad("obs-fold (a header line continued on the next line)")
    if _CONTROL.search(raw.replace(b"\r\n", b"")):
        raise _bad("a control character in the request head")
    lines = raw.count(b"\r\n") - 1  # the blank line ends the head
    eol = raw.find(b"\r\n")
    first = bytes(raw[:eol]) if eol >= 0 else b""
    space, colon = first.find(b" "), first.find(b":")
    is_request = space != -1 and (colon == -1 or space < colon)
    fields = lines - 1 if is_request else lines
    if fields > max_headers:
        raise _bad(f"{fields} header fields, more than {max_headers}", 431)
    lower = b"\r\n" + bytes(raw).lower()  # every field line now starts after a CRLF
    lengths = lower.count(b"\r\ncontent-length:")
    codings = lower.count(b"\r\ntransfer-encoding:")
    if not is_request:
        if lengths or codings:
            raise _bad("Content-Length or Transfer-Encoding in trailers")
        return
    if not (first.endswith(b" HTTP/1.1") or first.endswith(b" HTTP/1.0")):
        version = first.rpartition(b" ")[2]
        if version.startswith(b"HTTP/"):
            raise _bad(f"unsupported version {version.decode(errors='replace')}", 505)
    if lengths > 1:
        raise _bad("Content-Length given more than once")
    if lengths:
        start = lower.find(b"\r\ncontent-length:") + 17
        if b"," in lower[start : lower.find(b"\r\n", start)]:
            raise _bad("Content-Length with several values")
        if codings:
            raise _bad("both Content-Length and Transfer-Encoding")
    if codings and first.endswith(b" HTTP/1.0"):
        raise _bad("Transfer-Encoding in an HTTP/1.0 request")


class _StrictRequestBuffer(ReceiveBuffer):
    """h11's receive buffer for a server connection, with `check_head` on every head and
    trailer section it hands to h11's parser (they are the only things read as lines)."""

    def __init__(self, max_headers: int) -> None:
        super().__init__()
        self.max_headers = max_headers
        self._extracted: bytearray | None = None

    def _extract(self, count: int) -> bytearray:
        out = super()._extract(count)
        self._extracted = out
        return out

    def maybe_extract_lines(self):  # type: ignore[no-untyped-def]
        lines = super().maybe_extract_lines()
        if lines is not None and self._extracted is not None:
            check_head(self._extracted, self.max_headers)
        return lines


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
        host = target.split(b"://", 1)[1].partition(b"/")[0]
        return None if host else "absolute-form without a host"
    return "not a request target (origin, absolute, authority or asterisk form)"


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class _Writer(asyncio.Protocol):
    """Transport write back-pressure shared by both ends."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._write_paused: asyncio.Future[None] | None = None
        self.closed = False

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
            self.transport.write(data)


def _body_consumed(proto: H1Server | H1Client, body: Body) -> Callable[[int], None]:
    def consumed(_: int) -> None:
        if proto.reading_paused and body.buffered <= body.high_water // 2:
            proto.reading_paused = False
            if proto.transport is not None and not proto.transport.is_closing():
                proto.transport.resume_reading()

    return consumed


def upgrade_token(headers: Headers) -> bytes | None:
    """The protocol an HTTP/1.1 request asks to upgrade to (Connection must name Upgrade)."""
    connection = b",".join(v for k, v in headers if k == b"connection").lower()
    if b"upgrade" not in [t.strip() for t in connection.split(b",")]:
        return None
    for k, v in headers:
        if k == b"upgrade":
            return v.split(b",")[0].strip().lower()
    return None


def _feed_raw(proto: H1Server | H1Client, body: Body, data: bytes) -> None:
    """Tunnel bytes into a body, pausing the socket when the body is full."""
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
    """Absolute-form `http://host/path` → (host, /path); origin-form → (None, target)."""
    lower = target[:8].lower()
    if lower.startswith(b"http://") or lower.startswith(b"https://"):
        rest = target.split(b"://", 1)[1]
        host, slash, path = rest.partition(b"/")
        return host, slash + path if slash else b"/"
    return None, target


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
        self.stats = stats
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=limits.max_request_headers_bytes
        )
        self.conn._receive_buffer = _StrictRequestBuffer(limits.max_headers_count)
        # Timeouts (checked by `sweep`): when the request head now arriving began, and since
        # when the connection has had no request.
        self.head_started: float | None = None
        self.idle_since = 0.0
        self.exchange: H1ServerExchange | None = None
        self.reading_paused = False
        self.peer_address: tuple[str, int] | None = None
        self.task: asyncio.Task[None] | None = None
        self.tunnel: H1ServerExchange | None = None  # after an upgrade: raw bytes both ways

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer_address = transport.get_extra_info("peername")
        self.head_started = self.idle_since = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            _feed_raw(self, self.tunnel.body, data)
            return
        if self.exchange is None and self.head_started is None:
            self.head_started = asyncio.get_running_loop().time()  # a request's first bytes
        try:
            self.conn.receive_data(data)
        except h11.RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        self._process()

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.body.end()  # half-close: the other direction goes on
            return True
        try:
            self.conn.receive_data(b"")
        except h11.RemoteProtocolError:
            pass
        self._process()
        # Keep our side open: a client that half-closed after its request still gets the reply;
        # the connection closes once that is sent.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        if self.exchange is not None:
            self.exchange.lost(StreamReset("downstream connection closed"))
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
        """A reply h11 would not frame (no request was read), then close."""
        body = f"{text}\n".encode()
        self._write(
            b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.head_started = None
        if self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request(event)
                if self.exchange is None:  # refused: the connection is closing
                    return
            elif isinstance(event, h11.Data):
                assert self.exchange is not None
                if self.exchange.body.feed(bytes(event.data)) and not self.reading_paused:
                    self.reading_paused = True
                    assert self.transport is not None
                    self.transport.pause_reading()
            elif isinstance(event, h11.EndOfMessage):
                assert self.exchange is not None
                if not self.exchange.upgrade:  # an upgrade's body is the tunnel, if accepted
                    self.exchange.body.end(list(event.headers) or None)
            elif isinstance(event, h11.ConnectionClosed):
                if self.exchange is not None and not self.exchange.body.ended:
                    self.exchange.body.abort(StreamReset("client closed mid-request"))
                if self.exchange is None and self.transport is not None:
                    self.transport.close()
                return

    def _request(self, event: h11.Request) -> None:
        self.head_started = None
        # h11 bounds only heads that arrive in pieces; a whole one is measured here (Envoy: 431).
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > self.limits.max_request_headers_bytes:
            self._protocol_error(
                h11.RemoteProtocolError("request headers too large", error_status_hint=431)
            )
            return
        problem = target_problem(event.method, event.target)
        if problem is not None:
            self._protocol_error(h11.RemoteProtocolError(problem, error_status_hint=400))
            return
        host, path = split_target(event.target)
        authority = host
        headers: Headers = []
        for name, value in event.headers:
            if name == b"host":
                if authority is None:
                    authority = value
                continue
            headers.append((name, value))
        method, protocol = event.method, None
        if method == b"CONNECT":
            authority, path = event.target, b""
        else:
            upgrade = upgrade_token(headers)
            if upgrade == b"websocket":
                # Carried as an extended CONNECT (RFC 8441), the form HTTP/2 gives upgrades.
                method, protocol = b"CONNECT", upgrade
            elif upgrade is not None and upgrade != b"h2c":  # h2c: served over HTTP/1.1
                self.exchange = None
                self._refuse(501, f"upgrade to {upgrade.decode(errors='replace')} is not supported")
                return
        head = RequestHead(
            method=method,
            scheme=b"http",
            authority=authority or self.default_authority,
            path=path,
            headers=headers,
            protocol=protocol,
            http_version=event.http_version,
        )
        exchange = H1ServerExchange(self, head)
        exchange.upgrade = method == b"CONNECT"
        self.exchange = exchange
        # Envoy answers `Expect: 100-continue` itself and does not forward it.
        if any(k == b"expect" and v.lower() == b"100-continue" for k, v in headers):
            head.headers = [(k, v) for k, v in headers if k != b"expect"]
            self._write(
                self.conn.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            )
        self.task = asyncio.get_running_loop().create_task(self._serve(exchange))

    async def _serve(self, exchange: H1ServerExchange) -> None:
        try:
            await self.handler(exchange)
        except Exception:
            log.exception("event=handler_failed")
            exchange.reset()
            return
        self._next_cycle()

    def _next_cycle(self) -> None:
        self.exchange = None
        self.idle_since = asyncio.get_running_loop().time()
        conn = self.conn
        if self.tunnel is not None:
            self.tunnel = None
            if self.transport is not None:
                self.transport.close()
        elif self.draining:
            if self.transport is not None:
                self.transport.close()
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            if self.reading_paused and self.transport is not None:
                self.reading_paused = False
                self.transport.resume_reading()
            self._process()
        elif conn.our_state in (h11.MUST_CLOSE, h11.CLOSED) or conn.their_state in (
            h11.MUST_CLOSE,
            h11.CLOSED,
            h11.ERROR,
        ):
            if self.transport is not None:
                self.transport.close()
        elif conn.our_state is h11.DONE:
            # We answered before the request body was read (e.g. a local error): this connection
            # can no longer be framed reliably.
            if self.transport is not None:
                self.transport.close()

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
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
        """Answer with a local error and close the connection."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"{text}\n".encode()
            try:
                self._write(
                    self.conn.send(
                        h11.Response(
                            status_code=status,
                            headers=[
                                (b"content-length", str(len(body)).encode()),
                                (b"content-type", b"text/plain"),
                                (b"connection", b"close"),
                            ],
                            reason=_REASONS[status],
                        )
                    )
                )
                self._write(self.conn.send(h11.Data(data=body)))
                self._write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:
                pass
        if self.transport is not None:
            self.transport.close()


class H1ServerExchange:
    """The downstream exchange of one HTTP/1.x request."""

    def __init__(self, proto: H1Server, request: RequestHead) -> None:
        self.proto = proto
        self.request = request
        self.body = Body(None, defaults.BODY_HIGH_WATER)
        self.body.on_consumed = _body_consumed(proto, self.body)
        self.peer_address = proto.peer_address
        self.responded = False
        self.status = 0  # the status sent downstream, for stats and the access log
        self.error: StreamReset | None = None
        self.upgrade = False  # a websocket upgrade or a CONNECT: a tunnel if accepted
        self.tunnelling = False
        self._chunked = False

    @property
    def cancelled(self) -> bool:
        """The client went away: nothing more should be done for this request."""
        return self.error is not None

    def lost(self, error: StreamReset) -> None:
        self.error = error
        self.body.abort(error)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def informational(self, head: ResponseHead) -> None:
        if self.error is not None or self.responded or head.status in (100, 101):
            return  # 100 was answered when the request arrived
        self.proto._write(
            self.proto.conn.send(
                h11.InformationalResponse(
                    status_code=head.status, headers=head.headers, reason=_reason(head.status)
                )
            )
        )

    async def respond(self, head: ResponseHead, end: bool = False) -> None:
        self._check()
        self.responded = True
        self.status = head.status
        if self.upgrade and head.status == TUNNEL_ESTABLISHED:
            self._open_tunnel(head)
            return
        if self.upgrade:
            self.body.end()  # declined: nothing follows the request
        headers = head.headers
        conn = self.proto.conn
        has_length = any(k == b"content-length" for k, _ in headers)
        if end and not has_length and head.status >= 200 and head.status not in (204, 304):
            if self.request.method != b"HEAD":
                headers = [*headers, (b"content-length", b"0")]
        elif not has_length and self.request.http_version == b"1.1":
            self._chunked = True
        try:
            self.proto._write(
                conn.send(
                    h11.Response(
                        status_code=head.status,
                        headers=headers,
                        reason=_reason(head.status),
                    )
                )
            )
            if end:
                self.proto._write(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise StreamReset(f"cannot frame response: {exc}") from exc

    def _open_tunnel(self, head: ResponseHead) -> None:
        """Answer the upgrade (101, or 200 to a CONNECT), then carry raw bytes both ways."""
        proto, conn = self.proto, self.proto.conn
        try:
            if self.request.protocol is None:
                event: h11.Response | h11.InformationalResponse = h11.Response(
                    status_code=200, headers=head.headers, reason=b"Connection established"
                )
            else:
                headers = [
                    (b"upgrade", self.request.protocol),
                    (b"connection", b"Upgrade"),
                    *head.headers,
                ]
                event = h11.InformationalResponse(
                    status_code=101, headers=headers, reason=b"Switching Protocols"
                )
            proto._write(conn.send(event))
        except h11.LocalProtocolError as exc:
            raise StreamReset(f"cannot switch protocols: {exc}") from exc
        self.tunnelling = True
        proto.tunnel = self
        trailing, closed = conn.trailing_data
        if trailing:
            _feed_raw(proto, self.body, bytes(trailing))
        if closed:
            self.body.end()

    async def write(self, data: bytes) -> None:
        self._check()
        if self.tunnelling:
            self.proto._write(data)
            if self.proto._write_paused is not None:
                await self.proto.drain()
            return
        try:
            self.proto._write(self.proto.conn.send(h11.Data(data=data)))
        except h11.LocalProtocolError as exc:
            raise StreamReset(f"cannot frame body: {exc}") from exc
        if self.proto._write_paused is not None:
            await self.proto.drain()

    async def finish(self, trailers: Headers | None = None) -> None:
        self._check()
        if self.tunnelling:
            _write_eof(self.proto.transport)
            return
        conn = self.proto.conn
        if conn.our_state is not h11.SEND_BODY:
            return
        try:
            end = h11.EndOfMessage(headers=trailers if (trailers and self._chunked) else [])
            self.proto._write(conn.send(end))
        except h11.LocalProtocolError as exc:
            raise StreamReset(f"cannot end response: {exc}") from exc

    def abandon_request(self) -> None:
        """Nothing to do: a connection whose request was not read to the end is closed."""

    def reset(self) -> None:
        """Abort: the client sees the connection close without a terminating chunk."""
        self.error = self.error or StreamReset("reset locally")
        if self.proto.transport is not None:
            self.proto.transport.abort()


class H1ClientStream:
    """One request/response on an `H1Client` connection: the upstream stream of an exchange.

    It is its own object so that the connection can go back to the pool as soon as the response
    is complete, while the router is still reading this response's body.
    """

    def __init__(self, client: H1Client, request: RequestHead, chunked: bool) -> None:
        self.client = client
        self.request = request
        # An upgrade or CONNECT: resolved (True) when the app switched protocols, after which
        # bytes are written raw; False when it declined.
        self.tunnel: asyncio.Future[bool] | None = None
        self.body = Body(None, defaults.BODY_HIGH_WATER)
        self.body.on_consumed = _body_consumed(client, self.body)
        self._response: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()
        self.on_informational: Callable[[ResponseHead], None] | None = None
        self.response_ended_with_head = False
        self.reset_error: StreamReset | None = None
        self.chunked = chunked

    @property
    def answered(self) -> bool:
        return self._response.done()

    async def _write_tunnel(self, data: bytes) -> None:
        assert self.tunnel is not None
        if not await self.tunnel:
            return  # the app declined the upgrade: tunnel bytes have nowhere to go
        client = self.client
        client._write(data)
        if client._write_paused is not None:
            await client.drain()

    def switched(self, accepted: bool) -> None:
        if self.tunnel is not None and not self.tunnel.done():
            self.tunnel.set_result(accepted)

    async def response(self) -> ResponseHead:
        return await asyncio.shield(self._response)

    async def write(self, data: bytes) -> None:
        if self.reset_error is not None:
            raise self.reset_error
        client = self.client
        if self.tunnel is not None:
            await self._write_tunnel(data)
            return
        try:
            client._write(client.conn.send(h11.Data(data=data)))
        except h11.LocalProtocolError as exc:
            raise StreamReset(str(exc)) from exc
        if client._write_paused is not None:
            await client.drain()

    async def finish(self, trailers: Headers | None = None) -> None:
        if self.reset_error is not None:
            raise self.reset_error
        client = self.client
        if self.tunnel is not None:
            if await self.tunnel:  # accepted: half-close toward the app
                _write_eof(client.transport)
                client.eof_out = True
                if client.eof_in and client.transport is not None:
                    client.transport.close()  # the app had finished already: both ways done
            return
        if client.conn.our_state is not h11.SEND_BODY:
            return
        try:
            end = h11.EndOfMessage(headers=trailers if (trailers and self.chunked) else [])
            client._write(client.conn.send(end))
        except h11.LocalProtocolError as exc:
            raise StreamReset(str(exc)) from exc

    def reset(self) -> None:
        if self.client.stream is self:
            self.client.abort(StreamReset("reset locally"))

    def responded(self, head: ResponseHead) -> None:
        if not self._response.done():
            self._response.set_result(head)

    def fail(self, error: StreamReset) -> None:
        self.switched(False)
        if self.reset_error is None:
            self.reset_error = error
        if not self._response.done():
            self._response.set_exception(error)
            self._response.exception()  # retrieved: the router sees it through response()
        if not self.body.ended:
            self.body.abort(error)


class H1Client(_Writer):
    """An HTTP/1.1 connection to a local app, carrying one exchange at a time (kept alive)."""

    def __init__(
        self,
        on_idle: Callable[[H1Client], None] | None = None,
        on_lost: Callable[[H1Client], None] | None = None,
    ) -> None:
        super().__init__()
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * 1024)
        self.on_idle = on_idle
        self.on_lost = on_lost
        self.counted = False  # against its cluster's connections (the pool's business)
        self.reading_paused = False
        self.stream: H1ClientStream | None = None
        self.reused = False  # a kept-alive connection the app may have closed meanwhile
        self.tunnelling = False  # the app switched protocols: raw bytes from here on
        # A tunnel half-closes each way; once both ways are done the socket is closed (nothing
        # else would: the transport was told to stay open after the app's EOF).
        self.eof_in = False
        self.eof_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self.conn.our_state is h11.IDLE
            and self.conn.their_state is h11.IDLE
        )

    def open(self, head: RequestHead, end_stream: bool) -> H1ClientStream:
        """Send a request head; the returned stream carries the rest of the exchange.

        A CONNECT (classic, or extended with :protocol) is replayed in HTTP/1.1's own form: the
        CONNECT line, or a GET with `Connection: Upgrade` and `Upgrade: <protocol>`.
        """
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
        chunked = not end_stream and not any(k == b"content-length" for k, _ in headers)
        if chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        stream = self.stream = H1ClientStream(self, head, chunked)
        if tunnel:
            stream.tunnel = asyncio.get_running_loop().create_future()
        self._write(self.conn.send(h11.Request(method=method, target=target, headers=headers)))
        if end_stream:
            self._write(self.conn.send(h11.EndOfMessage()))
        return stream

    def abort(self, error: StreamReset) -> None:
        if self.stream is not None:
            self.stream.fail(error)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.tunnelling and self.stream is not None:
            _feed_raw(self, self.stream.body, data)
            return
        try:
            self.conn.receive_data(data)
        except h11.RemoteProtocolError as exc:
            self._bad_response(exc)
            return
        self._process()

    def eof_received(self) -> bool:
        if self.tunnelling and self.stream is not None:
            self.stream.body.end()  # half-close from the app; the other direction goes on
            self.eof_in = True
            return not self.eof_out  # both ways done: let the transport close
        try:
            self.conn.receive_data(b"")
        except h11.RemoteProtocolError as exc:
            self._bad_response(exc)
            return False
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        if self.on_lost is not None:
            self.on_lost(self)
        if self.stream is not None:
            if self.tunnelling and exc is None:
                self.stream.body.end()
            else:
                self.stream.fail(self._closed_error())

    def _process(self) -> None:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_response(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            stream = self.stream
            if stream is None:
                if isinstance(event, h11.ConnectionClosed) and self.transport is not None:
                    self.transport.close()  # the app closed an idle kept-alive connection
                return
            if isinstance(event, h11.InformationalResponse):
                head = ResponseHead(event.status_code, list(event.headers))
                if event.status_code == 101 and stream.tunnel is not None:
                    self._switch(stream, head)
                    return
                if stream.on_informational is not None:
                    stream.on_informational(head)
            elif isinstance(event, h11.Response):
                head = ResponseHead(event.status_code, list(event.headers))
                if (
                    stream.tunnel is not None
                    and stream.request.protocol is None
                    and 200 <= event.status_code < 300
                ):
                    self._switch(stream, head)  # a CONNECT the app accepted
                    return
                stream.switched(False)
                stream.responded(head)
            elif isinstance(event, h11.Data):
                if stream.body.feed(bytes(event.data)) and not self.reading_paused:
                    self.reading_paused = True
                    assert self.transport is not None
                    self.transport.pause_reading()
            elif isinstance(event, h11.EndOfMessage):
                stream.body.end(list(event.headers) or None)
                self._done()
                return
            elif isinstance(event, h11.ConnectionClosed):
                stream.fail(self._closed_error())
                return

    def _switch(self, stream: H1ClientStream, head: ResponseHead) -> None:
        self.tunnelling = True
        head.status = TUNNEL_ESTABLISHED
        stream.responded(head)
        stream.switched(True)
        trailing, closed = self.conn.trailing_data
        if trailing:
            _feed_raw(self, stream.body, bytes(trailing))
        if closed:
            stream.body.end()

    def _closed_error(self) -> StreamReset:
        """A reused connection closed before any answer is retry-safe: the app timed it out."""
        if self.reused and self.stream is not None and not self.stream.answered:
            return RefusedStream("kept-alive connection closed by the app")
        return StreamReset("upstream closed the connection")

    def _done(self) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self.stream = None
            if self.reading_paused and self.transport is not None:
                self.reading_paused = False
                self.transport.resume_reading()
            if self.on_idle is not None:
                self.on_idle(self)
        elif self.transport is not None:
            # The response ended before our request did: this connection cannot be reused.
            self.stream = None
            self.transport.close()

    def _bad_response(self, exc: h11.RemoteProtocolError) -> None:
        log.info("event=bad_upstream_response error=%r", str(exc))
        self.abort(StreamReset(f"malformed response: {exc}"))
