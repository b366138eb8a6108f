"""MeshTrafficPermission end to end: policy files dropped into the mesh directory take effect
within 2 s, by caller service, by MeshSubset tags, with Kuma's precedence; a denied TCP
connection is closed right after the mTLS handshake, a denied HTTP request gets 403
`RBAC: access denied`; HTTP apps learn the verified caller from x-forwarded-client-cert."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from tests.apps import Hypercorn
from tests.pki import ask, mtls_pair
from tests.support import LOOPBACK, free_port, wait_for, write_yaml

POLICY_DEADLINE = 2.5  # Kuma's "within 2 s", plus the time to notice from the test


def policy(name: str, froms: list[tuple[dict[str, Any], str]], target: str | None = "backend"):
    """A MeshTrafficPermission toward `target` (None: the whole mesh)."""
    spec: dict[str, Any] = {
        "from": [{"targetRef": ref, "default": {"action": action}} for ref, action in froms]
    }
    spec["targetRef"] = (
        {"kind": "MeshService", "name": target} if target is not None else {"kind": "Mesh"}
    )
    return {"type": "MeshTrafficPermission", "mesh": "default", "name": name, "spec": spec}


MESH = {"kind": "Mesh"}


def service(name: str) -> dict[str, Any]:
    return {"kind": "MeshService", "name": name}


def subset(**tags: str) -> dict[str, Any]:
    return {"kind": "MeshSubset", "tags": tags}


def caller(mesh, pki, name: str, service_name: str, **tags: str) -> int:
    """Another mesh member with an outbound to backend; returns that outbound's port."""
    port = free_port()
    path = mesh.write(
        name,
        [
            {
                "port": free_port(),
                "servicePort": free_port(),
                "tags": {"kuma.io/service": service_name, **tags},
            }
        ],
        [{"port": port, "tags": {"kuma.io/service": "backend"}}],
    )
    pki.issue(name, service_name, **tags)
    mesh.start(path, *pki.args(name))
    return port


def test_tcp_allow_and_deny_by_service_subset_and_precedence(mesh, pki):
    pair = mtls_pair(mesh, pki)
    web = pair.outbound
    admin = caller(mesh, pki, "admin-1", "admin", team="ops")
    assert ask(web) == b"ping\n" and ask(admin) == b"ping\n", "no policy: everyone may call"

    def write(*docs: dict[str, Any]) -> None:
        for path in mesh.dir.glob("policy-*.yaml"):
            path.unlink()
        for doc in docs:
            write_yaml(mesh.dir / f"policy-{doc['name']}.yaml", doc)

    # By service: the mesh is denied, web (more specific) is allowed.
    write(policy("only-web", [(MESH, "Deny"), (service("web"), "Allow")]))
    wait_for(lambda: ask(admin) == b"", POLICY_DEADLINE, "admin to be denied")
    assert ask(web) == b"ping\n"
    assert pair.app is not None
    accepted = pair.app.accepted
    assert ask(admin) == b""
    assert pair.app.accepted == accepted, "a denied connection never reaches the app"
    pair.backend.wait_log(
        f"event=rbac_denied listener=inbound:127.0.0.1:{pair.inbound} protocol=tcp "
        "service=backend source=spiffe://default/admin policy=only-web"
    )

    # By tags: callers tagged team=ops are denied.
    write(policy("no-ops", [(MESH, "Allow"), (subset(team="ops"), "Deny")]))
    wait_for(lambda: ask(web) == b"ping\n", POLICY_DEADLINE, "web to be allowed")
    assert ask(admin) == b""
    write(policy("no-dev", [(MESH, "Allow"), (subset(team="dev"), "Deny")]))
    wait_for(lambda: ask(admin) == b"ping\n", POLICY_DEADLINE, "admin to be allowed again")

    # Precedence: a policy on the service beats a mesh-wide one for the same caller; policies
    # that exist but match no caller deny it.
    write(
        policy("a-mesh-wide", [(service("web"), "Deny")], target=None),
        policy("b-backend", [(service("web"), "Allow")]),
    )
    wait_for(lambda: ask(admin) == b"", POLICY_DEADLINE, "admin to match nothing and be denied")
    assert ask(web) == b"ping\n"
    # AllowWithShadowDeny lets the call through and says so.
    write(policy("shadow", [(service("admin"), "AllowWithShadowDeny")]))
    wait_for(lambda: ask(admin) == b"ping\n", POLICY_DEADLINE, "admin shadow-denied")
    pair.backend.wait_log("event=rbac_shadow_denied")
    # Removing every policy allows everyone again.
    write()
    wait_for(lambda: ask(web) == b"ping\n", POLICY_DEADLINE, "web allowed with no policy")


@pytest.fixture
def app():
    server = Hypercorn()
    yield server
    server.close()


def request(conn: http.client.HTTPConnection, path: str = "/", **headers: str):
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def test_http_requests_are_authorized_one_by_one_and_carry_the_verified_caller(mesh, pki, app):
    pair = mtls_pair(mesh, pki, protocol="http", app_port=app.port)
    admin = caller(mesh, pki, "admin-1", "admin")
    web_conn = http.client.HTTPConnection(LOOPBACK, pair.outbound, timeout=10)
    admin_conn = http.client.HTTPConnection(LOOPBACK, admin, timeout=10)

    # The caller cannot forge its identity: the inbound sets XFCC from the certificate.
    status, body = request(web_conn, "/who", **{"x-forwarded-client-cert": "URI=spiffe://x/y"})
    assert status == 200, body
    xfcc = [v for k, v in json.loads(body)["headers"] if k == "x-forwarded-client-cert"]
    assert xfcc == ["URI=spiffe://default/web"]
    status, body = request(admin_conn, "/who")
    assert status == 200
    xfcc = [v for k, v in json.loads(body)["headers"] if k == "x-forwarded-client-cert"]
    assert xfcc == ["URI=spiffe://default/admin"]

    write_yaml(
        mesh.dir / "policy.yaml", policy("no-web", [(MESH, "Allow"), (service("web"), "Deny")])
    )

    # The same keep-alive connections (and the same HTTP/2 connection between the sidecars):
    # each request is decided on its own.
    wait_for(lambda: request(web_conn)[0] == 403, POLICY_DEADLINE, "web's requests to get 403")
    status, body = request(web_conn)
    assert (status, body) == (403, b"RBAC: access denied")
    assert request(admin_conn)[0] == 200
    pair.backend.wait_log(
        f"event=rbac_denied listener=inbound:127.0.0.1:{pair.inbound} protocol=http"
    )
    web_conn.close()
    admin_conn.close()


def test_mtls_and_authorization_show_in_metrics_and_admin(mesh_uvloop, pki):
    """Envoy's names: handshakes and refusals per listener, RBAC decisions, the caller's counts
    (source_service), the days until a certificate expires, and /certs."""
    import urllib.request

    import yaml

    mesh = mesh_uvloop
    pair = mtls_pair(mesh, pki)
    admin = yaml.safe_load((mesh.dir / "backend-1.yaml").read_text())["networking"]["admin"]
    web = pair.outbound
    assert ask(web) == b"ping\n" and ask(web) == b"ping\n"
    assert ask(pair.inbound, b"plain\n") == b""
    pair.backend.wait_log("event=tls_refused")

    def get(path: str) -> str:
        url = f"http://127.0.0.1:{admin['port']}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    listener = f'envoy_listener_address="127.0.0.1_{pair.inbound}"'
    text = get("/stats/prometheus")
    assert f"envoy_listener_ssl_handshake{{{listener}}} 2" in text
    assert f"envoy_listener_ssl_connection_error{{{listener}}} 1" in text
    assert f"envoy_rbac_allowed{{{listener}}} 2" in text
    assert 'source_service="web"' in text
    assert "envoy_server_days_until_first_cert_expiring 0" in text  # a 24 h certificate
    certs = json.loads(get("/certs"))["certificates"][0]
    assert certs["cert_chain"][0]["subject_alt_names"][0] == {"uri": "spiffe://default/backend"}
    assert certs["ca_cert"][0]["path"] == str(pki.ca_path)


def test_inbound_http_access_log_names_the_verified_caller(mesh, pki, app, tmp_path):
    log_file = tmp_path / "backend-access.log"
    pair = mtls_pair(mesh, pki, protocol="http", app_port=app.port,
                     backend_args=("--access-log", str(log_file)))  # fmt: skip
    conn = http.client.HTTPConnection(LOOPBACK, pair.outbound, timeout=10)
    assert request(conn, "/logged", **{"x-forwarded-client-cert": "URI=spiffe://x/y"})[0] == 200
    wait_for(lambda: log_file.exists() and "/logged" in log_file.read_text(), 10, "a log line")
    line = log_file.read_text().splitlines()[-1]
    assert '"GET /logged HTTP/2" 200' in line, line
    assert '"spiffe://default/web"' in line and "spiffe://x/y" not in line, line
