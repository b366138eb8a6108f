"""The sidecar's limits: what it accepts from clients and peers before it refuses, in one object.

Every value has its default in `sidecar.defaults` (Envoy's where Envoy has one) and can be
overridden in one place: a YAML file of `name: value` (`--limits FILE`), then `--limit
NAME=VALUE` flags, which win over the file. Unknown names and values of the wrong kind are errors
that name the source and the field. `pysidecar limits` prints them all. The file is read again
on SIGHUP and when it changes (the runtime's watch): new connections, requests and pools take
the new values, open ones keep those they started with, and a bad file changes nothing.

Each limit is counted when it is hit (the stat is named beside it) so that an operator sees which
one refused what.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar import defaults


class LimitsError(ValueError):
    """A limits file or flag is wrong; the message names where and what."""


def _limit(default: float, help: str, *, minimum: float = 0.0) -> Any:
    return field(default=default, metadata={"help": help, "minimum": minimum})


@dataclass(frozen=True)
class Limits:
    # -- HTTP downstream (every HTTP listener) ----------------------------------------------
    max_request_headers_kb: int = _limit(
        defaults.MAX_REQUEST_HEADERS_BYTES // 1024,
        "request line and headers, KiB; more → 431 (http1/http2.header_overflow)",
        minimum=1,
    )
    max_headers_count: int = _limit(
        defaults.MAX_REQUEST_HEADERS_COUNT, "request headers; more → 431", minimum=1
    )
    request_headers_timeout: float = _limit(
        defaults.REQUEST_HEADERS_TIMEOUT,
        "seconds from a request's first byte to its last header; then 408 and close "
        "(downstream_rq_header_timeout); 0 disables",
    )
    http_idle_timeout: float = _limit(
        defaults.HTTP_IDLE_TIMEOUT,
        "seconds an HTTP connection may stay without a request (downstream_cx_idle_timeout); "
        "0 disables",
    )
    upstream_idle_timeout: float = _limit(
        defaults.UPSTREAM_IDLE_TIMEOUT,
        "seconds a pooled upstream HTTP connection (to a peer sidecar or the local app) may stay "
        "without a request; then it is closed (upstream_cx_idle_timeout); 0 disables",
    )
    outbound_stream_idle_timeout: float = _limit(
        defaults.OUTBOUND_STREAM_IDLE_TIMEOUT,
        "seconds an outbound request or tunnel may move no byte either way; then both sides are "
        "reset (downstream_rq_idle_timeout): what ends a client that never reads or never opens "
        "its window; 0 disables; --stream-idle-timeout sets both directions",
    )
    inbound_stream_idle_timeout: float = _limit(
        defaults.INBOUND_STREAM_IDLE_TIMEOUT,
        "the same for requests from peer sidecars to the local app (Kuma's default: 1 h)",
    )
    max_connections: int = _limit(
        defaults.MAX_CONNECTIONS_PER_LISTENER,
        "open connections per listener; more are refused (downstream_cx_overflow)",
        minimum=1,
    )
    fd_reserve: int = _limit(
        defaults.FD_RESERVE,
        "file descriptors kept free: new connections are refused this close to RLIMIT_NOFILE "
        "(downstream_cx_overload_reject)",
    )
    tls_handshake_timeout: float = _limit(
        defaults.MTLS_HANDSHAKE_TIMEOUT,
        "mTLS inbound: seconds from accept to a verified peer; a stalled handshake is closed "
        "(ssl.connection_error)",
        minimum=0.05,
    )
    # -- HTTP/2 -----------------------------------------------------------------------------
    h2_max_concurrent_streams: int = _limit(
        defaults.APP_MAX_CONCURRENT_STREAMS,
        "streams per connection from an app; more are refused (REFUSED_STREAM)",
        minimum=1,
    )
    mesh_max_concurrent_streams: int = _limit(
        defaults.MESH_MAX_CONCURRENT_STREAMS,
        "streams per connection from a peer sidecar (one connection carries many apps)",
        minimum=1,
    )
    h2_max_frame_size: int = _limit(
        defaults.H2_MAX_FRAME_SIZE,
        "largest frame accepted (SETTINGS_MAX_FRAME_SIZE); larger → GOAWAY FRAME_SIZE_ERROR",
        minimum=16384,
    )
    stream_buffer_kb: int = _limit(
        defaults.BODY_HIGH_WATER // 1024,
        "KiB of one HTTP body (request or response) the sidecar holds before it stops reading "
        "from the side that sends it (a slow reader pauses its sender; the stream idle timeout "
        "ends one that never reads)",
        minimum=16,
    )
    relay_buffer_kb: int = _limit(
        defaults.RELAY_HIGH_WATER // 1024,
        "KiB a relayed TCP connection holds per direction for a slow reader before it stops "
        "reading from the other side (Envoy's per_connection_buffer_limit_bytes)",
        minimum=16,
    )
    h2_initial_stream_window_size: int = _limit(
        defaults.H2_STREAM_WINDOW,
        "bytes a peer may send on one stream before we read them",
        minimum=65535,
    )
    h2_initial_connection_window_size: int = _limit(
        defaults.H2_CONNECTION_WINDOW,
        "bytes a peer may send on one connection before we read",
        minimum=65535,
    )
    h2_premature_reset_total_stream_count: int = _limit(
        defaults.H2_PREMATURE_RESET_TOTAL_STREAM_COUNT,
        "rapid reset (CVE-2023-44487): once this many streams were opened on a connection and "
        "more than half were reset by the client before their answer, GOAWAY ENHANCE_YOUR_CALM "
        "(http2.premature_reset)",
        minimum=1,
    )
    h2_max_consecutive_inbound_frames_with_empty_payload: int = _limit(
        defaults.H2_MAX_CONSECUTIVE_EMPTY_FRAMES,
        "empty DATA frames in a row (http2.inbound_empty_frames_flood)",
    )
    h2_max_inbound_priority_frames_per_stream: int = _limit(
        defaults.H2_MAX_PRIORITY_FRAMES_PER_STREAM,
        "PRIORITY frames per opened stream (http2.inbound_priority_frames_flood)",
    )
    h2_max_inbound_window_update_frames_per_data_frame_sent: int = _limit(
        defaults.H2_MAX_WINDOW_UPDATES_PER_DATA_FRAME,
        "WINDOW_UPDATE frames per DATA frame sent (http2.inbound_window_update_frames_flood)",
        minimum=1,
    )
    h2_max_control_frames_per_second: int = _limit(
        defaults.H2_MAX_CONTROL_FRAMES_PER_SECOND,
        "PING and SETTINGS frames per second (http2.inbound_control_frames_flood)",
        minimum=1,
    )
    h2_max_outbound_buffer: int = _limit(
        defaults.H2_MAX_OUTBOUND_BUFFER,
        "bytes queued toward a peer that does not read (http2.outbound_flood)",
        minimum=65536,
    )
    # -- clusters: circuit breakers (Kuma's defaults) and outlier detection -------------------
    max_upstream_connections: int = _limit(
        defaults.CB_MAX_CONNECTIONS,
        "connections per cluster (upstream_cx_overflow)",
        minimum=1,
    )
    max_pending_requests: int = _limit(
        defaults.CB_MAX_PENDING_REQUESTS,
        "requests per cluster waiting for a connection or stream (upstream_rq_pending_overflow)",
        minimum=1,
    )
    max_requests: int = _limit(
        defaults.CB_MAX_REQUESTS,
        "requests in flight per cluster; more → 503 (upstream_rq_pending_overflow)",
        minimum=1,
    )
    max_retries: int = _limit(
        defaults.CB_MAX_RETRIES,
        "requests of a cluster being retried at once (upstream_rq_retry_overflow)",
    )
    outlier_consecutive_5xx: int = _limit(
        defaults.OUTLIER_CONSECUTIVE_5XX,
        "failures in a row that eject an endpoint; 0 disables outlier detection",
    )
    outlier_base_ejection_time: float = _limit(
        defaults.OUTLIER_BASE_EJECTION_TIME,
        "seconds an endpoint is ejected, times its number of ejections",
        minimum=0.001,
    )
    outlier_max_ejection_time: float = _limit(
        defaults.OUTLIER_MAX_EJECTION_TIME, "longest ejection, seconds", minimum=0.001
    )
    outlier_max_ejection_percent: int = _limit(
        defaults.OUTLIER_MAX_EJECTION_PERCENT,
        "share of a cluster's endpoints that may be ejected at once (at least one)",
    )

    # -- derived ------------------------------------------------------------------------------

    @property
    def max_request_headers_bytes(self) -> int:
        return self.max_request_headers_kb * 1024

    @property
    def stream_buffer_bytes(self) -> int:
        return self.stream_buffer_kb * 1024

    @property
    def relay_buffer_bytes(self) -> int:
        return self.relay_buffer_kb * 1024

    @property
    def mesh_header_list_size(self) -> int:
        return self.max_request_headers_bytes * defaults.MESH_HEADER_LIST_FACTOR

    def changed(self, since: Limits | None = None) -> dict[str, Any]:
        """The limits that differ from `since` (default: the defaults), with their values here
        (for the log lines at start and on a reload)."""
        before = since or Limits()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(before, f.name)
        }

    def sweep_interval(self) -> float:
        """How often the per-connection timeouts are checked: a quarter of the shortest."""
        timeouts = [
            t
            for t in (
                self.request_headers_timeout,
                self.http_idle_timeout,
                self.upstream_idle_timeout,
            )
            if t > 0
        ]
        return min(1.0, max(0.05, min(timeouts, default=4.0) / 4))


DEFAULT_LIMITS = Limits()  # what a sidecar started without --limits/--limit runs with


FIELDS = {f.name: f for f in dataclasses.fields(Limits)}


def _convert(name: str, value: Any, source: str) -> int | float:
    spec = FIELDS.get(name)
    if spec is None:
        raise LimitsError(f"{source}: unknown limit {name!r} (known: {', '.join(sorted(FIELDS))})")
    kind = int if spec.type in ("int", int) else float
    if isinstance(value, bool):
        raise LimitsError(f"{source}: {name}: expected a number, got {value!r}")
    try:
        if isinstance(value, str):
            number: float = float(value.strip())
        elif isinstance(value, int | float):
            number = float(value)
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise LimitsError(f"{source}: {name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise LimitsError(f"{source}: {name}: expected a finite number, got {value!r}")
    if kind is int:
        if number != int(number):
            raise LimitsError(f"{source}: {name}: expected a whole number, got {value!r}")
        converted: int | float = int(number)
    else:
        converted = number
    minimum = spec.metadata["minimum"]
    if converted < minimum:
        raise LimitsError(f"{source}: {name}: must be at least {minimum:g}, got {value!r}")
    return converted


def load_limits(path: Path | None = None, flags: Iterable[str] = ()) -> Limits:
    """Defaults, then the file's values, then the flags' (`NAME=VALUE`)."""
    values: dict[str, int | float] = {}
    if path is not None:
        try:
            document = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise LimitsError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise LimitsError(f"{path}: not YAML: {exc}") from None
        if document is None:
            document = {}
        if not isinstance(document, Mapping):
            raise LimitsError(f"{path}: expected a mapping of limit names to numbers")
        for name, value in document.items():
            values[str(name)] = _convert(str(name), value, str(path))
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep:
            raise LimitsError(f"--limit {flag!r}: expected NAME=VALUE")
        values[name.strip()] = _convert(name.strip(), value, "--limit")
    return Limits(**values)  # type: ignore[arg-type]


def settings_line(values: Mapping[str, Any]) -> str:
    """`name=value` pairs for a log line, sorted by name."""
    return " ".join(f"{name}={value}" for name, value in sorted(values.items()))


def describe() -> str:
    """Every limit with its default and meaning (`pysidecar limits`)."""
    default = Limits()
    lines = []
    for f in dataclasses.fields(Limits):
        lines.append(f"{f.name}: {getattr(default, f.name)!r}\n    {f.metadata['help']}")
    return "\n".join(lines) + "\n"
