"""The Kafka header codec (sidecar.kafka): real client frames, framing across chunks, fuzzing."""

from __future__ import annotations

import itertools
import struct
import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():  # kafka-python 3 reads its schemas with a deprecated importlib API
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka.admin  # noqa: F401 - loads every message schema now, quietly
    from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
    from kafka.protocol.parser import KafkaProtocol

from sidecar.kafka import (
    API_NAMES,
    KafkaConnection,
    KafkaDecodeError,
    Request,
    RequestHeader,
    Response,
    Undecodable,
    parse_request_header,
    parse_response_header,
)


def kafka_python_frame(request, correlation_id: int = 7, client_id: str = "my-client") -> bytes:
    protocol = KafkaProtocol(client_id=client_id)
    protocol.send_request(request, correlation_id=correlation_id)
    return bytes(protocol.send_bytes())


def request_frame(
    api_key: int, version: int, correlation_id: int, client_id: str | None, body: bytes = b""
) -> bytes:
    if client_id is None:
        cid = struct.pack(">h", -1)
    else:
        raw = client_id.encode()
        cid = struct.pack(">h", len(raw)) + raw
    payload = struct.pack(">hhi", api_key, version, correlation_id) + cid + body
    return struct.pack(">i", len(payload)) + payload


def response_frame(correlation_id: int, body: bytes = b"") -> bytes:
    payload = struct.pack(">i", correlation_id) + body
    return struct.pack(">i", len(payload)) + payload


def counting_clock():
    counter = itertools.count()
    return lambda: float(next(counter))


def test_real_kafka_python_frames():
    frame = kafka_python_frame(ApiVersionsRequest(version=3), correlation_id=42)
    header = parse_request_header(frame)
    assert header == RequestHeader(len(frame) - 4, 18, 3, 42, "my-client")
    assert header.type == "api_versions_request"
    assert header.response_type == "api_versions_response"
    frame = kafka_python_frame(MetadataRequest(version=12, topics=None), correlation_id=9)
    assert parse_request_header(frame).type == "metadata_request"


def test_names_follow_envoy():
    assert API_NAMES[0] == "Produce" and API_NAMES[18] == "ApiVersions"
    header = RequestHeader(10, 23, 0, 1, None)
    assert header.type == "offset_for_leader_epoch_request"
    assert RequestHeader(10, 4, 0, 1, None).type == "leader_and_isr_request"
    assert RequestHeader(10, 999, 0, 1, None).type == "unknown"


def test_requests_and_responses_matched_across_chunks():
    decoder = KafkaConnection(counting_clock())
    produce = request_frame(0, 9, 1, "c", b"p" * 5000)
    fetch = request_frame(1, 13, 2, None, b"f" * 10)
    events = []
    stream = produce + fetch
    for i in range(0, len(stream), 3):  # three bytes at a time: headers split everywhere
        events += decoder.client_bytes(stream[i : i + 3])
    assert [e.header.correlation_id for e in events if isinstance(e, Request)] == [1, 2]
    assert [e.header.client_id for e in events] == ["c", None]
    replies = response_frame(2, b"x" * 100) + response_frame(1) + response_frame(77)
    responses = decoder.server_bytes(replies)
    assert [(r.type, r.duration) for r in responses] == [
        ("fetch_response", 1.0),
        ("produce_response", 3.0),
        ("unknown", None),
    ]
    assert not decoder.plain


def test_unknown_api_key_keeps_framing():
    decoder = KafkaConnection()
    events = decoder.client_bytes(
        request_frame(30000, 0, 5, "x", b"zz") + request_frame(3, 1, 6, "x")
    )
    assert [e.header.type for e in events] == ["unknown", "metadata_request"]
    assert not decoder.plain


def test_garbage_switches_to_plain_counting():
    decoder = KafkaConnection()
    events = decoder.client_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(events) == 1 and isinstance(events[0], Undecodable)
    assert events[0].direction == "request"
    assert decoder.plain
    assert decoder.client_bytes(request_frame(0, 1, 1, "x")) == []
    assert decoder.server_bytes(response_frame(1)) == []


def test_header_v0_without_client_id():
    frame = struct.pack(">ihhi", 8, 7, 0, 3)  # ControlledShutdown v0: no client_id at all
    assert parse_request_header(frame) == RequestHeader(8, 7, 0, 3, None)
    assert [e.header for e in KafkaConnection().client_bytes(frame)] == [
        RequestHeader(8, 7, 0, 3, None)
    ]


def test_too_short_and_oversized_frames():
    for bad in (b"", b"\x00\x00", struct.pack(">i", 4) + b"abcd", struct.pack(">i", 2**31 - 1)):
        try:
            parse_request_header(bad + b"\x00" * 12)
        except KafkaDecodeError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    try:
        parse_response_header(struct.pack(">ii", -5, 1))
    except KafkaDecodeError:
        pass
    else:
        raise AssertionError("accepted a negative response size")


# -- properties -----------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_parse_raises_only_its_own_error(data):
    for parse in (parse_request_header, parse_response_header):
        try:
            parse(data)
        except KafkaDecodeError:
            pass


def feed(decoder: KafkaConnection, chunks: list[tuple[bool, bytes]]) -> list:
    events = []
    for to_broker, chunk in chunks:
        events += decoder.client_bytes(chunk) if to_broker else decoder.server_bytes(chunk)
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300)
@given(st.binary(max_size=400), st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=40))
def test_any_bytes_any_chunking_never_raises_and_decodes_the_same(up, down, cuts):
    whole = feed(KafkaConnection(counting_clock()), [(True, up), (False, down)])
    chunked = feed(
        KafkaConnection(counting_clock()),
        [(True, c) for c in split(up, cuts)] + [(False, c) for c in split(down, cuts)],
    )
    assert whole == chunked


headers = st.tuples(
    st.integers(0, 90),  # api_key, known or not
    st.integers(0, 20),  # api_version
    st.integers(-(2**31), 2**31 - 1),  # correlation_id
    st.one_of(st.none(), st.text(max_size=20)),  # client_id
    st.integers(0, 3000),  # body size
)


@settings(max_examples=150)
@given(st.lists(headers, max_size=8), st.lists(st.integers(0, 30000), max_size=40))
def test_valid_streams_decode_exactly(specs, cuts):
    stream = b"".join(
        request_frame(key, version, cid, client, b"\x00" * size)
        for key, version, cid, client, size in specs
    )
    decoder = KafkaConnection(counting_clock())
    events = [e for chunk in split(stream, cuts) for e in decoder.client_bytes(chunk)]
    assert not decoder.plain
    got = [(e.header.api_key, e.header.api_version, e.header.correlation_id) for e in events]
    assert got == [(key, version, cid) for key, version, cid, _, _ in specs]
    assert [e.header.client_id for e in events] == [client for _, _, _, client, _ in specs]
    # Each response finds its request (correlation ids may repeat: the latest one wins).
    unique = {cid: key for key, _, cid, _, _ in specs}
    responses = decoder.server_bytes(b"".join(response_frame(cid) for cid in unique))
    assert all(isinstance(r, Response) and r.request is not None for r in responses)
    assert [r.request.api_key for r in responses] == list(unique.values())
