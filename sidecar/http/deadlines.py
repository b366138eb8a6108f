"""Per-request timers without a loop timer each: the request timeout and the stream idle checks.

Every request through a listener sets timers of the same length (its route's request timeout, a
quarter of its stream idle timeout), and nearly all of them are cancelled a millisecond later,
when the response comes. A loop timer each (`call_later` and `cancel`: a TimerHandle, a libuv
timer started, stopped and closed, a copy of the context) was a few per cent of a request's CPU.
Here the timers of one length share loop timers: an entry goes into the bucket of the
`delay / PRECISION` slice its deadline falls in, one loop timer per bucket fires the whole
bucket at the slice's end, and cancelling is taking the entry out of its bucket (a set). An entry
therefore fires between `delay` and `delay * (1 + 1/PRECISION)` after it was set.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from sidecar.transport import BARE_CONTEXT

PRECISION = 32


class Expiring(Protocol):
    """What a bucket holds: something to call when its time is up."""

    def expire(self) -> None: ...


class Deadlines:
    """Timers of one length (`delay` seconds) on one loop."""

    __slots__ = ("loop", "delay", "slice", "buckets")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.slice = delay / PRECISION
        self.buckets: dict[int, set[Expiring]] = {}

    def add(self, entry: Expiring) -> set[Expiring]:
        """`entry.expire()` after `delay` (up to a slice later), unless taken out of the
        returned bucket first (`bucket.discard(entry)`)."""
        index = int((self.loop.time() + self.delay) / self.slice) + 1
        bucket = self.buckets.get(index)
        if bucket is None:
            bucket = self.buckets[index] = set()
            self.loop.call_at(index * self.slice, self._expire, index, context=BARE_CONTEXT)
        bucket.add(entry)
        return bucket

    def _expire(self, index: int) -> None:
        for entry in self.buckets.pop(index, ()):
            entry.expire()


class LoopDeadlines:
    """The `Deadlines` of each length on the running loop, made as first needed: the data path
    asks with a loop it already holds, so no loop lookup (a getpid(2) in Python 3.11)."""

    __slots__ = ("loop", "by_delay")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.by_delay: dict[float, Deadlines] = {}

    def get(self, loop: asyncio.AbstractEventLoop, delay: float) -> Deadlines:
        if loop is not self.loop:  # the first request, or a new loop (tests run several)
            self.loop, self.by_delay = loop, {}
        deadlines = self.by_delay.get(delay)
        if deadlines is None:
            deadlines = self.by_delay[delay] = Deadlines(loop, delay)
        return deadlines
