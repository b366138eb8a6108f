"""Hold a new connection until its first bytes (or a timeout) say which handler should have it,
then hand the transport over and replay the bytes: the winner sees the stream from its start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.transport.detect import MAX_PEEK

# decide(first_bytes, final) → the protocol to hand over to, or None for "need more".
# With final=True (timeout or EOF) it must decide.
Decide = Callable[[bytes, bool], asyncio.Protocol | None]


class Peek(asyncio.Protocol):
    """`on_settled` is called once, when the connection is handed over or lost while waiting
    (the listener counts waiting connections); `on_silent(transport)`, when given, replaces the
    decision for a connection that sent nothing before the timeout (it is closed, not served)."""

    def __init__(
        self,
        decide: Decide,
        timeout: float | None,
        *,
        on_settled: Callable[[], None] | None = None,
        on_silent: Callable[[asyncio.Transport], None] | None = None,
    ) -> None:
        self.decide = decide
        self.timeout = timeout
        self.on_settled = on_settled
        self.on_silent = on_silent
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        self._try(final=len(self.buffer) >= MAX_PEEK)

    def eof_received(self) -> bool:
        winner = self._try(final=True)
        if winner is not None:
            return bool(winner.eof_received())
        return False

    def _timed_out(self) -> None:
        self._timer = None
        if self._done:
            return
        if not self.buffer and self.on_silent is not None and self.transport is not None:
            self._settle()
            self.on_silent(self.transport)
            return
        self._try(final=True)

    def _settle(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.on_settled is not None:
            on_settled, self.on_settled = self.on_settled, None
            on_settled()

    def _try(self, final: bool) -> asyncio.Protocol | None:
        if self._done:
            return None
        winner = self.decide(self.buffer, final)
        if winner is None:
            return None
        self._settle()
        transport = self.transport
        assert transport is not None
        transport.set_protocol(winner)
        winner.connection_made(transport)
        if self.buffer and not transport.is_closing():
            winner.data_received(self.buffer)
        self.buffer = b""
        return winner

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            self._settle()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
