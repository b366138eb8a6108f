"""HTTP/2 with h2: one asyncio protocol for both ends of a connection.

As a server it turns each request into an `H2ServerStream` (the downstream exchange) handed to a
handler coroutine; as a client it opens `H2ClientStream`s on a multiplexed connection. Flow
control is honest both ways: credit is returned only when the router consumed the bytes, and
sends wait for the peer's window and for the transport's buffer to drain.

A server connection from an untrusted peer is guarded against the known HTTP/2 abuses, with
Envoy's rules and counters (`sidecar.limits` has the numbers): rapid reset (CVE-2023-44487),
floods of empty DATA, PRIORITY, WINDOW_UPDATE, PING or SETTINGS frames, a peer that does not read
what it makes us send, header blocks and HPACK expansions past the header list size (the
CONTINUATION flood and the HPACK bomb). Each ends the connection with GOAWAY ENHANCE_YOUR_CALM.
Requests with too many or too large headers get 431 on their stream, streams over the concurrent
limit REFUSED_STREAM (RFC 9113 5.1.2; h2 alone would close the connection).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import struct
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import h2.windows
import hyperframe.frame
from h2.frame_buffer import FrameBuffer
from hpack.exceptions import HPACKError, OversizedHeaderListError

from sidecar import defaults
from sidecar.cluster import Target
from sidecar.http.exchange import (
    EMPTY_BODY,
    TUNNEL_ESTABLISHED,
    Body,
    Headers,
    RefusedStream,
    RequestHead,
    ResponseHead,
    StreamReset,
)
from sidecar.http.h2validate import received_headers
from sidecar.http.hpack_literal import LiteralDecoder, LiteralEncoder
from sidecar.http.tunnel import Relay
from sidecar.limits import DEFAULT_LIMITS, Limits
from sidecar.observe.stats import HttpStats

log = logging.getLogger("sidecar.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _short_data_repr(data: bytes | None) -> str:
    return "None" if not data else f"<hex:{data[:10].hex()}...>"


# h2 builds `repr(frame)` for a trace log line on every frame it receives, and hyperframe's repr
# hex-encodes the whole payload before cutting it to 20 characters: on bulk DATA that was a fifth
# of the sidecar's CPU. Encode only what is shown.
hyperframe.frame._raw_data_repr = _short_data_repr


class ConnectionClosed(StreamReset):
    """The HTTP/2 connection went away."""


_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def _buffered(buffer: FrameBuffer) -> bool:
    """h2's frame buffer holds bytes of a frame not yet complete (older h2 releases keep them
    in `data`, newer ones in `_data`)."""
    return bool(getattr(buffer, "_data", None) or getattr(buffer, "data", None))


def _setting(settings: h2.settings.Settings, code: int, default: int) -> int:
    """A setting in force, read from h2's `Settings` internals (a deque per code, the value in
    force first) in one call instead of its property, `Mapping.get` and `__getitem__`: the
    stream limit and window are read several times a request."""
    values = settings._settings.get(code)
    value = values[0] if values else None
    return default if value is None else value


_MAX_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
_INITIAL_WINDOW = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
_UNLIMITED_STREAMS = 2**32 + 1  # h2's value for a limit the peer did not set


class _BoundedFrameBuffer(FrameBuffer):
    """h2's frame buffer with a bound on a header block's encoded bytes, so that a CONTINUATION
    flood is refused before it is buffered, not after (h2 only counts the frames)."""

    def __init__(self, max_block: int) -> None:
        super().__init__(server=True)
        self.max_block = max_block

    @property
    def pending_block(self) -> bool:
        """A header block has begun and not ended (its END_HEADERS is awaited)."""
        return bool(self._headers_buffer)

    def _update_header_buffer(self, f):  # type: ignore[no-untyped-def]
        frame = super()._update_header_buffer(f)
        pending = self._headers_buffer
        if pending and sum(len(x.data) for x in pending) > self.max_block:
            raise h2.exceptions.DenialOfServiceError(
                f"header block over {self.max_block} bytes (CONTINUATION flood)"
            )
        if isinstance(frame, hyperframe.frame.HeadersFrame) and len(frame.data) > self.max_block:
            raise h2.exceptions.DenialOfServiceError(f"header block over {self.max_block} bytes")
        return frame


_OPEN = h2.stream.StreamState.OPEN
_HALF_CLOSED_LOCAL = h2.stream.StreamState.HALF_CLOSED_LOCAL
_HALF_CLOSED_REMOTE = h2.stream.StreamState.HALF_CLOSED_REMOTE
_CLOSED = h2.stream.StreamState.CLOSED
_SENDING_STATES = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)
_RECEIVING_STATES = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)
# The states h2 calls open (`H2Stream.open`): in which it grows a stream's window on
# WINDOW_UPDATE (and tells of it), and returns a stream's credit.
_WINDOW_STATES = (_OPEN, _HALF_CLOSED_LOCAL, _HALF_CLOSED_REMOTE)
_MAX_WINDOW = 2**31 - 1  # RFC 9113 6.9.1: the largest flow-control window and increment
_FRAME_HEADER = struct.Struct(">BHBBL")  # length (24 bits, as 8 + 16), type, flags, stream id
_PADDED = 0x08  # a padded DATA frame is h2's to receive
_END_STREAM = 0x01
# HEADERS frames taken here end their block (END_HEADERS) and are neither PADDED nor PRIORITY.
_HEADERS_FLAGS_MASK = 0x04 | 0x08 | 0x20
_HEADERS_FLAGS_TAKEN = 0x04
_REQUEST_FLAGS = h2.utilities.HeaderValidationFlags(False, False, False, False)
_RESPONSE_FLAGS = h2.utilities.HeaderValidationFlags(True, False, True, False)
_TRAILER_FLAGS = {
    client: h2.utilities.HeaderValidationFlags(client, True, False, False)
    for client in (False, True)
}
_WINDOW_UPDATE_HEAD = b"\x00\x00\x04\x08\x00"  # length 4, type WINDOW_UPDATE, no flags
_WINDOW_UPDATE_CONNECTION = _WINDOW_UPDATE_HEAD + b"\x00\x00\x00\x00"  # stream 0
_OPEN_STATES = (
    h2.connection.ConnectionState.CLIENT_OPEN,
    h2.connection.ConnectionState.SERVER_OPEN,
)
_IDLE = h2.stream.StreamState.IDLE
_CLIENT_OPEN = h2.connection.ConnectionState.CLIENT_OPEN
# Who closed a stream, as h2's state machine notes it.
_CLOSED_BY_RECV_END = h2.stream.StreamClosedBy.RECV_END_STREAM
_CLOSED_BY_SEND_END = h2.stream.StreamClosedBy.SEND_END_STREAM
_RECV_INFORMATIONAL = h2.stream.StreamInputs.RECV_INFORMATIONAL_HEADERS
_ORDERED_SET = collections.OrderedDict.__setitem__  # h2's SizeLimitDict's, without its check
_HPACK_ERRORS = (HPACKError, IndexError, TypeError, UnicodeDecodeError)  # h2's `_decode_headers`


def _decode_error(err: Exception) -> h2.exceptions.ProtocolError:
    """The error h2's `_decode_headers` raises for a header block the decoder refused: an
    oversized list is a DenialOfServiceError (an HPACK bomb), anything else a ProtocolError."""
    if isinstance(err, OversizedHeaderListError):
        return h2.exceptions.DenialOfServiceError(f"Oversized header block: {err}")
    return h2.exceptions.ProtocolError(f"Error decoding header block: {err}")


def _content_length(value: bytes, known: int | None) -> int:
    """A content-length field's value read as h2's `H2Stream._initialize_content_length` reads
    it (digits only, `int` able to read them, the same as the block's earlier ones), with h2's
    errors and words."""
    if not value.isdigit():  # RFC 9110 8.6: 1*DIGIT
        raise h2.exceptions.ProtocolError(f"Invalid content-length header: {value!r}")
    try:
        length = int(value, 10)
    except ValueError as err:  # more digits than `int` reads
        raise h2.exceptions.ProtocolError(f"Invalid content-length header: {value!r}") from err
    if known is not None and length != known:
        raise h2.exceptions.ProtocolError(
            f"Conflicting content-length headers: {known} and {length}"
        )
    return length


def _header_block(
    fields: Headers, pseudo_defaults: dict[bytes, bytes | None] | None = None
) -> tuple[
    dict[bytes, bytes | None], Headers, bool, int | None, h2.exceptions.ProtocolError | None
]:
    """What is read of a received header block, in one pass: its pseudo-header fields (the last
    of a name counts), its regular fields in order, whether it is an informational response as
    h2's `is_informational_response` says (the first :status before any regular field begins
    with 1), and its content-length as h2's `H2Stream._initialize_content_length` reads it (None
    when there is none) or the error h2 raises for it (its first bad field's), for the caller to
    raise where h2 does. h2 walked the block twice for the last two, and the request path (or
    the response's) a third time to split it. tests/test_h2_block.py compares it with h2's.
    `pseudo_defaults`: what the pseudo-header fields start as (the values of those missing),
    so that the caller reads them by index, without a call each.

    Names and values are told apart by slices, not `startswith`: no call per field."""
    pseudo = {} if pseudo_defaults is None else pseudo_defaults.copy()
    regular: Headers = []
    append = regular.append
    informational: bool | None = None  # not known until a :status or a regular field
    length: int | None = None
    problem: h2.exceptions.ProtocolError | None = None
    for name, value in fields:
        if name[:1] == b":":
            pseudo[name] = value
            if name == b":status" and informational is None and not regular:
                informational = value[:1] == b"1"
            continue
        append((name, value))
        if name == b"content-length" and problem is None:
            try:
                length = _content_length(value, length)
            except h2.exceptions.ProtocolError as err:
                problem = err
    return pseudo, regular, informational is True, length, problem


# A request's pseudo-header fields where its block has none (`_header_block`, `_request`).
_REQUEST_PSEUDO: dict[bytes, bytes | None] = {
    b":method": b"GET",
    b":scheme": b"http",
    b":authority": b"",
    b":path": b"",
    b":protocol": None,
}


def _varied_read(
    decoder: LiteralDecoder, headers: Headers, defaults: dict[bytes, bytes | None] | None
) -> tuple[
    dict[bytes, bytes | None], Headers, bool, int | None, h2.exceptions.ProtocolError | None
]:
    """`_header_block(headers, defaults)` for a block the decoder answered from a template
    (`LiteralDecoder.varied`): blocks alike but for the value of one never-indexed field read
    alike but for that value in the regular fields, where the field is a regular one other
    than content-length (the only value a read looks at). Read once per template and kept
    (`varied_reads`); the pseudo-header dict is shared, as `_take_headers` shares a block's.
    Called for a template not read yet (with these defaults): `_take_headers` answers the
    others from `varied_reads` itself, in a list of the caller's own (the router may change
    it) with the block's value put in, without this call."""
    key = decoder.varied_key
    field = decoder.varied_field
    read = _header_block(headers, defaults)
    name = headers[field][0]
    if read[4] is None and name[:1] != b":" and name != b"content-length":
        at = sum(1 for header in headers[:field] if header[0][:1] != b":")
        decoder.varied_reads[key] = (defaults, read[0], (*read[1],), at, *read[2:4])
    return read


# What `_take_headers` finds of a block it has not read before (`LiteralDecoder.reads`), and
# `_varied_read` of a template (`LiteralDecoder.varied_reads`): the first item is no block's
# pseudo-header defaults.
_UNREAD = (object(), None, (), False, None)
_UNREAD_VARIED = (_UNREAD[0], None, (), 0, False, None)
# A response's `:status` field by status, made once per status: the same tuple every response
# (no number spelled, no tuple made), which the encoder's lookup of known fields finds by
# identity.
_STATUS_FIELDS: dict[int, tuple[bytes, bytes]] = {}


def _status_field(status: int) -> tuple[bytes, bytes]:
    field = _STATUS_FIELDS.get(status)
    if field is None:
        field = _STATUS_FIELDS[status] = (b":status", str(status).encode())
    return field


def _list_size(fields: Headers) -> int:
    """A header list's size as RFC 9113 6.5.2 counts it: name and value octets, 32 more per field
    (one join instead of two len() calls a field)."""
    return len(b"".join(itertools.chain.from_iterable(fields))) + 32 * len(fields)


class _StreamMachine(h2.stream.H2StreamStateMachine):
    """h2's stream state machine, made without a Python `__init__` call: `_Connection.new_stream`
    gives it the attributes h2's `__init__` gives it (tests/test_h2_cuts.py compares them)."""

    __init__ = object.__init__  # type: ignore[assignment]


class _WindowManager(h2.windows.WindowManager):
    """h2's window manager, made without a Python `__init__` call (see `_StreamMachine`)."""

    __init__ = object.__init__  # type: ignore[assignment]


class _H2Stream(h2.stream.H2Stream):
    """h2's stream, made without a Python `__init__` call (see `_StreamMachine`): a stream costs
    no call of h2's (there were three, and `new_stream` a fourth) where the sidecar makes it."""

    __init__ = object.__init__  # type: ignore[assignment]


class _Connection(h2.connection.H2Connection):
    """h2's connection, remembering fewer closed streams: its 65536 grow a long-lived connection
    by some 9 MB (found by the soak: RSS climbing with the request count until the table fills)."""

    MAX_CLOSED_STREAMS = defaults.H2_CLOSED_STREAMS_REMEMBERED

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        # What the request path reads of the configuration and settings, kept as plain
        # attributes (h2's are a descriptor, and a deque per setting); the settings are
        # refreshed where h2 puts new ones in force (`_settings_in_force`).
        # A header block the sidecar takes itself (`H2Protocol._take_headers`) goes through h2's
        # rules (`sidecar.http.h2validate`, h2's `_process_received_headers` in one pass) where
        # the connection validates or normalises (an app, a plaintext peer); from a verified
        # peer sidecar it is taken as decoded (a fresh list: h2's pipeline would only copy it).
        self.validate_inbound = config.validate_inbound_headers
        self.normalize_inbound = config.normalize_inbound_headers
        self.checks_inbound = self.validate_inbound or self.normalize_inbound
        self._settings_in_force()

    def _settings_in_force(self) -> None:
        """Read the settings in force into plain attributes: the streams the peer allows us,
        the streams we allow it, and the two initial stream windows. Called at creation, when
        the local settings are replaced (`use_local_settings`) and when either side's settings
        are acknowledged, the only ways h2 changes the settings in force."""
        local, remote = self.local_settings, self.remote_settings
        self.local_max_streams = _setting(local, _MAX_STREAMS, _UNLIMITED_STREAMS)
        self.remote_max_streams = _setting(remote, _MAX_STREAMS, _UNLIMITED_STREAMS)
        self.local_initial_window = _setting(local, _INITIAL_WINDOW, 65535)
        self.remote_initial_window = _setting(remote, _INITIAL_WINDOW, 65535)

    def use_local_settings(self, settings: h2.settings.Settings) -> None:
        """Our settings, given before the connection's preface is sent."""
        self.local_settings = settings
        self._settings_in_force()

    def _acknowledge_settings(self) -> list[hyperframe.frame.Frame]:
        """h2 puts the peer's new settings in force (and acknowledges them)."""
        frames = super()._acknowledge_settings()
        self._settings_in_force()
        return frames

    def _local_settings_acked(self) -> dict:
        """h2 puts our new settings in force, the peer having acknowledged them."""
        changes = super()._local_settings_acked()
        self._settings_in_force()
        return changes

    def _receive_goaway_frame(
        self, frame: hyperframe.frame.GoAwayFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        """A graceful GOAWAY (NO_ERROR) leaves the connection open for the streams it covers.

        RFC 9113 6.8: streams up to the GOAWAY's last stream id may still complete. h2 closes
        its connection state machine on receipt and drops what we were about to send
        (python-hyper/h2#1181), so the answer to a request the draining peer is still serving
        would be refused as a protocol error ("RECV_HEADERS in state CLOSED") and the request
        fail. Here only the event is raised: `H2Protocol` opens no stream on the connection any
        more, refuses (retry-safe) the streams past the last id, and closes the connection once
        the others are done. A GOAWAY with an error code is h2's business, as before.
        """
        if frame.error_code != 0:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def send_plain_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """A DATA frame, not padded, ending the stream if `end`: what a body or a tunnel sends,
        chunk after chunk, and a body's last chunk. h2's `send_data` builds a frame object, runs
        two state machines whose SEND_DATA input leaves an open stream's and connection's states
        as they are, and makes four debug-log calls, per frame: about 25 Python calls; the frame
        is 9 bytes of header. The same checks and window accounting are done here (and the
        stream moved as SEND_END_STREAM moves it), and the frame is queued in h2's output buffer
        (so it keeps its place among h2's frames). Anything out of the ordinary (a closed
        stream, no window) goes through h2, for its errors."""
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or not 0 < size <= self.max_outbound_frame_size
            or size > stream.outbound_flow_control_window
            or size > self.outbound_flow_control_window
            or stream.state_machine.state not in _SENDING_STATES
            or self.state_machine.state not in _OPEN_STATES
        ):
            self.send_data(stream_id, data, end_stream=end)
            return
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        out = self._data_to_send
        out += size.to_bytes(3, "big")
        if end:
            machine = stream.state_machine
            self._ended_locally(machine, machine.state)
            out += b"\x00\x01"  # type DATA, END_STREAM
        else:
            out += b"\x00\x00"  # type DATA, no flags
        out += stream_id.to_bytes(4, "big")
        out += data

    def new_stream(
        self,
        stream_id: int,
        state: h2.stream.StreamState = _IDLE,
        request_sent: bool | None = None,
        request_method: bytes | None = None,
        authority: bytes | None = None,
    ) -> h2.stream.H2Stream:
        """An h2 stream made and registered as h2's `_begin_new_stream` makes it (IDLE, the
        windows in force), for the HEADERS that the sidecar sends or takes itself; the caller
        sets its state and the highest stream id of its side. Its objects are made without
        their `__init__` calls, their attributes set as those set them. A request the sidecar
        sends (`send_request_headers`) gives the state its HEADERS leave the stream in,
        `request_sent` (True: h2's `request_sent` transition, the client's headers sent), the
        method and the authority: set as the stream is made, not stored afterwards."""
        machine = _StreamMachine()
        machine.__dict__ = {
            "state": state,
            "stream_id": stream_id,
            "client": request_sent,  # h2's `request_sent` sets both
            "headers_sent": request_sent,
            "trailers_sent": None,
            "headers_received": None,
            "trailers_received": None,
            "stream_closed_by": None,
        }
        window = _WindowManager()
        size = self.local_initial_window
        window.__dict__ = {
            "max_window_size": size,
            "current_window_size": size,
            "_bytes_processed": 0,
        }
        stream = _H2Stream()
        stream.__dict__ = {
            "state_machine": machine,
            "stream_id": stream_id,
            "max_outbound_frame_size": self.max_outbound_frame_size,
            "request_method": request_method,
            "outbound_flow_control_window": self.remote_initial_window,
            "_inbound_window_manager": window,
            "_expected_content_length": None,
            "_actual_content_length": 0,
            "_authority": authority,
            "config": self.config,
        }
        self.streams[stream_id] = stream
        return stream

    def forget(self, stream_id: int) -> bool:
        """Drop a closed stream as h2's stream counting does (remembering who closed it), when
        the sidecar is done with it. h2 forgets closed streams only while it counts open ones,
        walking all of them: once or twice per request that walk was most of what a request
        cost in h2 with many streams open (all of them, every time). Who closed it is put in
        h2's `SizeLimitDict` as its `__setitem__` does (the oldest dropped past the limit),
        without its two Python calls. False when h2 still holds the stream (not closed yet),
        so that the caller knows whether it has to come back."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            machine = stream.state_machine  # h2's `closed` and `closed_by`, read directly
            if machine.state is not _CLOSED:
                return False
            del self.streams[stream_id]
            closed = self._closed_streams
            _ORDERED_SET(closed, stream_id, machine.stream_closed_by)
            if len(closed) > self.MAX_CLOSED_STREAMS:
                closed.popitem(last=False)
        return True

    def stream_allowed(self) -> bool:
        """A client connection may open one more stream: its open streams, as h2's
        `open_outbound_streams` counts them (walking all of them), are fewer than the peer
        allows. Callers ask only near the limit: the streams not `forget`-ten yet are open but
        for a few closed ones (the client side holds its own streams only: pushes are refused),
        so `len(streams)` below the limit already says yes."""
        return self.open_outbound_streams < self.remote_max_streams

    def send_window(self, stream_id: int) -> int:
        """How many bytes of DATA `stream_id` may send now: h2's `local_flow_control_window`,
        read from the stream and the connection directly (h2 looks the stream up through two
        more calls)."""
        stream = self.streams.get(stream_id)
        if stream is None:  # h2's error for a stream it no longer holds
            return self.local_flow_control_window(stream_id)
        return min(stream.outbound_flow_control_window, self.outbound_flow_control_window)

    def send_request_headers(
        self, stream_id: int, headers: Headers, end_stream: bool, method: bytes, authority: bytes
    ) -> None:
        """`send_headers` for a request on a new stream (client side). h2 runs its connection
        and stream state machines, validates the stream id twice, builds frame objects and
        flag sets and logs four debug lines: some 90 Python calls a request. Here the stream is
        made as h2's `_begin_new_stream` makes it and put in the state h2's SEND_HEADERS (and
        SEND_END_STREAM) inputs leave a new client stream in, with the request method h2 keeps
        for the response's content-length rules; the block is encoded by `LiteralEncoder`
        (no validation or normalisation: the connection is configured without them) and framed
        here. A stream id h2 would refuse, too many streams, a connection not open: h2's
        `send_headers`, for its errors."""
        if (
            stream_id in self.streams
            or stream_id <= self.highest_outbound_stream_id
            or not stream_id & 1
            or self.state_machine.state is not _CLIENT_OPEN
            or (len(self.streams) >= self.remote_max_streams and not self.stream_allowed())
        ):
            self.send_headers(stream_id, headers, end_stream=end_stream)
            return
        self.new_stream(  # request_sent: IDLE -> OPEN, and on to HALF_CLOSED_LOCAL if ended
            stream_id, _HALF_CLOSED_LOCAL if end_stream else _OPEN, True, method, authority
        )
        self.highest_outbound_stream_id = stream_id
        block = self.encoder.encode(headers)
        size = len(block)
        if size <= self.max_outbound_frame_size:  # as `_headers_frames`, without its call
            out = self._data_to_send
            out += _FRAME_HEADER.pack(
                size >> 16, size & 0xFFFF, 1, 5 if end_stream else 4, stream_id
            )
            out += block
        else:
            self._headers_frames(stream_id, block, end_stream)

    def send_stream_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        """`send_headers` for a final response (server side) or trailers (either side) on a
        stream that can send, without h2's two state machines, frame objects, flag sets and
        logging (some 60 Python calls): the stream's state moves as h2's SEND_HEADERS and
        SEND_END_STREAM inputs move it. An informational response, headers a stream in another
        state sends, trailers without END_STREAM: h2's `send_headers`, for its rules and
        errors. The caller sends no informational response this way (h2 tells them apart by
        the status)."""
        stream = self.streams.get(stream_id)
        if stream is None or self.state_machine.state not in _OPEN_STATES:
            self.send_headers(stream_id, headers, end_stream=end_stream)
            return
        machine = stream.state_machine
        state = machine.state
        if state not in _SENDING_STATES:
            self.send_headers(stream_id, headers, end_stream=end_stream)
            return
        if not machine.headers_sent:
            if machine.client is not False:  # a client's stream sends no response
                self.send_headers(stream_id, headers, end_stream=end_stream)
                return
            machine.headers_sent = True  # response_sent
        elif end_stream and not machine.trailers_sent:
            machine.trailers_sent = True  # response_sent, as trailers
        else:
            self.send_headers(stream_id, headers, end_stream=end_stream)
            return
        if end_stream:
            self._ended_locally(machine, state)
        self._headers_frames(stream_id, self.encoder.encode(headers), end_stream)

    def send_response(
        self, stream_id: int, headers: Headers, body: bytes, trailers: Headers | None = None
    ) -> bool:
        """A final response's head and its whole body (server side), and its trailers if any
        (a gRPC answer: head, message, status), queued as `send_stream_headers` (no END_STREAM),
        `send_plain_data_now` (END_STREAM unless trailers follow) and `send_stream_headers`
        (the trailers, END_STREAM) queue them, with one look at the stream, its state and the
        windows instead of two or three: a small answer's usual case. Anything else (a body
        over a frame or short of window, a stream in another state): those calls, for their
        rules. True when the body (and the trailers) were queued too, False when only the head
        was (the caller sends the rest)."""
        stream = self.streams.get(stream_id)
        size = len(body)
        if stream is not None and self.state_machine.state in _OPEN_STATES:
            machine = stream.state_machine
            state = machine.state
            if (
                state in _SENDING_STATES
                and not machine.headers_sent
                and machine.client is False
                and 0 < size <= self.max_outbound_frame_size
                and size <= stream.outbound_flow_control_window
                and size <= self.outbound_flow_control_window
            ):
                machine.headers_sent = True  # response_sent
                out = self._data_to_send
                block = self.encoder.encode(headers)
                length = len(block)
                if length <= self.max_outbound_frame_size:  # as `_headers_frames`, no call
                    out += _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, 1, 4, stream_id)
                    out += block
                else:
                    self._headers_frames(stream_id, block, False)
                stream.outbound_flow_control_window -= size
                self.outbound_flow_control_window -= size
                if state is _OPEN:  # `_ended_locally`, without its call
                    machine.state = _HALF_CLOSED_LOCAL
                else:
                    machine.state = _CLOSED
                    machine.stream_closed_by = _CLOSED_BY_SEND_END
                if not trailers:
                    out += _FRAME_HEADER.pack(size >> 16, size & 0xFFFF, 0, _END_STREAM, stream_id)
                    out += body
                    return True
                out += _FRAME_HEADER.pack(size >> 16, size & 0xFFFF, 0, 0, stream_id)
                out += body
                machine.trailers_sent = True  # response_sent, as trailers
                self._headers_frames(stream_id, self.encoder.encode(trailers), True)
                return True
        self.send_stream_headers(stream_id, headers, False)
        if not self.send_plain_data_now(stream_id, body, not trailers):
            return False
        if trailers:
            self.send_stream_headers(stream_id, trailers, True)
        return True

    def send_end_stream(self, stream_id: int) -> None:
        """`end_stream` (an empty DATA frame with END_STREAM) on a stream that can send,
        without h2's state machines, frame object and logging; otherwise h2's, for its
        errors."""
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or stream.state_machine.state not in _SENDING_STATES
            or self.state_machine.state not in _OPEN_STATES
        ):
            self.end_stream(stream_id)
            return
        machine = stream.state_machine
        self._ended_locally(machine, machine.state)
        out = self._data_to_send
        out += b"\x00\x00\x00\x00\x01"  # length 0, type DATA, END_STREAM
        out += stream_id.to_bytes(4, "big")

    @staticmethod
    def _ended_locally(machine: h2.stream.H2StreamStateMachine, state: object) -> None:
        """h2's SEND_END_STREAM input on a stream in OPEN or HALF_CLOSED_REMOTE."""
        if state is _OPEN:
            machine.state = _HALF_CLOSED_LOCAL
        else:
            machine.state = _CLOSED
            machine.stream_closed_by = _CLOSED_BY_SEND_END

    def _headers_frames(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """A header block as a HEADERS frame, with CONTINUATION frames when it is over the
        peer's frame size (END_STREAM on the HEADERS frame, END_HEADERS on the last), queued in
        h2's output buffer."""
        out = self._data_to_send
        size = len(block)
        frame_size = self.max_outbound_frame_size
        if size <= frame_size:  # HEADERS with END_HEADERS: the frame head packed in one call
            out += _FRAME_HEADER.pack(
                size >> 16, size & 0xFFFF, 1, 5 if end_stream else 4, stream_id
            )
            out += block
            return
        ident = stream_id.to_bytes(4, "big")
        out += frame_size.to_bytes(3, "big")
        out += b"\x01\x01" if end_stream else b"\x01\x00"
        out += ident
        out += block[:frame_size]
        for start in range(frame_size, size, frame_size):
            chunk = block[start : start + frame_size]
            out += len(chunk).to_bytes(3, "big")
            out += b"\x09\x04" if start + frame_size >= size else b"\x09\x00"  # CONTINUATION
            out += ident
            out += chunk

    def credit(self, stream_id: int, size: int) -> None:
        """`acknowledge_received_data` without its logging and frame objects: h2's window
        managers still decide when an update is due (and keep their books); the WINDOW_UPDATE
        frames are written into h2's output buffer here. Below half a window processed, with
        window left, h2's `process_bytes` only adds the bytes up (its `_maybe_update_window`
        returns 0 and changes nothing else): that is done here, without its two calls, for the
        connection's window and the stream's (most credit, most of the time)."""
        out = self._data_to_send
        manager = self._inbound_flow_control_window_manager
        processed = manager._bytes_processed + size
        if processed < manager.max_window_size // 2 and manager.current_window_size:
            manager._bytes_processed = processed
        else:
            increment = manager.process_bytes(size)
            if increment:
                out += _WINDOW_UPDATE_CONNECTION
                out += increment.to_bytes(4, "big")
        stream = self.streams.get(stream_id)
        # h2's `stream.open` (RFC 9113 5.1.2: OPEN or half-closed), read directly.
        if stream is not None and stream.state_machine.state in _WINDOW_STATES:
            manager = stream._inbound_window_manager
            processed = manager._bytes_processed + size
            if processed < manager.max_window_size // 2 and manager.current_window_size:
                manager._bytes_processed = processed
                return
            increment = manager.process_bytes(size)
            if increment:
                out += _WINDOW_UPDATE_HEAD
                out += stream_id.to_bytes(4, "big")
                out += increment.to_bytes(4, "big")

    def send_plain_data_now(self, stream_id: int, data: bytes, end: bool = False) -> bool:
        """`send_plain_data` for a chunk that leaves whole now or not at all: False, with nothing
        queued, when the windows cannot take all of it or the stream cannot send. What a tunnel's
        relay forwards from `data_received` (sidecar.http.tunnel), and a body's chunk that fits
        (`H2Protocol.send_now`); more than a frame's worth is cut into frames here, END_STREAM
        (`end`) on the last, the stream moved as h2's SEND_END_STREAM moves it."""
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or not size
            or size > stream.outbound_flow_control_window
            or size > self.outbound_flow_control_window
            or stream.state_machine.state not in _SENDING_STATES
            or self.state_machine.state not in _OPEN_STATES
        ):
            return False
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        if end:
            machine = stream.state_machine
            self._ended_locally(machine, machine.state)
        out = self._data_to_send
        frame_size = self.max_outbound_frame_size
        if size <= frame_size:  # the usual chunk: one frame, its head packed in one call
            out += _FRAME_HEADER.pack(
                size >> 16, size & 0xFFFF, 0, _END_STREAM if end else 0, stream_id
            )
            out += data
            return True
        view = memoryview(data)
        for start in range(0, size, frame_size):
            chunk = view[start : start + frame_size]
            last = end and start + frame_size >= size
            out += _FRAME_HEADER.pack(0, len(chunk), 0, _END_STREAM if last else 0, stream_id)
            out += chunk
        return True


class _ServerConnection(_Connection):
    """h2 treats a HEADERS frame beyond our concurrent stream limit as a connection error; RFC
    9113 5.1.2 allows a stream error (REFUSED_STREAM), which keeps the connection's other
    streams alive. h2 is told there is always room; H2Protocol refuses the excess itself."""

    @property
    def open_inbound_streams(self) -> int:
        open_now = super().open_inbound_streams
        return min(open_now, self.local_settings.max_concurrent_streams - 1)


class H2Protocol(asyncio.Protocol):
    def __init__(
        self,
        *,
        client_side: bool,
        handler: Callable[[H2ServerStream], Awaitable[None]] | None = None,
        trusted: bool = False,
        max_concurrent_streams: int = defaults.APP_MAX_CONCURRENT_STREAMS,
        on_close: Callable[[H2Protocol], None] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        stats: HttpStats | None = None,
        mesh_hop: bool = False,
    ) -> None:
        """`mesh_hop`: a connection between two sidecars. As a server it is for peer sidecars,
        whose requests carry the headers the sidecars add: it allows twice the header list and
        count.

        `trusted`: the peer is a verified sidecar (mTLS), whose headers are taken without h2's
        validation (its outbound validated them on receipt from its app) and which is not
        guarded against abuse (its app was, at its outbound). A plaintext peer, and an app, are
        never trusted: anyone can connect.

        Headers are sent without h2's validation and normalisation on every connection: what a
        sidecar sends is what one of its codecs validated when it received it (h11, h2 from an
        app or a plaintext peer, or the verified peer's validation at its own receipt), with
        hop-by-hop headers stripped (`strip_hop_by_hop`), plus headers it built itself;
        credentials are kept out of HPACK tables by `LiteralEncoder` (h2's normalisation did
        that too)."""
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=not trusted,
            normalize_inbound_headers=not trusted,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.limits = limits
        # Each stream's body buffer, read once (a property of the frozen limits: a call each).
        self.body_buffer = limits.stream_buffer_bytes
        self.stats = stats
        factor = defaults.MESH_HEADER_LIST_FACTOR if mesh_hop else 1
        self.header_list_size = limits.max_request_headers_bytes * factor
        self.max_headers = limits.max_headers_count * factor
        if client_side:
            self.conn = _Connection(config=config)
        else:
            self.conn = _ServerConnection(config=config)
        # HPACK decoded without hpack's per-field calls and logging: the peer sidecar's literal
        # blocks, and an app's (the dynamic table, Huffman) alike.
        decoder = LiteralDecoder()
        decoder.max_header_list_size = self.conn.decoder.max_header_list_size
        decoder.max_allowed_table_size = self.conn.decoder.max_allowed_table_size
        self.conn.decoder = decoder
        # A header list up to twice the limit is decoded (HPACK stays in step): a request's is
        # answered 431 on its stream; beyond that it is an attack (HPACK bomb, CONTINUATION
        # flood). A client takes answers as large (h2's own bound, 64 KiB, was less than a head
        # the peer's inbound lets through: a connection error failing every stream on it).
        self.conn.decoder.max_header_list_size = 2 * self.header_list_size
        if not client_side:
            self.conn.incoming_buffer = _BoundedFrameBuffer(2 * self.header_list_size)
        # The bound on a header block's encoded bytes (server side), for `_take_headers`.
        self._max_block: int | None = None if client_side else 2 * self.header_list_size
        self.conn.encoder = LiteralEncoder()
        self.guarded = not client_side and not trusted
        self.calmed = False  # an abuse was seen: GOAWAY sent, nothing more is read
        # Abuse accounting (server side), Envoy's rules: see sidecar.limits.
        self.streams_opened = 0
        self.premature_resets = 0
        self._empty_frames = 0
        self._priority_frames = 0
        self._window_updates = 0
        self._data_frames_sent = 0
        self._control_frames = 0
        self._control_window_start = 0.0
        # Timeouts (checked by `sweep`): since when without streams; when a header block that
        # has not ended was first seen.
        self.idle_since = 0.0
        self._block_since: float | None = None
        self.client_side = client_side
        self.handler = handler
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.going_away = False  # a GOAWAY was sent or received: no new streams here
        # Accepted by a draining listener: GOAWAY once the first request arrives (it is served).
        self.goaway_on_request = False
        # A client connection's last stream id and when a sweep saw it so (H2Pool.sweep).
        self.idle_mark: tuple[int, float] | None = None
        self.peer_spoke = False  # the peer's SETTINGS arrived: it is a live HTTP/2 endpoint
        self.peer_address: tuple[str, int] | None = None
        self.target: Target | None = None  # the endpoint, for a pooled client connection
        # The tasks that serve the streams (`_work`), held here while they live (the loop keeps
        # only weak references). A task whose handler is done waits for the next stream (up to
        # `H2_IDLE_WORKERS` of them) on a future in `_idle_workers`; the rest end. Nothing is
        # held per stream: a request costs no task made and registered, no done callback.
        self.workers: set[asyncio.Task[None]] = set()
        self._idle_workers: list[asyncio.Future[H2ServerStream | None]] = []
        self._max_concurrent_streams = max_concurrent_streams
        self.max_idle_workers = defaults.H2_IDLE_WORKERS
        self._write_paused: asyncio.Future[None] | None = None
        self._flush_handle: asyncio.Handle | None = None  # a write waiting for the turn's end
        self._unflushed = 0  # DATA bytes queued in h2 since the last write
        self._sends = 0  # sends queued in h2 since the last write
        self._window_waiters: dict[int, asyncio.Future[None]] = {}
        self._slot_waiters: list[asyncio.Future[None]] = []
        # The loop, looked up once: `asyncio.get_running_loop()` costs a getpid(2) per call in
        # Python 3.11, and the request path needs it several times per stream.
        self.loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self.loop.create_future()
        # Inbound framing (`data_received`): once h2 has read the preface, frames are cut here;
        # the start of a frame whose end has not arrived.
        self._framing = False
        self._partial = bytearray()
        # Bytes read and written on this connection, for a pooled client connection its
        # cluster's upstream_cx_rx/tx_bytes_total (`H2Pool`: added when it ends, and those of
        # open connections at each stats read). They are HTTP/2's bytes, what this codec reads
        # from and writes to its transport: on an mTLS mesh hop (asyncio's or uvloop's TLS
        # transport, which tell no socket byte counts) the plaintext, without the TLS records'
        # overhead; on a plaintext or h2c connection what the socket carries. A server
        # connection counts them too (one add costs less than a test), unread.
        self.rx_bytes = 0
        self.tx_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer_address = transport.get_extra_info("peername")
        self.conn.use_local_settings(
            h2.settings.Settings(client=self.client_side, initial_values=self._settings())
        )
        # Settings given as initial values count as acknowledged: the frame-size limit the codec
        # enforces has to follow them by hand (it is read from the settings only at creation).
        limits = self.limits
        self.conn.max_inbound_frame_size = limits.h2_max_frame_size
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(limits.h2_initial_connection_window_size - 65535)
        self.idle_since = self.loop.time()
        self._flush()
        if not self._ready.done():
            self._ready.set_result(None)

    def _settings(self) -> dict[int, int]:
        codes = h2.settings.SettingCodes
        limits = self.limits
        settings = {
            codes.MAX_CONCURRENT_STREAMS: self._max_concurrent_streams,
            codes.INITIAL_WINDOW_SIZE: limits.h2_initial_stream_window_size,
            codes.MAX_FRAME_SIZE: limits.h2_max_frame_size,
            codes.ENABLE_CONNECT_PROTOCOL: 1,
        }
        if not self.client_side:
            settings[codes.MAX_HEADER_LIST_SIZE] = self.header_list_size
        return settings

    def data_received(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        if self.calmed:
            return  # GOAWAY sent for abuse: what else comes is read and dropped
        partial = self._partial
        if partial:
            # The rest of a frame: gathered in place (a large frame trickling in byte by byte
            # costs no more than h2's own buffer did) until it is complete, or known too large.
            partial += data
            if len(partial) < 9:
                return
            length = int.from_bytes(partial[:3], "big")
            if len(partial) < 9 + length and length <= self.conn.max_inbound_frame_size:
                return
            data = bytes(partial)
            partial.clear()
        elif not self._framing:
            buffer = self.conn.incoming_buffer
            if buffer._preamble_len or _buffered(buffer):
                # The client preface (or a frame it began) is still h2's to read; once it is
                # read, frames are cut here (`_cut_frames`).
                if self._to_h2(data):
                    self._batch_done()
                return
            self._framing = True
        if self._cut_frames(data):
            self._batch_done()

    def _cut_frames(self, data: bytes) -> bool:
        """Cut the bytes into frames: the common DATA, HEADERS and WINDOW_UPDATE frames are
        taken here (`_take_data`, `_take_headers`, `_take_window_update`: each says False for
        what it leaves to h2), every other frame goes to h2, in order and in runs, whole (h2's
        buffer never holds part of a frame, so that the next frame can be taken here too). A
        frame's tail that has not arrived waits in `_partial`, up to one frame; a frame over
        the size limit goes to h2, which refuses it. False when the connection ended."""
        end = len(data)
        last = end - 9  # where the last frame header that has arrived whole may begin
        pos = run = 0  # the frame at hand; the first not yet given to h2
        max_size = self.conn.max_inbound_frame_size
        unpack = _FRAME_HEADER.unpack_from
        while pos <= last:
            high, low, kind, flags, stream_id = unpack(data, pos)
            length = high << 16 | low
            if length > max_size:
                # h2 refuses it once it has all of it: until then h2 holds part of a frame, so
                # what follows is h2's to cut.
                self._framing = False
                return self._to_h2(data[run:])
            start = pos + 9
            stop = start + length
            if stop > end:
                break
            ended = flags & _END_STREAM  # a flag h2 does not define is ignored (RFC 9113 4.1)
            if kind == 0 and not flags & _PADDED and (length or ended):
                take = self._take_data
            elif kind == 1 and flags & _HEADERS_FLAGS_MASK == _HEADERS_FLAGS_TAKEN:
                take = self._take_headers
            elif kind == 8 and length == 4:
                take = self._take_window_update
            else:
                pos = stop
                continue
            if run < pos and not self._to_h2(data[run:pos]):  # the frames before it, h2's
                return False
            if take(data, start, length, stream_id & 0x7FFFFFFF, ended):
                run = stop
                if self.closed or self.calmed:
                    return False
            else:  # h2's, with the frames after it
                run = pos
            pos = stop
        if run < pos and not self._to_h2(data[run:pos]):
            return False
        if pos < end:
            self._partial += memoryview(data)[pos:]
        return True

    def _take_window_update(
        self, data: bytes, start: int, _length: int, stream_id: int, _ended: int
    ) -> bool:
        """A WINDOW_UPDATE frame, handled as h2's `_receive_window_update_frame` handles it (a
        window grown, WindowUpdated for an open stream or the connection, nothing for a closed
        stream h2 still knows) without its frame object, two state machines that leave every
        state as it is, and an eager `repr` of the frame for its trace log: gRPC clients send
        one or two per call. False for anything else (an increment out of range or one that
        would overflow a window, a stream h2 no longer holds or has not opened, a header block
        pending, a connection not open): h2 takes the frame, for its errors."""
        conn = self.conn
        increment = int.from_bytes(data[start : start + 4], "big")
        if (
            not 1 <= increment <= _MAX_WINDOW
            or conn.state_machine.state not in _OPEN_STATES
            or conn.incoming_buffer._headers_buffer  # only CONTINUATION may come now
        ):
            return False
        if not stream_id:
            window = conn.outbound_flow_control_window + increment
            if window > _MAX_WINDOW:
                return False
            conn.outbound_flow_control_window = window
            self._window_updated(0)
            return True
        h2_stream = conn.streams.get(stream_id)
        if h2_stream is None:
            return False
        state = h2_stream.state_machine.state
        if state is _CLOSED:
            return True  # h2 ignores it: RFC 9113 allows it for a while after END_STREAM
        if state not in _WINDOW_STATES:
            return False
        window = h2_stream.outbound_flow_control_window + increment
        if window > _MAX_WINDOW:
            return False
        h2_stream.outbound_flow_control_window = window
        self._window_updated(stream_id)
        return True

    def _window_updated(self, stream_id: int) -> None:
        """A peer's WINDOW_UPDATE (from h2's events or `_take_window_update`): counted against
        Envoy's flood allowance on a guarded connection, then the stream's (or, for 0, every)
        sender waiting for window is woken."""
        if self.guarded:
            self._window_updates += 1
            per_data = self.limits.h2_max_inbound_window_update_frames_per_data_frame_sent
            # Envoy's allowance: 5 + 2 × (streams opened + per_data × DATA frames sent).
            allowed = 5 + 2 * (self.streams_opened + per_data * self._data_frames_sent)
            if self._window_updates > allowed:
                self._abuse("http2_inbound_window_update_frames_flood", "WINDOW_UPDATE frames")
                return
        if self._window_waiters:
            self._wake_windows(stream_id)

    def _take_data(
        self, data: bytes, start: int, length: int, stream_id: int, end_stream: int
    ) -> bool:
        """A DATA frame (not padded) on a stream open to receive, handled as h2 would (its
        windows and body length bookkeeping, the same checks; END_STREAM moving the stream as
        h2's RECV_END_STREAM input moves it) without its frame object, two state machines whose
        RECV_DATA leaves an open stream and connection as they are, events, and its trace and
        debug logging: some 50 Python calls per frame. False for anything out of the ordinary
        (no such stream, a window or length overrun, a body shorter than its content-length, a
        header block pending): h2 takes the frame, for its errors and events."""
        conn = self.conn
        stream = self.streams.get(stream_id)
        h2_stream = conn.streams.get(stream_id)
        if stream is None or h2_stream is None:
            return False
        machine = h2_stream.state_machine
        if (
            machine.state not in _RECEIVING_STATES
            or not machine.headers_received
            or conn.state_machine.state not in _OPEN_STATES
            or conn.incoming_buffer._headers_buffer  # only CONTINUATION may come now
        ):
            return False
        conn_window = conn._inbound_flow_control_window_manager
        stream_window = h2_stream._inbound_window_manager
        expected = h2_stream._expected_content_length
        received = h2_stream._actual_content_length + length
        if (
            length > conn_window.current_window_size
            or length > stream_window.current_window_size
            or (
                expected is not None
                and (received > expected or (end_stream and received != expected))
            )
        ):
            return False
        conn_window.current_window_size -= length
        stream_window.current_window_size -= length
        h2_stream._actual_content_length = received
        self._empty_frames = 0
        if length:
            payload = data[start : start + length]
            relay = stream.relay
            if relay is not None and relay.offer(payload):
                conn.credit(stream_id, length)  # forwarded: credit back now, as a read gives it
            elif end_stream:
                machine.state = _HALF_CLOSED_REMOTE if machine.state is _OPEN else _CLOSED
                machine.stream_closed_by = _CLOSED_BY_RECV_END
                # The last chunk (a small answer's whole body): `feed` and `remote_ended` (no
                # trailers came: the stream still received) in two calls fewer.
                stream.body.feed_last(payload)
                stream.remote_done = True
                if stream.local_done:
                    # `_stream_finished` of a stream done at both ends and still in our table
                    # (found there above; `feed_last` wakes a reader later, never at once),
                    # inline: a client's usual answer ends here, a call fewer for each.
                    del self.streams[stream_id]
                    if not self.closed:
                        stream.forgotten = conn.forget(stream_id)
                    if not self.streams and not self.client_side:
                        self.idle_since = self.loop.time()
                    if self._slot_waiters:
                        self._wake_slots()
                    if self.going_away:
                        self._maybe_close()
                return True
            else:
                stream.body.feed(payload)
        if end_stream:  # h2's stream_ended, on either transition
            machine.state = _HALF_CLOSED_REMOTE if machine.state is _OPEN else _CLOSED
            machine.stream_closed_by = _CLOSED_BY_RECV_END
            stream.remote_ended()
        return True

    def _take_headers(
        self, data: bytes, start: int, length: int, stream_id: int, end_stream: int
    ) -> bool:
        """A whole header block (one HEADERS frame with END_HEADERS, neither padded nor with
        priority) that opens a request (server side), answers one (client side) or carries
        trailers, handled as h2's `_receive_headers_frame` handles it: the block decoded by the
        connection's decoder with h2's error translation, the stream made (a request) and moved
        as h2's RECV_HEADERS and RECV_END_STREAM inputs move it, its content length set up,
        the headers normalised and validated by h2's own pipeline where the connection has them
        on (an untrusted peer) — without h2's frame objects, state machine calls, events and
        logging (some 100 Python calls a block), the result handed to `_request`,
        `response_received` or the stream's trailers directly. h2's errors for what is wrong
        in the block (a connection error: GOAWAY, the connection lost) are raised the same way.
        False for anything else: h2 takes the frame (a stream it would refuse or reset, an id
        too low, a block over the bound, a block already pending, a connection not open)."""
        conn = self.conn
        if (
            not stream_id
            or conn.incoming_buffer._headers_buffer
            or conn.state_machine.state not in _OPEN_STATES
            or (self._max_block is not None and length > self._max_block)
        ):
            return False
        ended = end_stream != 0  # (END_STREAM's bit, or 0)
        h2_stream = conn.streams.get(stream_id)
        opens = h2_stream is None  # a request's block, opening its stream
        if opens:
            if self.client_side or not stream_id & 1 or stream_id <= conn.highest_inbound_stream_id:
                return False
            stream = None
            trailers = False
        else:
            stream = self.streams.get(stream_id)
            machine = h2_stream.state_machine
            if stream is None or machine.state not in _RECEIVING_STATES:
                return False
            trailers = machine.headers_received
            if not trailers and not machine.client:
                return False
        try:
            if opens and len(conn.streams) >= conn.local_max_streams:
                conn.open_inbound_streams  # noqa: B018 - as h2 counts: forgets closed streams
            decoder = conn.decoder
            block = data[start : start + length]
            try:  # h2's `_decode_headers`
                headers = decoder.decode(block, True)  # raw (positional: no keyword call)
            except _HPACK_ERRORS as err:
                raise _decode_error(err) from err
            if decoder.hit is not block:  # decoded anew, or alike but for one value
                defaults = _REQUEST_PSEUDO if opens else None
                if decoder.varied is block:  # a peer's request and its unique x-request-id
                    # Read before, most likely: the template's read, with this block's value
                    # in the caller's own list (see `_varied_read`, which reads it otherwise).
                    read_with, pseudo, regular, at, informational, content_length = (
                        decoder.varied_reads.get(decoder.varied_key, _UNREAD_VARIED)
                    )
                    if read_with is defaults:
                        regular = [*regular]
                        name, value = headers[decoder.varied_field]
                        regular[at] = (name, value)
                        problem = None
                    else:
                        pseudo, regular, informational, content_length, problem = _varied_read(
                            decoder, headers, defaults
                        )
                else:
                    pseudo, regular, informational, content_length, problem = _header_block(
                        headers, defaults
                    )
            else:  # decoded before, the table the same since: read before too, most likely
                defaults = _REQUEST_PSEUDO if opens else None
                read_with, pseudo, regular, informational, content_length = decoder.reads.get(
                    block, _UNREAD
                )
                if read_with is defaults:
                    regular = [*regular]  # the caller's own (the router may change it)
                    problem = None
                else:
                    pseudo, regular, informational, content_length, problem = _header_block(
                        headers, defaults
                    )
                    # The pseudo-header dict is shared: `_request` and `response_received`
                    # only read it. A problem (an exception) is raised anew each time.
                    if problem is None:
                        decoder.reads[block] = (
                            defaults,
                            pseudo,
                            (*regular,),
                            informational,
                            content_length,
                        )
            if opens:
                h2_stream = conn.new_stream(stream_id)
                conn.highest_inbound_stream_id = stream_id
                machine = h2_stream.state_machine
                if informational:
                    if ended:
                        raise h2.exceptions.ProtocolError(
                            "Cannot set END_STREAM on informational responses"
                        )
                    machine.state = _CLOSED
                    raise h2.exceptions.ProtocolError(  # h2's state machine's words
                        f"Invalid input {_RECV_INFORMATIONAL} in state {_IDLE}"
                    )
                machine.client = False  # request_received: IDLE -> OPEN
                machine.headers_received = True
                if ended:
                    machine.state = _HALF_CLOSED_REMOTE
                    machine.stream_closed_by = _CLOSED_BY_RECV_END
                else:
                    machine.state = _OPEN
                flags = _REQUEST_FLAGS
            elif informational:
                if ended:
                    raise h2.exceptions.ProtocolError(
                        "Cannot set END_STREAM on informational responses"
                    )
                if trailers:
                    machine.state = _CLOSED
                    raise h2.exceptions.ProtocolError("Informational response after final response")
                flags = _RESPONSE_FLAGS  # h2 checks every block's content-length, a 1xx's too
            else:
                if trailers:
                    if machine.trailers_received:
                        machine.state = _CLOSED
                        raise h2.exceptions.ProtocolError("trailers received twice")
                    machine.trailers_received = True
                    flags = _TRAILER_FLAGS[bool(machine.client)]
                else:
                    machine.headers_received = True
                    flags = _RESPONSE_FLAGS
                if ended:
                    machine.state = _HALF_CLOSED_REMOTE if machine.state is _OPEN else _CLOSED
                    machine.stream_closed_by = _CLOSED_BY_RECV_END
            # Every block's content-length, as h2's `_initialize_content_length` sets it up.
            if h2_stream.request_method == b"HEAD":  # no body, whatever the block says
                h2_stream._expected_content_length = 0
            elif problem is not None:
                raise problem
            else:
                h2_stream._expected_content_length = content_length
            if trailers and not ended:
                raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set")
            # An untrusted peer's block is validated (and normalised), unless it was answered
            # from the decoder's kept blocks and its fields passed as they are, with the same
            # flags, since the table last changed: the same fields pass again (h2's checks
            # look at the fields alone); the decoder's list is a fresh one.
            size = None  # the list's size, if not the decoder's (normalised)
            if conn.checks_inbound and (
                decoder.hit is not block or decoder.checked.get(block) is not flags
            ):
                checked = received_headers(
                    headers, flags, conn.validate_inbound, conn.normalize_inbound
                )
                if checked != headers:  # normalised (cookies joined): read and counted again
                    pseudo, regular = _header_block(checked, _REQUEST_PSEUDO if opens else None)[:2]
                    size = _list_size(checked)
                elif decoder.hit is block and all(
                    a is b for a, b in zip(checked, headers, strict=True)
                ):  # (not a cookie joined, which is another object: no other field changes)
                    decoder.checked[block] = flags
                headers = checked  # a fresh list (the decoder's may be its own again)
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(exc, terminate=True)
            return True
        if opens:
            # The decoder counted the list's size (a list checked and equal to the block's is
            # as large); a normalised one was counted again.
            if size is None:
                size = decoder.list_size
            self._request(stream_id, pseudo, regular, ended, size)
        elif trailers:
            stream.trailers = headers
            stream.remote_ended()
        elif isinstance(stream, H2ClientStream):
            stream.response_received(pseudo, regular, informational, ended)
            if ended and not stream.remote_done:
                stream.remote_ended()
        return True

    def _to_h2(self, data: bytes) -> bool:
        """Frames for h2, and the events they make; False when the connection ended."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(exc)
            return False
        for event in events:
            self._dispatch(event)
            if self.calmed:
                return False
        return True

    def _protocol_error(self, exc: h2.exceptions.ProtocolError, terminate: bool = False) -> None:
        """The peer broke the protocol: GOAWAY (h2's, queued by `receive_data`; queued here,
        as h2 would, with `terminate` for an error found by `_take_headers`), the connection
        lost."""
        if terminate:
            self.conn._terminate_connection(exc.error_code)
        log.info("event=h2_protocol_error peer=%s error=%r", self.peer_address, str(exc))
        stats = self.stats
        if stats is not None:
            if isinstance(exc, h2.exceptions.DenialOfServiceError):
                stats.http2_header_overflow += 1
            else:
                stats.downstream_cx_protocol_error += 1
        self._flush_now()
        self._lost(ConnectionClosed(f"protocol error: {exc}"))
        transport = self.transport
        if transport is not None:
            transport.close()  # after the GOAWAY; a peer that does not read it is cut below
            if not self.client_side:
                asyncio.get_running_loop().call_later(1.0, transport.abort)

    def _batch_done(self) -> None:
        self._flush_now()  # the batch's answers (acknowledgements, resets, credit): one write
        if self._write_paused is not None and self.guarded:
            transport = self.transport
            if transport is not None and (
                transport.get_write_buffer_size() > self.limits.h2_max_outbound_buffer
            ):
                # What it makes us send (acknowledgements, resets) piles up unread.
                self._abuse("http2_outbound_flood", "peer does not read", goaway=False)

    def pause_writing(self) -> None:
        if self._write_paused is None:
            self._write_paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._write_paused = self._write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed"
        if self.client_side and not self.peer_spoke:
            # Lost before the peer said a word (e.g. accepted into a backlog by a listener that
            # was closing): nothing was processed, so the requests may go elsewhere.
            self._lost(RefusedStream(reason))
        else:
            self._lost(ConnectionClosed(reason))
        self.resume_writing()

    # -- events -------------------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            if self.guarded:
                if event.data or event.stream_ended is not None:
                    self._empty_frames = 0
                else:
                    self._empty_frames += 1
                    limit = self.limits.h2_max_consecutive_inbound_frames_with_empty_payload
                    if self._empty_frames > limit:
                        self._abuse("http2_inbound_empty_frames_flood", "empty DATA frames")
                        return
            stream = self.streams.get(event.stream_id)
            padding = event.flow_controlled_length - len(event.data)
            if padding:
                self.conn.acknowledge_received_data(padding, event.stream_id)
            if stream is None:
                self.conn.acknowledge_received_data(len(event.data), event.stream_id)
                return
            data = event.data
            if data:
                relay = stream.relay
                if relay is not None and relay.offer(data):
                    # Forwarded: its credit goes back now, as a read would give it (the
                    # WINDOW_UPDATE, when h2 decides on one, leaves with this batch's answers).
                    self.conn.credit(event.stream_id, len(data))
                else:
                    stream.body.feed(data)
            if event.stream_ended is not None:
                stream.remote_ended()
        elif isinstance(event, h2.events.RequestReceived):
            fields = event.headers
            pseudo, headers = _header_block(fields, _REQUEST_PSEUDO)[:2]
            ended = event.stream_ended is not None
            self._request(event.stream_id, pseudo, headers, ended, _list_size(fields))
        elif isinstance(
            event, (h2.events.ResponseReceived, h2.events.InformationalResponseReceived)
        ):
            stream = self.streams.get(event.stream_id)
            if isinstance(stream, H2ClientStream):
                pseudo, headers = _header_block(event.headers)[:2]
                stream.response_received(
                    pseudo,
                    headers,
                    isinstance(event, h2.events.InformationalResponseReceived),
                    getattr(event, "stream_ended", None) is not None,
                )
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = list(event.headers)
                if event.stream_ended is not None:
                    stream.remote_ended()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.remote_done:
                stream.remote_ended()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not self.client_side and event.remote_reset:
                self._client_reset(stream)
                if self.calmed:
                    return
            if stream is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                error = (RefusedStream if refused else StreamReset)(
                    f"stream reset by peer: {event.error_code!r}"
                )
                stream.reset_received(error)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_updated(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.peer_spoke = True
            if self.guarded:
                self._control_frame()
                if self.calmed:
                    return
            self._wake_windows(0)
            self._wake_slots()
        elif isinstance(event, h2.events.PingReceived):
            if self.guarded:
                self._control_frame()
        elif isinstance(event, h2.events.PriorityUpdated):
            if self.guarded:
                self._priority_frames += 1
                per_stream = self.limits.h2_max_inbound_priority_frames_per_stream
                if self._priority_frames > per_stream * (1 + self.streams_opened):
                    self._abuse("http2_inbound_priority_frames_flood", "PRIORITY frames")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            self._end_idle_workers()
            last = event.last_stream_id or 0
            for stream_id, stream in list(self.streams.items()):
                if stream_id > last and self.client_side:
                    stream.reset_received(RefusedStream("GOAWAY: stream not processed"))
            if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
                log.info("event=h2_goaway peer=%s code=%r", self.peer_address, event.error_code)
            self._maybe_close()

    def _request(
        self,
        stream_id: int,
        pseudo: dict[bytes, bytes | None],
        headers: Headers,
        ended: bool,
        size: int,
    ) -> None:
        """A request's header block arrived (from h2's RequestReceived, or `_take_headers`), read
        by `_header_block` from `_REQUEST_PSEUDO`: refused, answered 431, or served by a new
        `H2ServerStream`. `size`: the list's size (RFC 9113 6.5.2)."""
        self._empty_frames = 0
        self.streams_opened += 1
        if self.handler is None or self.going_away:
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self._max_concurrent_streams:
            if self.stats is not None:
                self.stats.downstream_rq_overload += 1
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if size > self.header_list_size or len(headers) > self.max_headers:
            self._headers_too_large(stream_id, ended, size, len(headers))
            return
        # Unknown pseudo-header fields are ignored. The fields are given in their order, not by
        # keyword: a keyword call to a dataclass makes a dict of them per request (twice the
        # cost of the call); tests/test_s13_h2_request_head.py checks each lands in its field.
        head = RequestHead(
            pseudo[b":method"],
            pseudo[b":scheme"],
            pseudo[b":authority"],
            pseudo[b":path"],
            headers,
            pseudo[b":protocol"],
            b"2",  # http_version
        )
        # A request whose block ended its stream (most) shares the ended empty body, its remote
        # end done with it; a CONNECT's body is the tunnel's bytes, its own even so.
        stream = H2ServerStream(self, stream_id, head, ended and head.method != b"CONNECT")
        self.streams[stream_id] = stream
        if ended and not stream.remote_done:
            stream.remote_ended()
        if self.goaway_on_request:
            self.goaway()  # last stream id: this one, which is served
        # A waiting task takes the stream (the last to wait: the warmest); else a task is made.
        # Either starts on a later turn of the loop (no eager tasks here), after it is held.
        # (A task cancelled while it waits has its future cancelled, and leaves the list only
        # when it next runs.)
        idle = self._idle_workers
        while idle:
            waiter = idle.pop()
            if not waiter.done():
                waiter.set_result(stream)
                return
        self.workers.add(self.loop.create_task(self._work(stream)))

    def _headers_too_large(self, stream_id: int, ended: bool, size: int, count: int) -> None:
        """Answer 431 on the stream (Envoy's answer too); the connection goes on."""
        log.info(
            "event=bad_request peer=%s status=431 header_bytes=%d headers=%d",
            self.peer_address,
            size,
            count,
        )
        if self.stats is not None:
            self.stats.http2_header_overflow += 1
        self.conn.send_headers(
            stream_id, [(b":status", b"431"), (b"content-length", b"0")], end_stream=True
        )
        if not ended:  # it is still sending: tell it to stop (RFC 9113 8.1)
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    # -- abuse (server side, untrusted peers) --------------------------------------------------

    def _client_reset(self, stream: H2Stream) -> None:
        """A client reset a stream: count it, and judge rapid reset (CVE-2023-44487) as Envoy
        does: once enough streams were opened, more than half reset before their answer."""
        if self.stats is not None:
            self.stats.http2_rx_reset += 1
        if not self.guarded or not isinstance(stream, H2ServerStream) or stream.responded:
            return
        self.premature_resets += 1
        opened = self.streams_opened
        if (
            opened >= self.limits.h2_premature_reset_total_stream_count
            and self.premature_resets * 2 > opened
        ):
            self._abuse("http2_premature_reset", "rapid reset")

    def _control_frame(self) -> None:
        """PING and SETTINGS: at most the limit per second (one clock read per limit's worth)."""
        self._control_frames += 1
        if self._control_frames <= self.limits.h2_max_control_frames_per_second:
            return
        now = asyncio.get_running_loop().time()
        if now - self._control_window_start >= 1.0:
            self._control_window_start = now
            self._control_frames = 1
            return
        self._abuse("http2_inbound_control_frames_flood", "PING/SETTINGS frames")

    def _abuse(self, counter: str, what: str, *, goaway: bool = True) -> None:
        """Close a connection that abuses the protocol: GOAWAY ENHANCE_YOUR_CALM (when it can be
        delivered), its streams reset, counted; the rest of the sidecar is unaffected."""
        if self.calmed or self.closed:
            return
        self.calmed = True
        if self.stats is not None:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        log.warning(
            "event=h2_abuse peer=%s kind=%s streams_opened=%d action=%s",
            self.peer_address,
            counter.removeprefix("http2_"),
            self.streams_opened,
            "goaway" if goaway else "close",
        )
        transport = self.transport
        if goaway:
            try:
                self.conn.close_connection(_CALM, additional_data=what.encode())
            except h2.exceptions.ProtocolError:
                pass
            self._flush_now()
        self._lost(ConnectionClosed(f"closed for abuse: {what}"))
        if transport is not None:
            if goaway:
                transport.close()  # after the GOAWAY; a peer that does not read it is cut below
                asyncio.get_running_loop().call_later(1.0, transport.abort)
            else:
                transport.abort()

    def sweep(self, now: float) -> None:
        """The listener's periodic check: idle timeout, and a header block left unfinished past
        the request headers timeout (a CONTINUATION stall)."""
        if self.closed or self.client_side:
            return
        limits = self.limits
        buffer = self.conn.incoming_buffer
        if isinstance(buffer, _BoundedFrameBuffer) and buffer.pending_block:
            if self._block_since is None:
                self._block_since = now
            elif 0 < limits.request_headers_timeout < now - self._block_since:
                log.info("event=request_headers_timeout peer=%s protocol=h2", self.peer_address)
                self._abuse("downstream_rq_header_timeout", "header block never ended")
            return
        self._block_since = None
        if (
            not self.streams
            and limits.http_idle_timeout > 0
            and now - self.idle_since > limits.http_idle_timeout
        ):
            if self.stats is not None:
                self.stats.downstream_cx_idle_timeout += 1
            self.goaway()
            self.close()

    async def _work(self, stream: H2ServerStream | None) -> None:
        """Serve a stream, then wait for the next one (see `workers` in `__init__`), until the
        connection ends or goes away, enough wait already, or the task is cancelled. Handlers
        share a task's context one after another: one that sets a context variable resets it
        (as the mesh connector does)."""
        assert self.handler is not None
        me = asyncio.current_task(self.loop)
        assert me is not None
        idle = self._idle_workers
        try:
            while stream is not None:
                try:
                    await self.handler(stream)
                except Exception:
                    log.exception("event=handler_failed stream=%d", stream.stream_id)
                    stream.reset()
                finally:
                    # Most handlers finish their stream, which both ends then report (`finish`,
                    # `remote_ended`): this report would find nothing left to do.
                    if not stream.forgotten:
                        stream.local_done = True
                        self._stream_finished(stream)
                if (
                    self.closed
                    or self.going_away
                    or len(idle) >= self.max_idle_workers
                    or me.cancelling()  # cancelled, and the handler swallowed it
                ):
                    return
                waiter: asyncio.Future[H2ServerStream | None] = self.loop.create_future()
                idle.append(waiter)
                try:
                    stream = await waiter  # None: the connection ended
                except asyncio.CancelledError:
                    if waiter in idle:
                        idle.remove(waiter)
                    raise
        finally:
            self.workers.discard(me)

    def _end_idle_workers(self) -> None:
        """The connection ended, or will take no new stream: its waiting tasks end."""
        idle, self._idle_workers = self._idle_workers, []
        for waiter in idle:
            if not waiter.done():
                waiter.set_result(None)

    # -- sending ------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what h2 queued, at the end of this turn of the event loop: the frames that one
        turn makes (a response's HEADERS, DATA and END_STREAM, acknowledgements, other streams'
        frames) leave in one write(2), and wake the peer once — or after a few sends, so that
        the peer is not idle while a burst of streams is made here (`H2_SENDS_PER_WRITE`)."""
        self._sends += 1
        if self._flush_handle is None:
            if self.transport is not None:
                self._flush_handle = self.loop.call_soon(self._flush_now)
        elif self._sends >= defaults.H2_SENDS_PER_WRITE:
            self._flush_now()

    def _flush_ended(self) -> None:
        """A stream's last frame is queued: written at once when no other stream is open here
        (a lone exchange, as at a low request rate: the peer starts on it before this turn's
        bookkeeping is done), else at the end of the turn with the other streams' frames.
        (`send_response` tells a lone stream itself, without this call.)"""
        if len(self.streams) < 2:
            self._flush_now()
        else:
            self._flush()

    def _flush_now(self) -> None:
        """Write what h2 queued now (before a close, or a bulk DATA frame). h2's output buffer
        itself is written (not a copy, as its `data_to_send()` makes) and h2 given a new one:
        the transport may keep the old one unsent, and nothing changes it any more."""
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()
        self._unflushed = self._sends = 0
        conn = self.conn
        data = conn._data_to_send
        if not data:
            return
        conn._data_to_send = bytearray()
        if self.transport is not None and not self.transport.is_closing():
            self.tx_bytes += len(data)
            self.transport.write(data)

    async def drain(self) -> None:
        while self._write_paused is not None:
            if self.closed:
                raise ConnectionClosed("connection closed")
            await self._write_paused

    async def send_data(self, stream: H2Stream, data: bytes, end: bool) -> None:
        stream_id = stream.stream_id
        view = memoryview(data)
        while len(view) or end:
            if stream.reset_error is not None:
                raise stream.reset_error
            if self.closed:
                raise ConnectionClosed("connection closed")
            if not len(view):
                self.conn.send_end_stream(stream_id)
                self._flush_ended()
                return
            if self._write_paused is not None:
                # Another stream filled the transport: wait, so that one connection holds about
                # one high-water mark and one frame, however many streams send.
                await self.drain()
                continue
            window = min(self.conn.send_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                waiter = asyncio.get_running_loop().create_future()
                self._window_waiters[stream_id] = waiter
                try:
                    await waiter
                finally:
                    self._window_waiters.pop(stream_id, None)
                continue
            if window >= len(view):
                chunk, view = view, view[len(view) :]
            else:
                chunk, view = view[:window], view[window:]
            last = end and not len(view)
            payload = chunk.tobytes() if len(chunk) != len(data) else data
            self.conn.send_plain_data(stream_id, payload, last)
            self._data_frames_sent += 1
            self._unflushed += len(chunk)
            if self._unflushed >= defaults.H2_WRITE_AT_ONCE:
                self._flush_now()
            elif last:
                self._flush_ended()
            else:
                self._flush()
            if self._write_paused is not None:
                await self.drain()
            if last:
                return

    def send_now(self, stream_id: int, data: bytes, end: bool = False) -> bool:
        """A chunk queued whole now, with END_STREAM if `end` — a tunnel's from its relay, or a
        body's that fits (`H2Stream.write`, `finish`: no coroutine, no loop) — or refused
        (False, nothing queued) when the transport is paused or a window is short: `send_data`
        then sends it, waiting or failing as it does."""
        if self._write_paused is not None or self.closed:
            return False
        if not self.conn.send_plain_data_now(stream_id, data, end):
            return False
        self._data_frames_sent += 1
        self._unflushed += len(data)
        if self._unflushed >= defaults.H2_WRITE_AT_ONCE:
            self._flush_now()
        elif end:
            self._flush_ended()
        else:
            self._flush()
        return True

    def send_response(
        self, stream_id: int, headers: Headers, body: bytes, trailers: Headers | None = None
    ) -> bool:
        """A final response's head, queued, with its whole body (not empty) behind it and
        END_STREAM (or the `trailers` with it) where `send_now` would queue the body: True
        then; False when the body and trailers are the caller's to send (the head queued
        alone). One call where the head, `send_now` and the trailers were two or three, each
        looking the stream up and checking it, and each counted as a send towards
        `H2_SENDS_PER_WRITE` (`_Connection.send_response`)."""
        conn = self.conn
        if self._write_paused is not None or self.closed:
            conn.send_stream_headers(stream_id, headers, False)
            return False
        if not conn.send_response(stream_id, headers, body, trailers):
            return False
        self._data_frames_sent += 1  # as `send_now` counts and writes a stream's last chunk
        self._unflushed += len(body)
        if self._unflushed >= defaults.H2_WRITE_AT_ONCE or len(self.streams) < 2:
            self._flush_now()  # (`_flush_ended`'s lone stream, without its call)
        else:
            self._flush()
        return True

    def _wake_windows(self, stream_id: int) -> None:
        if stream_id == 0:
            waiters = list(self._window_waiters.values())
        else:
            waiter = self._window_waiters.get(stream_id)
            waiters = [waiter] if waiter is not None else []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- client side --------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether a new stream may be opened here now."""
        conn = self.conn
        return (
            not self.closed
            and not self.going_away
            # below the limit by the quick count, or by h2's
            and (len(conn.streams) < conn.remote_max_streams or conn.stream_allowed())
        )

    @property
    def usable(self) -> bool:
        return not self.closed and not self.going_away

    async def wait_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        await waiter

    def _wake_slots(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def open_stream(self, head: RequestHead, end_stream: bool) -> H2ClientStream:
        if self.closed or self.going_away:  # not `usable`
            raise RefusedStream("connection is going away")
        # h2's `get_next_available_stream_id`, without its debug log line.
        conn = self.conn
        highest = conn.highest_outbound_stream_id
        stream_id = highest + 2 if highest else 1  # a client's streams are odd
        if stream_id > conn.HIGHEST_ALLOWED_STREAM_ID:
            raise h2.exceptions.NoAvailableStreamIDError("Exhausted allowed stream IDs")
        method, authority = head.method, head.authority
        if head.protocol is None and method != b"CONNECT":
            # `request_headers` of the usual request, inline (a call fewer a request).
            headers = [
                (b":method", method),
                (b":scheme", head.scheme),
                (b":authority", authority),
                (b":path", head.path),
                *head.headers,
            ]
        else:
            headers = request_headers(head)
        stream = H2ClientStream(self, stream_id, head)
        self.streams[stream_id] = stream
        conn.send_request_headers(stream_id, headers, end_stream, method, authority)
        if end_stream:
            stream.local_done = True
            if len(self.streams) < 2:  # `_flush_ended`, without its call
                self._flush_now()
            else:
                self._flush()
        else:
            self._flush()
        return stream

    # -- lifecycle ----------------------------------------------------------------------------

    def _stream_finished(self, stream: H2Stream) -> None:
        """A stream may be done at both ends: dropped here and from h2's books, its slot given
        to a waiter. Each end reports it (and a server stream's task once more, unless the
        stream is `forgotten` by then), so a stream that is gone from both tables is done
        with; one still in h2's (its END_STREAM left after both ends were done: a `finish` that
        waited for window) is forgotten now."""
        if not (stream.local_done and stream.remote_done):
            return
        stream_id = stream.stream_id
        if self.streams.pop(stream_id, None) is None and stream_id not in self.conn.streams:
            return
        if not self.closed:
            stream.forgotten = self.conn.forget(stream_id)
        if not self.streams and not self.client_side:
            self.idle_since = self.loop.time()
        if self._slot_waiters:
            self._wake_slots()
        if self.going_away:
            self._maybe_close()

    def _maybe_close(self) -> None:
        if self.going_away and not self.streams and self.transport is not None:
            self._flush_now()
            self.transport.close()

    def _lost(self, error: StreamReset) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream.reset_received(error)
        self.streams.clear()
        self._wake_slots()
        self._end_idle_workers()
        for waiter in self._window_waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        if not self._ready.done():
            self._ready.set_exception(error)
        if self.on_close is not None:
            self.on_close(self)

    def goaway(self, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Tell the peer no new streams will be served here; open ones may finish.

        The frame is written by hand: h2's close_connection() moves its state machine to CLOSED,
        after which it refuses to send the responses still in flight — the opposite of a
        graceful drain. Streams the peer opens after this are refused (REFUSED_STREAM), which
        tells it they were not processed and may be retried elsewhere.
        """
        if self.closed or self.going_away:
            return
        self.going_away = True
        self._end_idle_workers()
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = self.conn.highest_inbound_stream_id if not self.client_side else 0
        frame.error_code = code
        self._flush_now()
        if self.transport is not None and not self.transport.is_closing():
            data = frame.serialize()
            self.tx_bytes += len(data)
            self.transport.write(data)
        self._maybe_close()

    def close(self) -> None:
        if self.transport is not None:
            self._flush_now()
            self.transport.close()


def request_headers(head: RequestHead) -> Headers:
    """The request's header list: its pseudo-header fields, then its fields (one list made)."""
    if head.protocol is None:
        if head.method == b"CONNECT":
            return [(b":method", b"CONNECT"), (b":authority", head.authority), *head.headers]
        return [
            (b":method", head.method),
            (b":scheme", head.scheme),
            (b":authority", head.authority),
            (b":path", head.path),
            *head.headers,
        ]
    return [
        (b":method", head.method),
        (b":scheme", head.scheme),
        (b":authority", head.authority),
        (b":path", head.path),
        (b":protocol", head.protocol),
        *head.headers,
    ]


class H2Stream:
    """State shared by both ends of one stream."""

    def __init__(self, proto: H2Protocol, stream_id: int, bodyless: bool = False) -> None:
        self.proto = proto
        self.stream_id = stream_id
        self.relay: Relay | None = None  # tunnel bytes from the peer, once spliced
        self.trailers: Headers | None = None
        self.local_done = False
        if bodyless:
            # Ended by its header block, never a tunnel: the shared ended empty body (no Body
            # and no bound callback made), its remote end done. Nothing writes to it: `end`
            # returns at once and `abort` refuses it (ended), so a reset leaves `error` None,
            # as it left a body of its own that had ended; `discard` is reached only with an
            # error; no DATA or trailers are taken on a stream closed remotely, and no relay
            # is spliced onto a stream that is not a CONNECT.
            self.body = EMPTY_BODY
            self.remote_done = True
        else:
            self.body = Body(self._consumed, proto.body_buffer)
            self.remote_done = False
        self.reset_error: StreamReset | None = None
        # Done at both ends and gone from both tables (`_stream_finished`): nothing more to do.
        self.forgotten = False

    def _consumed(self, n: int) -> None:
        proto = self.proto
        if proto.closed:
            return
        conn = proto.conn
        conn.credit(self.stream_id, n)
        if conn._data_to_send:
            proto._flush()

    def remote_ended(self) -> None:
        self.remote_done = True
        self.body.end(self.trailers)
        if self.local_done:  # otherwise the local end reports the stream finished
            self.proto._stream_finished(self)

    def reset_received(self, error: StreamReset) -> None:
        if self.reset_error is None:
            self.reset_error = error
        self.body.abort(error)
        if self.body.error is not None and self.body.buffered:
            # Cut short with data nobody will read: give its credit back to the connection, or
            # every such stream would shrink the connection's window for good.
            unread = self.body.discard()
            proto = self.proto
            if not proto.closed:
                try:
                    proto.conn.acknowledge_received_data(unread, self.stream_id)
                except h2.exceptions.ProtocolError:
                    pass
                proto._flush()
        self.remote_done = self.local_done = True
        self.proto._wake_windows(self.stream_id)
        self.proto._stream_finished(self)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        proto = self.proto
        if self.reset_error is not None or not proto.send_now(self.stream_id, data):
            await proto.send_data(self, data, end=False)
        elif proto._write_paused is not None:  # as `send_data` ends
            await proto.drain()

    def write_now(self, data: bytes) -> bool:
        """Tunnel bytes from a relay: queued whole now, or refused for the router's task."""
        if self.reset_error is not None or self.local_done:
            return False
        return self.proto.send_now(self.stream_id, data)

    async def finish(self, trailers: Headers | None = None, last: bytes = b"") -> None:
        """End the stream, `last` its last bytes: sent with END_STREAM (one DATA frame where
        the windows allow) unless trailers follow."""
        if self.local_done:
            if last:
                raise StreamReset("the stream has ended")
            return
        if self.reset_error is not None:
            raise self.reset_error
        if trailers:
            if last:
                await self.proto.send_data(self, last, end=False)
            self.local_done = True
            self.proto.conn.send_stream_headers(self.stream_id, trailers, True)
            self.proto._flush_ended()
        else:
            self.local_done = True
            proto = self.proto
            if not (last and proto.send_now(self.stream_id, last, True)):
                await proto.send_data(self, last, end=True)
            elif proto._write_paused is not None:  # as `send_data` ends
                await proto.drain()
        if self.remote_done:  # otherwise the remote end reports the stream finished
            self.proto._stream_finished(self)

    def reset(self, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        if self.local_done and self.remote_done:
            return
        if not self.proto.closed:
            try:
                self.proto.conn.reset_stream(self.stream_id, code)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self.proto._flush()
        self.reset_received(StreamReset("reset locally"))


class H2ServerStream(H2Stream):
    """The downstream exchange of one HTTP/2 request."""

    def __init__(
        self, proto: H2Protocol, stream_id: int, request: RequestHead, bodyless: bool = False
    ) -> None:
        H2Stream.__init__(self, proto, stream_id, bodyless)  # (no `super` object made)
        self.request = request
        self.responded = False
        self.status = 0  # the status sent downstream, for stats and the access log
        self.peer_address = proto.peer_address

    @property
    def cancelled(self) -> bool:
        """The client reset the stream (or the connection went): nothing more to do for it."""
        return self.reset_error is not None

    def informational(self, head: ResponseHead) -> None:
        if self.reset_error is not None or self.responded:
            return
        self.proto.conn.send_headers(
            self.stream_id, [(b":status", str(head.status).encode()), *head.headers]
        )
        self.proto._flush()

    def abandon_request(self) -> None:
        """The response is complete but the client is still sending: ask it to stop (RFC 9113
        8.1: RST_STREAM with NO_ERROR)."""
        if not self.remote_done:
            self.reset(h2.errors.ErrorCodes.NO_ERROR)

    async def respond(
        self,
        head: ResponseHead,
        end: bool = False,
        last: bytes | None = None,
        trailers: Headers | None = None,
    ) -> None:
        """Send the response head, with END_STREAM (`end`: no body) or followed by `last`, the
        whole body, and then by `trailers` if given. A whole body the windows take now is queued
        with END_STREAM (or the trailers) right behind the head (`send_response`), which then
        leave together: no `finish` coroutine, and no write scheduled for the head alone (a
        loop handle made, then cancelled by the body's write)."""
        if self.reset_error is not None:
            raise self.reset_error
        self.responded = True
        self.status = head.status
        # An accepted CONNECT is a 200 in HTTP/2 (RFC 8441 for websockets).
        status = 200 if head.status == TUNNEL_ESTABLISHED else head.status
        headers = [_status_field(status), *head.headers]
        proto = self.proto
        if status < 200:  # informational: h2's rules
            proto.conn.send_headers(self.stream_id, headers, end_stream=end)
            whole = (
                not end
                and not trailers
                and bool(last)
                and proto.send_now(self.stream_id, last, True)
            )
        elif last and not end:  # the head, and the body (and trailers) behind it when it fits
            whole = proto.send_response(self.stream_id, headers, last, trailers)
        else:
            proto.conn.send_stream_headers(self.stream_id, headers, end)
            whole = False
        if end:
            self.local_done = True
            proto._flush_ended()
            proto._stream_finished(self)
        elif whole:  # flushed with the head
            self.local_done = True
            if proto._write_paused is not None:  # as `finish` ends
                await proto.drain()
            if self.remote_done:
                proto._stream_finished(self)
        else:
            proto._flush()
            if last is not None:
                await self.finish(trailers, last)


class H2ClientStream(H2Stream):
    """An upstream request on a multiplexed connection."""

    def __init__(self, proto: H2Protocol, stream_id: int, request: RequestHead) -> None:
        H2Stream.__init__(self, proto, stream_id)  # (no `super` object made)
        self.request = request
        # The response head, set once: the router awaits it directly (`response()` is the
        # shielded wait for other callers). A waiter that gives up leaves it done, cancelled or
        # failed with TimeoutError, and whatever comes later is ignored: the stream is reset then.
        self.response_head: asyncio.Future[ResponseHead] = proto.loop.create_future()
        self.on_informational: Callable[[ResponseHead], None] | None = None
        self.response_ended_with_head = False

    def response_received(
        self, pseudo: dict[bytes, bytes | None], headers: Headers, informational: bool, ended: bool
    ) -> None:
        """The response's header block (or an informational one) arrived, read by
        `_header_block`: from h2's events or `H2Protocol._take_headers`."""
        status = int(pseudo.get(b":status", 0))
        if self.request.method == b"CONNECT" and 200 <= status < 300:
            status = TUNNEL_ESTABLISHED
        head = ResponseHead(status, headers)
        if informational:
            if self.on_informational is not None:
                self.on_informational(head)
            return
        if ended:
            self.response_ended_with_head = True
        try:
            self.response_head.set_result(head)
        except asyncio.InvalidStateError:  # the waiter gave up: ignored (see `__init__`)
            pass

    def reset_received(self, error: StreamReset) -> None:
        super().reset_received(error)
        if not self.response_head.done():
            self.response_head.set_exception(error)
            self.response_head.exception()  # retrieved: the router sees it as it awaits

    async def response(self) -> ResponseHead:
        return await asyncio.shield(self.response_head)

    def can_send_now(self, size: int) -> bool:
        """Whether a request body of `size` bytes, all of it here, is sent without waiting (the
        router then sends it inline instead of from a task of its own): the transport not
        paused and the flow-control windows open for all of it."""
        proto = self.proto
        return (
            proto._write_paused is None
            and not proto.closed
            and self.reset_error is None
            and proto.conn.send_window(self.stream_id) >= size
        )
