"""The mesh CA and workload certificates, field by field, and the PEM file helpers."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.config.dataplane import parse_dataplane
from sidecar.identity import ca

DATAPLANE = """
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 10001
      servicePort: 8080
      tags:
        kuma.io/service: web
        kuma.io/protocol: http
        version: v2
        zone: east
    - port: 10002
      servicePort: 8081
      tags:
        kuma.io/service: admin
        version: v1
    - port: 10003
      servicePort: 8082
      tags:
        kuma.io/service: web
        version: v2
"""

GATEWAY = """
type: Dataplane
mesh: edge
name: gw-1
networking:
  address: 127.0.0.1
  gateway:
    tags:
      kuma.io/service: edge-gateway
"""


@pytest.fixture(scope="module")
def dataplane():
    return parse_dataplane(DATAPLANE, "dp.yaml")


@pytest.fixture(scope="module")
def mesh_ca():
    return ca.create_ca("default")


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


# --- the CA -------------------------------------------------------------------------------------


def test_ca_subject_names_the_mesh_and_is_self_signed():
    made = ca.create_ca("payments", now=NOW)
    cert = made.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "payments"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "pysidecar"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed: raises if not
    assert ca.ca_mesh(cert) == "payments"


def test_ca_extensions():
    cert = ca.create_ca("default", now=NOW).cert
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature and not ku.value.key_encipherment
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://default"]
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def test_ca_validity_and_key_types():
    made = ca.create_ca("default", now=NOW, valid_days=30)
    assert made.cert.not_valid_before_utc == NOW - timedelta(seconds=10)
    assert made.cert.not_valid_after_utc == NOW + timedelta(days=30)
    assert isinstance(made.key, ec.EllipticCurvePrivateKey)
    assert made.key.curve.name == "secp256r1"
    default = ca.create_ca("default", now=NOW)
    assert default.cert.not_valid_after_utc == NOW + timedelta(days=3650)
    rsa_ca = ca.create_ca("default", rsa=True, now=NOW)
    assert isinstance(rsa_ca.key, rsa.RSAPrivateKey)
    assert rsa_ca.key.key_size == 2048
    assert isinstance(rsa_ca.cert.public_key(), rsa.RSAPublicKey)


def test_ca_rejects_bad_arguments():
    with pytest.raises(ca.IssueError):
        ca.create_ca("")
    with pytest.raises(ca.IssueError):
        ca.create_ca("default", valid_days=0)


# --- workload certificates ----------------------------------------------------------------------


def test_workload_uris_follow_kuma(dataplane):
    assert ca.workload_uris(dataplane) == [
        "spiffe://default/admin",
        "spiffe://default/web",
        "kuma://kuma.io/protocol/http",
        "kuma://kuma.io/service/admin",
        "kuma://kuma.io/service/web",
        "kuma://version/v1",
        "kuma://version/v2",
        "kuma://zone/east",
    ]


def test_workload_certificate_fields(mesh_ca, dataplane):
    issued = ca.issue_workload(mesh_ca.cert, mesh_ca.key, dataplane, now=NOW)
    cert = issued.cert
    # Empty subject, so the SAN extension is critical.
    assert cert.subject == x509.Name([])
    assert len(cert.subject.rdns) == 0
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == ca.workload_uris(
        dataplane
    )
    assert san.value.get_values_for_type(x509.DNSName) == []
    # Issuer and signature.
    assert cert.issuer == mesh_ca.cert.subject
    cert.verify_directly_issued_by(mesh_ca.cert)
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(mesh_ca.cert, x509.SubjectKeyIdentifier).value.digest
    # Key usage.
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and ku.value.key_encipherment and ku.value.key_agreement
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    assert not ku.value.content_commitment and not ku.value.data_encipherment
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    bc = ext(cert, x509.BasicConstraints).value
    assert bc.ca is False
    # Validity: not-before 10 s in the past, 24 h by default.
    assert cert.not_valid_before_utc == NOW - timedelta(seconds=10)
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    # Serial: positive, below 2^128.
    assert 0 < cert.serial_number < 2**128
    # Key: ECDSA P-256 by default, and the key belongs to the certificate.
    assert isinstance(issued.key, ec.EllipticCurvePrivateKey)
    assert issued.key.curve.name == "secp256r1"
    assert ca.cert_matches_key(cert, issued.key)
    assert cert.version == x509.Version.v3


def test_workload_rsa_and_validity(mesh_ca, dataplane):
    issued = ca.issue_workload(
        mesh_ca.cert, mesh_ca.key, dataplane, rsa=True, valid_for=timedelta(hours=2), now=NOW
    )
    assert isinstance(issued.key, rsa.RSAPrivateKey)
    assert issued.key.key_size == 2048
    assert issued.cert.not_valid_after_utc == NOW + timedelta(hours=2)


def test_workload_serials_are_random(mesh_ca, dataplane):
    serials = {
        ca.issue_workload(mesh_ca.cert, mesh_ca.key, dataplane).cert.serial_number
        for _ in range(20)
    }
    assert len(serials) == 20
    assert all(0 < s < 2**128 for s in serials)
    # Random 128-bit draws: at least one of them uses the upper half of the range.
    assert max(serials) > 2**100


def test_workload_never_outlives_its_ca(dataplane):
    short = ca.create_ca("default", valid_days=1, now=NOW)
    issued = ca.issue_workload(
        short.cert, short.key, dataplane, valid_for=timedelta(days=10), now=NOW
    )
    assert issued.cert.not_valid_after_utc == short.cert.not_valid_after_utc


def test_gateway_dataplane_gets_its_service():
    gateway = parse_dataplane(GATEWAY, "gw.yaml")
    mesh_ca = ca.create_ca("edge")
    issued = ca.issue_workload(mesh_ca.cert, mesh_ca.key, gateway)
    san = ext(issued.cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://edge/edge-gateway",
        "kuma://kuma.io/service/edge-gateway",
    ]


def test_issue_refuses_a_key_of_another_ca(mesh_ca, dataplane):
    other = ca.create_ca("default")
    with pytest.raises(ca.IssueError, match="does not belong"):
        ca.issue_workload(mesh_ca.cert, other.key, dataplane)
    with pytest.raises(ca.IssueError, match="positive"):
        ca.issue_workload(mesh_ca.cert, mesh_ca.key, dataplane, valid_for=timedelta(0))


def test_dataplane_without_service_has_no_identity(mesh_ca):
    # Validation refuses such a file; a model built in code can still lack any service.
    from sidecar.config import model

    bare = model.Dataplane(
        mesh="default",
        name="x",
        source="bare.yaml",
        networking=model.Networking(address="127.0.0.1"),
    )
    with pytest.raises(ca.IssueError, match="bare.yaml"):
        ca.issue_workload(mesh_ca.cert, mesh_ca.key, bare)


# --- files --------------------------------------------------------------------------------------


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_keys_are_0600_and_round_trip(tmp_path, mesh_ca, dataplane):
    issued = ca.issue_workload(mesh_ca.cert, mesh_ca.key, dataplane)
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        ca.write_cert_key(tmp_path / "w.crt", tmp_path / "w.key", issued)
    finally:
        os.umask(old_umask)
    assert mode(tmp_path / "w.key") == 0o600
    assert mode(tmp_path / "w.crt") == 0o644
    assert ca.load_certificate(tmp_path / "w.crt") == issued.cert
    key = ca.load_private_key(tmp_path / "w.key")
    assert ca.cert_matches_key(issued.cert, key)
    # Overwriting an existing, more open file still leaves a 0600 key.
    (tmp_path / "open.key").write_text("x")
    os.chmod(tmp_path / "open.key", 0o666)
    ca.write_private_key(tmp_path / "open.key", issued.key)
    assert mode(tmp_path / "open.key") == 0o600
    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["open.key", "w.crt", "w.key"]


def test_bundle_round_trip_and_load_ca(tmp_path):
    old, new = ca.create_ca("default"), ca.create_ca("default")
    ca.write_certificate(tmp_path / "bundle.crt", old.cert, new.cert)
    assert ca.load_certificates(tmp_path / "bundle.crt") == [old.cert, new.cert]
    ca.write_private_key(tmp_path / "new.key", new.key)
    cert, key = ca.load_ca(tmp_path / "bundle.crt", tmp_path / "new.key")
    assert cert == new.cert
    ca.write_private_key(tmp_path / "stranger.key", ca.create_ca("default").key)
    with pytest.raises(ca.CredentialsError, match="stranger.key: this key belongs to none"):
        ca.load_ca(tmp_path / "bundle.crt", tmp_path / "stranger.key")


def test_der_files_are_read_too(tmp_path, mesh_ca):
    (tmp_path / "ca.der").write_bytes(mesh_ca.cert.public_bytes(serialization.Encoding.DER))
    assert ca.load_certificate(tmp_path / "ca.der") == mesh_ca.cert


@pytest.mark.parametrize(
    ("content", "loader", "message"),
    [
        (None, "load_certificate", "certificate file not found"),
        (b"hello", "load_certificate", "no PEM certificate found"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "load_certificate",
         "not a valid PEM certificate"),
        (None, "load_private_key", "private key file not found"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "load_private_key",
         "not a valid private key"),
    ],
)  # fmt: skip
def test_load_errors_name_the_file(tmp_path, content, loader, message):
    path = tmp_path / "thing.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ca.CredentialsError) as info:
        getattr(ca, loader)(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert info.value.path == str(path)


def test_encrypted_and_unreadable_keys(tmp_path, mesh_ca):
    encrypted = mesh_ca.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "enc.key").write_bytes(encrypted)
    with pytest.raises(ca.CredentialsError, match="enc.key: private key is encrypted"):
        ca.load_private_key(tmp_path / "enc.key")
    with pytest.raises(ca.CredentialsError, match="is a directory"):
        ca.load_private_key(tmp_path)
