"""Mesh mTLS: credentials from files, the ssl contexts of a hop, and rotation without restarts.

What the data path calls (the lead's runtime wires these in):

Start-up
    store = CredentialStore.from_files(ca_path, cert_path, key_path)       # CredentialsError
    store = CredentialStore.dev(ca_cert_path, ca_key_path, dataplane, workdir)  # dev mode
    task = asyncio.create_task(store.watch())   # rotation (and dev-mode renewal), every second

Inbound (peer sidecar -> us), per accepted connection
    ctx = store.server_context            # read it per connection: it is swapped on rotation
    await loop.start_tls(transport, protocol, ctx, server_side=True)   # or, with a fixed
    # server (asyncio.start_server(ssl=...)), pass `store.front_server_context()` once: it hands
    # every new handshake to the current context.
    service = check_client(ssl_object, mesh)     # spiffe.IdentityError -> log, count, close
    tags = spiffe.source_tags_from_uris(peer_uris(ssl_object), mesh)  # for policy.decide

Outbound (us -> peer sidecar), per new upstream connection
    ctx = store.client_context
    await loop.create_connection(..., ssl=ctx, server_hostname=server_hostname(service, mesh))
    check_server(ssl_object, mesh, service)      # spiffe.IdentityError -> next endpoint

Metrics
    store.days_until_first_expiring()   # envoy_server_days_until_first_cert_expiring
    store.seconds_until_first_expiring()  # the same to the second (workload certs live a day)

Expiry: every tick of `watch` checks how long the first certificate to expire (CA or workload)
has left. Once it has less than a fifth of the workload certificate's lifetime left (the renewal
is overdue by then), one warning says so and which file to rotate; once it has expired, one error.
Each is logged once per set of credentials, not once per tick.

Contexts follow Kuma's hop: TLS 1.2 minimum (1.3 is negotiated whenever both ends have it), ALPN
`kuma`, the peer's chain verified against the mesh CA bundle in both directions (CERT_REQUIRED).
Hostname checking is off on the client because the identity is a SPIFFE URI SAN, not a DNS name:
`check_server` (i.e. `spiffe.verify_server`) must run after every outbound handshake.

With TLS 1.3 a client learns that the server refused its certificate only on its first read (the
client's handshake completes before the server has checked it); a data path must treat an
`ssl.SSLError` or EOF on the first read like a failed handshake.

Rotation: the store re-reads the three files when the stat signature (inode, size, mtime) of any
of them changes, loads and checks them (the key must belong to the certificate, the certificate
must chain to the bundle and be within its validity), and only then swaps in new contexts. A
half-rotated set of files (new certificate, old key) is refused and retried on the next tick, so a
bad rotation never takes down a working sidecar. Open connections keep the context they were
made with.

Certificates are read with `sidecar.identity.certinfo` (validity, serial, URI SANs) and the key
and chain are checked by OpenSSL in an in-memory handshake of the credentials with themselves
(`_check_with_openssl`), so that a sidecar with credentials from files never loads
`cryptography` (see `sidecar.identity.credentials`); only dev mode's issuing does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.config.model import Dataplane
from sidecar.identity import certinfo, spiffe
from sidecar.identity.certinfo import Certificate
from sidecar.identity.credentials import (
    CLOCK_SKEW,
    DEFAULT_WORKLOAD_VALIDITY,
    CredentialsError,
    read_credential_file,
)
from sidecar.transport import tls_transport

if TYPE_CHECKING:  # `cryptography` is loaded only in dev mode and the CA tooling (credentials)
    from cryptography import x509

log = logging.getLogger("sidecar.identity")

ALPN = "kuma"
MIN_VERSION = ssl.TLSVersion.TLSv1_2
RENEW_FRACTION = 0.8  # dev mode renews a workload certificate at 80 % of its lifetime
EXPIRY_WARNING_FRACTION = 0.2  # warn when less than this share of the lifetime is left
WATCH_INTERVAL = 1.0

__all__ = [
    "ALPN",
    "CredentialStore",
    "CredentialsError",
    "MeshCredentials",
    "check_client",
    "check_server",
    "client_context",
    "days_until_first_expiring",
    "peer_uris",
    "server_context",
    "server_hostname",
]


@dataclass(frozen=True, eq=False)
class MeshCredentials:
    """A checked set of mesh credentials: the CA bundle, our certificate (chain) and its key.

    Build it with `MeshCredentials.load(ca_path, cert_path, key_path)`; the PEM bytes kept here are
    exactly those that were checked, and the ssl contexts are built from them (not by re-reading
    the files), so what is validated is what is served.

    Certificates are `certinfo.Certificate` (DER and the few fields read from it), not
    `cryptography` objects: a sidecar with credentials from files never loads `cryptography`
    (some 10 MB of RSS). OpenSSL checks the key and the chain (see `_check_with_openssl`).
    """

    ca_path: Path
    cert_path: Path
    key_path: Path
    ca_certs: tuple[Certificate, ...]
    chain: tuple[Certificate, ...]  # the leaf first, then any intermediates from cert_path
    ca_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)

    @property
    def cert(self) -> Certificate:
        return self.chain[0]

    @property
    def identities(self) -> list[str]:
        """Our URI SANs (`spiffe://<mesh>/<service>`, `kuma://<tag>/<value>`)."""
        return list(self.cert.uris)

    @property
    def not_before(self) -> datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    @classmethod
    def load(
        cls,
        ca_path: str | os.PathLike[str],
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        *,
        now: datetime | None = None,
    ) -> MeshCredentials:
        """Read and check the three files; `CredentialsError` names the file at fault and why.

        Our own checks first (each names its file): the PEM and DER of the certificates and the
        key, and the leaf's validity at `now`. Then OpenSSL's (`_check_with_openssl`): the key
        belongs to the certificate, and the chain verifies against the CA bundle.
        """
        ca_path, cert_path, key_path = Path(ca_path), Path(cert_path), Path(key_path)
        ca_data = read_credential_file(ca_path, "CA certificate")
        cert_data = read_credential_file(cert_path, "certificate")
        key_data = read_credential_file(key_path, "private key")
        ca_certs = tuple(certinfo.pem_certificates(ca_data, str(ca_path)))
        chain = tuple(certinfo.pem_certificates(cert_data, str(cert_path)))
        key_pem, _kind = certinfo.private_key_pem(key_data, str(key_path))
        now = now or datetime.now(UTC)
        leaf = chain[0]
        if leaf.not_valid_after_utc <= now:
            raise CredentialsError(
                cert_path, f"certificate expired at {leaf.not_valid_after_utc.isoformat()}"
            )
        if leaf.not_valid_before_utc > now + CLOCK_SKEW:
            raise CredentialsError(
                cert_path,
                f"certificate is not valid before {leaf.not_valid_before_utc.isoformat()}",
            )
        # ssl wants PEM; what it gets is re-encoded from the DER that was read (a DER input
        # included), so that contexts can always be built from exactly what was checked.
        creds = cls(
            ca_path=ca_path,
            cert_path=cert_path,
            key_path=key_path,
            ca_certs=ca_certs,
            chain=chain,
            ca_pem=b"".join(c.pem() for c in ca_certs),
            cert_pem=b"".join(c.pem() for c in chain),
            key_pem=key_pem,
        )
        _check_with_openssl(creds)
        return creds

    def first_expiring(self) -> datetime:
        """When the first of our certificates (CA bundle and chain) expires."""
        return min(c.not_valid_after_utc for c in (*self.ca_certs, *self.chain))

    def days_until_first_expiring(self, now: datetime | None = None) -> int:
        return days_until_first_expiring((*self.ca_certs, *self.chain), now)


# OpenSSL's verify codes (X509_V_ERR_*) that mean "no CA of the bundle issued this chain".
_NOT_ISSUED_CODES = frozenset({2, 7, 18, 19, 20, 21, 29, 30, 31})
# ...and those that say a certificate is outside its validity period (at the real time).
_TIME_CODES = frozenset({9, 10})
_CHECK_ROUNDS = 8  # a TLS 1.3 handshake over memory takes 3; anything more is a fault


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    """For `load_cert_chain`: without a callback OpenSSL would prompt on the terminal."""
    raise _EncryptedKey


def _check_context(protocol: int, creds: MeshCredentials) -> ssl.SSLContext:
    """A bare context with our certificate and key, verifying peers against the CA bundle."""
    ctx = ssl.SSLContext(protocol)
    if protocol == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    with _pem_files(creds.cert_pem, creds.key_pem) as (cert_file, key_file):
        try:
            ctx.load_cert_chain(cert_file, key_file, password=_no_passphrase)
        except _EncryptedKey:
            raise CredentialsError(
                creds.key_path, "private key is encrypted; give an unencrypted key"
            ) from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise CredentialsError(
                    creds.key_path,
                    f"this key does not belong to the certificate in {creds.cert_path}",
                ) from None
            raise CredentialsError(
                creds.cert_path, f"rejected by OpenSSL (with the key {creds.key_path}): {exc}"
            ) from None
    try:
        ctx.load_verify_locations(cadata=creds.ca_pem.decode("ascii"))
    except ssl.SSLError as exc:
        raise CredentialsError(creds.ca_path, f"CA bundle rejected by OpenSSL: {exc}") from None
    return ctx


def _handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    """One full mutual-TLS handshake between the two contexts, in memory (no socket)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    sides = [(client, c_out, s_in), (server, s_out, c_in)]
    done = [False, False]
    for _ in range(_CHECK_ROUNDS):
        for i, (obj, out, peer_in) in enumerate(sides):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            if out.pending:
                peer_in.write(out.read())
        if all(done):
            return
    raise ssl.SSLError("the handshake did not finish")


def _check_with_openssl(creds: MeshCredentials) -> None:
    """Let OpenSSL check what peers will check: a handshake with ourselves, in memory.

    Both sides present our certificate and verify the other's against the CA bundle, as two
    sidecars of the mesh do: so the key belongs to the certificate, the chain is signed by a CA of
    the bundle, and the certificate may serve as client and as server. This replaces parsing the
    key and verifying signatures with `cryptography`; it costs a few milliseconds, at load and on
    rotation only.

    OpenSSL verifies at the real time, and Python's ssl has no flag to skip that; the leaf's
    validity has been checked at `now` (a test's or dev mode's clock) already. When the only
    objection is a validity period and every certificate above the leaf is valid now, it is the
    leaf's: OpenSSL checks each signature of the chain, top down, before that certificate's
    validity, so the chain has verified.
    """
    client = _check_context(ssl.PROTOCOL_TLS_CLIENT, creds)
    server = _check_context(ssl.PROTOCOL_TLS_SERVER, creds)
    try:
        _handshake(client, server)
    except ssl.SSLCertVerificationError as exc:
        code, reason = exc.verify_code, exc.verify_message
        if code in _TIME_CODES:
            real_now = datetime.now(UTC)
            above = (*creds.chain[1:], *creds.ca_certs)
            if all(c.not_valid_before_utc <= real_now < c.not_valid_after_utc for c in above):
                return
        if code in _NOT_ISSUED_CODES:
            raise CredentialsError(
                creds.cert_path,
                f"certificate is not issued by any CA in {creds.ca_path} ({reason})",
            ) from None
        raise CredentialsError(
            creds.cert_path,
            f"certificate does not verify against the CAs in {creds.ca_path}: {reason}",
        ) from None
    except ssl.SSLError as exc:
        raise CredentialsError(
            creds.cert_path, f"rejected by OpenSSL in a handshake with itself: {exc}"
        ) from None


def days_until_first_expiring(
    certs: Sequence[Certificate | x509.Certificate], now: datetime | None = None
) -> int:
    """Envoy's `server.days_until_first_cert_expiring`: whole days left, 0 once expired."""
    if not certs:
        return 0
    now = now or datetime.now(UTC)
    first = min(c.not_valid_after_utc for c in certs)
    seconds = (first - now).total_seconds()
    return max(0, math.floor(seconds / 86400))


# --- contexts ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _pem_files(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    """The certificate and key as paths `load_cert_chain` can read, never left on disk.

    On Linux they are memory files (`memfd_create`), so the private key never touches a disk;
    elsewhere a private temporary directory (0700, files 0600) removed right after loading.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for name, data in (("cert", cert_pem), ("key", key_pem)):
                fd = os.memfd_create(f"pysidecar-{name}", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    import tempfile  # here only: with `shutil`, `bz2`, `lzma`, ~0.7 MB that Linux never needs

    with tempfile.TemporaryDirectory(
        prefix="pysidecar-tls-"
    ) as tmp:  # pragma: no cover - non-Linux
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        yield cert_path, key_path


def _base_context(protocol: int, creds: MeshCredentials) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = MIN_VERSION
    with _pem_files(creds.cert_pem, creds.key_pem) as (cert_file, key_file):
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise CredentialsError(creds.cert_path, f"rejected by OpenSSL: {exc}") from None
    try:
        ctx.load_verify_locations(cadata=creds.ca_pem.decode("ascii"))
    except ssl.SSLError as exc:
        raise CredentialsError(creds.ca_path, f"CA bundle rejected by OpenSSL: {exc}") from None
    ctx.set_alpn_protocols([ALPN])
    ctx.verify_mode = ssl.CERT_REQUIRED
    # TLS 1.3: AES-128-GCM first (AES-256-GCM is OpenSSL's first choice): cheaper per byte on
    # AES hardware, as Envoy chooses. Both sides prefer it, so it is what a hop negotiates
    # whichever end's order counts (Python's server contexts use their own order).
    tls_transport.prefer_aes128(ctx)
    return ctx


def server_context(creds: MeshCredentials, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """The inbound side of a hop: our workload certificate, the client's verified against the CA.

    `require_client_cert=False` makes the client certificate optional (CERT_OPTIONAL: one that is
    sent is still verified); the caller must then check that `peer_uris` is not empty. Kuma's
    PERMISSIVE mode is not this: it lets plaintext in beside mTLS, told apart by the first bytes,
    and every TLS client must still present a certificate.
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, creds)
    if not require_client_cert:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(creds: MeshCredentials) -> ssl.SSLContext:
    """The outbound side of a hop: presents our certificate, verifies the server's chain.

    `check_hostname` is off because identity is SPIFFE: call `check_server` after the handshake.
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, creds)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_hostname(service: str, mesh: str, tags: dict[str, str] | None = None) -> str | None:
    """Kuma's SNI for the hop, or None when Python's ssl cannot send it.

    Python sends SNI only for names it can IDNA-encode (labels under 64 characters); the SNI is
    informational for a Kuma peer (identity is checked on the certificate), so a name that cannot
    be sent is left out rather than failing the connection.
    """
    name = spiffe.sni(service, mesh, tags)
    try:
        name.encode("idna")
    except UnicodeError:
        return None
    return name


SslObject = ssl.SSLObject | ssl.SSLSocket


def peer_uris(ssl_object: SslObject | None) -> list[str]:
    """The URI SANs of the peer's certificate after a handshake; [] when it sent none.

    They come from the certificate as OpenSSL parsed and verified it (`getpeercert()`, which is
    empty unless the context verifies peers, as every mesh context does), in certificate order.
    """
    if ssl_object is None:
        return []
    try:
        cert = ssl_object.getpeercert()
    except UnicodeDecodeError as exc:  # a SAN that is not UTF-8
        raise spiffe.IdentityError(f"peer certificate cannot be read: {exc}") from None
    if not cert:
        return []
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]


def check_client(ssl_object: SslObject | None, mesh: str) -> str:
    """Inbound: the caller's service, or `spiffe.IdentityError` naming what it presented."""
    return spiffe.verify_client(peer_uris(ssl_object), mesh)


def check_server(ssl_object: SslObject | None, mesh: str, service: str) -> None:
    """Outbound: `spiffe.IdentityError` unless the peer is `spiffe://<mesh>/<service>`."""
    spiffe.verify_server(peer_uris(ssl_object), mesh, service)


# --- rotation ----------------------------------------------------------------------------------

FileSignature = tuple[tuple[int, int, int, int] | None, ...]


def _signature(paths: tuple[Path, ...]) -> FileSignature:
    sig: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            sig.append(None)
        else:
            sig.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(sig)


Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class DevIssuer:
    """Dev mode: this sidecar holds the CA key and issues its own workload certificate."""

    ca_cert_path: Path
    ca_key_path: Path
    dataplane: Dataplane
    workdir: Path
    valid_for: timedelta = DEFAULT_WORKLOAD_VALIDITY
    rsa: bool = False

    @property
    def cert_path(self) -> Path:
        return self.workdir / f"{self.dataplane.name}.crt"

    @property
    def key_path(self) -> Path:
        return self.workdir / f"{self.dataplane.name}.key"

    def issue(self, now: datetime) -> None:
        """Issue and write a fresh certificate and key (key first, both atomically)."""
        from sidecar.identity import ca

        ca_cert, ca_key = ca.load_ca(self.ca_cert_path, self.ca_key_path)
        try:
            issued = ca.issue_workload(
                ca_cert, ca_key, self.dataplane, valid_for=self.valid_for, rsa=self.rsa, now=now
            )
        except ca.IssueError as exc:
            raise CredentialsError(
                self.ca_cert_path, f"cannot issue a certificate: {exc}"
            ) from None
        try:
            ca.write_cert_key(self.cert_path, self.key_path, issued)
        except OSError as exc:
            raise CredentialsError(self.workdir, f"cannot write credentials: {exc}") from None


class CredentialStore:
    """The current mesh credentials and their ssl contexts, swapped in place on rotation.

    Read `server_context` / `client_context` for every new connection; the objects are replaced
    (never mutated) when files change, so connections already open keep theirs.
    """

    def __init__(
        self,
        ca_path: str | os.PathLike[str],
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        *,
        require_client_cert: bool = True,
        clock: Clock = _utc_now,
        issuer: DevIssuer | None = None,
    ) -> None:
        self.paths = (Path(ca_path), Path(cert_path), Path(key_path))
        self.require_client_cert = require_client_cert
        self.clock = clock
        self.issuer = issuer
        self.generation = 0  # bumped on every swap, for logs, tests and /certs
        self.last_error: CredentialsError | None = None
        self._subscribers: list[Callable[[MeshCredentials], None]] = []
        self._front: ssl.SSLContext | None = None
        self.expiry_stage: tuple[int, str] | None = None  # (generation, "expiring"|"expired")
        signature = _signature(self.paths)
        self._install(self._build(), signature)

    # construction

    @classmethod
    def from_files(
        cls,
        ca_path: str | os.PathLike[str],
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        **kwargs: Any,
    ) -> CredentialStore:
        """Load credentials at start-up; `CredentialsError` names the missing or bad file."""
        return cls(ca_path, cert_path, key_path, **kwargs)

    @classmethod
    def dev(
        cls,
        ca_cert_path: str | os.PathLike[str],
        ca_key_path: str | os.PathLike[str],
        dataplane: Dataplane,
        workdir: str | os.PathLike[str],
        *,
        valid_for: timedelta = DEFAULT_WORKLOAD_VALIDITY,
        rsa: bool = False,
        clock: Clock = _utc_now,
        require_client_cert: bool = True,
    ) -> CredentialStore:
        """Dev mode: issue our own certificate now into `workdir`, renew at 80 % of its life.

        The trust bundle is `ca_cert_path` itself (it may hold several CAs); the signing CA is the
        one `ca_key_path` belongs to. The certificate is written as `<workdir>/<name>.crt` and
        `<name>.key` (0600), so `pysidecar certs inspect` can show it.
        """
        issuer = DevIssuer(
            Path(ca_cert_path), Path(ca_key_path), dataplane, Path(workdir), valid_for, rsa
        )
        issuer.issue(clock())
        return cls(
            ca_cert_path,
            issuer.cert_path,
            issuer.key_path,
            require_client_cert=require_client_cert,
            clock=clock,
            issuer=issuer,
        )

    def _build(self) -> tuple[MeshCredentials, ssl.SSLContext, ssl.SSLContext]:
        creds = MeshCredentials.load(*self.paths, now=self.clock())
        return (
            creds,
            server_context(creds, require_client_cert=self.require_client_cert),
            client_context(creds),
        )

    def _install(
        self, built: tuple[MeshCredentials, ssl.SSLContext, ssl.SSLContext], sig: FileSignature
    ) -> None:
        self.credentials, self.server_context, self.client_context = built
        self._signature = sig
        self.generation += 1
        self.last_error = None

    # rotation

    def subscribe(self, callback: Callable[[MeshCredentials], None]) -> None:
        """Call `callback(credentials)` after each swap (e.g. to log or refresh /certs)."""
        self._subscribers.append(callback)

    def changed(self) -> bool:
        """Whether any of the three files changed (inode, size or mtime) since the last load."""
        return _signature(self.paths) != self._signature

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the files if they changed; swap in new contexts. True if a swap happened.

        A set of files that does not load (missing, half-written, key not matching, not signed by
        the bundle, expired) leaves the current credentials in place; the error is kept in
        `last_error`, logged once, and the load is retried on the next call.
        """
        sig = _signature(self.paths)
        if not force and sig == self._signature:
            return False
        try:
            built = self._build()
        except CredentialsError as exc:
            if self.last_error is None or str(exc) != str(self.last_error):
                log.warning(
                    "event=credentials_rejected reason=%r keeping=generation-%d",
                    str(exc),
                    self.generation,
                )
            self.last_error = exc
            return False
        # The files may have changed again while they were read; the next call will notice,
        # because the signature installed is the one taken before reading.
        self._install(built, sig)
        creds = self.credentials
        log.info(
            "event=credentials_loaded generation=%d identities=%s not_after=%s",
            self.generation,
            spiffe.describe(creds.identities),
            creds.not_after.isoformat(),
        )
        for callback in list(self._subscribers):
            try:
                callback(creds)
            except Exception:  # noqa: BLE001 - a subscriber must not stop rotation
                log.exception("event=credentials_subscriber_failed")
        return True

    # dev-mode renewal

    def renew_at(self) -> datetime | None:
        """When dev mode renews: at 80 % of the current certificate's lifetime; None if not dev."""
        if self.issuer is None:
            return None
        creds = self.credentials
        return creds.not_before + (creds.not_after - creds.not_before) * RENEW_FRACTION

    def renew_due(self, now: datetime | None = None) -> bool:
        at = self.renew_at()
        return at is not None and (now or self.clock()) >= at

    def renew(self, now: datetime | None = None) -> bool:
        """Dev mode: issue a new certificate now and load it. Outside dev mode, nothing to do."""
        if self.issuer is None:
            return False
        try:
            self.issuer.issue(now or self.clock())
        except CredentialsError as exc:
            if self.last_error is None or str(exc) != str(self.last_error):
                log.warning("event=credentials_renew_failed reason=%r", str(exc))
            self.last_error = exc
            return False
        return self.refresh(force=True)

    def tick(self, now: datetime | None = None) -> bool:
        """One round of `watch`: renew if due (dev mode), else pick up changed files; then say
        so if the credentials in use are about to expire."""
        swapped = self.renew(now) if self.renew_due(now) else self.refresh()
        self.check_expiry(now)
        return swapped

    def check_expiry(self, now: datetime | None = None) -> str | None:
        """Log, once per stage and credentials, that the first certificate is about to expire
        (warning) or has expired (error); returns the stage, None while all is well."""
        creds = self.credentials
        now = now or self.clock()
        first = creds.first_expiring()
        left = (first - now).total_seconds()
        lifetime = (creds.not_after - creds.not_before).total_seconds()
        if left <= 0:
            stage = "expired"
        elif left < EXPIRY_WARNING_FRACTION * lifetime:
            stage = "expiring"
        else:
            return None
        if self.expiry_stage == (self.generation, stage):
            return stage
        self.expiry_stage = (self.generation, stage)
        which = next(
            (c for c in (*creds.chain, *creds.ca_certs) if c.not_valid_after_utc == first),
            creds.cert,
        )
        where = creds.cert_path if which in creds.chain else creds.ca_path
        if stage == "expired":
            log.error(
                "event=certificate_expired file=%s not_after=%s action=%r",
                where,
                first.isoformat(),
                "peers refuse this sidecar's connections: rotate the credentials",
            )
        else:
            log.warning(
                "event=certificate_expiring file=%s not_after=%s seconds_left=%d action=%r",
                where,
                first.isoformat(),
                left,
                "rotation is overdue: replace the certificate before it expires",
            )
        return stage

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Poll forever (cancel the task to stop). File reads and, in dev mode, key generation run
        on the event loop: they take milliseconds (an RSA key, rarely, a few tens)."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad round
                log.exception("event=credentials_watch_failed")

    # a fixed context for servers that take one context for their lifetime

    def front_server_context(self) -> ssl.SSLContext:
        """A server context that never changes but serves the current credentials.

        For `asyncio.start_server(ssl=...)`, which binds one context for the server's life: at
        each ClientHello its SNI callback moves the connection onto `self.server_context` (the
        way the ssl module documents for switching certificates), so rotation still applies to
        new connections. Same verification settings as `server_context`.
        """
        if self._front is None:
            front = server_context(self.credentials, require_client_cert=self.require_client_cert)

            def switch(ssl_obj: SslObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
                current = self.server_context
                if ssl_obj.context is not current:
                    ssl_obj.context = current
                return None

            front.sni_callback = switch
            self._front = front
        return self._front

    # metrics

    def days_until_first_expiring(self, now: datetime | None = None) -> int:
        """`envoy_server_days_until_first_cert_expiring` for the credentials in use."""
        return self.credentials.days_until_first_expiring(now or self.clock())

    def seconds_until_first_expiring(self, now: datetime | None = None) -> int:
        """Whole seconds until the first certificate in use expires (0 once it has)."""
        left = (self.credentials.first_expiring() - (now or self.clock())).total_seconds()
        return max(0, int(left))
