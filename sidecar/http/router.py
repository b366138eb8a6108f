"""The router between a downstream exchange and an upstream stream, whatever their HTTP versions.

It picks the endpoint (per request, round robin), retries connect failures and refused streams on
the next endpoint, bounds the wait for the response head, streams both bodies with back-pressure,
and maps failures the way Envoy does: 503 when no endpoint could take the request, 504 on the
request timeout, and a reset (never a truncated body that looks complete) once a response started.

It also applies the cluster's circuit breakers (requests in flight, pending and being retried:
503 `overflow` when open, as Envoy answers) and tells outlier detection how each endpoint did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sidecar import defaults
from sidecar.cluster import Cluster, Target
from sidecar.http.accounting import RequestAccounting, RequestRecord
from sidecar.http.deadlines import HeadTimeouts, StreamIdleChecks
from sidecar.http.exchange import (
    TUNNEL_ESTABLISHED,
    Body,
    Headers,
    RefusedStream,
    RequestHead,
    ResponseHead,
    StreamReset,
    UpstreamConnectError,
    UpstreamOverflow,
    strip_hop_by_hop,
)
from sidecar.http.pool import UpstreamStream
from sidecar.http.request_id import new_request_id
from sidecar.http.rules import request_problem
from sidecar.http.tunnel import splice, unsplice
from sidecar.observe.stats import ClusterStats, HttpStats
from sidecar.observe.throttle import LogThrottle

log = logging.getLogger("sidecar.router")

NO_HEALTHY_UPSTREAM = "no healthy upstream"
CONNECT_FAILURE = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
REMOTE_RESET = (
    "upstream connect error or disconnect/reset before headers. reset reason: remote reset"
)
REQUEST_TIMEOUT = "upstream request timeout"
OVERFLOW = "upstream connect error or disconnect/reset before headers. reset reason: overflow"

_throttle = LogThrottle()  # failure lines that can come in floods


class Exchange(Protocol):
    """What the router needs of a downstream exchange (H1ServerExchange, H2ServerStream)."""

    request: RequestHead
    body: Body
    peer_address: tuple[str, int] | None
    responded: bool
    status: int

    @property
    def cancelled(self) -> bool: ...

    def informational(self, head: ResponseHead) -> None: ...
    async def respond(
        self,
        head: ResponseHead,
        end: bool = False,
        last: bytes | None = None,
        trailers: Headers | None = None,
    ) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def finish(self, trailers: Headers | None = None, last: bytes = b"") -> None: ...
    def abandon_request(self) -> None: ...
    def reset(self) -> None: ...


class Pool(Protocol):
    def ready_stream(
        self, target: Target, head: RequestHead, end_stream: bool
    ) -> UpstreamStream | None: ...
    async def open_stream(
        self, target: Target, head: RequestHead, end_stream: bool
    ) -> UpstreamStream: ...


@dataclass
class Route:
    """How one listener forwards requests."""

    listener: str
    cluster: Cluster
    # Rewrites the request for this direction and says which pool carries it.
    prepare: Callable[[Exchange], Pool]
    request_timeout: float
    connect_attempts: int = defaults.HTTP_CONNECT_ATTEMPTS
    stream_idle_timeout: float = defaults.OUTBOUND_STREAM_IDLE_TIMEOUT
    http_stats: HttpStats = field(default_factory=lambda: HttpStats("-"))
    on_request_done: Callable[[RequestRecord], None] | None = None  # the access log
    # Whether a request head is checked before it is forwarded (`sidecar.http.rules`): not where
    # every request comes from a verified peer sidecar, whose own router checked it before it
    # left (issue 8: no second validation on the hop between two sidecars, as h2's is skipped).
    checks_requests: bool = True
    # Whether a response head's hop-by-hop fields are dropped here: not where every response
    # comes over HTTP/2 from a verified peer sidecar (the outbound's mesh pool under mTLS), whose
    # own router dropped them before it left (as `checks_requests`: no second pass on the hop
    # between two sidecars, and no call and `dict` of the names for it).
    strips_responses: bool = True
    # The response heads awaited against the request timeout, and the exchanges watched for the
    # stream idle timeout (None when either is turned off): one loop timer each per route.
    heads: HeadTimeouts | None = field(init=False)
    idle_checks: StreamIdleChecks | None = field(init=False)
    # The attempts a request may make (at least one), made once rather than per request.
    attempts: range = field(init=False)

    def __post_init__(self) -> None:
        self.attempts = range(max(1, self.connect_attempts))
        self.heads = HeadTimeouts(self.request_timeout) if self.request_timeout > 0 else None
        self.idle_checks = None
        if self.stream_idle_timeout > 0:
            self.idle_checks = StreamIdleChecks(self.stream_idle_timeout, self._stream_idle)

    def _stream_idle(self, exchange: Exchange, upstream: UpstreamStream) -> None:
        """No body chunk moved either way for the stream idle timeout: reset both sides."""
        self.http_stats.downstream_rq_idle_timeout += 1
        log.info(
            "event=stream_idle_timeout listener=%s cluster=%s", self.listener, self.cluster.name
        )
        upstream.reset()
        exchange.reset()


async def local_reply(exchange: Exchange, status: int, text: str) -> None:
    """An answer made by the sidecar itself (Envoy's local reply: plain text body)."""
    if exchange.responded:
        exchange.reset()
        return
    body = text.encode()
    head = ResponseHead(
        status,
        [(b"content-length", str(len(body)).encode()), (b"content-type", b"text/plain")],
    )
    try:
        await exchange.respond(head, last=body)
    except StreamReset:
        pass


async def proxy(route: Route, exchange: Exchange) -> None:
    """Carry one request upstream and its response back: counted, checked, then tried on the
    endpoints. A request that is retried holds a place in the cluster's retry budget until it
    is done. The route comes first, so that a listener's handler binds it positionally
    (`functools.partial(proxy, route)`: a keyword argument would send each call through
    CPython's slower keyword path, ~1.2k instructions a request).

    Counting, checking and trying are one coroutine, not one awaiting the other: a request's
    task resumes through every coroutine it is awaiting in, each time it waits (for a stream,
    for the response head), so a layer fewer is a coroutine fewer made and resumed."""
    head = exchange.request
    cluster = route.cluster
    stats = cluster.stats
    acct = RequestAccounting(
        route.http_stats, stats, head, route.on_request_done, exchange.peer_address
    )
    retrying = False
    try:
        problem = request_problem(head) if route.checks_requests else None
        if problem is not None:
            await _malformed(exchange, route, acct, problem)
            return
        pool = route.prepare(exchange)
        failure = CONNECT_FAILURE
        for attempt in route.attempts:
            if exchange.cancelled:
                # Reset by the client before it reached an upstream (rapid reset, or a client that
                # gave up): no upstream request for it.
                stats.upstream_rq_cancelled += 1
                return
            if attempt:  # a retry (Envoy counts each one), within the cluster's retry budget
                if not retrying:
                    if stats.upstream_rq_retry_active >= stats.cb_max_retries:
                        stats.upstream_rq_retry_overflow += 1
                        break
                    retrying = True
                    stats.upstream_rq_retry_active += 1
                stats.upstream_rq_retry += 1
            target = cluster.pick()
            if target is None:
                log.info(
                    "event=no_healthy_upstream listener=%s cluster=%s", route.listener, cluster.name
                )
                stats.upstream_cx_none_healthy += 1
                acct.local_failure(503, "UH")
                await local_reply(exchange, 503, NO_HEALTHY_UPSTREAM)
                return
            pending = stats.upstream_rq_pending_active
            if pending >= stats.cb_max_pending_requests or (
                pending + stats.upstream_rq_active >= stats.cb_max_requests
            ):
                await _overflow(exchange, route, acct)
                return
            try:
                ended = exchange.body.at_end
                upstream = pool.ready_stream(target, head, ended)
                if upstream is None:  # a connection to make or a stream slot to wait for
                    upstream = await _wait_stream(pool, stats, target, head, ended)
            except UpstreamOverflow:
                await _overflow(exchange, route, acct)
                return
            except (UpstreamConnectError, RefusedStream) as exc:
                if isinstance(exc, UpstreamConnectError):
                    cluster.outlier.failure(target)
                held_back = _throttle.allow((route.listener, target, str(exc)))
                if held_back is not None:
                    log.info(
                        "event=upstream_connect_failed listener=%s cluster=%s endpoint=%s "
                        "reason=%r since_last_line=%d",
                        route.listener,
                        cluster.name,
                        target,
                        str(exc),
                        held_back,
                    )
                continue
            upstream.on_informational = exchange.informational
            counts_active = cluster.counts_active
            if counts_active:
                cluster.acquire(target)
            acct.upstream_open(target.address)
            idle_checks = route.idle_checks
            if idle_checks is not None:
                idle_checks.add(upstream, exchange)
            try:
                outcome = await _attempt(exchange, route, upstream, acct, target)
            finally:
                if idle_checks is not None:
                    idle_checks.entries.pop(upstream, None)
                if counts_active:
                    cluster.release(target)
            if outcome is None:
                # Answered (or reset): `acct.finished`, in the `finally` below with nothing
                # awaited in between, counts the upstream request done (as if this raised).
                return
            acct.upstream_done()  # before the next attempt is counted, or the local reply
            if outcome is not RETRY:
                failure = outcome
                break
        acct.local_failure(503, "UF" if failure is CONNECT_FAILURE else "UR")
        await local_reply(exchange, 503, failure)
    except StreamReset as exc:
        # The downstream went away (or reset its stream): nothing more to say to it.
        log.debug("event=downstream_reset listener=%s reason=%r", route.listener, str(exc))
    finally:
        if retrying:
            stats.upstream_rq_retry_active -= 1
        acct.finished(exchange.status)


RETRY = "retry"


async def _malformed(
    exchange: Exchange, route: Route, acct: RequestAccounting, problem: str
) -> None:
    """A head that must not be forwarded (sidecar.http.rules): 400, counted as Envoy counts an
    HTTP/2 message that breaks RFC 9113 section 8 (over HTTP/1.1, where the codec let the head
    through — an invalid Host — as a protocol error); the connection goes on."""
    stats = route.http_stats
    if exchange.request.http_version == b"2":
        stats.http2_rx_messaging_error += 1
    else:
        stats.downstream_cx_protocol_error += 1
    if acct.record is not None:
        acct.record.flags = "DPE"
    held_back = _throttle.allow(("malformed", route.listener))
    if held_back is not None:
        log.info(
            "event=bad_request listener=%s status=400 error=%r since_last_line=%d",
            route.listener,
            problem,
            held_back,
        )
    await local_reply(exchange, 400, f"Bad Request: {problem}")


async def _overflow(exchange: Exchange, route: Route, acct: RequestAccounting) -> None:
    """A circuit breaker is open: 503 at once, counted; logged at debug only (it comes in
    floods, and the counters say it)."""
    route.cluster.stats.upstream_rq_pending_overflow += 1
    log.debug("event=upstream_overflow listener=%s cluster=%s", route.listener, route.cluster.name)
    acct.local_failure(503, "UO")
    await local_reply(exchange, 503, OVERFLOW)


async def _wait_stream(
    pool: Pool, stats: ClusterStats, target: Target, head: RequestHead, ended: bool
) -> UpstreamStream:
    """A stream that must be waited for, the request counted as pending (Envoy's
    upstream_rq_pending_active) meanwhile."""
    stats.upstream_rq_pending_active += 1
    try:
        return await pool.open_stream(target, head, ended)
    finally:
        stats.upstream_rq_pending_active -= 1


async def _attempt(
    exchange: Exchange,
    route: Route,
    upstream: UpstreamStream,
    acct: RequestAccounting,
    target: Target,
) -> str | None:
    """Carry the exchange on one upstream stream: None once answered, RETRY when the upstream
    refused it unprocessed and nothing of the request body was spent, else the 503 reason.

    The request body is sent by a task of its own while the response head is awaited; an
    attempt that fails stops it, so a retry never has two senders reading the same body. How it
    went is reported to outlier detection (a 5xx, a timeout or a reset counts against the
    endpoint). The response is then streamed back from here too, not from a coroutine of its
    own: one coroutine fewer made for every request.
    """
    outlier = route.cluster.outlier
    pump = None
    body = exchange.body
    if not body.at_end:
        if (
            body.ended
            and body.buffered <= defaults.INLINE_REQUEST_BODY
            and upstream.can_send_now(body.buffered)
        ):
            # All here, taken at once: no task needed. A body of one chunk without trailers (a
            # unary gRPC call's message) goes with the end straight from here: no coroutine made
            # for `_pump_request` and `_send_body`, which would send it just so.
            whole = body.take_whole()
            if whole is None:
                await _pump_request(body, upstream, acct)
            else:
                if acct.counts_bodies:
                    acct.request_chunk(whole)
                try:
                    await upstream.finish(None, whole)
                except StreamReset:
                    upstream.reset()
        else:
            pump = asyncio.get_running_loop().create_task(_pump_request(body, upstream, acct))
    head = upstream.response_head
    heads = route.heads  # the request timeout: fails `head` with TimeoutError
    if heads is not None and not head.done():
        if pump is None:
            heads.add(head)
        else:
            _time_after_upload(heads, head, pump)
    try:
        response = await head
    except RefusedStream:
        _stop(pump)
        return RETRY if exchange.body.reads == 0 else REMOTE_RESET
    except TimeoutError:
        outlier.failure(target)
        _stop(pump)
        upstream.reset()
        acct.local_failure(504, "UT")
        log.info("event=request_timeout listener=%s cluster=%s", route.listener, route.cluster.name)
        await local_reply(exchange, 504, REQUEST_TIMEOUT)
        return None
    except StreamReset:
        _stop(pump)
        if exchange_gone(exchange):
            # The client cut its own request (a reset, or EOF before its body's end), so the
            # upstream stream was reset for it: nobody to answer, and not the endpoint's fault.
            # Its connection is reset too, as Envoy does (no 503 for the client's own doing).
            acct.downstream_reset()
            exchange.reset()
            return None
        outlier.failure(target)
        acct.upstream_reset()
        return REMOTE_RESET
    finally:
        if heads is not None:
            heads.entries.pop(head, None)
    if response.status >= 500:
        outlier.failure(target)
    elif outlier.health:  # (a success changes nothing where no endpoint ever failed: no call)
        outlier.success(target)
    acct.upstream_response(response.status)

    # The response, streamed back.
    response_body = upstream.body
    if route.strips_responses:
        response.headers = strip_hop_by_hop(response.headers)
    tunnel = response.status == TUNNEL_ESTABLISHED
    try:
        if upstream.response_ended_with_head or (
            response_body.at_end and not response_body.trailers
        ):
            await exchange.respond(response, end=True)
        elif not tunnel and (whole := response_body.take_whole()) is not None:
            # The whole body came with the head (a small answer): it goes with it, one write.
            if acct.counts_bodies:
                acct.response_chunk(whole)
            await exchange.respond(response, last=whole)
        elif not tunnel and response_body.trailers and (chunk := response_body.ready()) is not None:
            # Ended with trailers, all of it here (a gRPC answer: message and status came with
            # the head): if that chunk was the whole body, head, body and trailers go in one
            # call; otherwise the rest follows it as `_send_body` would send it.
            if acct.counts_bodies:
                acct.response_chunk(chunk)
            if response_body.at_end:
                await exchange.respond(response, last=chunk, trailers=response_body.trailers)
            else:
                await exchange.respond(response)
                await exchange.write(chunk)
                await _send_body(
                    response_body, exchange, acct.response_chunk if acct.counts_bodies else None
                )
        else:
            await exchange.respond(response)
            if tunnel:
                splice(exchange, upstream, acct.request_chunk, acct.response_chunk)
            await _send_body(
                response_body, exchange, acct.response_chunk if acct.counts_bodies else None
            )
        if acct.grpc:
            acct.grpc_response_ended(response.headers, response_body.trailers)
    except StreamReset:
        if response_body.error is not None:
            acct.upstream_reset()
            exchange.reset()  # the upstream broke mid-response: the downstream must see a reset
        else:
            acct.downstream_reset()
            upstream.reset()  # the downstream left: stop the upstream
    finally:
        if pump is not None and not pump.done():
            if tunnel and response_body.error is None:
                await pump  # a tunnel ends when both directions have
            else:
                pump.cancel()
                exchange.abandon_request()
        if tunnel:
            unsplice(exchange, upstream)  # (left to the garbage collector if cancelled above)
    return None


def exchange_gone(exchange: Exchange) -> bool:
    """The downstream went away (its body was cut): a reset upstream is not the endpoint's fault."""
    return exchange.body.error is not None


def _stop(pump: asyncio.Task[None] | None) -> None:
    if pump is not None and not pump.done():
        pump.cancel()


def _time_after_upload(
    heads: HeadTimeouts, head: asyncio.Future[ResponseHead], pump: asyncio.Task[None]
) -> None:
    """As in Envoy, the request timeout starts once the whole request has been sent (when the
    request body's task ends): a long upload is not cut by it."""

    def start(_: object) -> None:
        if not head.done():
            heads.add(head)

    if pump.done():
        start(pump)
    else:
        pump.add_done_callback(start)


async def _pump_request(body: Body, upstream: UpstreamStream, acct: RequestAccounting) -> None:
    try:
        await _send_body(body, upstream, acct.request_chunk if acct.counts_bodies else None)
    except StreamReset:
        upstream.reset()


async def _send_body(
    body: Body, sink: Exchange | UpstreamStream, count: Callable[[bytes], None] | None
) -> None:
    """A body to its end, each chunk counted (when `count` is given). The chunk that completes a
    body without trailers goes with the end: one DATA frame with END_STREAM rather than an empty
    one after it, one HTTP/1.1 write with a chunked body's terminator. A chunk already queued
    is taken without awaiting `read` (a coroutine fewer for each)."""
    while True:
        chunk = body.ready()
        if chunk is None and (chunk := await body.read()) is None:
            break
        if count is not None:
            count(chunk)
        if body.at_end and not body.trailers:
            await sink.finish(None, chunk)
            return
        await sink.write(chunk)
        if body.at_end:  # (ended with trailers, all taken: no `read` awaited to be told so)
            break
    await sink.finish(body.trailers)


# -- header policy for each direction ---------------------------------------------------------


_ORIG_PROTO = defaults.ORIG_PROTO_HEADER
# Our hop header as HTTP/1.x requests carry it, made once rather than per request (the HTTP/1.1
# codec takes no other version), and nothing for HTTP/2: the fields each version adds, so that
# the usual request gets them in the same list display as the others, with no test and no call.
_ORIG_PROTO_FIELDS = {v: ((_ORIG_PROTO, b"HTTP/" + v),) for v in (b"1.1", b"1.0")}
_ORIG_PROTO_FIELDS[b"2"] = ()


# The names `outbound_headers` drops or sets besides the hop-by-hop ones: a request with none of
# them (nearly every one) gets ours appended to a copy of its list, in one step.
_SET_OUTBOUND = frozenset(
    (b"host", _ORIG_PROTO, b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id")
)


def outbound_headers(head: RequestHead, peer_address: tuple[str, int] | None) -> None:
    """App → mesh: strip hop-by-hop, add what Envoy adds, remember an HTTP/1 origin."""
    names = dict(head.headers)  # which names there are, in one C call (values: the last of each)
    headers = strip_hop_by_hop(head.headers, names)
    if headers is head.headers and peer_address is not None and _SET_OUTBOUND.isdisjoint(names):
        # The usual request: nothing to drop or rewrite, so the fields below are all appended.
        headers = [
            *headers,
            (b"x-forwarded-for", peer_address[0].encode()),
            (b"x-forwarded-proto", head.scheme or b"http"),
            (b"x-request-id", new_request_id()),
            *_ORIG_PROTO_FIELDS[head.http_version],
        ]
    else:
        if headers is not head.headers:  # (Connection may have named any of those looked at below)
            names = dict(headers)
        if b"host" in names or _ORIG_PROTO in names:
            if not head.authority and names.get(b"host"):  # HTTP/2 without :authority: Host
                head.authority = names[b"host"]  # names it (RFC 9113 8.3.1), as Envoy takes it
            headers = [(k, v) for k, v in headers if k != b"host" and k != _ORIG_PROTO]
        elif headers is head.headers:
            headers = list(headers)
        if peer_address is not None:
            client = peer_address[0].encode()
            if b"x-forwarded-for" in names:
                for i, (k, v) in enumerate(headers):
                    if k == b"x-forwarded-for":
                        headers[i] = (k, v + b", " + client)
                        break
            else:
                headers.append((b"x-forwarded-for", client))
        if b"x-forwarded-proto" not in names:
            headers.append((b"x-forwarded-proto", head.scheme or b"http"))
        if b"x-request-id" not in names:
            headers.append((b"x-request-id", new_request_id()))
        headers += _ORIG_PROTO_FIELDS[head.http_version]
    head.headers = headers


# What an inbound takes out of a request from the mesh: our hop header (returned), and what is
# never trusted from the caller — XFCC (set from the verified identity) and Host (the authority
# travels as :authority).
_INBOUND_DROPPED = frozenset((_ORIG_PROTO, b"x-forwarded-client-cert", b"host"))


def inbound_headers(head: RequestHead, client_identity: str | None) -> bytes | None:
    """Mesh → app: take out our hop header (returned), set XFCC from the verified identity.

    Which names are there is found in one C call (as in `outbound_headers`). A request from a
    peer sidecar has our hop header last, where its `outbound_headers` put it, and nothing else
    to drop: that is looked for first, and then the list less its last field is the answer,
    found by C-level calls (one `dict` of the names). Any other list is walked to drop what is
    there to drop, by a comprehension."""
    headers = head.headers
    orig: bytes | None
    if (
        headers
        and headers[-1][0] == _ORIG_PROTO
        and _INBOUND_DROPPED.isdisjoint(names := dict(rest := headers[:-1]))
    ):
        orig = headers[-1][1]
        headers = rest  # (`names`: those of `rest`, less the hop header, which is no hop-by-hop)
    else:
        names = dict(headers)
        if _INBOUND_DROPPED.isdisjoint(names):  # (HTTP/2 from the app: no hop header)
            orig = None
            headers = list(headers)
        else:
            orig = names.get(_ORIG_PROTO)  # the last one, as the hop header's is taken
            headers = [header for header in headers if header[0] not in _INBOUND_DROPPED]
    if client_identity is not None:
        headers.append((b"x-forwarded-client-cert", b"URI=" + client_identity.encode()))
    # `names` has every hop-by-hop name `headers` has: what was dropped and XFCC are none.
    head.headers = strip_hop_by_hop(headers, names)
    return orig
