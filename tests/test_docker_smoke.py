"""The Docker dev mesh, end to end: docker/smoke.sh builds the images, brings docker/compose.yaml
up with the `prometheus` profile, runs every check of docker/checks.yaml through the sidecars
(HTTP, TCP, websockets, TLS passthrough, gRPC, Kafka, Prometheus) and verifies the teardown.

Needs a reachable Docker daemon and Compose (`docker/engine.sh start` provides both on Debian).
Without them the test is skipped with the reason, unless PYSIDECAR_REQUIRE_DOCKER=1 (CI that has
started a daemon), where it fails instead. PYSIDECAR_SKIP_DOCKER=1 skips it on purpose.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "docker" / "smoke.sh"
SMOKE_TIMEOUT = int(os.environ.get("SMOKE_TIMEOUT", "1500"))  # a cold run debootstraps a base
PROFILES = ("default", "prometheus")  # what smoke.sh brings up by default


# Every protocol of issue #9 has a check kind; checks.yaml must keep at least one of each.
KINDS = {"http-get", "tcp-echo", "websocket", "tls-echo", "grpc", "kafka", "metrics-count",
         "tcp-refused", "prometheus-targets"}  # fmt: skip


def expected_checks() -> list[dict]:
    """The checks smoke.sh runs: every one must be reported as passed."""
    doc = yaml.safe_load((ROOT / "docker" / "checks.yaml").read_text())
    return [c for c in doc["checks"] if c.get("profile", "default") in PROFILES]


def _docker_unavailable() -> str | None:
    """Why the smoke test cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "docker info timed out: the daemon does not answer"
    if info.returncode != 0:
        reason = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker daemon reachable ({reason[-1] if reason else 'docker info failed'})"
    compose_v2 = (
        subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode
        == 0
    )
    if not compose_v2 and shutil.which("docker-compose") is None:
        return "neither 'docker compose' nor 'docker-compose' is installed"
    return None


@pytest.mark.slow
def test_docker_dev_mesh_smoke() -> None:
    if os.environ.get("PYSIDECAR_SKIP_DOCKER") == "1":
        pytest.skip("PYSIDECAR_SKIP_DOCKER=1")
    reason = _docker_unavailable()
    if reason is not None:
        if os.environ.get("PYSIDECAR_REQUIRE_DOCKER") == "1":
            pytest.fail(f"PYSIDECAR_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(f"{reason}; start one with docker/engine.sh start")
    env = {
        **os.environ,
        "SMOKE_TIMEOUT": str(SMOKE_TIMEOUT),
        "COMPOSE_PROFILES": ",".join(p for p in PROFILES if p != "default"),
        # The host Python that builds the offline wheels: this interpreter (it has pip).
        "PYTHON": os.environ.get("PYTHON", sys.executable),
    }
    try:
        result = subprocess.run(
            ["bash", str(SMOKE)], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=SMOKE_TIMEOUT + 120,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"docker/smoke.sh ran past {SMOKE_TIMEOUT + 120}s: {exc.output!r:.2000}")
    output = (result.stdout or "") + (result.stderr or "")
    # smoke.sh's own lines and the checks' first: on a failure the containers' logs follow them.
    steps = "\n".join(
        line for line in output.splitlines() if line.startswith(("smoke:", "FAIL", "summary"))
    )
    assert result.returncode == 0, (
        f"docker/smoke.sh exited {result.returncode}:\n{steps}\n--- tail:\n{output[-6000:]}"
    )
    # smoke.sh's lines read "smoke: [<elapsed>s] ...".
    assert re.search(r"^smoke: \[\d+s\] PASS: every check", output, re.M), steps
    assert re.search(r"^smoke: \[\d+s\] teardown verified", output, re.M), steps
    checks = expected_checks()
    assert KINDS <= {c["kind"] for c in checks}, "a protocol's check left the smoke run"
    for name in (c["name"] for c in checks):
        # Twice: the client's own run at start-up and smoke.sh's run.
        assert output.count(f"PASS {name}:") == 2, (
            f"check {name!r} not passed twice:\n{output[-8000:]}"
        )
    assert output.count(f"summary: {len(checks)} passed, 0 failed, 0 skipped") == 2
