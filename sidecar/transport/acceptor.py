"""A listening socket served by the event loop's `add_reader`, handing out raw accepted sockets.

`loop.create_server` wraps every accepted connection in a transport before our code sees it, and
a transport cannot give its socket back. The splice relay (`sidecar.transport.splice`) needs the
socket itself, so listeners that relay plain TCP accept on their own: `Acceptor` accepts in
batches when the listening socket is readable and calls `handle(sock, address)` with a
non-blocking socket. It answers `close()` as an `asyncio.Server` does (stop accepting; open
connections live on), which is all the runtime asks of a listener.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sidecar.acceptor")

ACCEPT_BATCH = 64  # connections accepted per wake-up at most (asyncio's backlog-sized loop)
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
Handler = Callable[[socket.socket, Any], None]


class Acceptor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handle: Handler,
        failed: Callable[[OSError], None] | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.handle = handle
        self.failed = failed  # told of an accept the kernel refused (EMFILE…); else logged
        self.closed = False
        self._fd = sock.fileno()
        self._paused: asyncio.TimerHandle | None = None
        loop.add_reader(self._fd, self._accept)

    @classmethod
    def bind(
        cls,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        handle: Handler,
        *,
        reuse_port: bool = False,
        backlog: int = 1024,
        failed: Callable[[OSError], None] | None = None,
    ) -> Acceptor:
        """Bind and listen as `create_server(reuse_address=True)` does; raises OSError."""
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
        family, type_, proto, _, address = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Accepted sockets inherit it (Linux): the relay's small writes are not held back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return cls(loop, sock, handle, failed)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self.closed else (self.sock,)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    # Out of descriptors or memory: stop accepting for a second, as asyncio does,
                    # rather than spin on a listening socket that stays readable.
                    if self.failed is not None:
                        self.failed(exc)
                    else:
                        log.error("event=accept_failed error=%r paused=1s", exc.strerror or exc)
                    self.loop.remove_reader(self._fd)
                    self._paused = self.loop.call_later(1.0, self._resume)
                    return
                log.error("event=accept_failed error=%r", exc.strerror or str(exc))
                return
            try:
                conn.setblocking(False)
                self.handle(conn, address)
            except Exception:
                log.exception("event=accept_handler_failed")
                conn.close()

    def _resume(self) -> None:
        self._paused = None
        if not self.closed:
            self.loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        """Stop accepting; connections already accepted are not touched."""
        if self.closed:
            return
        self.closed = True
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        else:
            self.loop.remove_reader(self._fd)
        self.sock.close()
