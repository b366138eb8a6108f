"""The mesh's transport security in one place, so that the data paths never see TLS.

Built once per sidecar (`MeshSecurity.create(options, dataplane)`) when it has mesh credentials;
without them there is no `MeshSecurity` and every hop is plaintext, as in a Kuma mesh without mTLS.

- Outbound (`connector`): a `sidecar.transport.connect.Connector` per destination service. It
  dials the endpoint with mTLS (ALPN `kuma`, SNI `<service>{mesh=<mesh>}`), checks that the peer
  is exactly `spiffe://<mesh>/<service>`, and with TLS 1.3 waits briefly for the peer's verdict on
  our certificate (see `_ClientGate`). Any failure is a `ConnectError` naming the endpoint and what
  was wrong (the identity found, the TLS alert): the relay and the HTTP router then log it and try
  the next endpoint. It resumes TLS 1.3 sessions per endpoint (`_ResumingSSLObject`), as Envoy
  does between sidecars: a resumed handshake costs about half a full one. Both ends still see the
  other's certificate (from the session) and check its SPIFFE identity; what a resumption skips
  is the chain and validity check, for the server's ticket lifetime (OpenSSL's 2 h) at most, and
  any rotation of either side's credentials ends it (new contexts, new ticket keys).
- Inbound (`listen`): a `MeshListener` accepts the raw sockets itself, looks at the first byte
  without consuming it (MSG_PEEK: nothing needs replaying) and then hands the socket to
  `loop.connect_accepted_socket`, with the current server context for a TLS ClientHello (0x16) or
  without TLS for plaintext in permissive mode. After the handshake the caller's certificate must
  carry a `spiffe://<mesh>/` identity; the connection then goes to `stack.accept(peer)` with the
  verified `Peer`. Refusals (plaintext in strict mode, another CA, expired certificates, no or a
  wrong identity, garbage) are logged once per connection with the peer's address and the reason,
  and counted (`ssl_connection_error`, `ssl_fail_verify_error`); the listener keeps serving.
  This works the same on uvloop and asyncio (both implement `connect_accepted_socket` with ssl).
- Authorization (`authorizer`): MeshTrafficPermission from the mesh directory, decided per TCP
  connection or HTTP request by the inbound stack (`Authorizer.allows`), logged and counted
  (`rbac_allowed`, `rbac_denied`, `rbac_shadow_denied`).
- Rotation: `start()` runs `CredentialStore.watch()`; every new connection reads the store's
  current contexts, so new material is used within a second or so and open connections live on.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sidecar import defaults
from sidecar.addresses import host_port
from sidecar.config.model import Dataplane
from sidecar.identity import spiffe, tls
from sidecar.identity.credentials import DEFAULT_WORKLOAD_VALIDITY
from sidecar.identity.spiffe import IdentityError
from sidecar.identity.tls import CredentialsError, CredentialStore
from sidecar.observe.stats import ClusterStats, ListenerStats
from sidecar.policy import POLICY_TYPE, Decision, MeshTrafficPermission, PolicySet, decide
from sidecar.policy import parse_policy as parse_policy_document
from sidecar.transport import tls_transport
from sidecar.transport.connect import ConnectError, Connector, ProtocolFactory
from sidecar.transport.tls_transport import TlsTransport

if TYPE_CHECKING:
    from sidecar.cluster import Target
    from sidecar.identity.certinfo import Certificate

log = logging.getLogger("sidecar.mtls")
_DEBUG = logging.DEBUG  # (a global fewer to look up per request)

STRICT = "strict"
PERMISSIVE = "permissive"
MODES = (STRICT, PERMISSIVE)
RBAC_ACCESS_DENIED = "RBAC: access denied"  # Envoy's body for a 403 from its RBAC filter

_TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a handshake (the ClientHello)
_ACCEPT_BATCH = 64  # connections accepted per readiness event, so one listener cannot starve
_ACCEPT_PAUSE = 0.1  # after an accept error (EMFILE...), before trying again
_VERDICT_PASSES = 3  # outbound TLS 1.3: loop passes to look for the peer's verdict at once
_VERDICT_POLL = 0.001  # then look this often (data or a close wake the wait at once)
_ENDPOINTS_LIMIT = 4096  # peer endpoints remembered (verdict, session to resume)


class OptionsError(ValueError):
    """Command-line credentials that do not fit together; the message says what to change."""


@dataclass(frozen=True)
class MtlsOptions:
    """Where the mesh credentials come from (`pysidecar run --ca/--cert/--key/--certs-dir...`).

    - files: `ca`, `cert`, `key`, or `certs_dir` holding `ca.crt`, `<dataplane name>.crt`, `.key`
      (what `pysidecar certs init/issue` write); a file given on its own wins over the directory;
    - dev mode: `ca_key` (with `ca` or `certs_dir/ca.crt`): the sidecar issues its own workload
      certificate at start into `certs_dir` (default: the CA's directory) and renews it at 80 %
      of its lifetime (`valid_for`).
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    certs_dir: Path | None = None
    ca_key: Path | None = None
    mode: str | None = None  # strict (the default with credentials) | permissive
    valid_for: timedelta = DEFAULT_WORKLOAD_VALIDITY

    @property
    def enabled(self) -> bool:
        return any(p is not None for p in (self.ca, self.cert, self.key, self.certs_dir))

    def check(self) -> None:
        """`OptionsError` for combinations that cannot work, before anything is read."""
        if self.mode is not None and self.mode not in MODES:
            raise OptionsError(f"--mtls must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.enabled:
            if self.ca_key is not None:
                raise OptionsError("--ca-key (dev mode) needs the CA certificate: give --ca")
            if self.mode is not None:
                raise OptionsError(
                    f"--mtls {self.mode} needs mesh credentials: give --ca, --cert and --key, "
                    "--certs-dir, or --ca and --ca-key (dev mode)"
                )
            return
        if self.ca_key is not None:
            if self.cert is not None or self.key is not None:
                raise OptionsError(
                    "--ca-key (dev mode) issues the workload certificate itself: "
                    "leave out --cert and --key"
                )
            if self.ca is None and self.certs_dir is None:
                raise OptionsError("--ca-key (dev mode) needs --ca or --certs-dir")
            return
        if self.certs_dir is None:
            missing = [
                flag
                for flag, value in (("--ca", self.ca), ("--cert", self.cert), ("--key", self.key))
                if value is None
            ]
            if missing:
                raise OptionsError(
                    f"mesh credentials need --ca, --cert and --key (missing {', '.join(missing)}),"
                    " or --certs-dir, or --ca with --ca-key (dev mode)"
                )

    def paths(self, dataplane_name: str) -> tuple[Path, Path, Path]:
        """The CA bundle, certificate and key files (in dev mode: the ones it will write)."""
        directory = self.certs_dir
        ca_path = self.ca or (directory / "ca.crt" if directory else None)
        assert ca_path is not None, "check() first"
        if self.ca_key is not None:
            workdir = directory or ca_path.parent
            return ca_path, workdir / f"{dataplane_name}.crt", workdir / f"{dataplane_name}.key"
        cert = self.cert or (directory / f"{dataplane_name}.crt" if directory else None)
        key = self.key or (directory / f"{dataplane_name}.key" if directory else None)
        assert cert is not None and key is not None, "check() first"
        return ca_path, cert, key


@dataclass(frozen=True)
class Peer:
    """The verified caller of one inbound connection."""

    service: str  # its kuma.io/service (the first, sorted, when it has several)
    spiffe_id: str  # spiffe://<mesh>/<service>: what x-forwarded-client-cert carries
    uris: tuple[str, ...]  # every URI SAN of its certificate
    tags: Mapping[str, frozenset[str]] = field(repr=False)  # for MeshTrafficPermission

    @classmethod
    def from_uris(cls, uris: Iterable[str], mesh: str) -> Peer:
        """`IdentityError` unless the URIs hold a `spiffe://<mesh>/<service>`."""
        uris = tuple(uris)
        service = spiffe.verify_client(uris, mesh)
        return cls(
            service,
            spiffe.spiffe_id(mesh, service),
            uris,
            spiffe.source_tags_from_uris(uris, mesh),
        )


class Stack(Protocol):
    """What an inbound listener under mTLS hands each accepted connection to
    (`sidecar.inbound.InboundStack`): it admits connections (its connection limit and the
    descriptor guard), counts those still in their handshake, and gives the handshake timeout.
    `may_relay_bytes`: a connection may go to the L4 relay (always for tcp and kafka; for an
    undeclared protocol, unless its preface is HTTP/2's), so its TLS transport is ours
    (`sidecar.transport.tls_transport`: half-close)."""

    def accept(self, peer: Peer | None) -> asyncio.Protocol: ...
    def admit(self) -> bool: ...
    def accept_failed(self, exc: OSError) -> None: ...
    def pending_started(self) -> None: ...
    def pending_settled(self) -> None: ...
    def may_relay_bytes(self) -> bool: ...
    @property
    def handshake_timeout(self) -> float: ...


# --- authorization -----------------------------------------------------------------------------


class Authorizer(PolicySet[MeshTrafficPermission]):
    """MeshTrafficPermission of the mesh directory, with the decisions logged and counted.

    Policies are replaced whole when the mesh directory changes (`update`); a decision is cached
    per (destination, caller identity) until then, so an HTTP request costs a dict lookup.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, mesh: str) -> None:
        super().__init__(POLICY_TYPE, parse_policy_document)
        self.mesh = mesh
        self._cache: dict[tuple[str, tuple[str, ...] | None], Decision] = {}

    def update(self, documents: Iterable[tuple[str, dict[str, Any]]]) -> bool:
        """Take the MeshTrafficPermission documents of a mesh snapshot; True when they changed
        (the decisions made under the old ones are forgotten)."""
        changed = super().update(documents)
        if changed:
            self._cache.clear()
        return changed

    def decide(self, service: str, peer: Peer | None) -> Decision:
        key = (service, peer.uris if peer is not None else None)
        decision = self._cache.get(key)
        if decision is None:
            tags = peer.tags if peer is not None else {}
            decision = decide(self.policies, service, tags, mesh=self.mesh)
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def plainly_allows(self, service: str, peer: Peer | None) -> bool:
        """Whether a call to `service` from `peer` is allowed and not shadow-denied under the
        policies now in force: such a call is only counted, and logged at debug level (what
        `allows` does for it), so a connection may keep this answer for its requests until
        `policies` is replaced (`sidecar.inbound`)."""
        decision = self.decide(service, peer)
        return decision.allowed and not decision.shadow_deny

    @staticmethod
    def logs_each_allowed() -> bool:
        """Whether `allows` writes a line for every allowed call (debug level, which the admin
        API's `/logging` can turn on at any time)."""
        return log.isEnabledFor(_DEBUG)

    def allows(
        self, service: str, peer: Peer | None, stats: ListenerStats, listener: str, what: str
    ) -> bool:
        """Decide a call to `service` from `peer` (None: a plaintext caller), count, log."""
        decision = self._cache.get((service, peer.uris if peer is not None else None))
        if decision is None:
            decision = self.decide(service, peer)
        if decision.allowed and not decision.shadow_deny:  # the usual request
            stats.rbac_allowed += 1
            if log.isEnabledFor(_DEBUG):
                log.debug(
                    "event=rbac_allowed listener=%s %s service=%s source=%s policy=%s",
                    listener,
                    what,
                    service,
                    _source(peer),
                    decision.policy_name or "-",
                )
            return True
        if not decision.allowed:
            stats.rbac_denied += 1
            log.info(
                "event=rbac_denied listener=%s %s service=%s source=%s policy=%s",
                listener,
                what,
                service,
                _source(peer),
                decision.policy_name or "-",
            )
            return False
        stats.rbac_allowed += 1
        stats.rbac_shadow_denied += 1
        log.info(
            "event=rbac_shadow_denied listener=%s %s service=%s source=%s policy=%s",
            listener,
            what,
            service,
            _source(peer),
            decision.policy_name,
        )
        return True


def _source(peer: Peer | None) -> str:
    """A caller as the RBAC log lines name it: looked up only for a line that is written."""
    return peer.spiffe_id if peer is not None else "plaintext"


# --- the sidecar's mTLS -------------------------------------------------------------------------


class MeshSecurity:
    def __init__(self, store: CredentialStore, mesh: str, mode: str) -> None:
        self.store = store
        self.mesh = mesh
        self.mode = mode
        self.authorizer = Authorizer(mesh)
        # What the outbound knows of each peer endpoint, for our current credentials.
        self._endpoints: dict[tuple[str, int], _EndpointState] = {}

    @classmethod
    def create(cls, options: MtlsOptions, dataplane: Dataplane) -> MeshSecurity:
        """Load (or, in dev mode, issue) the credentials; `CredentialsError` names the file."""
        options.check()
        ca_path, cert_path, key_path = options.paths(dataplane.name)
        if options.ca_key is not None:
            store = CredentialStore.dev(
                ca_path,
                options.ca_key,
                dataplane,
                cert_path.parent,
                valid_for=options.valid_for,
            )
        else:
            store = CredentialStore.from_files(ca_path, cert_path, key_path)
        security = cls(store, dataplane.mesh, options.mode or STRICT)
        creds = store.credentials
        ours = spiffe.client_services(creds.identities, dataplane.mesh)
        if not ours:
            raise CredentialsError(
                creds.cert_path,
                f"certificate has no spiffe://{dataplane.mesh}/ identity "
                f"(found {spiffe.describe(creds.identities)}); it cannot serve mesh "
                f"{dataplane.mesh!r}",
            )
        missing = sorted({inbound.service for inbound in dataplane.networking.inbound} - set(ours))
        if missing:
            log.warning(
                "event=certificate_misses_services cert=%s services=%s reason=%r",
                creds.cert_path,
                ",".join(missing),
                "peers calling these services will refuse this sidecar's certificate",
            )
        log.info(
            "event=mtls_enabled mode=%s mesh=%s identity=%s not_after=%s ca=%s cert=%s%s",
            security.mode,
            dataplane.mesh,
            spiffe.describe(creds.identities),
            creds.not_after.isoformat(),
            creds.ca_path,
            creds.cert_path,
            " dev_mode=issued" if options.ca_key is not None else "",
        )
        return security

    def certs_document(self) -> dict[str, Any]:
        """The admin API's `/certs`, in Envoy's shape: the CA bundle and our chain in use."""
        creds = self.store.credentials
        now = datetime.now(UTC)

        def describe(cert: Certificate, path: Path) -> dict[str, Any]:
            return {
                "path": str(path),
                "serial_number": format(cert.serial_number, "x"),
                "subject_alt_names": [{"uri": uri} for uri in cert.uris],
                "days_until_expiration": str(tls.days_until_first_expiring([cert], now)),
                "valid_from": cert.not_valid_before_utc.isoformat(),
                "expiration_time": cert.not_valid_after_utc.isoformat(),
            }

        return {
            "certificates": [
                {
                    "ca_cert": [describe(c, creds.ca_path) for c in creds.ca_certs],
                    "cert_chain": [describe(c, creds.cert_path) for c in creds.chain],
                }
            ]
        }

    def start(self) -> asyncio.Task[None]:
        """Watch the credential files (and renew in dev mode); cancel the task to stop."""
        return asyncio.get_running_loop().create_task(self.store.watch())

    # -- outbound ---------------------------------------------------------------------------

    def connector(
        self,
        service: str,
        timeout: float,
        stats: ClusterStats | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Connector:
        """mTLS toward the sidecars of `service` (`tags`: an outbound subset, part of the SNI).

        The connector makes asyncio's TLS transport (the HTTP/2 mesh pool rides it); its `relay`
        attribute is the same hop on our own `TlsTransport` (`sidecar.transport.tls_transport`),
        which the L4 relay takes: OpenSSL straight on the socket, and half-close.
        """
        mesh = self.mesh
        store = self.store
        sni = tls.server_hostname(service, mesh, dict(tags or {}))
        wanted = spiffe.spiffe_id(mesh, service)
        endpoints = self._endpoints

        async def dial(
            target: Target, factory: ProtocolFactory, own: bool
        ) -> asyncio.BaseTransport:
            loop = asyncio.get_running_loop()
            started = loop.time()
            if stats is not None:
                stats.upstream_cx_total += 1
            gate = _ClientGate()
            transport: asyncio.BaseTransport | None = None
            # The context and the generation are read together: a rotation during this
            # connection applies to the next one.
            context, generation = store.client_context, store.generation
            endpoint = (target.host, target.port)
            state = endpoints.get(endpoint)
            if state is None or state.generation != generation:
                if len(endpoints) >= _ENDPOINTS_LIMIT:
                    endpoints.clear()
                state = endpoints[endpoint] = _EndpointState(generation)
            if context.sslobject_class is not _ResumingSSLObject:
                context.sslobject_class = _ResumingSSLObject
            session = state.session_to_offer(context)
            offered = _offered_session.set(session)
            try:
                async with asyncio.timeout(timeout):
                    if own:
                        transport = await _open_own_tls(loop, target, context, sni, session, gate)
                    else:
                        transport, _ = await loop.create_connection(
                            lambda: gate,
                            target.host,
                            target.port,
                            ssl=context,
                            server_hostname=sni,
                            ssl_handshake_timeout=timeout,
                        )
                    ssl_object = transport.get_extra_info("ssl_object")
                    uris = tls.peer_uris(ssl_object)
                    if wanted not in uris:
                        raise ConnectError(
                            f"{target}: peer is not {wanted} (found {spiffe.describe(uris)})"
                        )
                    if not state.accepted:
                        try:
                            await gate.peer_verdict(
                                ssl_object, loop.time() + defaults.MTLS_PEER_VERDICT_WAIT
                            )
                        except ConnectError as exc:
                            raise ConnectError(f"{target}: {exc}") from None
                        state.accepted = True
            except TimeoutError:
                _abort(transport)
                state.forget()
                if stats is not None:
                    stats.upstream_cx_connect_timeout += 1
                    stats.upstream_cx_connect_fail += 1
                raise ConnectError(f"{target}: connect timeout (TCP and mTLS handshake)") from None
            except ConnectError:
                _abort(transport)
                state.forget()
                if stats is not None:
                    stats.upstream_cx_connect_fail += 1
                raise
            except (OSError, IdentityError) as exc:
                _abort(transport)
                state.forget()
                if stats is not None:
                    stats.upstream_cx_connect_fail += 1
                raise ConnectError(f"{target}: {describe_tls_error(exc)}") from None
            finally:
                _offered_session.reset(offered)
            state.connected(ssl_object, session)
            if own:
                # checked and accepted: a resumed connection's records become ours (issue 8)
                transport.detach()  # type: ignore[attr-defined]
            if stats is not None:
                stats.ssl_handshake += 1
                stats.upstream_cx_connect_ms.observe((loop.time() - started) * 1000)
            gate.hand_over(factory())
            return transport

        async def connect(target: Target, factory: ProtocolFactory) -> asyncio.BaseTransport:
            return await dial(target, factory, False)

        async def relay(target: Target, factory: ProtocolFactory) -> asyncio.BaseTransport:
            return await dial(target, factory, True)

        connect.relay = relay  # type: ignore[attr-defined]
        return connect

    # -- inbound ----------------------------------------------------------------------------

    async def listen(
        self,
        stack: Stack,
        name: str,
        address: str,
        port: int,
        stats: ListenerStats,
        reuse_port: bool = False,
        bind: bool = True,
    ) -> MeshListener:
        """Bind an inbound listener that accepts mTLS (and plaintext in permissive mode).

        `reuse_port`: SO_REUSEPORT, for a sidecar of several worker processes (`--workers`).
        `bind` False: no socket; it serves what is given to its `adopt` (transparent
        proxying). `OSError` when the address cannot be bound.
        """
        if not bind:
            return MeshListener(self, stack, name, stats, None)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        listener = MeshListener(self, stack, name, stats, sock)
        listener.start()
        return listener


# The session the connector offers for the connection it is making: set around
# `create_connection`, read when asyncio or uvloop wraps the socket (in the callback that the
# connection's transport runs with the connecting task's context).
_offered_session: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "pysidecar_offered_session", default=None
)


class _ResumingSSLObject(ssl.SSLObject):
    """Client side: offers the session that the connector picked for this endpoint.

    TLS 1.3 resumption (a session ticket from an earlier connection to the same endpoint, with
    a fresh ECDHE exchange) skips the certificate signatures and chain checks, which are most of
    a handshake's CPU; both sides still see each other's certificate from the session, so the
    SPIFFE checks run as for a full handshake. A ticket is only good for the server context that
    issued it: after a rotation on either side the handshake is a full one again.
    """

    @classmethod
    def _create(  # type: ignore[override]
        cls,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
        context: ssl.SSLContext | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side:
            session = _offered_session.get()
        try:
            return super()._create(  # type: ignore[misc]
                incoming,
                outgoing,
                server_side=server_side,
                server_hostname=server_hostname,
                session=session,
                context=context,
            )
        except ValueError:  # a session of another context (a rotation in between)
            return super()._create(  # type: ignore[misc]
                incoming,
                outgoing,
                server_side=server_side,
                server_hostname=server_hostname,
                context=context,
            )


class _EndpointState:
    """One peer endpoint, for one generation of our credentials.

    The session offered to the endpoint is kept and offered again, not replaced by the latest
    connection's after each one. Taken anew after every connection, each connection resumed
    from another session (the one before it's), and an idle sidecar A kept about 2 KB more of
    OpenSSL's memory per connection than when they all resume from one (`python -m
    bench.memprobe --mtls`, issue 8), which they share (`tls_transport.wrap` hands it to
    OpenSSL itself). A fresh session is taken from the latest connection only when the kept
    one is of no more use: expired, marked not resumable by OpenSSL (then `wrap` would have to
    resume through the ssl module's copy of it, one per connection: `shares_session`), or not
    taken by the peer (a full handshake where it was offered: the peer restarted or changed
    its ticket keys, so it would refuse it again).
    """

    __slots__ = ("generation", "accepted", "session", "latest")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.accepted = False  # it accepted our certificate once: no more verdict waits
        self.session: ssl.SSLSession | None = None  # the one offered, kept while it serves
        self.latest: ssl.SSLObject | None = None  # the last connection, whose ticket may come

    def session_to_offer(self, context: ssl.SSLContext) -> ssl.SSLSession | None:
        """The session to resume from (None: a full handshake); `context`: the connection's."""
        session = self.session
        now = time.time()
        if session is not None:
            if now >= session.time + session.timeout:
                self.session = session = None  # expired: the server would refuse it
            elif tls_transport.shares_session(session, context):
                return session  # the common case: no copy, no parse
        # None kept, or one that OpenSSL marked: the latest connection's, once its ticket
        # came, if it can be shared. Otherwise a full handshake: a resumed connection gets
        # no new ticket from a pysidecar peer (`tls_handoff`), so offering the marked one
        # (through the ssl module's copy of it, one per connection) would never end.
        latest = self.latest
        if latest is not None:
            fresh = latest.session  # SSL_get1_session: that connection's current session
            if (
                fresh is not None
                and fresh.has_ticket
                and now < fresh.time + fresh.timeout
                and tls_transport.shares_session(fresh, context)
            ):
                self.session, self.latest = fresh, None
                return fresh
        if session is not None and not tls_transport.shares_session(session, context):
            self.session = session = None
        return session

    def connected(self, ssl_object: ssl.SSLObject | None, offered: ssl.SSLSession | None) -> None:
        """A connection was made (with `offered` to resume from): its session ticket, once it
        came, is there for later ones. One that did not resume from the session kept makes
        that session useless (the peer would not take it again): the next connection offers
        this one's instead."""
        self.latest = ssl_object
        if (
            offered is not None
            and offered is self.session
            and ssl_object is not None
            and not ssl_object.session_reused
        ):
            self.session = None

    def forget(self) -> None:
        """A failed connection: verify the next one fully, and offer no session."""
        self.accepted = False
        self.session = self.latest = None


def _abort(transport: asyncio.BaseTransport | None) -> None:
    if transport is not None and not transport.is_closing():
        transport.abort()


async def _open_own_tls(
    loop: asyncio.AbstractEventLoop,
    target: Target,
    context: ssl.SSLContext,
    sni: str | None,
    session: ssl.SSLSession | None,
    protocol: asyncio.Protocol,
) -> TlsTransport:
    """TCP connect and TLS handshake as a client, on our own transport (the caller bounds it
    in time); `session`: the one to resume."""
    family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, (target.host, target.port))
        sslobj = tls_transport.wrap(
            context, sock, server_side=False, server_hostname=sni, session=session
        )
        await tls_transport.handshake(loop, sock, sslobj)
    except BaseException:
        sock.close()
        raise
    return TlsTransport.start(loop, sock, sslobj, protocol)


def describe_tls_error(exc: BaseException) -> str:
    """A refusal's reason for a log line: OpenSSL's words, the certificate problem if any."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return f"certificate verify failed: {detail}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").lower().replace("_", " ")
        if reason:
            return f"TLS error: {reason}"
        return f"TLS error: {exc}"
    if isinstance(exc, IdentityError):
        return str(exc)
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc):
        return "TLS handshake timeout"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset during the TLS handshake"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class _ClientGate(asyncio.Protocol):
    """Holds a fresh outbound mTLS connection until it may be used, then hands it over.

    With TLS 1.3 our side of the handshake ends before the peer has checked our certificate; a
    peer that refuses it says so with an alert on our first read. The peer's verdict is visible
    a round trip later: a session ticket (OpenSSL and BoringSSL servers send them as soon as they
    accept the client), data, or the alert and close. `peer_verdict` waits for one of these, at
    most `MTLS_PEER_VERDICT_WAIT`, so that a refusal fails this endpoint (and the caller tries the
    next) instead of breaking the first request. A peer that sends no ticket and stays silent is
    used after the wait. Bytes read meanwhile are replayed to the real protocol. The connector
    waits only for the first connection to an endpoint per credentials generation (and after a
    failure): an endpoint that accepted our certificate is trusted to accept it again until our
    credentials rotate (a peer that changes its mind later fails that connection on its first
    read instead).
    """

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.data: list[bytes] = []
        self.eof = False
        self.closed = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data.append(data)
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        # The peer finished sending before the hand-over (the app behind it spoke first and
        # half-closed at once). Our own TlsTransport (TLS 1.3) can stay half-open: keep our
        # direction for the protocol it is handed to, which gets this EOF in `hand_over`.
        # asyncio's and uvloop's TLS transports cannot (can_write_eof() is False): they close.
        transport = self.transport
        return transport is not None and transport.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def peer_verdict(self, ssl_object: ssl.SSLObject | None, until: float) -> None:
        """Return once the peer accepted us (or nothing tells); `ConnectError` if it refused."""
        if ssl_object is None or ssl_object.version() != "TLSv1.3":
            return  # TLS 1.2: the peer checked our certificate within the handshake
        loop = asyncio.get_running_loop()
        passes = 0
        while True:
            if self.data:
                return  # it spoke to us: it accepted us
            session = ssl_object.session
            if session is not None and session.has_ticket:
                return  # accepted (it may still close at once, e.g. denied by its policy)
            if self.closed or self.eof:
                reason = describe_tls_error(self.error) if self.error else "closed by the peer"
                raise ConnectError(
                    f"peer refused our certificate right after the handshake ({reason})"
                )
            now = loop.time()
            if now >= until:
                return  # no ticket and silent: nothing tells, use it
            passes += 1
            if passes <= _VERDICT_PASSES:
                await asyncio.sleep(0)  # the ticket is often in the very next read
                continue
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(min(_VERDICT_POLL, until - now), self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None

    def hand_over(self, protocol: asyncio.BaseProtocol) -> None:
        """Give the connection, and what happened on it meanwhile, to its real protocol."""
        transport = self.transport
        assert transport is not None
        if not self.closed:
            transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.data:
            data, self.data = b"".join(self.data), []
            protocol.data_received(data)  # type: ignore[attr-defined]
        if self.eof:
            protocol.eof_received()  # type: ignore[attr-defined]
        if self.closed:
            protocol.connection_lost(self.error)


# --- inbound ------------------------------------------------------------------------------------


class MeshListener:
    """An inbound listener under mTLS: accepts, tells TLS from plaintext, verifies the caller.

    Has the part of `asyncio.Server` the runtime uses (`close`, `sockets`, `wait_closed`). Without
    a socket of its own (transparent proxying) it serves the connections given to `adopt`.
    """

    def __init__(
        self,
        security: MeshSecurity,
        stack: Stack,
        name: str,
        stats: ListenerStats,
        sock: socket.socket | None,
    ) -> None:
        self.security = security
        self.stack = stack
        self.name = name
        self.stats = stats
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.handshakes: set[asyncio.Task[None]] = set()
        self._closed_event = asyncio.Event()

    # asyncio.Server's surface

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self.closed or self.sock is None else (self.sock,)

    def close(self) -> None:
        """Stop accepting; connections already accepted (and handshakes under way) go on."""
        if self.closed:
            return
        self.closed = True
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    # accepting

    def start(self) -> None:
        assert self.sock is not None
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the socket stays readable, so step back for a moment
                # rather than spinning on it (the stack logs it once per episode).
                self.stack.accept_failed(exc)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(_ACCEPT_PAUSE, self._resume)
                return
            self.adopt(conn, address)

    def adopt(self, conn: socket.socket, address: Any) -> None:
        """Serve an accepted connection: this listener's own, or one a redirect listener
        found meant for it (transparent proxying)."""
        if self.closed or not self.stack.admit():  # over the connection limit, or out of fds
            conn.close()
            return
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        _Incoming(self, conn, address).start()

    def _resume(self) -> None:
        if not self.closed:
            self.start()

    def peer_name(self, address: Any) -> str:
        if isinstance(address, tuple) and len(address) >= 2:
            return host_port(address[0], address[1])
        return str(address)

    def refused(self, address: Any, reason: str, *, verify: bool = False) -> None:
        """One log line and one count per refused connection."""
        if verify:
            self.stats.ssl_fail_verify_error += 1
        else:
            self.stats.ssl_connection_error += 1
        log.warning(
            "event=tls_refused listener=%s peer=%s mode=%s reason=%r",
            self.name,
            self.peer_name(address),
            self.security.mode,
            reason,
        )

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)


class _Incoming:
    """One accepted socket until it is TLS, plaintext or refused (its first byte decides)."""

    __slots__ = ("listener", "conn", "address", "deadline", "timeout", "_timer", "_fd", "_done")

    def __init__(self, listener: MeshListener, conn: socket.socket, address: Any) -> None:
        self.listener = listener
        self.conn = conn
        self.address = address
        # From accept to a verified peer (a client that stalls mid-handshake is cut here).
        self.timeout = listener.stack.handshake_timeout
        self.deadline = listener.loop.time() + self.timeout
        self._timer: asyncio.TimerHandle | None = None
        self._fd = conn.fileno()
        self._done = False

    def start(self) -> None:
        loop = self.listener.loop
        self.listener.stack.pending_started()  # counted among the listener's connections
        loop.add_reader(self._fd, self._readable)
        wait = (
            defaults.PERMISSIVE_DETECTION_TIMEOUT
            if self.listener.security.mode == PERMISSIVE
            else self.timeout
        )
        self._timer = loop.call_later(wait, self._silent)

    def _settle(self) -> None:
        """Handed over to a protocol, or closed: no longer pending."""
        if not self._done:
            self._done = True
            self.listener.stack.pending_settled()

    def _stop_waiting(self) -> None:
        self.listener.loop.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _readable(self) -> None:
        try:
            first = self.conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return  # a spurious wake-up: keep waiting
        except OSError as exc:
            self._stop_waiting()
            self.conn.close()
            self._settle()
            log.debug(
                "event=connection_lost_before_handshake listener=%s peer=%s error=%r",
                self.listener.name,
                self.listener.peer_name(self.address),
                exc.strerror or str(exc),
            )
            return
        self._stop_waiting()
        listener = self.listener
        if first and first[0] == _TLS_HANDSHAKE:
            listener.spawn(self._tls())
        elif listener.security.mode == PERMISSIVE:
            listener.spawn(self._plaintext())
        elif not first:
            # Connected and closed without a byte (a port probe): nothing to refuse.
            self.conn.close()
            self._settle()
            log.debug(
                "event=closed_before_handshake listener=%s peer=%s",
                listener.name,
                listener.peer_name(self.address),
            )
        else:
            self.conn.close()
            self._settle()
            listener.refused(
                self.address,
                f"not TLS: first byte 0x{first[0]:02x} is not a TLS handshake record "
                "(a plaintext client? this inbound requires mTLS)",
            )

    def _silent(self) -> None:
        self._timer = None
        self._stop_waiting()
        listener = self.listener
        if listener.security.mode == PERMISSIVE:
            listener.spawn(self._plaintext())  # a plaintext client waiting for its server
            return
        self.conn.close()
        self._settle()
        listener.refused(self.address, f"no TLS ClientHello within {self.timeout:g} s")

    async def _plaintext(self) -> None:
        listener = self.listener
        try:
            await listener.loop.connect_accepted_socket(
                lambda: listener.stack.accept(None), self.conn
            )
        except OSError:
            self.conn.close()
        finally:
            self._settle()

    async def _tls(self) -> None:
        listener = self.listener
        loop = listener.loop
        timeout = max(0.1, self.deadline - loop.time())
        context = listener.security.store.server_context  # the current one: rotation
        try:
            if listener.stack.may_relay_bytes():
                # The L4 relay may take the connection: our own transport (fewer copies,
                # half-close), which the HTTP/2 server of an undeclared service's inbound rides
                # too when the preface says HTTP/2; a declared HTTP inbound keeps asyncio's.
                async with asyncio.timeout(timeout):
                    sslobj = tls_transport.wrap(context, self.conn, server_side=True)
                    await tls_transport.handshake(loop, self.conn, sslobj)
                TlsTransport.start(loop, self.conn, sslobj, _ServerGate(listener, self.address))
            else:
                await loop.connect_accepted_socket(
                    lambda: _ServerGate(listener, self.address),
                    self.conn,
                    ssl=context,
                    ssl_handshake_timeout=timeout,
                )
        except Exception as exc:  # noqa: BLE001 - every refusal is logged and counted alike
            self.conn.close()
            listener.refused(
                self.address,
                describe_tls_error(exc),
                verify=isinstance(exc, ssl.SSLCertVerificationError),
            )
        finally:
            self._settle()


class _ServerGate(asyncio.Protocol):
    """Sees the connection right after the handshake: checks the caller's SPIFFE identity and
    hands the connection to the listener's stack with the verified `Peer`."""

    def __init__(self, listener: MeshListener, address: Any) -> None:
        self.listener = listener
        self.address = address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self.listener
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            peer = Peer.from_uris(tls.peer_uris(ssl_object), listener.security.mesh)
        except IdentityError as exc:
            transport.abort()
            listener.refused(self.address, str(exc), verify=True)
            return
        stats = listener.stats
        stats.ssl_handshake += 1
        stats.source(peer.service).downstream_cx_total += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event=mtls_accepted listener=%s peer=%s identity=%s version=%s alpn=%s "
                "cipher=%s resumed=%s",
                listener.name,
                listener.peer_name(self.address),
                peer.spiffe_id,
                ssl_object.version(),
                ssl_object.selected_alpn_protocol(),
                (ssl_object.cipher() or ("",))[0],
                ssl_object.session_reused,
            )
        if isinstance(transport, TlsTransport):
            # the identity is read: a resumed connection's records become ours (issue 8)
            transport.detach()
        protocol = listener.stack.accept(peer)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - handed over before
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


__all__ = [
    "MODES",
    "PERMISSIVE",
    "RBAC_ACCESS_DENIED",
    "STRICT",
    "Authorizer",
    "MeshListener",
    "MeshSecurity",
    "MtlsOptions",
    "OptionsError",
    "Peer",
    "describe_tls_error",
]
