"""The idle timeout of a relayed connection, shared by every relay (Protocol, splice).

A relay must close a connection that carried nothing for its idle timeout, but reading the clock
on every chunk would cost a call per read on the hot path. Instead the data path only sets
`owner.active = True`, and a periodic check looks at the flag `CHECKS` times per timeout: a
connection found inactive `CHECKS` times in a row is closed. The timeout therefore fires between
`timeout` and `timeout * (1 + 1/CHECKS)` after the last byte.

The check is one timer per event loop and timeout value (`IdleSweep`), not one per connection:
an idle sidecar may hold 10,000 connections (issue 8), and a timer each (the `IdleTimer` of
before: a TimerHandle, uvloop's UVTimer, a bound method and a context copy, about 0.6 KB) was
a good part of what the Python side of an idle connection kept. A relay is now an entry in its
sweep's dict; the sweep's timer runs only while it has relays to watch. Going over 10,000
entries takes about a millisecond, `CHECKS` times per timeout (an hour or two by default).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol

from sidecar.transport import BARE_CONTEXT

CHECKS = 4


class Idles(Protocol):
    """What the sweep needs of a relay."""

    active: bool
    closed: bool
    idle_timed_out: bool

    def close(self) -> None: ...


class IdleSweep:
    """The idle timeout `timeout` of every relay on one loop: one timer, `CHECKS` looks per
    timeout at each relay's `active` flag. A relay found inactive `CHECKS` times in a row is
    closed (gracefully, `idle_timed_out` set)."""

    __slots__ = ("loop", "timeout", "interval", "owners", "handle", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.interval = timeout / CHECKS
        # relay -> looks in a row that found it inactive; -1 for one that was just added
        # (the next look may come at once: it must not count, or the timeout could fire up
        # to one interval early)
        self.owners: dict[Idles, int] = {}
        self.handle: asyncio.TimerHandle | None = None

    def add(self, owner: Idles) -> None:
        self.owners[owner] = -1
        if self.handle is None:
            self._schedule()

    def discard(self, owner: Idles) -> None:
        """`owner` is closed: no longer watched (the timer stops at its next look if that was
        the last one)."""
        self.owners.pop(owner, None)

    def _schedule(self) -> None:
        self.handle = self.loop.call_later(self.interval, self._sweep, context=BARE_CONTEXT)

    def _sweep(self) -> None:
        self.handle = None
        owners = self.owners
        expired: list[Idles] = []
        for owner, checks in owners.items():
            if owner.active:
                owner.active = False
                if checks:
                    owners[owner] = 0  # a value changed, not the size: the loop goes on
            elif owner.closed:
                expired.append(owner)  # closed without telling us (not expected): dropped
            elif checks + 1 >= CHECKS:
                expired.append(owner)
            else:
                owners[owner] = checks + 1
        for owner in expired:
            del owners[owner]
        if owners:
            self._schedule()
        else:
            _forget(self)
        for owner in expired:
            if owner.closed:
                continue
            owner.idle_timed_out = True
            try:
                owner.close()
            except Exception as exc:  # one relay's failure must not stop the others' closes
                self.loop.call_exception_handler(
                    {"message": "closing an idle connection failed", "exception": exc}
                )


# The sweeps of each loop by timeout. Weak on the loop: a loop that is closed with relays still
# registered (a test's) takes its sweeps with it.
_SWEEPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, IdleSweep]] = (
    weakref.WeakKeyDictionary()
)


def _forget(sweep: IdleSweep) -> None:
    """A sweep with nothing to watch is dropped (a later relay makes a new one)."""
    sweeps = _SWEEPS.get(sweep.loop)
    if sweeps is not None and sweeps.get(sweep.timeout) is sweep:
        del sweeps[sweep.timeout]


def watch(loop: asyncio.AbstractEventLoop, timeout: float, owner: Idles) -> IdleSweep | None:
    """Watch `owner` for the idle timeout `timeout`: the sweep to `discard` it from once it is
    closed, or None when `timeout` is 0 (no idle timeout)."""
    if timeout <= 0:
        return None
    sweeps = _SWEEPS.get(loop)
    if sweeps is None:
        sweeps = _SWEEPS[loop] = {}
    sweep = sweeps.get(timeout)
    if sweep is None:
        sweep = sweeps[timeout] = IdleSweep(loop, timeout)
    sweep.add(owner)
    return sweep
