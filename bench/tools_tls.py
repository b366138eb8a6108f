"""TLS bulk server and client for the tls-passthrough scenario (Python's ssl module, OpenSSL).

    python3 -m bench.tools tls-server --port PORT --cert-dir DIR
    python3 -m bench.tools tls-client --port PORT --cert-dir DIR --duration S

The app speaks TLS itself, end to end: the proxies in between see only TLS records (a `tcp`
service: the sidecars pass it through, inside their own mTLS when that is on). At start the server
makes a self-signed certificate for `bench-tls.example` (ECDSA P-256) in DIR; the client trusts
exactly that certificate and checks the name it asked for (SNI), so a proxy that terminated TLS
would fail the handshake. After the handshake the client sends the duration as 8 bytes; the server
sends 256 KiB writes until the duration is over and then closes the TLS session (close_notify).
The client counts what it received between the first byte and the close and prints Gbit/s as
JSON. One connection, one thread per connection on the server, blocking sockets on both ends.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import ssl
import struct
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
SERVER_NAME = "bench-tls.example"
CHUNK = 256 * 1024


def _make_cert(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "app.crt", directory / "app.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    tmp = directory / "app.crt.tmp"
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(cert_path)  # the client waits for this file: it appears whole
    return cert_path, key_path


def tls_server(args: argparse.Namespace) -> int:
    cert, key = _make_cert(Path(args.cert_dir))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    listener = socket.create_server((HOST, args.port), backlog=128, reuse_port=False)
    payload = memoryview(b"t" * CHUNK)

    def serve(raw: socket.socket) -> None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(30)
            with context.wrap_socket(raw, server_side=True) as conn:
                header = b""
                while len(header) < 8:
                    got = conn.recv(8 - len(header))
                    if not got:
                        return
                    header += got
                (millis,) = struct.unpack("!Q", header)
                deadline = time.monotonic() + millis / 1000
                sendall = conn.sendall
                while time.monotonic() < deadline:
                    for _ in range(8):
                        sendall(payload)
                conn.settimeout(2)
                try:
                    conn.unwrap()
                except (OSError, ValueError):
                    pass
        except OSError:
            pass
        finally:
            raw.close()

    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve, args=(raw,), daemon=True).start()


def tls_client(args: argparse.Namespace) -> int:
    cert = Path(args.cert_dir) / "app.crt"
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection((HOST, args.port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = context.wrap_socket(raw, server_hostname=SERVER_NAME)
    conn.settimeout(30)
    t_handshake = time.perf_counter()
    version, cipher = conn.version(), conn.cipher()
    conn.sendall(struct.pack("!Q", int(args.duration * 1000)))
    buf = bytearray(CHUNK)
    recv_into = conn.recv_into
    received = 0
    first = None
    while True:
        n = recv_into(buf)
        if not n:
            break
        if first is None:
            first = time.perf_counter()
        received += n
    end = time.perf_counter()
    conn.close()
    elapsed = end - (first or t_handshake)
    json.dump({
        "bytes": received,
        "seconds": elapsed,
        "gbit_per_s": received * 8 / elapsed / 1e9 if elapsed > 0 else 0.0,
        "tls_version": version,
        "cipher": cipher[0] if cipher else None,
        "server_name": SERVER_NAME,
    }, sys.stdout)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("tls-server")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--cert-dir", required=True)
    server.set_defaults(func=tls_server)
    client = sub.add_parser("tls-client")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--cert-dir", required=True)
    client.add_argument("--duration", type=float, required=True)
    client.set_defaults(func=tls_client)
