"""Starting sidecars with mesh credentials as users do: files from `pysidecar certs`, a certs
directory, dev mode (the sidecar issues and renews its own certificate), and the start-up errors
that name what to fix."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pki import ask
from tests.support import REPO, Sidecar, echo, wait_for, wait_ready, write_yaml


def pysidecar(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def exits_with(sidecar: Sidecar) -> tuple[int, str]:
    code = sidecar.proc.wait(15)
    return code, sidecar.log


def test_sidecars_with_a_certs_directory_made_by_pysidecar_certs(mesh_uvloop, tmp_path):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, outbound = mesh.client("web-1")
    certs = tmp_path / "certs"
    assert pysidecar("certs", "init", "--mesh", "default", "--dir", str(certs)).returncode == 0
    for dataplane in (backend, web):
        issued = pysidecar("certs", "issue", "--dataplane", str(dataplane), "--dir", str(certs))
        assert issued.returncode == 0, issued.stderr
    b, _ = wait_ready(
        mesh.start(backend, "--certs-dir", str(certs), ready=False),
        mesh.start(web, "--certs-dir", str(certs), ready=False),
    )
    assert ask(outbound) == b"ping\n"
    assert "event=mtls_enabled mode=strict mesh=default identity=spiffe://default/backend" in b.log
    b.wait_log("event=mtls_accepted")


def test_dev_mode_issues_its_own_certificate_and_renews_it(mesh_uvloop, tmp_path):
    mesh = mesh_uvloop
    certs = tmp_path / "certs"
    assert pysidecar("certs", "init", "--mesh", "default", "--dir", str(certs)).returncode == 0
    dev = ["--ca", str(certs / "ca.crt"), "--ca-key", str(certs / "ca.key")]
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, outbound = mesh.client("web-1")
    # 5 s certificates (starting 10 s back, Kuma's clock skew): renewed about every 2 s.
    b, _ = wait_ready(
        mesh.start(backend, *dev, "--cert-valid-for", "5s", ready=False),
        mesh.start(web, *dev, ready=False),
    )
    assert "dev_mode=issued" in b.log
    inspected = pysidecar("certs", "inspect", str(certs / "backend-1.crt"))
    assert "spiffe://default/backend" in inspected.stdout, inspected.stdout
    assert ask(outbound) == b"ping\n"
    b.wait_log("event=credentials_loaded generation=2", timeout=10)
    issued = re.findall(r"event=(?:mtls_enabled|credentials_loaded) .* not_after=(\S+)", b.log)
    assert len(set(issued)) >= 2, "a renewal is a new certificate with a later end"
    assert ask(outbound) == b"ping\n"
    assert oct((certs / "backend-1.key").stat().st_mode & 0o777) == "0o600"


def test_missing_or_bad_credential_files_stop_start_up_naming_the_file(mesh_uvloop, pki):
    mesh = mesh_uvloop
    path, _ = mesh.backend("backend-1", 1)
    pki.issue("backend-1", "backend")
    pki.issue("other", "other")
    missing = pki.dir / "nope.crt"
    cases = [
        (["--ca", str(missing), "--cert", str(pki.dir / "backend-1.crt"),
          "--key", str(pki.dir / "backend-1.key")], f"{missing}: CA certificate file not found"),
        (["--ca", str(pki.ca_path), "--cert", str(pki.dir / "backend-1.crt"),
          "--key", str(pki.dir)], f"{pki.dir}: is a directory"),
        (["--ca", str(pki.ca_path), "--cert", str(pki.dir / "backend-1.crt"),
          "--key", str(pki.dir / "other.key")],
         f"{pki.dir / 'other.key'}: this key does not belong to the certificate"),
        (["--certs-dir", str(pki.dir / "empty")],
         f"{pki.dir / 'empty' / 'ca.crt'}: CA certificate file not found"),
    ]  # fmt: skip
    for args, message in cases:
        code, log = exits_with(mesh.start(path, *args, ready=False))
        assert code == 1, log
        assert "pysidecar: mesh credentials: " + message in log, log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cert", "a.crt"], "missing --ca, --key"),
        (["--mtls", "permissive"], "--mtls permissive needs mesh credentials"),
        (["--ca", "ca.crt", "--ca-key", "ca.key", "--cert", "a.crt"], "leave out --cert"),
        (["--ca-key", "ca.key"], "--ca-key (dev mode) needs the CA certificate"),
    ],
)
def test_credential_flags_that_do_not_fit_together(tmp_path: Path, args, message):
    dataplane = write_yaml(
        tmp_path / "dp.yaml",
        {
            "type": "Dataplane",
            "mesh": "default",
            "name": "dp",
            "networking": {
                "address": "127.0.0.1",
                "inbound": [{"port": 1, "tags": {"kuma.io/service": "x"}}],
            },
        },
    )
    result = pysidecar("run", "--dataplane", str(dataplane), *args)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr


def test_policies_need_mtls_and_say_so(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, outbound = mesh.client("web-1")
    write_yaml(
        mesh.dir / "deny.yaml",
        {
            "type": "MeshTrafficPermission",
            "name": "deny-all",
            "spec": {"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]},
        },
    )
    b, _ = wait_ready(
        mesh.start(backend, ready=False),
        mesh.start(web, ready=False),
    )
    assert "event=policies_ignored kind=MeshTrafficPermission count=1" in b.log
    wait_for(lambda: ask(outbound) == b"ping\n", what="plaintext traffic, not authorized")
