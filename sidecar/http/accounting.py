"""What the router counts per request: Envoy's HTTP and gRPC stats, and the access-log record.

Kept apart from the router so that the request path reads as forwarding, and all the counting
reads as one list. Everything here is plain attribute arithmetic on stats objects that were
resolved once per listener and cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

from sidecar.http.exchange import Headers, RequestHead
from sidecar.observe.stats import HISTOGRAM_FOLD_AT, ClusterStats, HttpStats

# A field's name: `map(_NAME, headers)` lists a head's names in one C-level pass.
_NAME = itemgetter(0)


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


# The clock of durations: the one `loop.time()` reads (CLOCK_MONOTONIC; uvloop's in whole
# milliseconds), at full resolution and without looking the running loop up per request.
_now = time.monotonic

# The grpc_status stats' keys of gRPC's status codes (0-16), and "-" for none (or an empty one).
_GRPC_STATUS_KEYS: dict[bytes | None, str] = {str(n).encode(): str(n) for n in range(17)}
_GRPC_STATUS_KEYS[None] = _GRPC_STATUS_KEYS[b""] = "-"


class GrpcMessages:
    """Counts gRPC messages in a body by their 5-byte length prefixes, chunk by chunk."""

    __slots__ = ("count", "_need", "_header")

    def __init__(self) -> None:
        self.count = 0
        self._need = 0  # bytes of the current message's payload still to skip
        self._header = b""

    def feed(self, chunk: bytes) -> None:
        """Count the messages whose prefixes are in `chunk`: the rest of a payload begun before
        is skipped, a prefix split across chunks is put together, and the prefixes inside the
        chunk are hopped from one to the next. A chunk that is one whole message (gRPC's usual:
        a unary call's DATA frame) is told by its prefix alone, before any of that."""
        size = len(chunk)
        pos = self._need  # the rest of a payload begun in an earlier chunk
        if pos >= size:
            self._need = pos - size
            return
        header = self._header
        if not (header or pos) and int.from_bytes(chunk[1:5], "big") == size - 5:
            self.count += 1  # one whole message, gRPC's usual chunk
            return
        if header:  # a prefix begun at the end of an earlier chunk
            take = 5 - len(header)
            header += chunk[pos : pos + take]
            if len(header) < 5:  # (`_need` is 0 while a prefix is pending)
                self._header = header
                return
            self._header = b""
            self.count += 1
            pos += take + int.from_bytes(header[1:5], "big")
        while pos + 5 <= size:
            self.count += 1
            pos += 5 + int.from_bytes(chunk[pos + 1 : pos + 5], "big")
        if pos < size:  # a prefix split by the chunk's end
            self._header = chunk[pos:]
            self._need = 0
        else:
            self._need = pos - size


@dataclass
class RequestRecord:
    """One request as the access log sees it."""

    start: float  # wall-clock time the request arrived
    request: RequestHead
    status: int = 0
    flags: str = ""
    received: int = 0
    sent: int = 0
    duration_ms: int = 0
    upstream_time_ms: int | None = None
    upstream_host: str | None = None
    downstream: str | None = None


class RequestAccounting:
    """The counters of one request, from arrival to the last byte."""

    __slots__ = (
        "http", "cluster", "started", "upstream_started", "grpc", "grpc_requests",
        "grpc_responses", "grpc_request_messages", "grpc_response_messages", "record", "on_done",
        "counts_bodies",
    )  # fmt: skip

    def __init__(
        self,
        http: HttpStats,
        cluster: ClusterStats,
        request: RequestHead,
        on_done: Callable[[RequestRecord], None] | None,
        downstream: tuple[str, int] | None,
    ) -> None:
        self.http = http
        self.cluster = cluster
        self.started = _now()
        # When the upstream request now counted in upstream_rq_active began; 0.0 while none is
        # (one attribute for both: a store fewer at each end).
        self.upstream_started = 0.0
        http.downstream_rq_total += 1
        http.downstream_rq_active += 1
        if request.http_version == b"2":
            http.downstream_rq_http2_total += 1
        else:
            http.downstream_rq_http1_total += 1
        method = request.method
        if method == b"CONNECT":
            http.downstream_cx_upgrades_total += 1
        # gRPC by its content-type (the first one), as Envoy tells, on a POST: every gRPC call
        # is one (gRPC's HTTP/2 protocol, and gRPC-Web's), and the content-type of any other
        # request is not looked for (~1-2.5k instructions a request: its names compared).
        # Whether the head has one at all is asked of its names at C level, so that a POST
        # without one is not walked field by field in Python.
        if (
            method == b"POST"
            and b"content-type" in map(_NAME, request.headers)
            and (request.header(b"content-type") or b"").startswith(b"application/grpc")
        ):
            self.grpc = True
            # Messages are counted whole (a unary call's body is one chunk of one message) in
            # the `*_messages` counts; a direction gets a `GrpcMessages` only from its first
            # chunk that is not one whole message: two objects fewer made for the usual call.
            # (These four are set for gRPC only, and only read when `grpc` is true.)
            self.grpc_requests: GrpcMessages | None = None
            self.grpc_responses: GrpcMessages | None = None
            self.grpc_request_messages = self.grpc_response_messages = 0
        else:
            self.grpc = False
        self.on_done = on_done
        # `counts_bodies`: whether `request_chunk` and `response_chunk` have anything to count
        # (gRPC messages, the access log's bytes): when not, the router does not call them for
        # every chunk.
        if on_done is None:
            self.record: RequestRecord | None = None
            self.counts_bodies = self.grpc
        else:
            self.record = RequestRecord(
                time.time(), request,
                downstream=f"{downstream[0]}:{downstream[1]}" if downstream else None,
            )  # fmt: skip
            self.counts_bodies = True

    # -- upstream ------------------------------------------------------------------------------

    def upstream_open(self, host: str) -> None:
        self.upstream_started = _now()
        cluster = self.cluster
        cluster.upstream_rq_total += 1
        cluster.upstream_rq_active += 1
        if self.record is not None:
            self.record.upstream_host = host

    def upstream_done(self) -> None:
        if self.upstream_started:
            self.upstream_started = 0.0
            self.cluster.upstream_rq_active -= 1

    def upstream_response(self, status: int) -> None:
        """A response head came from the upstream itself."""
        cluster = self.cluster
        # Counted once, by status: the code and class counts are made of these when read
        # (`StatsStore.settle`).
        counts = cluster.upstream_rq_status
        counts[status] = counts.get(status, 0) + 1
        elapsed_ms = (_now() - self.upstream_started) * 1000
        pending = cluster.upstream_rq_time.pending  # (`Histogram.observe`, written out)
        pending.append(elapsed_ms)
        if len(pending) >= HISTOGRAM_FOLD_AT:
            cluster.upstream_rq_time.fold()
        if self.record is not None:
            self.record.upstream_time_ms = int(elapsed_ms)

    def local_failure(self, status: int, flag: str) -> None:
        """The sidecar answered for an upstream that could not (503, 504): Envoy counts these
        in upstream_rq_xx but not in external_upstream_rq_xx."""
        _bump(self.cluster.upstream_rq_xx, str(status // 100))
        _bump(self.cluster.upstream_rq_code, str(status))
        if flag == "UT":
            self.cluster.upstream_rq_timeout += 1
        if self.record is not None:
            self.record.flags = flag

    def upstream_reset(self) -> None:
        self.cluster.upstream_rq_rx_reset += 1
        if self.record is not None:
            self.record.flags = self.record.flags or "UR"

    def downstream_reset(self) -> None:
        self.cluster.upstream_rq_tx_reset += 1
        if self.record is not None:
            self.record.flags = self.record.flags or "DR"

    # -- bodies --------------------------------------------------------------------------------

    def request_chunk(self, chunk: bytes) -> None:
        if self.grpc:
            split = self.grpc_requests
            if split is None and int.from_bytes(chunk[1:5], "big") == len(chunk) - 5:
                self.grpc_request_messages += 1  # one whole message, gRPC's usual chunk
            else:  # (every chunk from here on is counted by the parser, from a message's start)
                if split is None:
                    split = self.grpc_requests = GrpcMessages()
                split.feed(chunk)
        if self.record is not None:
            self.record.received += len(chunk)

    def response_chunk(self, chunk: bytes) -> None:
        if self.grpc:
            split = self.grpc_responses
            if split is None and int.from_bytes(chunk[1:5], "big") == len(chunk) - 5:
                self.grpc_response_messages += 1
            else:
                if split is None:
                    split = self.grpc_responses = GrpcMessages()
                split.feed(chunk)
        if self.record is not None:
            self.record.sent += len(chunk)

    # -- the end -------------------------------------------------------------------------------

    def finished(self, status: int) -> None:
        http = self.http
        http.downstream_rq_active -= 1
        if self.upstream_started:  # (`upstream_done`, written out)
            self.upstream_started = 0.0
            self.cluster.upstream_rq_active -= 1
        elapsed_ms = (_now() - self.started) * 1000
        pending = http.downstream_rq_time.pending  # (`Histogram.observe`, written out)
        pending.append(elapsed_ms)
        if len(pending) >= HISTOGRAM_FOLD_AT:
            http.downstream_rq_time.fold()
        if status:  # (by status: `StatsStore.settle` makes the class counts of these)
            counts = http.downstream_rq_status
            counts[status] = counts.get(status, 0) + 1
        if self.record is not None and self.on_done is not None:
            self.record.status = status
            self.record.duration_ms = int(elapsed_ms)
            self.on_done(self.record)

    def grpc_response_ended(self, headers: Headers, trailers: Headers | None) -> None:
        """The upstream's response of a gRPC call (`grpc`: the router asks) is complete: its
        grpc-status (in the trailers, or in the head of a trailers-only response) decides
        success."""
        cluster = self.cluster
        if trailers and trailers[0][0] == b"grpc-status":  # where gRPC servers put it
            grpc_status: bytes | None = trailers[0][1]
        else:
            grpc_status = None
            for k, v in (trailers or []) + headers:
                if k == b"grpc-status":
                    grpc_status = v
                    break
        # (`_bump`, written out, with the key of a usual status made once)
        key = _GRPC_STATUS_KEYS.get(grpc_status) or (grpc_status or b"").decode(errors="replace")
        counts = cluster.grpc_status
        counts[key] = counts.get(key, 0) + 1
        cluster.grpc_total += 1
        if grpc_status == b"0":
            cluster.grpc_success += 1
        else:
            cluster.grpc_failure += 1
        # The whole messages, and those a parser counted once chunks were not whole.
        cluster.grpc_request_message_count += self.grpc_request_messages
        if self.grpc_requests is not None:
            cluster.grpc_request_message_count += self.grpc_requests.count
        cluster.grpc_response_message_count += self.grpc_response_messages
        if self.grpc_responses is not None:
            cluster.grpc_response_message_count += self.grpc_responses.count
