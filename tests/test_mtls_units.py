"""The pure parts of the mesh mTLS seam: credential options, authorization decisions (cached,
counted, refreshed), refusal reasons."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from sidecar.identity.mesh import Authorizer, MtlsOptions, OptionsError, Peer, describe_tls_error
from sidecar.identity.spiffe import IdentityError
from sidecar.observe.stats import ListenerStats


def test_options_resolve_files_and_directories():
    certs = Path("/c")
    assert MtlsOptions(certs_dir=certs).paths("web-1") == (
        certs / "ca.crt",
        certs / "web-1.crt",
        certs / "web-1.key",
    )
    files = MtlsOptions(ca=Path("/x/ca.pem"), cert=Path("/x/w.pem"), key=Path("/x/w.key"))
    assert files.paths("web-1") == (Path("/x/ca.pem"), Path("/x/w.pem"), Path("/x/w.key"))
    # A file given on its own wins over the directory.
    mixed = MtlsOptions(certs_dir=certs, ca=Path("/bundle.pem"))
    assert mixed.paths("web-1")[0] == Path("/bundle.pem")
    # Dev mode writes next to the CA unless a directory is given.
    dev = MtlsOptions(ca=Path("/ca/ca.crt"), ca_key=Path("/ca/ca.key"))
    assert dev.paths("web-1")[1:] == (Path("/ca/web-1.crt"), Path("/ca/web-1.key"))
    assert not MtlsOptions().enabled and MtlsOptions(certs_dir=certs).enabled


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (MtlsOptions(cert=Path("a"), key=Path("b")), "missing --ca"),
        (MtlsOptions(ca=Path("a")), "missing --cert, --key"),
        (MtlsOptions(mode="permissive"), "needs mesh credentials"),
        (MtlsOptions(ca_key=Path("k")), "needs the CA certificate"),
        (MtlsOptions(ca=Path("a"), ca_key=Path("k"), key=Path("b")), "leave out --cert and --key"),
        (MtlsOptions(certs_dir=Path("d"), mode="lenient"), "must be one of strict, permissive"),
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_is_read(options, message):
    with pytest.raises(OptionsError, match=message):
        options.check()


def peer(service: str, *tags: str) -> Peer:
    return Peer.from_uris(
        [f"spiffe://default/{service}", f"kuma://kuma.io/service/{service}", *tags], "default"
    )


def test_peer_needs_an_identity_of_the_mesh():
    assert peer("web").spiffe_id == "spiffe://default/web"
    assert peer("web", "kuma://team/ops").tags["team"] == frozenset({"ops"})
    with pytest.raises(IdentityError, match="found spiffe://other/web"):
        Peer.from_uris(["spiffe://other/web"], "default")


def mtp(name: str, froms: list[tuple[dict, str]], target: str | None = "backend") -> dict:
    spec: dict = {"from": [{"targetRef": r, "default": {"action": a}} for r, a in froms]}
    if target:
        spec["targetRef"] = {"kind": "MeshService", "name": target}
    return {"type": "MeshTrafficPermission", "name": name, "spec": spec}


def test_authorizer_decides_counts_and_follows_updates(caplog):
    caplog.set_level(logging.DEBUG, "sidecar.mtls")
    authz = Authorizer("default")
    stats = ListenerStats("127.0.0.1_1", "inbound_127.0.0.1_1")
    web, admin = peer("web"), peer("admin", "kuma://team/ops")
    assert authz.allows("backend", web, stats, "inbound:x", "protocol=tcp")
    assert authz.update(
        [
            (
                "p.yaml",
                mtp(
                    "only-web",
                    [({"kind": "Mesh"}, "Deny"), ({"kind": "MeshService", "name": "web"}, "Allow")],
                ),
            )
        ]
    )
    assert not authz.update(
        [
            (
                "p.yaml",
                mtp(
                    "only-web",
                    [({"kind": "Mesh"}, "Deny"), ({"kind": "MeshService", "name": "web"}, "Allow")],
                ),
            )
        ]
    ), "the same policies: no change"
    assert authz.allows("backend", web, stats, "inbound:x", "protocol=tcp")
    assert not authz.allows("backend", admin, stats, "inbound:x", "protocol=http")
    assert not authz.allows("backend", None, stats, "inbound:x", "protocol=tcp"), "plaintext"
    assert (stats.rbac_allowed, stats.rbac_denied) == (2, 2)
    assert (
        "event=rbac_denied listener=inbound:x protocol=http service=backend "
        "source=spiffe://default/admin policy=only-web" in caplog.text
    )
    # Subset rules and shadow deny.
    authz.update(
        [
            (
                "p.yaml",
                mtp(
                    "shadow",
                    [({"kind": "MeshSubset", "tags": {"team": "ops"}}, "AllowWithShadowDeny")],
                ),
            )
        ]
    )
    assert authz.allows("backend", admin, stats, "inbound:x", "protocol=tcp")
    assert stats.rbac_shadow_denied == 1
    assert not authz.allows("backend", web, stats, "inbound:x", "protocol=tcp"), "no match"
    # No policy at all: everyone.
    authz.update([])
    assert authz.allows("backend", admin, stats, "inbound:x", "protocol=tcp")


def test_a_broken_policy_is_left_out_with_one_warning(caplog):
    authz = Authorizer("default")
    broken = {"type": "MeshTrafficPermission", "name": "broken", "spec": {"from": "nope"}}
    for _ in range(3):
        authz.update([("bad.yaml", broken)])
    warnings = [r for r in caplog.records if "event=policy_skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "bad.yaml" in warnings[0].getMessage()
    assert authz.policies == ()


def test_refusal_reasons_read_like_what_went_wrong():
    verify = ssl.SSLCertVerificationError(1, "x")
    verify.verify_message = "certificate has expired"
    assert describe_tls_error(verify) == "certificate verify failed: certificate has expired"
    alert = ssl.SSLError(1, "x")
    alert.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert describe_tls_error(alert) == "TLS error: peer did not return a certificate"
    assert describe_tls_error(ConnectionResetError()) == "connection reset during the TLS handshake"
    assert describe_tls_error(TimeoutError()) == "TLS handshake timeout"
