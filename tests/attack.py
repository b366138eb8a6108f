"""Attackers and a legitimate client for the hardening tests.

`RawH2` speaks HTTP/2 with hand-built frames (hyperframe for the frames, hpack for header blocks)
over a plain socket, so that a test can send what no well-behaved library would. `Legit` keeps a
well-behaved client busy on the same sidecar meanwhile and records every failure it sees.
"""

from __future__ import annotations

import asyncio
import http.client
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.support import LOOPBACK

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and error codes (RFC 9113), by name.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = 0, 1, 2, 3, 4, 5, 6, 7
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0, 1, 3, 5
FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 9, 11


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A raw frame: any type, flags, stream and length, valid or not."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id & 0x7FFFFFFF)
        + payload
    )


def settings_payload(**values: int) -> bytes:
    codes = {
        "header_table_size": 1,
        "enable_push": 2,
        "max_concurrent_streams": 3,
        "initial_window_size": 4,
        "max_frame_size": 5,
        "max_header_list_size": 6,
    }
    return b"".join(struct.pack(">HI", codes[k], v) for k, v in values.items())


def request_headers(path: str = "/", method: str = "GET", **extra: str) -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":scheme", "http"),
        (":authority", "backend"),
        (":path", path),
        *((k.replace("_", "-"), v) for k, v in extra.items()),
    ]


@dataclass
class Received:
    frames: list[Frame] = field(default_factory=list)
    closed: bool = False  # EOF or reset seen
    reset: bool = False  # ECONNRESET rather than a clean EOF

    def goaway(self) -> GoAwayFrame | None:
        return next((f for f in self.frames if isinstance(f, GoAwayFrame)), None)

    def rst(self, stream_id: int) -> RstStreamFrame | None:
        return next(
            (f for f in self.frames if isinstance(f, RstStreamFrame) and f.stream_id == stream_id),
            None,
        )

    def headers(self, stream_id: int) -> list[tuple[bytes, bytes]] | None:
        for f in self.frames:
            if isinstance(f, HeadersFrame) and f.stream_id == stream_id:
                return getattr(f, "decoded", None)
        return None


class RawH2:
    """A client connection that writes whatever frames it is told to."""

    def __init__(self, port: int, settings: bytes = b"", rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((LOOPBACK, port))
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.received = Received()
        self.broken = False  # a send failed: the server closed its side
        self._buffer = b""
        self.send(PREFACE + frame(SETTINGS, 0, 0, settings))

    def settled(self) -> RawH2:
        """Wait for the server's SETTINGS (acknowledged by the reader): after this no frame of
        ours is sent behind the test's back."""
        self.read(lambda r: any(isinstance(f, SettingsFrame) for f in r.frames))
        return self

    def send(self, data: bytes) -> bool:
        """False when the server has closed the connection already."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.broken = True  # what the server sent before closing is still to be read
            return False
        return True

    def block(self, headers: Iterable[tuple[str, str]]) -> bytes:
        """A header block, without Huffman coding: pure-Python coding of the large values the
        tests send takes most of a second on a loaded machine — longer than the short idle
        timeouts the tests run with."""
        return self.encoder.encode(list(headers), huffman=False)

    def headers(self, stream_id: int, headers: Iterable[tuple[str, str]], *, end: bool) -> bool:
        flags = END_HEADERS | (END_STREAM if end else 0)
        return self.send(frame(HEADERS, flags, stream_id, self.block(headers)))

    def request(self, stream_id: int, path: str = "/", end: bool = True) -> bool:
        return self.headers(stream_id, request_headers(path), end=end)

    def read(self, until: Callable[[Received], bool], timeout: float = 10.0) -> Received:
        """Read and parse frames until `until(received)` or the connection closes."""
        deadline = time.monotonic() + timeout
        received = self.received
        while not until(received) and not received.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; received {received.frames[-5:]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                received.closed = received.reset = True
                break
            if not data:
                received.closed = True
                break
            self._buffer += data
            self._parse()
        return received

    def _parse(self) -> None:
        while len(self._buffer) >= 9:
            f, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                return
            f.parse_body(memoryview(self._buffer[9 : 9 + length]))
            self._buffer = self._buffer[9 + length :]
            if isinstance(f, HeadersFrame | ContinuationFrame) and "END_HEADERS" in f.flags:
                f.decoded = self.decoder.decode(f.data, raw=True)  # type: ignore[attr-defined]
            if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                self.send(frame(SETTINGS, ACK, 0))
            self.received.frames.append(f)

    def response(self, stream_id: int, timeout: float = 10.0) -> tuple[int, bytes]:
        """Status and body of a stream (reads until its END_STREAM)."""

        def ended(r: Received) -> bool:
            return (
                any(
                    f.stream_id == stream_id and "END_STREAM" in f.flags
                    for f in r.frames
                    if isinstance(f, HeadersFrame | DataFrame)
                )
                or r.rst(stream_id) is not None
            )

        received = self.read(ended, timeout)
        head = received.headers(stream_id)
        assert head is not None, f"no response on stream {stream_id}: {received.frames[-5:]}"
        status = int(dict(head)[b":status"])
        body = b"".join(
            f.data for f in received.frames if isinstance(f, DataFrame) and f.stream_id == stream_id
        )
        return status, body

    def close(self) -> None:
        self.sock.close()


def cut_off(conn: RawH2, timeout: float = 10.0) -> Received:
    """Read until the server closes the connection (it must)."""
    return conn.read(lambda r: False, timeout)


def refused(conns: list[socket.socket], within: float = 1.0) -> int:
    """How many of `conns` the server closed (EOF or reset) within `within` seconds of now;
    the others were admitted and stay silent. One wait for all of them, not one each."""
    waiting = {conn.fileno(): conn for conn in conns}
    closed = 0
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + within
    while waiting and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            conn = waiting.pop(fd)
            poller.unregister(fd)
            try:
                closed += conn.recv(1, socket.MSG_PEEK) == b""
            except ConnectionResetError:
                closed += 1
    return closed


class Legit:
    """A well-behaved HTTP/1.1 client hammering `path` on its own thread: one kept-alive
    connection and, unless `fresh` is off, a new connection every few requests. Every answer
    that is not 200 (or an exception) is a failure."""

    def __init__(self, port: int, path: str = "/legit", *, fresh: bool = True) -> None:
        self.port = port
        self.path = path
        self.fresh = fresh
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        # Served (and connected) before the attack starts.
        deadline = time.monotonic() + 10
        while not self.ok and not self.failures and time.monotonic() < deadline:
            self._stop.wait(0.005)
        assert self.ok, f"the legitimate client is not served: {self.failures[:3]}"

    def _one(self, conn: http.client.HTTPConnection) -> None:
        conn.request("GET", self.path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            self.failures.append(f"{response.status} {body[:200]!r}")
        else:
            self.ok += 1

    def _run(self) -> None:
        kept = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self._one(kept)
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"kept-alive: {exc!r}")
                kept.close()
                kept = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
            if self.fresh and n % 5 == 0:
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
                try:
                    self._one(conn)
                except (OSError, http.client.HTTPException) as exc:
                    self.failures.append(f"new connection: {exc!r}")
                finally:
                    conn.close()
            self._stop.wait(0.01)
        kept.close()

    def stop(self, at_least: int = 5) -> None:
        """Stop once `at_least` more answers came (it is still served after the attack), and
        assert it was served throughout without a single failure."""
        target = self.ok + at_least
        deadline = time.monotonic() + 10
        while self.ok < target and not self.failures and time.monotonic() < deadline:
            self._stop.wait(0.01)
        self._stop.set()
        self._thread.join(15)
        assert not self.failures, f"the legitimate client failed: {self.failures[:5]}"
        assert self.ok >= target, f"the legitimate client got only {self.ok} answers"

    def __enter__(self) -> Legit:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.stop()
        else:
            self._stop.set()


class LegitEcho:
    """A well-behaved TCP client: a new connection per round trip through an echo service; any
    answer other than its own line is a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.ok and not self.failures and time.monotonic() < deadline:
            self._stop.wait(0.005)
        assert self.ok, f"the legitimate client is not served: {self.failures[:3]}"

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            line = b"ping %d\n" % n
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=10) as conn:
                    conn.sendall(line)
                    answer = conn.recv(1024)
                if answer == line:
                    self.ok += 1
                else:
                    self.failures.append(f"answer {answer!r}")
            except OSError as exc:
                self.failures.append(repr(exc))
            self._stop.wait(0.01)

    def __enter__(self) -> LegitEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        target = self.ok + 5
        deadline = time.monotonic() + 10
        while exc[0] is None and self.ok < target and not self.failures:
            if time.monotonic() > deadline:
                break
            self._stop.wait(0.01)
        self._stop.set()
        self._thread.join(15)
        if exc[0] is None:
            assert not self.failures, f"the legitimate client failed: {self.failures[:5]}"
            assert self.ok >= target, f"the legitimate client got only {self.ok} answers"


class FakeTransport(asyncio.Transport):
    """Collects what a protocol writes; records closing."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.eof_written = False

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True
