"""TLS 1.3 records after the handshake, in Python: protection, post-handshake messages, alerts.

OpenSSL 3.0 keeps about 18 KB per connection for as long as it lives: the `SSL` object with
record state for 32 pipelines, the session resumed from with the peer's certificate parsed,
the handshake's transcript and key shares. Once the handshake is over, a TLS 1.3 connection
needs only two AEAD keys, their IVs and sequence numbers (RFC 8446 §5.2-5.3), and the two
traffic secrets for a KeyUpdate (§7.2). A resumed mesh connection is handed to this record
layer (`sidecar.transport.tls_handoff`), so that 10,000 idle mTLS connections fit in issue 8's
200 MB; the handshake, the certificates and the verification stay OpenSSL's.

Sans-I/O: `seal` appends records to a bytearray, `frame` finds a whole record in a buffer,
`open` decrypts one into a caller's buffer; whatever must be sent back (our KeyUpdate after a
peer's `update_requested`) is left in `reply`. What the peer may do after the handshake, and
what we do:

- application_data: handed up; empty records are allowed and skipped.
- KeyUpdate: the read keys move on; `update_requested` is answered with ours, before any
  more of our data (§4.6.3). Ours is sent unasked before the write sequence reaches
  `KEY_UPDATE_AFTER` records, under AES-GCM's limit (§5.5).
- NewSessionTicket (to a client): ignored. The connection was resumed; the session it came
  from stays the one offered next.
- close_notify: `ssl.SSLZeroReturnError`, as the ssl module raises it. user_canceled:
  ignored. Any other alert: `PeerAlert`.
- Anything else (a record of another type, a bad tag, an oversized record, a handshake message
  not allowed here, one interleaved with data or straddling a key change): `RecordError`
  with the alert to send (§6.2), which `alert` seals.
"""

from __future__ import annotations

import hmac
import ssl
from typing import Any

# Content types (§5.1)
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
# Handshake message types that may come after the handshake (§4.6)
NEW_SESSION_TICKET = 4
KEY_UPDATE = 24
# Alert descriptions (§6)
CLOSE_NOTIFY = 0
UNEXPECTED_MESSAGE = 10
BAD_RECORD_MAC = 20
RECORD_OVERFLOW = 22
ILLEGAL_PARAMETER = 47
DECODE_ERROR = 50
USER_CANCELED = 90

MAX_PLAINTEXT = 1 << 14  # a record's content at most (§5.1)
TAG = 16  # every suite's AEAD tag
HEADER = 5
MAX_RECORD = HEADER + MAX_PLAINTEXT + 256  # TLSCiphertext's limit (§5.2)
# Our own KeyUpdate, before AES-GCM's 2^24.5 full-size records per key (§5.5)
KEY_UPDATE_AFTER = 1 << 24
# A post-handshake message longer than this is refused (a NewSessionTicket is under 1 KB
# from OpenSSL and BoringSSL; its ticket field alone may reach 64 KB)
MAX_HANDSHAKE_MESSAGE = 1 << 17

# The TLS 1.3 suites: AEAD (cryptography's class), key length, HKDF hash
SUITES: dict[str, tuple[str, int, str]] = {
    "TLS_AES_128_GCM_SHA256": ("AESGCM", 16, "sha256"),
    "TLS_AES_256_GCM_SHA384": ("AESGCM", 32, "sha384"),
    "TLS_CHACHA20_POLY1305_SHA256": ("ChaCha20Poly1305", 32, "sha256"),
}
# cryptography's AEAD classes and InvalidTag, loaded by `supported` (its first call maps
# about 7 MB: a sidecar loads it only when it has connections to hand over, `tls_handoff`)
_AEAD: dict[str, Any] = {}
_INVALID_TAG: type[Exception] = Exception


def supported() -> bool:
    """Whether records can be ours here: cryptography with AEADs that decrypt into a
    caller's buffer (45 on). Loads it, the first time."""
    global _INVALID_TAG
    if not _AEAD:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers import aead
        except ImportError:
            return False
        classes = {name: getattr(aead, name, None) for name, _, _ in SUITES.values()}
        if not all(hasattr(cls, "decrypt_into") for cls in classes.values()):
            return False
        _INVALID_TAG = InvalidTag
        _AEAD.update(classes)
    return True


_NOTHING = b""


class RecordError(ssl.SSLError):
    """The peer broke the record protocol; `alert` is the description to send it."""

    def __init__(self, alert: int, message: str) -> None:
        super().__init__(message)
        self.alert = alert


class PeerAlert(ssl.SSLError):
    """The peer sent a fatal alert (`description`) and is gone."""

    def __init__(self, description: int) -> None:
        super().__init__(f"TLS alert {description} from the peer")
        self.description = description


def expand_label(secret: bytes, label: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand-Label(secret, label, "", length) (§7.1), HMAC blocks from the stdlib."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes((counter,)), hash_name)
        out += block
        counter += 1
    return out[:length]


class _Keys:
    """One direction's traffic keys: the AEAD, its IV as an integer, the sequence number."""

    __slots__ = ("secret", "aead", "iv", "seq", "suite")

    def __init__(self, suite: str, secret: bytes) -> None:
        self.suite = suite
        self.set(secret)

    def set(self, secret: bytes) -> None:
        aead_name, key_length, hash_name = SUITES[self.suite]
        self.secret = secret
        self.aead = _AEAD[aead_name](expand_label(secret, b"key", key_length, hash_name))
        self.iv = int.from_bytes(expand_label(secret, b"iv", 12, hash_name), "big")
        self.seq = 0

    def next_nonce(self) -> bytes:
        """The per-record nonce (§5.3), and the sequence number moves on."""
        seq = self.seq
        self.seq = seq + 1
        return (self.iv ^ seq).to_bytes(12, "big")

    def update(self) -> None:
        """The next generation of traffic secret and keys (§7.2)."""
        hash_name = SUITES[self.suite][2]
        self.set(expand_label(self.secret, b"traffic upd", len(self.secret), hash_name))


class RecordLayer:
    """One connection's protected records after its handshake (see the module's text)."""

    __slots__ = ("_read", "_write", "_client", "_handshake", "reply")

    def __init__(self, suite: str, read_secret: bytes, write_secret: bytes, *, client: bool):
        if suite not in SUITES or not supported():
            raise ValueError(f"no record layer for cipher suite {suite} here")
        self._read = _Keys(suite, read_secret)
        self._write = _Keys(suite, write_secret)
        self._client = client
        # a post-handshake message split across records, until whole
        self._handshake: bytes = _NOTHING
        # bytes to send the peer that came of reading (our KeyUpdate); None while there are none
        self.reply: bytearray | None = None

    # -- sending ---------------------------------------------------------------------------------

    def seal(self, data: bytes | bytearray | memoryview, out: bytearray) -> None:
        """Append `data` to `out` as application_data records of up to 16 KiB each."""
        view = memoryview(data)
        for start in range(0, len(view), MAX_PLAINTEXT):
            self._seal(APPLICATION_DATA, view[start : start + MAX_PLAINTEXT], out)

    def alert(self, description: int) -> bytes:
        """An alert record: close_notify as a warning, anything else fatal."""
        out = bytearray()
        level = 1 if description in (CLOSE_NOTIFY, USER_CANCELED) else 2
        self._seal(ALERT, bytes((level, description)), out)
        return bytes(out)

    def _seal(self, kind: int, content: bytes | memoryview, out: bytearray) -> None:
        keys = self._write
        if keys.seq >= KEY_UPDATE_AFTER and kind != HANDSHAKE:
            self._send_key_update(out, requested=False)
        inner = b"".join((content, bytes((kind,))))
        size = len(inner) + TAG
        header = bytes((APPLICATION_DATA, 3, 3, size >> 8, size & 0xFF))
        out += header
        out += keys.aead.encrypt(keys.next_nonce(), inner, header)

    def _send_key_update(self, out: bytearray, *, requested: bool) -> None:
        """Our KeyUpdate, under the old keys; then the write keys move on."""
        self._seal(HANDSHAKE, bytes((KEY_UPDATE, 0, 0, 1, 1 if requested else 0)), out)
        self._write.update()

    # -- receiving -------------------------------------------------------------------------------

    @staticmethod
    def frame(buffer: bytes | bytearray | memoryview, start: int, end: int) -> int:
        """Where the record beginning at `buffer[start]` ends, if `buffer[start:end]` holds it
        whole; -1 if it does not yet. RecordError for what no TLS 1.3 peer sends after the
        handshake: another outer type (§5.2), a record over the limit."""
        if end - start < HEADER:
            return -1
        if buffer[start] != APPLICATION_DATA:
            raise RecordError(
                UNEXPECTED_MESSAGE,
                f"unprotected record of type {buffer[start]} after the handshake",
            )
        size = buffer[start + 3] << 8 | buffer[start + 4]
        if size > MAX_RECORD - HEADER:
            raise RecordError(RECORD_OVERFLOW, f"record of {size} bytes")
        stop = start + HEADER + size
        return stop if stop <= end else -1

    def open(self, record: memoryview, out: memoryview) -> int:
        """Decrypt one whole record (header and body, as `frame` found it) into `out`, which
        has room for `len(record) - HEADER - TAG` bytes. Returns how many bytes of application
        data are now at the start of `out` (0 for an empty record or a post-handshake message,
        which is dealt with here)."""
        size = len(record) - HEADER - TAG
        if size < 1:
            raise RecordError(BAD_RECORD_MAC, "record too short to be protected")
        keys = self._read
        try:
            keys.aead.decrypt_into(keys.next_nonce(), record[HEADER:], record[:HEADER], out[:size])
        except _INVALID_TAG:
            raise RecordError(BAD_RECORD_MAC, "record failed authentication") from None
        if out[size - 1]:
            end = size - 1
        else:  # padding: the content type is the last byte that is not zero
            end = len(bytes(out[:size]).rstrip(b"\x00")) - 1
            if end < 0:
                raise RecordError(UNEXPECTED_MESSAGE, "record with no content type")
        if end > MAX_PLAINTEXT:
            raise RecordError(RECORD_OVERFLOW, f"record of {end} bytes of content")
        kind = out[end]
        if self._handshake and kind != HANDSHAKE:
            raise RecordError(UNEXPECTED_MESSAGE, "handshake message interleaved with other data")
        if kind == APPLICATION_DATA:
            return end
        if kind == HANDSHAKE:
            self._on_handshake(bytes(out[:end]))
        elif kind == ALERT:
            self._on_alert(bytes(out[:end]))
        else:
            raise RecordError(UNEXPECTED_MESSAGE, f"record of content type {kind}")
        return 0

    def _on_alert(self, content: bytes) -> None:
        if len(content) != 2:
            raise RecordError(DECODE_ERROR, "malformed alert")
        description = content[1]
        if description == CLOSE_NOTIFY:
            raise ssl.SSLZeroReturnError("TLS/SSL connection has been closed (EOF)")
        if description != USER_CANCELED:
            raise PeerAlert(description)

    def _on_handshake(self, content: bytes) -> None:
        if not content:
            raise RecordError(UNEXPECTED_MESSAGE, "empty handshake record")
        data = self._handshake + content if self._handshake else content
        at = 0
        while len(data) - at >= 4:
            kind = data[at]
            length = int.from_bytes(data[at + 1 : at + 4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                raise RecordError(DECODE_ERROR, f"handshake message of {length} bytes")
            stop = at + 4 + length
            if stop > len(data):
                break
            body = data[at + 4 : stop]
            at = stop
            if kind == KEY_UPDATE:
                if at != len(data):
                    # the keys change after this message: nothing may follow it in its record
                    raise RecordError(UNEXPECTED_MESSAGE, "data after a KeyUpdate in its record")
                self._on_key_update(body)
            elif kind == NEW_SESSION_TICKET and self._client:
                pass  # resumed already; the session offered stays the one to offer
            else:
                raise RecordError(
                    UNEXPECTED_MESSAGE, f"handshake message {kind} after the handshake"
                )
        self._handshake = data[at:] if at < len(data) else _NOTHING

    def _on_key_update(self, body: bytes) -> None:
        if len(body) != 1 or body[0] > 1:
            raise RecordError(
                ILLEGAL_PARAMETER if len(body) == 1 else DECODE_ERROR, "bad KeyUpdate"
            )
        self._read.update()
        if body[0] == 1:  # update_requested: ours, before any more of our data
            if self.reply is None:
                self.reply = bytearray()
            self._send_key_update(self.reply, requested=False)

    @property
    def write_sequence(self) -> int:
        return self._write.seq

    @property
    def read_sequence(self) -> int:
        return self._read.seq
