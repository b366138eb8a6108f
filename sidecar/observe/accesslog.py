"""The access log (`--access-log PATH|-`): one line per TCP connection and per HTTP request.

Lines follow Envoy's default format, field for field:

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
    "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%"
    "%UPSTREAM_HOST%"

and then, pysidecar's addition, `"%DOWNSTREAM_REMOTE_ADDRESS%" "%SOURCE_IDENTITY%"
"%UPSTREAM_CLUSTER%"`. A TCP connection has no request: as in Envoy, method and path are `-`, the
protocol is `TCP` and the response code 0, e.g.

    [2024-05-01T12:00:00.123Z] "- - TCP" 0 - 12 340 5 - "-" "-" "-" "-" "127.0.0.1:8080" \
"127.0.0.1:50312" "-" "localhost:8080"

Response flags are Envoy's: `UH` no healthy upstream, `UF` upstream connection failure, `-` none.
The source identity is the caller's SPIFFE ID once mTLS tells it; `-` until then. Bytes received
are those read from the downstream, bytes sent those written back to it; durations in ms.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("sidecar.accesslog")


def start_time(wall: float) -> str:
    """Envoy's %START_TIME% default: 2024-05-01T12:00:00.123Z (UTC, milliseconds)."""
    seconds = int(wall)
    millis = int((wall - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _q(value: str | None) -> str:
    return '"' + (value or "-").replace('"', "'") + '"'


class AccessLog:
    """Appends lines to a file (or stdout for `-`), line-buffered so each line lands whole."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._stream: TextIO
        self._owned = target != "-"
        if self._owned:
            self._stream = open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        else:
            self._stream = sys.stdout

    def write(self, line: str) -> None:
        try:
            self._stream.write(line + "\n")
            if not self._owned:
                self._stream.flush()
        except (OSError, ValueError) as exc:  # a full disk must not take the data path down
            log.warning("event=access_log_failed target=%s error=%s", self.target, exc)

    def tcp(
        self,
        *,
        start: float,
        flags: str,
        received: int,
        sent: int,
        duration_ms: int,
        upstream_host: str | None,
        downstream: str | None,
        source: str | None,
        cluster: str,
    ) -> None:
        self.write(
            f'[{start_time(start)}] "- - TCP" 0 {flags or "-"} {received} {sent} {duration_ms} - '
            f'"-" "-" "-" "-" {_q(upstream_host)} {_q(downstream)} {_q(source)} {_q(cluster)}'
        )

    def http(
        self,
        *,
        start: float,
        method: str,
        path: str,
        protocol: str,
        status: int,
        flags: str,
        received: int,
        sent: int,
        duration_ms: int,
        upstream_time_ms: int | None,
        forwarded_for: str | None,
        user_agent: str | None,
        request_id: str | None,
        authority: str | None,
        upstream_host: str | None,
        downstream: str | None,
        source: str | None,
        cluster: str,
    ) -> None:
        """For the L7 path: one line per request, Envoy's default format."""
        upstream_time = "-" if upstream_time_ms is None else str(upstream_time_ms)
        self.write(
            f'[{start_time(start)}] "{method} {path} {protocol}" {status} {flags or "-"} '
            f"{received} {sent} {duration_ms} {upstream_time} {_q(forwarded_for)} "
            f"{_q(user_agent)} {_q(request_id)} {_q(authority)} {_q(upstream_host)} "
            f"{_q(downstream)} {_q(source)} {_q(cluster)}"
        )

    def close(self) -> None:
        if self._owned:
            try:
                self._stream.close()
            except OSError:
                pass
