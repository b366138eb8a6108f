"""Servers for the transparent-proxying tests, run inside a pod's network namespace
(`ip netns exec NS python -m tests.netns_servers --http 8080 --tcp 7070`), stopped by SIGTERM.

Each answers with who called it, as the app saw it: a TCP server reads one line and answers
`peer=<address> local=<address>:<port> got=<line>`; an HTTP server (the standard library's)
answers a JSON object of the peer's address and the request's headers. Each listens on 0.0.0.0,
and with `--ipv6` on `::` as well (IPv6 only there, so that IPv4 peers keep their IPv4 address).
`ready` is printed once every one listens.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Line(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline().strip().decode(errors="replace")
        local = self.connection.getsockname()
        answer = f"peer={self.client_address[0]} local={local[0]}:{local[1]} got={line}\n"
        self.wfile.write(answer.encode())


class _Who(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        body = json.dumps({"peer": self.client_address[0], "headers": dict(self.headers)})
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Tcp(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _Http(ThreadingHTTPServer):
    daemon_threads = True


class _V6Only:
    """Mixed in first: the server on `::`, IPv6 only."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # type: ignore[attr-defined]
        super().server_bind()  # type: ignore[misc]


class _Tcp6(_V6Only, _Tcp):
    pass


class _Http6(_V6Only, _Http):
    pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, action="append", default=[])
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--ipv6", action="store_true")
    args = parser.parse_args()
    servers: list[socketserver.BaseServer] = [_Http(("0.0.0.0", p), _Who) for p in args.http]
    servers += [_Tcp(("0.0.0.0", p), _Line) for p in args.tcp]
    if args.ipv6:
        servers += [_Http6(("::", p), _Who) for p in args.http]
        servers += [_Tcp6(("::", p), _Line) for p in args.tcp]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    # No shutdown() one by one: each waits out its serve_forever's 0.5 s poll. The threads are
    # daemons and the listening sockets close with the process.
    return 0


if __name__ == "__main__":
    sys.exit(main())
