"""The codec-neutral HTTP exchange: heads, streamed bodies with back-pressure, trailers.

An HTTP/1.1 codec (h1wire) and an HTTP/2 codec (h2) both produce and consume these, so h1→h2,
h2→h1 and h2→h2 proxying are compositions of the same parts rather than separate paths.

A `Body` is one direction of one exchange. The codec that reads it from the wire `feed`s chunks
synchronously (from `data_received`); the router `read`s them. Each read calls `on_consumed`,
which is how back-pressure reaches the wire: the HTTP/2 codec returns flow-control credit, the
HTTP/1.1 codec resumes reading. So a body never sits in the sidecar beyond a bounded amount.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import countOf, itemgetter

from sidecar.transport.connect import ConnectError

Headers = list[tuple[bytes, bytes]]  # lower-case names, wire order, repeats kept

# Connection-specific headers: meaningless beyond one hop and illegal in HTTP/2 (RFC 9113 8.2.2).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"http2-settings",
    }
)


# The status an upstream stream reports for an accepted upgrade or CONNECT, whatever the wire
# said (101 from HTTP/1.1, 200 from HTTP/2's extended CONNECT): each codec turns it back into its
# own form toward its peer.
TUNNEL_ESTABLISHED = 101


class StreamReset(Exception):
    """The other side reset the stream or dropped the connection mid-exchange."""


class RefusedStream(StreamReset):
    """The upstream refused the request before processing it (GOAWAY, REFUSED_STREAM, a stale
    kept-alive connection): safe to retry elsewhere."""


# An endpoint could not be connected (refused, timed out, wrong peer identity): the router tries
# the next one, and answers 503 after the attempts. One class with the transport's ConnectError,
# so that every connector (plain TCP, mesh mTLS) fails the same way.
UpstreamConnectError = ConnectError


class UpstreamOverflow(Exception):
    """A circuit breaker of the cluster is open: 503 at once (Envoy's UO)."""


@dataclass
class RequestHead:
    method: bytes
    scheme: bytes
    authority: bytes
    path: bytes
    headers: Headers = field(default_factory=list)
    protocol: bytes | None = None  # extended CONNECT's :protocol (RFC 8441)
    http_version: bytes = b"2"  # what the downstream spoke: b"1.0", b"1.1" or b"2"

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass
class ResponseHead:
    status: int
    headers: Headers = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


# What gRPC requests carry (RFC 9113 8.2.2 allows it in HTTP/2), and the rest of the set.
_TE_TRAILERS = (b"te", b"trailers")
_HOP_BY_HOP_BUT_TE = HOP_BY_HOP - {b"te"}


def strip_hop_by_hop(headers: Headers, names: Mapping[bytes, bytes] | None = None) -> Headers:
    """Drop Connection, every header it names, and the fixed hop-by-hop set; keep `te: trailers`.

    Most messages have none of them, and a gRPC request has `te: trailers` alone, kept as it
    is: then `headers` itself is returned (found by C-level calls, not a walk in Python), and a
    caller that changes the list must copy it first. `names`: the names in `headers` (as keys;
    values unused), when the caller has them already: one `dict` build fewer. Only which
    hop-by-hop names are among them is read."""
    if names is None:
        names = dict(headers)
    if HOP_BY_HOP.isdisjoint(names):
        return headers
    if _HOP_BY_HOP_BUT_TE.isdisjoint(names) and headers.count(_TE_TRAILERS) == countOf(
        map(itemgetter(0), headers), b"te"
    ):
        return headers  # every TE field is exactly `te: trailers`: nothing to drop or rewrite
    named = {
        token.strip().lower()
        for k, v in headers
        if k == b"connection"
        for token in v.split(b",")
        if token.strip()
    }
    out = []
    for k, v in headers:
        if k == b"te":
            if b"trailers" in [t.strip().lower() for t in v.split(b",")]:
                out.append((k, b"trailers"))
            continue
        if k in HOP_BY_HOP or k in named:
            continue
        out.append((k, v))
    return out


# The queue of a body that was never fed: shared, and always empty (it can hold nothing). Most
# requests have no body, so a body's deque is made by its first `feed`, not with the body.
_NOT_FED: deque[bytes] = deque(maxlen=0)


class Body:
    """One direction's body: chunks fed by a codec, read by the router, bounded by back-pressure."""

    __slots__ = (
        "_chunks",
        "_waiter",
        "buffered",
        "ended",
        "trailers",
        "error",
        "on_consumed",
        "high_water",
        "reads",
        "at_end",
    )

    def __init__(
        self, on_consumed: Callable[[int], None] | None = None, high_water: int = 256 * 1024
    ) -> None:
        self._chunks = _NOT_FED
        self._waiter: asyncio.Future[None] | None = None
        self.buffered = 0
        self.ended = False
        self.trailers: Headers | None = None
        self.error: BaseException | None = None
        # Called with each chunk's size as it is read. It is dropped once nothing more can be
        # read: the codecs' callbacks refer back to the stream or connection that owns this body,
        # a reference cycle per request that only the garbage collector would otherwise free
        # (its collections were the periodic pauses at a fixed request rate).
        self.on_consumed = on_consumed
        self.high_water = high_water
        self.reads = 0  # chunks handed out: the stream idle timeout watches it move
        # Nothing more will come: ended with nothing left to read. An attribute kept up to date
        # (in `end`, `read` and `discard`), not a property: the router asks it several times a
        # request.
        self.at_end = False

    @classmethod
    def empty(cls) -> Body:
        body = cls()
        body.ended = body.at_end = True
        return body

    # -- producer (codec) side ---------------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Queue a chunk; True when the buffer is past its high-water mark (pause the source)."""
        if self.ended or self.error is not None:
            return False
        if self._chunks is _NOT_FED:
            self._chunks = deque()
        self._chunks.append(data)
        self.buffered += len(data)
        if self._waiter is not None:
            self._wake()
        return self.buffered > self.high_water

    def feed_last(self, data: bytes) -> None:
        """Queue the last chunk and end the body without trailers: `feed` then `end`, in one
        call (an HTTP/2 DATA frame with END_STREAM: a small answer's whole body)."""
        if self.ended:
            return
        if self.error is None:
            chunks = self._chunks
            if chunks is _NOT_FED:
                # Made empty, then appended to: `deque((data,))` costs more (an iterator).
                self._chunks = chunks = deque()
            chunks.append(data)
            self.buffered += len(data)
        self.ended = True
        self.trailers = None
        if not self._chunks:  # (aborted: nothing was queued)
            self.on_consumed = None
            self.at_end = True
        if self._waiter is not None:
            self._wake()

    def end(self, trailers: Headers | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self.trailers = trailers
        if not self._chunks:
            self.on_consumed = None  # nothing left to consume
            self.at_end = True
        if self._waiter is not None:
            self._wake()

    def abort(self, exc: BaseException) -> None:
        if self.ended:
            return  # complete already: a later reset (e.g. RST_STREAM NO_ERROR) changes nothing
        self.error = exc
        self.on_consumed = None  # reads raise from here on; the codec takes back what is queued
        self._wake()

    def discard(self) -> int:
        """Drop what was queued and not read (a stream cut short); returns how many bytes, so
        that the codec can give their flow-control credit back."""
        dropped = self.buffered
        self._chunks.clear()
        self.buffered = 0
        self.at_end = self.ended
        return dropped

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumer (router) side --------------------------------------------------------------

    async def read(self) -> bytes | None:
        """The next chunk, or None at the end. Raises StreamReset if the stream was cut."""
        while True:
            if self.error is not None:
                raise StreamReset(str(self.error)) from self.error
            if self._chunks:
                return self._take()
            if self.ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def ready(self) -> bytes | None:
        """The next chunk if one is queued (and the stream was not cut), taken as `read` takes
        it but without a coroutine made for it; None when `read` must be awaited: to wait for
        a chunk, to raise, or to say that the body has ended."""
        if self._chunks and self.error is None:
            return self._take()
        return None

    def take_whole(self) -> bytes | None:
        """The whole body, if it has ended in one chunk without trailers (a small message that
        came with its head), taken as `read` takes a chunk: the router sends it with the head.
        None otherwise."""
        chunks = self._chunks
        if self.ended and len(chunks) == 1 and not self.trailers and self.error is None:
            # `_take` of the last chunk, inline (a call fewer for every small message).
            data = chunks.popleft()
            self.buffered -= len(data)
            self.reads += 1
            if self.on_consumed is not None:
                self.on_consumed(len(data))
            self.on_consumed = None  # that was the last chunk
            self.at_end = True
            return data
        return None

    def _take(self) -> bytes:
        data = self._chunks.popleft()
        self.buffered -= len(data)
        self.reads += 1
        if self.on_consumed is not None:
            self.on_consumed(len(data))
        if self.ended and not self._chunks:
            self.on_consumed = None  # that was the last chunk
            self.at_end = True
        return data

    @property
    def reader_waiting(self) -> bool:
        """The reader waits in `read` with nothing queued: a tunnel's relay may hand a chunk
        past the queue (sidecar.http.tunnel) without overtaking another."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()


# The body of every request or response that has none, shared (a `Body` and its bound callback
# fewer per such message). It is ended with nothing queued, so nothing changes it: `feed` and
# `abort` refuse it, `end` returns at once, and `read`, `ready` and `take_whole` have nothing to
# take (only `_take` writes `reads`). Never give it to a codec that would feed it (a tunnel's
# body) or call `discard` on it.
EMPTY_BODY = Body.empty()
