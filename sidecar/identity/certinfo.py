"""The few X.509 fields a running sidecar needs, read from DER without the `cryptography` package.

`cryptography` costs a sidecar 7 to 12 MB of RSS (its Rust extension and the x509 modules), and a
sidecar with mesh credentials from files only ever needs four things from a certificate: its URI
SANs (the SPIFFE identity), its validity (expiry metrics, warnings, dev-mode renewal), its serial
(the admin `/certs` view) and which public-key algorithm it holds. Signatures and chains are left
to OpenSSL (see `sidecar.identity.tls`), which checks them anyway in every handshake.

The reader is strict DER (RFC 5280 profile): definite minimal lengths, minimal INTEGERs,
UTCTime/GeneralizedTime as `...Z` with seconds, no duplicate extensions, URI SANs in ASCII. It
refuses what `cryptography` refuses for these fields, so a file that loads here is one the CA
tooling (`pysidecar certs`) reads too; tests/test_identity_certinfo.py compares the two on many
generated certificates. Structures it does not need (names, signature algorithms, keys) are only
checked to be well-formed TLVs.

API: `parse_certificate(der) -> Certificate`, `pem_certificates(data, source) -> list[bytes]`
(DER of every certificate in a PEM bundle, or a single DER certificate), `to_pem(der)`,
`private_key_pem(data, source) -> (pem, kind)`. Errors are `CertificateError` (a ValueError);
the PEM helpers raise `CredentialsError`, naming the file.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sidecar.identity.credentials import CredentialsError

__all__ = [
    "Certificate",
    "CertificateError",
    "parse_certificate",
    "pem_certificates",
    "private_key_pem",
    "to_pem",
]

# Tags (universal class unless said otherwise).
_BOOLEAN = 0x01
_INTEGER = 0x02
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_OID = 0x06
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_SEQUENCE = 0x30
_SET = 0x31
_CTX0_CONSTRUCTED = 0xA0  # [0] EXPLICIT version
_CTX1_PRIMITIVE = 0x81  # [1] IMPLICIT issuerUniqueID
_CTX2_PRIMITIVE = 0x82  # [2] IMPLICIT subjectUniqueID
_CTX3_CONSTRUCTED = 0xA3  # [3] EXPLICIT extensions
_SAN_URI = 0x86  # GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String

_OID_SAN = "2.5.29.17"
_KEY_ALGORITHMS = {
    "1.2.840.113549.1.1.1": "rsa",
    "1.2.840.10045.2.1": "ec",
    "1.2.840.113549.1.1.10": "rsa-pss",
    "1.3.101.112": "ed25519",
    "1.3.101.113": "ed448",
    "1.2.840.10040.4.1": "dsa",
}
SUPPORTED_KEY_KINDS = ("ec", "rsa")


class CertificateError(ValueError):
    """DER that is not a certificate this reader accepts; the message says what is wrong."""


@dataclass(frozen=True, eq=False)
class Certificate:
    """One certificate: its DER and the fields read from it. Equal when the DER is equal.

    The attribute names are `cryptography`'s (`serial_number`, `not_valid_after_utc`...), so code
    that takes either kind of object (`tls.days_until_first_expiring`) needs no adapter.
    """

    der: bytes = field(repr=False)
    serial_number: int
    not_valid_before_utc: datetime
    not_valid_after_utc: datetime
    uris: tuple[str, ...]
    key_algorithm: str  # "ec", "rsa", ... or the dotted OID when unknown

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Certificate) and other.der == self.der

    def __hash__(self) -> int:
        return hash(self.der)

    def pem(self) -> bytes:
        return to_pem(self.der)


# --- DER --------------------------------------------------------------------------------------


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the TLV at `pos`, which must end by `end`."""
    if pos >= end:
        raise CertificateError("truncated: expected another element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise CertificateError(f"unsupported high tag number at offset {pos}")
    if pos + 1 >= end:
        raise CertificateError(f"truncated length at offset {pos}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise CertificateError("indefinite length (BER, not DER)")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > end:
            raise CertificateError(f"bad length at offset {pos - 2}")
        raw = data[pos : pos + count]
        if raw[0] == 0:
            raise CertificateError(f"non-minimal length at offset {pos - 2}")
        length = int.from_bytes(raw, "big")
        if length < 0x80:
            raise CertificateError(f"non-minimal length at offset {pos - 2}")
        pos += count
    if pos + length > end:
        raise CertificateError(f"element at offset {pos} runs past its container")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    got, start, stop = _tlv(data, pos, end)
    if got != tag:
        raise CertificateError(f"{what}: expected tag 0x{tag:02x}, found 0x{got:02x}")
    return start, stop


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """Every TLV directly inside [start, end): each is checked to be well formed."""
    out = []
    pos = start
    while pos < end:
        item = _tlv(data, pos, end)
        out.append(item)
        pos = item[2]
    return out


def _check_nested(data: bytes, start: int, end: int, depth: int = 0) -> None:
    """Check that constructed contents are a well-formed sequence of TLVs, all the way down."""
    if depth > 32:
        raise CertificateError("nested too deep")
    for tag, s, e in _children(data, start, end):
        if tag & 0x20:
            _check_nested(data, s, e, depth + 1)


def _check_algorithm(data: bytes, start: int, end: int, what: str) -> None:
    """AlgorithmIdentifier: SEQUENCE's contents {algorithm OID, parameters ANY OPTIONAL}."""
    fields = _children(data, start, end)
    if not 1 <= len(fields) <= 2 or fields[0][0] != _OID:
        raise CertificateError(f"{what}: expected an algorithm and its parameters")
    _oid(data, fields[0][1], fields[0][2])


def _check_name(data: bytes, start: int, end: int, what: str) -> None:
    """Name: a SEQUENCE's contents, SET OF SEQUENCE {type OID, value ANY}. A value is read as one
    element, its contents not looked into: it is an ANY (a DirectoryString in practice), which
    `cryptography` takes as it comes too, and nothing here uses it."""
    for rdn_tag, rdn_start, rdn_end in _children(data, start, end):
        attributes = _children(data, rdn_start, rdn_end)
        if rdn_tag != _SET or not attributes:
            raise CertificateError(f"{what}: expected a SET of attributes")
        for tag, s, e in attributes:
            fields = _children(data, s, e)
            if tag != _SEQUENCE or len(fields) != 2 or fields[0][0] != _OID:
                raise CertificateError(f"{what}: expected an attribute's type and value")
            _oid(data, fields[0][1], fields[0][2])


def _integer(data: bytes, start: int, end: int, what: str) -> int:
    raw = data[start:end]
    if not raw:
        raise CertificateError(f"{what}: empty INTEGER")
    if len(raw) > 1 and ((raw[0] == 0 and raw[1] < 0x80) or (raw[0] == 0xFF and raw[1] >= 0x80)):
        raise CertificateError(f"{what}: non-minimal INTEGER")
    return int.from_bytes(raw, "big", signed=True)


def _oid(data: bytes, start: int, end: int) -> str:
    raw = data[start:end]
    if not raw or raw[-1] & 0x80:
        raise CertificateError("malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in raw:
        if fresh and byte == 0x80:
            raise CertificateError("non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in (*head, *arcs[1:]))


_UTC_RE = re.compile(rb"(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z")
_GEN_RE = re.compile(rb"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z")


def _time(data: bytes, pos: int, end: int, what: str) -> tuple[datetime, int]:
    tag, start, stop = _tlv(data, pos, end)
    raw = data[start:stop]
    if tag == _UTC_TIME:
        match = _UTC_RE.fullmatch(raw)
        if match is None:
            raise CertificateError(f"{what}: malformed UTCTime {raw!r}")
        yy = int(match[1])
        year = 1900 + yy if yy >= 50 else 2000 + yy
    elif tag == _GENERALIZED_TIME:
        match = _GEN_RE.fullmatch(raw)
        if match is None:
            raise CertificateError(f"{what}: malformed GeneralizedTime {raw!r}")
        year = int(match[1])
    else:
        raise CertificateError(f"{what}: expected a time, found tag 0x{tag:02x}")
    try:
        month, day, hour, minute, second = (int(match[i]) for i in range(2, 7))
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise CertificateError(f"{what}: {exc}") from None
    return moment, stop


def _san_uris(data: bytes, start: int, end: int) -> tuple[str, ...]:
    """The URIs of a GeneralNames value, in order; the other kinds of name are skipped."""
    seq_start, seq_end = _expect(data, start, end, _SEQUENCE, "subjectAltName")
    if seq_end != end:
        raise CertificateError("subjectAltName: trailing data")
    names = _children(data, seq_start, seq_end)
    if not names:
        raise CertificateError("subjectAltName: empty")
    uris = []
    for tag, s, e in names:
        if tag == _SAN_URI:
            raw = data[s:e]
            if not raw.isascii():
                raise CertificateError("subjectAltName: URI is not ASCII (IA5String)")
            uris.append(raw.decode("ascii"))
        elif tag & 0x20:
            _check_nested(data, s, e)
    return tuple(uris)


def parse_certificate(der: bytes | bytearray | memoryview) -> Certificate:
    """Read one DER certificate; `CertificateError` says what is wrong with it."""
    data = bytes(der)
    cert_start, cert_end = _expect(data, 0, len(data), _SEQUENCE, "Certificate")
    if cert_end != len(data):
        raise CertificateError("trailing data after the certificate")
    parts = _children(data, cert_start, cert_end)
    if len(parts) != 3 or [t for t, _, _ in parts] != [_SEQUENCE, _SEQUENCE, _BIT_STRING]:
        raise CertificateError("Certificate: expected tbsCertificate, algorithm, signature")
    _check_algorithm(data, parts[1][1], parts[1][2], "signatureAlgorithm")
    _, tbs_start, tbs_end = parts[0]
    fields = _children(data, tbs_start, tbs_end)
    index = 0
    version = 0
    if fields and fields[0][0] == _CTX0_CONSTRUCTED:
        v_start, v_end = _expect(data, fields[0][1], fields[0][2], _INTEGER, "version")
        if v_end != fields[0][2]:
            raise CertificateError("version: trailing data")
        version = _integer(data, v_start, v_end, "version")
        if version not in (1, 2):  # v2, v3; v1 (0) must be left out in DER
            raise CertificateError(f"unsupported version {version}")
        index = 1
    wanted = [_INTEGER, _SEQUENCE, _SEQUENCE, _SEQUENCE, _SEQUENCE, _SEQUENCE]
    names = ["serialNumber", "signature", "issuer", "validity", "subject", "subjectPublicKeyInfo"]
    if len(fields) < index + len(wanted):
        raise CertificateError("tbsCertificate: missing fields")
    for offset, (tag, what) in enumerate(zip(wanted, names, strict=True)):
        if fields[index + offset][0] != tag:
            raise CertificateError(f"{what}: unexpected tag 0x{fields[index + offset][0]:02x}")
    serial_f, sig_f, issuer_f, validity_f, subject_f, spki_f = fields[index : index + 6]
    serial = _integer(data, serial_f[1], serial_f[2], "serialNumber")
    _check_algorithm(data, sig_f[1], sig_f[2], "signature")
    _check_name(data, issuer_f[1], issuer_f[2], "issuer")
    _check_name(data, subject_f[1], subject_f[2], "subject")
    not_before, pos = _time(data, validity_f[1], validity_f[2], "notBefore")
    not_after, pos = _time(data, pos, validity_f[2], "notAfter")
    if pos != validity_f[2]:
        raise CertificateError("validity: trailing data")
    spki = _children(data, spki_f[1], spki_f[2])
    if len(spki) != 2 or spki[0][0] != _SEQUENCE or spki[1][0] != _BIT_STRING:
        raise CertificateError("subjectPublicKeyInfo: expected algorithm and key")
    alg_start, alg_end = _expect(data, spki[0][1], spki[0][2], _OID, "key algorithm")
    _check_algorithm(data, spki[0][1], spki[0][2], "key algorithm")
    key_oid = _oid(data, alg_start, alg_end)
    rest = fields[index + 6 :]
    uris: tuple[str, ...] = ()
    last = 0
    for tag, s, e in rest:
        order = {_CTX1_PRIMITIVE: 1, _CTX2_PRIMITIVE: 2, _CTX3_CONSTRUCTED: 3}.get(tag)
        if order is None or order <= last:
            raise CertificateError(f"tbsCertificate: unexpected field 0x{tag:02x}")
        last = order
        if tag == _CTX3_CONSTRUCTED:
            if version != 2:
                raise CertificateError("extensions in a certificate that is not v3")
            uris = _extensions(data, s, e)
    return Certificate(
        der=data,
        serial_number=serial,
        not_valid_before_utc=not_before,
        not_valid_after_utc=not_after,
        uris=uris,
        key_algorithm=_KEY_ALGORITHMS.get(key_oid, key_oid),
    )


def _extensions(data: bytes, start: int, end: int) -> tuple[str, ...]:
    """Walk the extensions (each must be well formed, none twice); the SAN's URIs."""
    seq_start, seq_end = _expect(data, start, end, _SEQUENCE, "extensions")
    if seq_end != end:
        raise CertificateError("extensions: trailing data")
    seen: set[str] = set()
    uris: tuple[str, ...] = ()
    entries = _children(data, seq_start, seq_end)
    if not entries:
        raise CertificateError("extensions: empty")
    for tag, s, e in entries:
        if tag != _SEQUENCE:
            raise CertificateError("extension: expected a SEQUENCE")
        items = _children(data, s, e)
        if not items or items[0][0] != _OID:
            raise CertificateError("extension: expected an OID")
        oid = _oid(data, items[0][1], items[0][2])
        if oid in seen:
            raise CertificateError(f"duplicate extension {oid}")
        seen.add(oid)
        rest = items[1:]
        if rest and rest[0][0] == _BOOLEAN:
            raw = data[rest[0][1] : rest[0][2]]
            if raw != b"\xff":  # DER: TRUE is 0xff, and FALSE (the default) is left out
                raise CertificateError(f"extension {oid}: bad critical flag")
            rest = rest[1:]
        if len(rest) != 1 or rest[0][0] != _OCTET_STRING:
            raise CertificateError(f"extension {oid}: expected the value")
        if oid == _OID_SAN:
            uris = _san_uris(data, rest[0][1], rest[0][2])
    return uris


# --- PEM ----------------------------------------------------------------------------------------

_PEM_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL
)
_CERT_LABELS = (b"CERTIFICATE", b"X509 CERTIFICATE")


def _pem_blocks(data: bytes) -> list[tuple[str, bytes, bytes]]:
    """(label, base64 body, RFC 1421 headers) of every PEM block, in file order."""
    blocks = []
    for match in _PEM_RE.finditer(data):
        label, body, end_label = match[1], match[2].replace(b"\r\n", b"\n"), match[3]
        if label != end_label:
            raise ValueError(f"BEGIN {label.decode()} closed by END {end_label.decode()}")
        headers = b""
        if b":" in body.split(b"\n", 1)[0]:
            headers, sep, body = body.partition(b"\n\n")
            if not sep:
                raise ValueError("PEM headers without the blank line after them")
        blocks.append((label.decode(), body, headers))
    return blocks


def _b64(body: bytes) -> bytes:
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64: {exc}") from None


def pem_certificates(data: bytes, source: str) -> list[Certificate]:
    """Every certificate of a PEM bundle (a single DER certificate accepted), parsed."""
    if b"-----BEGIN" not in data:
        try:
            return [parse_certificate(data)]
        except CertificateError:
            raise CredentialsError(source, "no PEM certificate found") from None
    try:
        blocks = [b for b in _pem_blocks(data) if b[0].encode() in _CERT_LABELS]
    except ValueError as exc:
        raise CredentialsError(source, f"not a valid PEM certificate: {exc}") from None
    if not blocks:
        raise CredentialsError(source, "not a valid PEM certificate: no CERTIFICATE block")
    certs = []
    for number, (_, body, headers) in enumerate(blocks, 1):
        where = f"certificate {number}" if len(blocks) > 1 else "certificate"
        try:
            if headers:
                raise CertificateError("unexpected PEM headers")
            certs.append(parse_certificate(_b64(body)))
        except ValueError as exc:
            raise CredentialsError(
                source, f"not a valid PEM certificate ({where}): {exc}"
            ) from None
    return certs


def to_pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    text = base64.encodebytes(der).replace(b"\n", b"")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"".join(
        [f"-----BEGIN {label}-----\n".encode(), *(line + b"\n" for line in lines)]
        + [f"-----END {label}-----\n".encode()]
    )


# --- private keys -------------------------------------------------------------------------------

_TRADITIONAL = {"RSA PRIVATE KEY": "rsa", "EC PRIVATE KEY": "ec"}


def _key_kind(der: bytes) -> tuple[str, str]:
    """(PEM label, key kind) of a DER private key: PKCS#8, or traditional RSA / EC (SEC1)."""
    start, end = _expect(der, 0, len(der), _SEQUENCE, "private key")
    if end != len(der):
        raise CertificateError("trailing data after the key")
    items = _children(der, start, end)
    if len(items) < 3 or items[0][0] != _INTEGER:
        raise CertificateError("not a PKCS#8, RSA or EC private key")
    version = _integer(der, items[0][1], items[0][2], "version")
    if items[1][0] == _SEQUENCE and items[2][0] == _OCTET_STRING and version in (0, 1):
        alg_start, alg_end = _expect(der, items[1][1], items[1][2], _OID, "key algorithm")
        oid = _oid(der, alg_start, alg_end)
        return "PRIVATE KEY", _KEY_ALGORITHMS.get(oid, oid)
    if version == 0 and all(tag == _INTEGER for tag, _, _ in items) and len(items) == 9:
        return "RSA PRIVATE KEY", "rsa"
    if version == 1 and items[1][0] == _OCTET_STRING:
        return "EC PRIVATE KEY", "ec"
    raise CertificateError("not a PKCS#8, RSA or EC private key")


def private_key_pem(data: bytes, source: str) -> tuple[bytes, str]:
    """The first private key of a file as PEM for OpenSSL, and its kind ("ec" or "rsa").

    An encrypted key is refused here (OpenSSL would ask for a passphrase); the key's numbers are
    left to OpenSSL, which checks them and that the key belongs to the certificate.
    """
    try:
        if b"-----BEGIN" not in data:
            der = data
            label, kind = _key_kind(der)
        else:
            blocks = [b for b in _pem_blocks(data) if b[0].endswith("PRIVATE KEY")]
            if not blocks:
                raise ValueError("no PRIVATE KEY block")
            label, body, headers = blocks[0]
            if label == "ENCRYPTED PRIVATE KEY" or b"ENCRYPTED" in headers:
                raise CredentialsError(source, "private key is encrypted; give an unencrypted key")
            if headers:
                raise ValueError("unexpected PEM headers")
            if label == "DSA PRIVATE KEY":
                raise CredentialsError(source, "unsupported key type dsa (use EC or RSA)")
            if label != "PRIVATE KEY" and label not in _TRADITIONAL:
                raise ValueError(f"unsupported key format {label}")
            der = _b64(body)
            found, kind = _key_kind(der)
            if found != label:
                raise ValueError(f"a {label} block that holds a {found}")
    except ValueError as exc:
        raise CredentialsError(source, f"not a valid private key: {exc}") from None
    if kind not in SUPPORTED_KEY_KINDS:
        raise CredentialsError(source, f"unsupported key type {kind} (use EC or RSA)")
    return to_pem(der, label), kind
