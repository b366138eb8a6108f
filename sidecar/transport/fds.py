"""File descriptors: refuse new connections before the process runs out, say so once.

A process at RLIMIT_NOFILE cannot accept, connect or open anything: open connections that need a
new upstream fail, and asyncio's accept loop logs an error for every failed accept (thousands a
second). So the listeners ask `admit()` for each new connection and refuse it (counted as
`downstream_cx_overload_reject`) once the process is within the reserve of its limit; open
connections keep the descriptors they need. The count is an estimate that costs nothing per
connection: the real number, read from /proc every second by `refresh()`, plus two for each
connection admitted since (a downstream and its upstream). One log line when refusing starts, one
when it ends (once a second reserve is free again, so that the state does not flap).

Should the kernel refuse an accept anyway, asyncio reports it through the loop's exception
handler: `loop_exception_handler` counts it into the same episode instead of logging it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from typing import Any

log = logging.getLogger("sidecar.fds")

_ACCEPT_ERROR = "socket.accept() out of system resource"


def open_fds() -> int | None:
    """Descriptors open in this process, or None where /proc is not there."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def soft_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


class FdGuard:
    def __init__(self, reserve: int) -> None:
        self.reserve = reserve
        self.limit = soft_limit()
        self.counted = open_fds() or 0
        self.admitted = 0  # connections admitted since the last count
        self.exhausted = False
        self.refused = 0  # in the current episode

    @property
    def estimate(self) -> int:
        return self.counted + 2 * self.admitted

    def admit(self) -> bool:
        """True when a new connection may be served; False: refuse it (and count it)."""
        if self.estimate < self.limit - self.reserve:
            self.admitted += 1
            return True
        self.refused += 1
        if not self.exhausted:
            self.exhausted = True
            log.warning(
                "event=fd_exhausted open_fds=%d limit=%d reserve=%d "
                "action=refusing_new_connections",
                self.estimate,
                self.limit,
                self.reserve,
            )
        return False

    def refresh(self) -> None:
        """Re-read the limit (it may be changed from outside, e.g. prlimit) and the count."""
        self.limit = soft_limit()
        counted = open_fds()
        if counted is not None:
            self.counted = counted
            self.admitted = 0
        # Recovered once there is a reserve to spare again, not merely at the threshold: the
        # refusals' own descriptors come and go, and the state must not flap with them.
        if self.exhausted and self.estimate < self.limit - 2 * self.reserve:
            log.warning(
                "event=fd_recovered open_fds=%d limit=%d refused=%d",
                self.estimate,
                self.limit,
                self.refused,
            )
            self.exhausted = False
            self.refused = 0

    def accept_failed(self) -> None:
        """The kernel refused an accept (EMFILE): part of the same episode."""
        self.refused += 1
        if not self.exhausted:
            self.exhausted = True
            log.warning("event=fd_exhausted limit=%d action=accept_failing", self.limit)

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.refresh()


def loop_exception_handler(guard: FdGuard) -> Any:
    """An event-loop exception handler that folds accept failures for want of descriptors into
    the guard's episode; everything else goes to the default handler."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_ERROR:
            guard.accept_failed()
            return
        loop.default_exception_handler(context)

    return handle
