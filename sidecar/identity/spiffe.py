"""SPIFFE identities as Kuma puts them on the wire: parse, check, and name them.

Pure: no sockets, no ssl module, no asyncio. The data path gets the peer's URI SANs once per
connection (`sidecar.identity.tls.peer_uris(ssl_object)`) and hands them here.

API for the data path:

- `verify_client(uris, mesh) -> str`
  Inbound, after the handshake: the caller must carry a `spiffe://<mesh>/<service>` URI SAN
  (Envoy's check is the prefix `spiffe://<mesh>/`). Returns the caller's service (the first in
  sorted order when the certificate names several); raises `IdentityError` otherwise.
- `verify_server(uris, mesh, service) -> None`
  Outbound, after the handshake: the peer must carry exactly `spiffe://<mesh>/<service>` among its
  URI SANs; raises `IdentityError` otherwise. The caller logs `str(exc)` (it names what was found)
  and tries the next endpoint.
- `source_tags_from_uris(uris, mesh=None) -> dict[str, frozenset[str]]`
  The caller's tags for authorization (`sidecar.policy.decide`): `kuma.io/service` from its SPIFFE
  ids, every other tag from its `kuma://<tag>/<value>` SANs. Values are sets, because a dataplane
  with several inbounds carries all of their tags at once.
- `sni(service, mesh, tags=None) -> str`: `<service>{mesh=<mesh>[,tag=value...]}`;
  `parse_sni(name)` is its inverse.
- `render_xfcc(uri, ...)`, `parse_xfcc(value)`: the `x-forwarded-client-cert` header the inbound
  sets for HTTP apps (`URI=spiffe://<mesh>/<caller>`), replacing whatever the caller sent.
- `identities_of(cert) -> list[str]`: URI SANs of a certificate (object or DER bytes).

`IdentityError` is the only exception the checks raise; it carries `found`, the URIs the peer
presented, for logs and metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

    from sidecar.identity.certinfo import Certificate

SPIFFE_SCHEME = "spiffe://"
KUMA_SCHEME = "kuma://"
SERVICE_TAG = "kuma.io/service"  # same value as sidecar.config.model.SERVICE_TAG
MESH_SNI_TAG = "mesh"
XFCC_HEADER = "x-forwarded-client-cert"


class IdentityError(Exception):
    """A peer whose certificate does not carry the identity required; names what it carried."""

    def __init__(self, message: str, found: Iterable[str] = ()):
        self.found = tuple(found)
        super().__init__(message)


@dataclass(frozen=True, order=True)
class SpiffeId:
    """`spiffe://<mesh>/<service>`: Kuma's trust domain is the mesh name, the path the service."""

    mesh: str
    service: str

    def __str__(self) -> str:
        return f"{SPIFFE_SCHEME}{self.mesh}/{self.service}"


def spiffe_id(mesh: str, service: str) -> str:
    return f"{SPIFFE_SCHEME}{mesh}/{service}"


def parse_spiffe_id(uri: str) -> SpiffeId:
    """Split a Kuma SPIFFE id; `IdentityError` for anything that is not one."""
    if not isinstance(uri, str) or not uri.startswith(SPIFFE_SCHEME):
        raise IdentityError(f"not a SPIFFE id: {uri!r}", [str(uri)])
    mesh, sep, service = uri[len(SPIFFE_SCHEME) :].partition("/")
    if not mesh or not sep or not service:
        raise IdentityError(
            f"not a Kuma SPIFFE id (want spiffe://<mesh>/<service>): {uri!r}", [uri]
        )
    return SpiffeId(mesh, service)


def describe(uris: Iterable[str]) -> str:
    """The identities found, for a log line: comma separated, or `no URI SAN`."""
    uris = list(uris)
    return ",".join(uris) if uris else "no URI SAN"


def identities_of(
    cert: Certificate | x509.Certificate | bytes | bytearray | memoryview,
) -> list[str]:
    """The URI SANs of a certificate, in certificate order (DER bytes accepted).

    A certificate without a SAN extension has no identity: the result is empty, not an error. DER
    that cannot be parsed raises `IdentityError` (it came from a peer that passed the chain check,
    so this does not happen in practice, but the caller still gets one documented error). DER is
    read with `sidecar.identity.certinfo`, not `cryptography` (which a sidecar does not load); a
    `cryptography` certificate (the CA tooling's) is read through its DER.
    """
    from sidecar.identity import certinfo

    if isinstance(cert, certinfo.Certificate):
        return list(cert.uris)
    if not isinstance(cert, bytes | bytearray | memoryview):
        from cryptography.hazmat.primitives.serialization import Encoding  # the caller's

        cert = cert.public_bytes(Encoding.DER)
    try:
        return list(certinfo.parse_certificate(cert).uris)
    except certinfo.CertificateError as exc:
        raise IdentityError(f"peer certificate cannot be parsed: {exc}") from None


def client_services(uris: Iterable[str], mesh: str) -> list[str]:
    """The services a caller is in `mesh`, from its `spiffe://<mesh>/<service>` SANs, sorted."""
    prefix = f"{SPIFFE_SCHEME}{mesh}/"
    return sorted({u[len(prefix) :] for u in uris if u.startswith(prefix) and len(u) > len(prefix)})


def verify_client(uris: Iterable[str], mesh: str) -> str:
    """Inbound check: the caller's service in `mesh`, or `IdentityError` naming what it carried."""
    uris = list(uris)
    services = client_services(uris, mesh)
    if not services:
        raise IdentityError(
            f"client certificate has no {SPIFFE_SCHEME}{mesh}/ identity (found {describe(uris)})",
            uris,
        )
    return services[0]


def verify_server(uris: Iterable[str], mesh: str, service: str) -> None:
    """Outbound check: the peer must be exactly `spiffe://<mesh>/<service>`."""
    uris = list(uris)
    wanted = spiffe_id(mesh, service)
    if wanted not in uris:
        raise IdentityError(
            f"server certificate is not {wanted} (found {describe(uris)})",
            uris,
        )


def split_kuma_uri(uri: str) -> tuple[str, str] | None:
    """`kuma://<tag>/<value>` -> (tag, value); None for anything else.

    Tag names may hold slashes (`kuma.io/service`) but Kuma's tag values may not, so the value is
    what follows the last slash.
    """
    if not uri.startswith(KUMA_SCHEME):
        return None
    tag, sep, value = uri[len(KUMA_SCHEME) :].rpartition("/")
    if not sep or not tag or not value:
        return None
    return tag, value


def source_tags_from_uris(
    uris: Iterable[str], mesh: str | None = None
) -> dict[str, frozenset[str]]:
    """The caller's tags, each with the set of its values, for `sidecar.policy.decide`.

    `kuma.io/service` comes from the SPIFFE ids (only those of `mesh` when it is given) and from
    `kuma://kuma.io/service/<name>`; other tags come from `kuma://<tag>/<value>` SANs. URIs of any
    other shape are ignored.
    """
    tags: dict[str, set[str]] = {}
    for uri in uris:
        if uri.startswith(SPIFFE_SCHEME):
            try:
                ident = parse_spiffe_id(uri)
            except IdentityError:
                continue
            if mesh is None or ident.mesh == mesh:
                tags.setdefault(SERVICE_TAG, set()).add(ident.service)
            continue
        pair = split_kuma_uri(uri)
        if pair is not None:
            tags.setdefault(pair[0], set()).add(pair[1])
    return {tag: frozenset(values) for tag, values in tags.items()}


# --- SNI ---------------------------------------------------------------------------------------


def sni(service: str, mesh: str, tags: Mapping[str, str] | None = None) -> str:
    """Kuma's SNI for a hop to `service`: `<service>{mesh=<mesh>,<tag>=<value>...}`.

    All tags, `mesh` included, are sorted by name and comma separated, as Kuma's `SNIFromTags`
    does (`db{mesh=default,role=primary}`). A `kuma.io/service` entry in `tags` is dropped (it is
    the part before the brace) and `mesh` always comes from the argument.
    """
    pairs = {k: v for k, v in (tags or {}).items() if k not in (SERVICE_TAG, MESH_SNI_TAG)}
    pairs[MESH_SNI_TAG] = mesh
    inner = ",".join(f"{k}={pairs[k]}" for k in sorted(pairs))
    return f"{service}{{{inner}}}"


def parse_sni(name: str) -> tuple[str, dict[str, str]]:
    """`db{mesh=default,role=primary}` -> ("db", {"mesh": "default", "role": "primary"}).

    A name without braces is a bare service. Malformed names raise `IdentityError`.
    """
    if "{" not in name:
        if not name or "}" in name:
            raise IdentityError(f"not a Kuma SNI: {name!r}")
        return name, {}
    service, _, rest = name.partition("{")
    if not service or not rest.endswith("}"):
        raise IdentityError(f"not a Kuma SNI: {name!r}")
    tags: dict[str, str] = {}
    inner = rest[:-1]
    for item in inner.split(",") if inner else []:
        key, sep, value = item.partition("=")
        if not sep or not key or key in tags:
            raise IdentityError(f"not a Kuma SNI: {name!r}")
        tags[key] = value
    return service, tags


# --- x-forwarded-client-cert -------------------------------------------------------------------

_XFCC_SPECIAL = frozenset(',;="')


def _xfcc_value(value: str) -> str:
    if any(c in _XFCC_SPECIAL for c in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def render_xfcc(uri: str, *, by: str | None = None, cert_hash: str | None = None) -> str:
    """The header value the inbound sets: `URI=<caller's spiffe id>`, as Kuma configures Envoy.

    `by` (our own SPIFFE id) and `cert_hash` (hex SHA-256 of the caller's DER certificate) are
    Envoy's optional `By=` and `Hash=` fields, in Envoy's order.
    """
    parts = []
    if by is not None:
        parts.append(f"By={_xfcc_value(by)}")
    if cert_hash is not None:
        parts.append(f"Hash={_xfcc_value(cert_hash)}")
    parts.append(f"URI={_xfcc_value(uri)}")
    return ";".join(parts)


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """Parse an XFCC header: comma-separated elements of `;`-separated `Key=Value` pairs.

    Values may be double-quoted (then `,;=` are literal and `\\"` escapes a quote). Keys are
    returned as written. Raises `ValueError` on malformed input.
    """
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] == " ":
            i += 1
        eq = value.find("=", i)
        if eq < 0:
            raise ValueError(f"XFCC: expected Key=Value at offset {i}")
        key = value[i:eq].strip()
        if not key or any(c in key for c in ',;"'):
            raise ValueError(f"XFCC: bad key at offset {i}")
        i = eq + 1
        if i < n and value[i] == '"':
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise ValueError("XFCC: unterminated quoted value")
                c = value[i]
                if c == "\\" and i + 1 < n:
                    chars.append(value[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                chars.append(c)
                i += 1
            val = "".join(chars)
        else:
            start = i
            while i < n and value[i] not in ",;":
                if value[i] == '"':
                    raise ValueError(f"XFCC: stray quote at offset {i}")
                i += 1
            val = value[start:i]
        current[key] = val
        if i < n:
            if value[i] == ";":
                i += 1
            elif value[i] == ",":
                elements.append(current)
                current = {}
                i += 1
            else:
                raise ValueError(f"XFCC: expected ';' or ',' at offset {i}")
    if current:
        elements.append(current)
    return elements
