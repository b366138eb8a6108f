"""`pysidecar certs init | issue | inspect`, run as a user runs them: a subprocess."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import sidecar
from sidecar.identity import ca
from sidecar.identity.certs_cli import parse_duration

REPO = Path(sidecar.__file__).resolve().parent.parent

DATAPLANE = """\
type: Dataplane
mesh: {mesh}
name: web-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 10001
      servicePort: 8080
      tags:
        kuma.io/service: web
        version: "{{{{ VERSION }}}}"
"""


def certs(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "certs", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def write_dataplane(path: Path, mesh: str = "default") -> Path:
    path.write_text(DATAPLANE.format(mesh=mesh))
    return path


def test_init_creates_an_ecdsa_ca_in_certs(tmp_path):
    result = certs(tmp_path, "init", "--mesh", "default")
    assert result.returncode == 0, result.stderr
    assert "created the CA of mesh 'default'" in result.stdout
    cert = ca.load_certificate(tmp_path / "certs" / "ca.crt")
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.ca_mesh(cert) == "default"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode(tmp_path / "certs" / "ca.key") == 0o600
    key = ca.load_private_key(tmp_path / "certs" / "ca.key")
    assert ca.cert_matches_key(cert, key)


def test_init_refuses_to_overwrite_without_force(tmp_path):
    assert certs(tmp_path, "init", "--mesh", "default").returncode == 0
    before = (tmp_path / "certs" / "ca.crt").read_bytes()
    again = certs(tmp_path, "init", "--mesh", "default")
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "certs" / "ca.crt").read_bytes() == before
    forced = certs(tmp_path, "init", "--mesh", "default", "--force", "--rsa")
    assert forced.returncode == 0, forced.stderr
    after = ca.load_certificate(tmp_path / "certs" / "ca.crt")
    assert (tmp_path / "certs" / "ca.crt").read_bytes() != before
    assert isinstance(after.public_key(), rsa.RSAPublicKey)
    assert after.public_key().key_size == 2048
    assert mode(tmp_path / "certs" / "ca.key") == 0o600


def test_init_refuses_when_only_the_key_exists(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.key").write_text("precious")
    result = certs(tmp_path, "init", "--mesh", "m", "--dir", "pki")
    assert result.returncode == 1
    assert "pki/ca.key" in result.stderr
    assert (tmp_path / "pki" / "ca.key").read_text() == "precious"


def test_issue_writes_a_kuma_workload_certificate(tmp_path):
    assert certs(tmp_path, "init", "--mesh", "default").returncode == 0
    dp = write_dataplane(tmp_path / "dp.yaml")
    result = certs(
        tmp_path, "issue", "--dataplane", str(dp), "--dataplane-var", "VERSION=v3",
        "--valid-for", "2h", "--out-dir", "out",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "spiffe://default/web" in result.stdout
    cert = ca.load_certificate(tmp_path / "out" / "web-1.crt")
    assert mode(tmp_path / "out" / "web-1.key") == 0o600
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://default/web",
        "kuma://kuma.io/service/web",
        "kuma://version/v3",
    ]
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert validity == timedelta(hours=2, seconds=10)
    cert.verify_directly_issued_by(ca.load_certificate(tmp_path / "certs" / "ca.crt"))
    # Default: 24 h, written next to the CA.
    default = certs(tmp_path, "issue", "--dataplane", str(dp), "--dataplane-var", "VERSION=v1")
    assert default.returncode == 0, default.stderr
    cert = ca.load_certificate(tmp_path / "certs" / "web-1.crt")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=24, seconds=10)
    assert mode(tmp_path / "certs" / "web-1.key") == 0o600


def test_issue_errors(tmp_path):
    dp = write_dataplane(tmp_path / "dp.yaml")
    no_ca = certs(tmp_path, "issue", "--dataplane", str(dp), "--dataplane-var", "VERSION=1")
    assert no_ca.returncode == 1
    assert "certs/ca.crt" in no_ca.stderr and "certs init" in no_ca.stderr
    assert certs(tmp_path, "init", "--mesh", "other").returncode == 0
    wrong_mesh = certs(tmp_path, "issue", "--dataplane", str(dp), "--dataplane-var", "VERSION=1")
    assert wrong_mesh.returncode == 1
    assert "mesh 'other'" in wrong_mesh.stderr and "mesh 'default'" in wrong_mesh.stderr
    missing_var = certs(tmp_path, "issue", "--dataplane", str(dp))
    assert missing_var.returncode == 1
    assert "VERSION" in missing_var.stderr
    bad_duration = certs(tmp_path, "issue", "--dataplane", str(dp), "--valid-for", "soon")
    assert bad_duration.returncode == 2
    assert "invalid duration" in bad_duration.stderr
    assert not (tmp_path / "certs" / "web-1.crt").exists()


def test_inspect_is_human_readable(tmp_path):
    assert certs(tmp_path, "init", "--mesh", "default").returncode == 0
    dp = write_dataplane(tmp_path / "dp.yaml")
    assert (
        certs(tmp_path, "issue", "--dataplane", str(dp), "--dataplane-var", "VERSION=v1").returncode
        == 0
    )
    result = certs(tmp_path, "inspect", "certs/web-1.crt")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    cert = ca.load_certificate(tmp_path / "certs" / "web-1.crt")
    assert "subject:    (empty)" in out
    assert "issuer:     CN=default,OU=Mesh,O=pysidecar" in out
    assert f"serial:     {cert.serial_number:x}" in out
    assert "key:        ECDSA P-256" in out
    assert "identities: spiffe://default/web" in out
    assert "kuma://version/v1" in out
    assert "valid, 23h59m left" in out or "valid, 1d0h left" in out
    assert "serverAuth, clientAuth" in out
    assert f"not after:  {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}" in out
    ca_out = certs(tmp_path, "inspect", "certs/ca.crt").stdout
    assert "CA:         yes" in ca_out and "identities: spiffe://default" in ca_out
    missing = certs(tmp_path, "inspect", "nothing.crt")
    assert missing.returncode == 1
    assert "nothing.crt: certificate file not found" in missing.stderr


def test_certs_without_action_prints_help(tmp_path):
    result = certs(tmp_path)
    assert result.returncode == 2
    assert "init" in result.stdout and "issue" in result.stdout and "inspect" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        ("45s", timedelta(seconds=45)),
        ("3600", timedelta(hours=1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "10x", "0s", "1h 30m", "-1h"])
def test_parse_duration_rejects(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
