"""A route's per-request timers without a loop timer each: the request timeout on each awaited
response head, and the stream idle timeout on each exchange.

Every request through a route sets both, and nearly all of them are done with a millisecond
later. A loop timer each (`call_later` and `cancel`: a TimerHandle, a libuv timer started,
stopped and closed, a copy of the context) was a few per cent of a request's CPU, and an object
per timer in buckets (the previous design) still cost nine Python calls a request. Here a
request is an entry in a dict: added with one call, taken out with a `dict.pop` by the router.
One loop timer per route and loop looks at all the entries every `timeout / PRECISION` seconds
(`HeadTimeouts`) or `timeout / CHECKS` seconds (`StreamIdleChecks`), and runs only while there
are entries. The tables bind to the loop of the first entry they get, and start afresh on
another loop (tests run several loops one after the other).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sidecar.transport import BARE_CONTEXT

# Looks per request timeout: a head times out between `timeout` and `timeout * (1 + 1/PRECISION)`.
PRECISION = 32
# Looks per stream idle timeout: a silent stream is reset between `timeout` and
# `timeout * (1 + 1/CHECKS)` after its last chunk.
CHECKS = 4


class _Sweep:
    """One loop timer that calls `sweep()` every `interval` seconds while `entries` is not empty."""

    __slots__ = ("interval", "loop", "handle", "entries")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.loop: asyncio.AbstractEventLoop | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.entries: dict[Any, Any] = {}

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """A first entry, or one on another loop than before: the old loop's entries (a closed
        test loop's) are dropped with their timer."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.loop = loop
        self.entries = {}
        self._forget()

    def _arm(self) -> None:
        assert self.loop is not None
        self.handle = self.loop.call_later(self.interval, self._look, context=BARE_CONTEXT)

    def _look(self) -> None:
        self.handle = None
        try:
            self.sweep()
        finally:  # a failing entry must not stop the looks at the others
            if self.entries and self.handle is None:
                self._arm()

    def sweep(self) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop per-entry state kept besides `entries` (on a new loop)."""


class HeadTimeouts(_Sweep):
    """The request timeout (`timeout` seconds) of the response heads awaited on one route: a head
    still awaited when its time is up is failed with TimeoutError. The caller takes a head out
    with `entries.pop(head, None)` once it came (or failed)."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout / PRECISION)
        self.timeout = timeout

    def add(self, head: asyncio.Future[Any]) -> None:
        loop = head.get_loop()
        if loop is not self.loop:
            self._bind(loop)
        self.entries[head] = loop.time() + self.timeout
        if self.handle is None:
            self._arm()

    def sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        entries = self.entries
        expired = [head for head, deadline in entries.items() if deadline <= now]
        for head in expired:
            del entries[head]
            if not head.done():
                head.set_exception(TimeoutError())


class StreamIdleChecks(_Sweep):
    """The stream idle timeout (`timeout` seconds) of the exchanges on one route: an exchange
    whose two bodies handed out no chunk for that long is given to `on_idle` (which resets it).

    Entries are upstream streams (the key, unique per attempt) with their downstream exchange
    (the value); the caller takes one out with `entries.pop(upstream, None)`. What each look saw
    is kept only for the exchanges that outlive a look (`looks`), so that a request done in a
    millisecond costs a dict insert and a pop."""

    __slots__ = ("on_idle", "looks")

    def __init__(self, timeout: float, on_idle: Callable[[Any, Any], None]) -> None:
        super().__init__(timeout / CHECKS)
        self.on_idle = on_idle
        # upstream -> (chunks read by both sides at the last look, looks in a row that saw none)
        self.looks: dict[Any, tuple[int, int]] = {}

    def add(self, upstream: Any, exchange: Any) -> None:
        """Watch an attempt: `upstream` (an upstream stream) and `exchange` (the downstream
        one) each have a `body` whose `reads` count the chunks handed out."""
        loop = upstream.response_head.get_loop()
        if loop is not self.loop:
            self._bind(loop)
        self.entries[upstream] = exchange
        if self.handle is None:
            self._arm()

    def _forget(self) -> None:
        self.looks = {}

    def sweep(self) -> None:
        entries, looks = self.entries, self.looks
        for gone in [upstream for upstream in looks if upstream not in entries]:
            del looks[gone]
        idle = []
        for upstream, exchange in entries.items():
            reads = exchange.body.reads + upstream.body.reads
            last = looks.get(upstream)
            if last is None or last[0] != reads:
                # Moved since the last look, or seen for the first time (the look may come
                # right after it was added: it must not count as quiet).
                looks[upstream] = (reads, 0)
            elif last[1] + 1 >= CHECKS:
                idle.append(upstream)
            else:
                looks[upstream] = (reads, last[1] + 1)
        for upstream in idle:
            exchange = entries.pop(upstream)
            del looks[upstream]
            self.on_idle(exchange, upstream)
