"""The mesh CA and the workload certificates it issues, as Kuma's builtin CA makes them.

Pure certificate logic on top of `cryptography`, plus small PEM file helpers. No sockets, no ssl
module, no asyncio: the ssl contexts are built in `sidecar.identity.tls`.

API for the rest of pysidecar:

- `create_ca(mesh, *, rsa=False, valid_days=3650, now=None) -> CertKey`
  A self-signed mesh CA: subject `CN=<mesh>, OU=Mesh, O=pysidecar`, URI SAN `spiffe://<mesh>`
  (the trust domain, as Kuma's CA carries it), basicConstraints CA:true (critical), keyUsage
  keyCertSign + cRLSign (critical), subject key identifier. ECDSA P-256 by default, RSA 2048 with
  `rsa=True` (what Kuma uses).
- `issue_workload(ca_cert, ca_key, dataplane, *, valid_for=timedelta(hours=24), rsa=False,
  now=None) -> CertKey`
  A workload certificate as Kuma issues it: empty subject; URI SANs `spiffe://<mesh>/<service>`
  for each service, then `kuma://<tag>/<value>` for each tag (see `workload_uris`); the SAN
  extension is critical because the subject is empty (RFC 5280 4.2.1.6); keyUsage
  digitalSignature + keyEncipherment + keyAgreement; extKeyUsage serverAuth + clientAuth;
  basicConstraints CA:false; random serial below 2^128; not-before now - 10 s (Kuma's allowed
  clock skew). The authority key identifier names the issuing CA, so that a CA bundle holding an
  old and a new CA with the same subject still builds the right chain during a CA rotation.
- `workload_uris(dataplane) -> list[str]`: the URI SANs above, in certificate order.
- `write_certificate(path, *certs)`, `write_private_key(path, key)`, `write_cert_key(cert_path,
  key_path, cert_key)`: atomic writes (temporary file + rename, so a watcher never reads half a
  file); private keys are created with mode 0600 from the start (`os.open(..., 0o600)`).
- `load_certificates(path) -> list[Certificate]` (a PEM bundle, at least one),
  `load_certificate(path)`, `load_private_key(path)`: every failure is a `CredentialsError` whose
  message starts with the file name and says what is wrong with it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.config.model import SERVICE_TAG, Dataplane
from sidecar.identity.credentials import (  # noqa: F401 - part of this module's API
    CLOCK_SKEW,
    DEFAULT_CA_VALIDITY_DAYS,
    DEFAULT_WORKLOAD_VALIDITY,
    CredentialsError,
    read_credential_file,
)

RSA_BITS = 2048

PrivateKey = ec.EllipticCurvePrivateKey | rsa_keys.RSAPrivateKey


class IssueError(ValueError):
    """A certificate that cannot be issued (no service to name, CA key not matching the CA...)."""


@dataclass(frozen=True)
class CertKey:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return key_pem(self.key)


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8, unencrypted: what both OpenSSL and Envoy read without a passphrase."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_key(rsa: bool = False) -> PrivateKey:
    if rsa:
        return rsa_keys.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def random_serial() -> int:
    """A positive serial below 2^128, as Kuma draws it (never 0: RFC 5280 wants it positive)."""
    return secrets.randbelow(2**128 - 1) + 1


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def create_ca(
    mesh: str,
    *,
    rsa: bool = False,
    valid_days: int = DEFAULT_CA_VALIDITY_DAYS,
    now: datetime | None = None,
) -> CertKey:
    """A self-signed CA for `mesh` (see the module docstring for its exact contents)."""
    if not mesh:
        raise IssueError("a mesh name is required")
    if valid_days <= 0:
        raise IssueError(f"valid_days must be positive, got {valid_days}")
    now = _now(now)
    key = new_key(rsa)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pysidecar"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, mesh),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{mesh}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CertKey(cert, key)


def workload_tags(dataplane: Dataplane) -> dict[str, list[str]]:
    """Every tag of the dataplane's inbounds (and gateway), each with its sorted distinct values.

    This is Kuma's `Dataplane.TagSet()`: a dataplane with several inbounds is every one of them at
    once, so its certificate names all their services and tags.
    """
    values: dict[str, set[str]] = {}
    tag_maps = [inbound.tags for inbound in dataplane.networking.inbound]
    if dataplane.networking.gateway is not None:
        tag_maps.append(dataplane.networking.gateway.tags)
    for tags in tag_maps:
        for tag, value in tags.items():
            values.setdefault(tag, set()).add(value)
    return {tag: sorted(values[tag]) for tag in sorted(values)}


def workload_uris(dataplane: Dataplane) -> list[str]:
    """The URI SANs of the dataplane's workload certificate, in Kuma's order.

    First `spiffe://<mesh>/<service>` for each distinct `kuma.io/service` (sorted), then
    `kuma://<tag>/<value>` for each tag and value (sorted by tag, then value; the service tag is
    included, as Kuma does).
    """
    tags = workload_tags(dataplane)
    services = tags.get(SERVICE_TAG, [])
    if not services:
        raise IssueError(
            f"{dataplane.source}: dataplane {dataplane.name!r} has no inbound or gateway with a "
            f"{SERVICE_TAG} tag, so it has no identity to put in a certificate"
        )
    uris = [f"spiffe://{dataplane.mesh}/{service}" for service in services]
    uris += [f"kuma://{tag}/{value}" for tag, tag_values in tags.items() for value in tag_values]
    return uris


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def issue_workload(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    dataplane: Dataplane,
    *,
    valid_for: timedelta = DEFAULT_WORKLOAD_VALIDITY,
    rsa: bool = False,
    now: datetime | None = None,
) -> CertKey:
    """A workload certificate for `dataplane`, signed by the mesh CA (see the module docstring).

    The validity never outlasts the CA: a certificate that would be refused later anyway is cut to
    end with its CA.
    """
    if valid_for <= timedelta(0):
        raise IssueError(f"validity must be positive, got {valid_for}")
    if not _same_public_key(ca_cert, ca_key):
        raise IssueError("the CA key does not belong to the CA certificate")
    now = _now(now)
    uris = workload_uris(dataplane)
    key = new_key(rsa)
    not_after = min(now + valid_for, ca_cert.not_valid_after_utc)
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertKey(cert, key)


def ca_mesh(ca_cert: x509.Certificate) -> str | None:
    """The mesh a CA was made for: its `spiffe://<mesh>` URI SAN, else its CN, else None."""
    try:
        san = ca_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("spiffe://"):
                return uri[len("spiffe://") :].rstrip("/") or None
    cns = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


# --- files -------------------------------------------------------------------------------------


def _write_atomic(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    The temporary file is created with `mode` already set, so a private key is never readable by
    others, not even for an instant; the rename makes a watcher see either the old or the new file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd_dir = str(target.parent)
    for _ in range(100):
        tmp = os.path.join(fd_dir, f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise OSError(f"cannot create a temporary file next to {target}")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # os.open's mode is filtered by the umask; make it exact
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_certificate(path: str | os.PathLike[str], *certs: x509.Certificate) -> None:
    """Write one certificate, or a bundle of several, as PEM (mode 0644)."""
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write_atomic(path, data, 0o644)


def write_private_key(path: str | os.PathLike[str], key: PrivateKey) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, with mode 0600 from creation on."""
    _write_atomic(path, key_pem(key), 0o600)


def write_cert_key(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], cert_key: CertKey
) -> None:
    """Write the key first, then the certificate, so that a watcher that sees the new certificate
    also finds its key (a watcher must still tolerate a mismatch for a moment)."""
    write_private_key(key_path, cert_key.key)
    write_certificate(cert_path, cert_key.cert)


def parse_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """All certificates of a PEM bundle (DER accepted for a single certificate)."""
    if b"-----BEGIN" not in data:
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise CredentialsError(source, "no PEM certificate found") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CredentialsError(source, f"not a valid PEM certificate: {exc}") from None
    if not certs:  # pragma: no cover - cryptography raises on an empty bundle
        raise CredentialsError(source, "no PEM certificate found")
    return certs


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a CA bundle may hold several CAs during a rotation)."""
    return parse_certificates(read_credential_file(path, "certificate"), str(path))


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first certificate of a PEM file (the leaf, when the file is a chain)."""
    return load_certificates(path)[0]


def parse_private_key(data: bytes, source: str) -> PrivateKey:
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise CredentialsError(
            source, "private key is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CredentialsError(source, f"not a valid private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa_keys.RSAPrivateKey):
        raise CredentialsError(source, f"unsupported key type {type(key).__name__} (use EC or RSA)")
    return key


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    return parse_private_key(read_credential_file(path, "private key"), str(path))


def load_ca(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> tuple[x509.Certificate, PrivateKey]:
    """The signing CA: of the certificates in `cert_path`, the one that `key_path` belongs to."""
    certs = load_certificates(cert_path)
    key = load_private_key(key_path)
    for cert in certs:
        if _same_public_key(cert, key):
            return cert, key
    raise CredentialsError(key_path, f"this key belongs to none of the certificates in {cert_path}")


def cert_matches_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    return _same_public_key(cert, key)
