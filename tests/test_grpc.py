"""gRPC through the mesh: a grpcio server and client, all four call kinds, statuses, deadlines,
metadata and 16 MiB messages. Messages are raw bytes (no generated code needed)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tests.conftest import Mesh
from tests.support import LOOPBACK, wait_ready

SERVICE = "mesh.test.Echo"
MiB = 1024 * 1024
MAX = 32 * MiB
OPTIONS = [("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    if request.startswith(b"fail:"):
        code = getattr(grpc.StatusCode, request[5:].decode())
        context.abort(code, f"asked to fail with {code.name}")
    if request.startswith(b"sleep:"):
        time.sleep(float(request[6:]))
    context.set_trailing_metadata((("x-trailer", "t-" + metadata.get("x-token", "none")),))
    return request


def server_stream(request: bytes, context: grpc.ServicerContext):
    for i in range(int(request)):
        yield f"item {i}".encode()


def client_stream(requests, context: grpc.ServicerContext) -> bytes:
    return b"|".join(requests)


def bidi(requests, context: grpc.ServicerContext):
    for message in requests:
        yield message.upper()


@contextlib.contextmanager
def serve_grpc() -> Iterator[int]:
    """The grpcio echo server on loopback; yields its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


@pytest.fixture
def grpc_app() -> Iterator[int]:
    with serve_grpc() as port:
        yield port


# One mesh (app, backend and web sidecars, a channel) per event loop, shared by this module's
# tests: each is one or a few calls that leave nothing behind, and starting the pair for every
# one of them was most of this module's time.
@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def channel(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[grpc.Channel]:
    mesh = Mesh(tmp_path_factory.mktemp(f"grpc-{request.param}"), request.param)
    try:
        with serve_grpc() as app_port:
            path, _ = mesh.backend(
                "echo-1", app_port, service="echo", tags={"kuma.io/protocol": "grpc"}
            )
            web, port = mesh.client("web-1", service="echo")
            wait_ready(mesh.start(path, ready=False), mesh.start(web, ready=False))
            with grpc.insecure_channel(f"{LOOPBACK}:{port}", options=OPTIONS) as ch:
                yield ch
    finally:
        mesh.close()


def method(channel, kind: str, name: str):
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


def test_unary_with_metadata_and_trailers(channel):
    call = method(channel, "unary_unary", "Unary")
    response, info = call.with_call(b"ping", metadata=(("x-token", "abc"),), timeout=10)
    assert response == b"ping"
    assert ("x-trailer", "t-abc") in info.trailing_metadata()
    assert info.code() == grpc.StatusCode.OK


def test_server_streaming(channel):
    items = list(method(channel, "unary_stream", "ServerStream")(b"100", timeout=10))
    assert items == [f"item {i}".encode() for i in range(100)]


def test_client_streaming(channel):
    result = method(channel, "stream_unary", "ClientStream")(iter([b"a", b"b", b"c"]), timeout=10)
    assert result == b"a|b|c"


def test_bidirectional(channel):
    replies = method(channel, "stream_stream", "Bidi")(iter([b"one", b"two", b"three"]), timeout=10)
    assert list(replies) == [b"ONE", b"TWO", b"THREE"]


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
def test_error_statuses_arrive_as_sent(channel, code):
    """Errors come back trailers-only: grpc-status and grpc-message must survive the trip."""
    with pytest.raises(grpc.RpcError) as err:
        method(channel, "unary_unary", "Unary")(f"fail:{code.name}".encode(), timeout=10)
    assert err.value.code() == code
    assert err.value.details() == f"asked to fail with {code.name}"


def test_deadline_exceeded(channel):
    with pytest.raises(grpc.RpcError) as err:
        method(channel, "unary_unary", "Unary")(b"sleep:2", timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The channel (and the mesh connection under it) keeps working.
    assert method(channel, "unary_unary", "Unary")(b"after", timeout=10) == b"after"


def test_16_mib_messages_both_ways(channel):
    payload = bytes(range(256)) * (16 * MiB // 256)
    assert method(channel, "unary_unary", "Unary")(payload, timeout=60) == payload
