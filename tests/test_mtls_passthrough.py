"""TLS passthrough inside the mesh's mTLS: an app that speaks TLS itself (a `tcp` service) works
end to end. The client's TLS session ends at the app, the client verifies the app's certificate
for the name it asked for (SNI), and the hop between the sidecars is still mTLS."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading

import pytest

from tests.pki import OPENSSL, s_client, server_certificate
from tests.support import LOOPBACK, free_port, port_open, wait_for, wait_ready

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="no openssl CLI")


def tls_app_pair(mesh, pki, app_port: int) -> int:
    """backend (a `tcp` service whose app speaks TLS on app_port) behind web; web's outbound."""
    backend, _ = mesh.backend("backend-1", app_port, tags={"kuma.io/protocol": "tcp"})
    web, outbound = mesh.client("web-1")
    pki.issue("backend-1", "backend")
    pki.issue("web-1", "web")
    wait_ready(
        mesh.start(backend, *pki.args("backend-1"), ready=False),
        mesh.start(web, *pki.args("web-1"), ready=False),
    )
    return outbound


def assert_mesh_hop_was_mtls(mesh) -> None:
    backend = next(s for s in mesh.sidecars if s.dataplane_file.stem == "backend-1")
    backend.wait_log("event=mtls_accepted")
    assert "identity=spiffe://default/web version=TLSv1.3 alpn=kuma" in backend.log


def test_openssl_s_client_to_s_server_through_an_mtls_pair(mesh, pki, tmp_path):
    app_ca, cert, key = server_certificate(tmp_path / "app", "app.example")
    _, wrong_cert, wrong_key = server_certificate(tmp_path / "wrong", "wrong.example")
    port = free_port()
    # The default certificate is for another name: the client verifies app.example only if its
    # SNI reached s_server, which then switches to the app.example certificate.
    server = subprocess.Popen(
        [
            OPENSSL, "s_server", "-accept", str(port),
            "-cert", str(wrong_cert), "-key", str(wrong_key),
            "-servername", "app.example", "-cert2", str(cert), "-key2", str(key),
            "-rev", "-quiet",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open(port), what="s_server")  # it serves one client after another
        outbound = tls_app_pair(mesh, pki, port)
        out = s_client(
            outbound,
            b"hello passthrough\n",
            "-brief",
            "-servername", "app.example",
            "-verify_hostname", "app.example",
            "-verify_return_error",
            "-CAfile", str(app_ca),
            expect=b"hguorhtssap olleh",
        )  # fmt: skip
        assert b"hguorhtssap olleh" in out, out.decode(errors="replace")
        assert b"Verification: OK" in out
        assert b"Verified peername: app.example" in out
        assert_mesh_hop_was_mtls(mesh)
    finally:
        server.kill()
        server.wait()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = f"hello over https, path {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_curl_to_an_https_server_through_an_mtls_pair(mesh, pki, tmp_path):
    app_ca, cert, key = server_certificate(tmp_path / "app", "app.example")
    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        outbound = tls_app_pair(mesh, pki, httpd.server_address[1])
        for i in range(3):
            result = subprocess.run(
                [
                    "curl", "-sS", "--fail", "--cacert", str(app_ca),
                    "--resolve", f"app.example:{outbound}:{LOOPBACK}",
                    f"https://app.example:{outbound}/call/{i}",
                ],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert result.stdout == f"hello over https, path /call/{i}\n"
        # The name is checked: a name the certificate does not carry fails in curl.
        result = subprocess.run(
            [
                "curl", "-sS", "--cacert", str(app_ca),
                "--resolve", f"other.example:{outbound}:{LOOPBACK}",
                f"https://other.example:{outbound}/",
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 60, result.stderr  # peer certificate cannot be verified
        assert_mesh_hop_was_mtls(mesh)
    finally:
        httpd.shutdown()
        httpd.server_close()
