"""The idle timeout of a relayed connection, shared by every relay (Protocol, splice, TLS).

A relay must close a connection that carried nothing for its idle timeout, but reading the clock
on every chunk would cost a call per read on the hot path. Instead the data path only sets
`owner.active = True`, and this timer looks at the flag `CHECKS` times per timeout: a connection
found inactive `CHECKS` times in a row is closed. The timeout therefore fires between `timeout`
and `timeout * (1 + 1/CHECKS)` after the last byte.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

CHECKS = 4


class Idles(Protocol):
    """What the timer needs of a relay."""

    active: bool
    closed: bool
    idle_timed_out: bool

    def close(self) -> None: ...


class IdleTimer:
    """Closes `owner` (gracefully, `idle_timed_out` set) once it stayed inactive for `timeout`."""

    __slots__ = ("loop", "owner", "interval", "checks", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, owner: Idles) -> None:
        self.loop = loop
        self.owner = owner
        self.interval = timeout / CHECKS
        self.checks = 0
        self.handle: asyncio.TimerHandle | None = loop.call_later(self.interval, self._check)

    @classmethod
    def start(
        cls, loop: asyncio.AbstractEventLoop, timeout: float, owner: Idles
    ) -> IdleTimer | None:
        """A running timer, or None when `timeout` is 0 (no idle timeout)."""
        return cls(loop, timeout, owner) if timeout > 0 else None

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _check(self) -> None:
        owner = self.owner
        self.handle = None
        if owner.closed:
            return
        if owner.active:
            owner.active = False
            self.checks = 0
        else:
            self.checks += 1
            if self.checks >= CHECKS:
                owner.idle_timed_out = True
                owner.close()
                return
        self.handle = self.loop.call_later(self.interval, self._check)
