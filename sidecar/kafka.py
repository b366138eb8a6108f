"""Kafka request and response headers, decoded from a byte stream without I/O (for the Kafka tap).

The relay hands every chunk it forwards to `KafkaConnection.client_bytes` / `server_bytes`; the
decoder reads each frame's size and header, skips the body without copying it, and reports:

- `Request`: a request header (size, api_key, api_version, correlation_id, client_id);
- `Response`: a response header, matched to its request by correlation id (with the latency), or
  unmatched (`request` is None);
- `Undecodable`: bytes that are not Kafka framing. The connection then switches to plain counting
  (`plain` is True) and every later chunk is ignored.

It only reads: the bytes themselves are never changed or held back, so a wrong guess costs insight,
never traffic. `parse_request_header` and `parse_response_header` raise `KafkaDecodeError`, the
only exception of this module; the streaming decoder raises nothing.

Wire format (all big-endian): a frame is `int32 size` then `size` bytes. A request header is
`int16 api_key, int16 api_version, int32 correlation_id, nullable string client_id` (int16 length,
-1 for null; header v0 of ControlledShutdown v0 has no client_id); flexible versions append tagged
fields, which we never need. A response header starts with `int32 correlation_id`.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

# Kafka's API keys and message names (kafka/clients/src/main/resources/common/message).
API_NAMES: dict[int, str] = dict(enumerate((
    "Produce", "Fetch", "ListOffsets", "Metadata", "LeaderAndIsr", "StopReplica", "UpdateMetadata",
    "ControlledShutdown", "OffsetCommit", "OffsetFetch", "FindCoordinator", "JoinGroup",
    "Heartbeat", "LeaveGroup", "SyncGroup", "DescribeGroups", "ListGroups", "SaslHandshake",
    "ApiVersions", "CreateTopics", "DeleteTopics", "DeleteRecords", "InitProducerId",
    "OffsetForLeaderEpoch", "AddPartitionsToTxn", "AddOffsetsToTxn", "EndTxn", "WriteTxnMarkers",
    "TxnOffsetCommit", "DescribeAcls", "CreateAcls", "DeleteAcls", "DescribeConfigs",
    "AlterConfigs", "AlterReplicaLogDirs", "DescribeLogDirs", "SaslAuthenticate",
    "CreatePartitions", "CreateDelegationToken", "RenewDelegationToken", "ExpireDelegationToken",
    "DescribeDelegationToken", "DeleteGroups", "ElectLeaders", "IncrementalAlterConfigs",
    "AlterPartitionReassignments", "ListPartitionReassignments", "OffsetDelete",
    "DescribeClientQuotas", "AlterClientQuotas", "DescribeUserScramCredentials",
    "AlterUserScramCredentials", "Vote", "BeginQuorumEpoch", "EndQuorumEpoch", "DescribeQuorum",
    "AlterPartition", "UpdateFeatures", "Envelope", "FetchSnapshot", "DescribeCluster",
    "DescribeProducers", "BrokerRegistration", "BrokerHeartbeat", "UnregisterBroker",
    "DescribeTransactions", "ListTransactions", "AllocateProducerIds", "ConsumerGroupHeartbeat",
    "ConsumerGroupDescribe", "ControllerRegistration", "GetTelemetrySubscriptions",
    "PushTelemetry", "AssignReplicasToDirs", "ListClientMetricsResources",
    "DescribeTopicPartitions", "ShareGroupHeartbeat", "ShareGroupDescribe", "ShareFetch",
    "ShareAcknowledge", "AddRaftVoter", "RemoveRaftVoter", "UpdateRaftVoter",
    "InitializeShareGroupState", "ReadShareGroupState", "WriteShareGroupState",
    "DeleteShareGroupState", "ReadShareGroupStateSummary",
)))  # fmt: skip

UNKNOWN = "unknown"  # Envoy's type for an API key it does not know
FAILURE = "failure"  # Envoy's type for bytes it could not decode

# Kafka's own limit on a request (socket.request.max.bytes); responses (fetch) may be larger.
MAX_REQUEST_SIZE = 100 * 1024 * 1024
MAX_RESPONSE_SIZE = 1024 * 1024 * 1024
MAX_PENDING = 1024  # requests awaiting a response (acks=0 produce requests never get one)

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_REQUEST_FIXED = 8  # api_key, api_version, correlation_id
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


# Envoy's stat names: ProduceRequest → produce_request.
REQUEST_TYPES: dict[int, str] = {k: _snake(v) + "_request" for k, v in API_NAMES.items()}
RESPONSE_TYPES: dict[int, str] = {k: _snake(v) + "_response" for k, v in API_NAMES.items()}


class KafkaDecodeError(ValueError):
    """Bytes that are not a Kafka frame header (the only exception this module raises)."""


@dataclass(frozen=True, slots=True)
class RequestHeader:
    size: int  # the frame's size field: bytes after the size
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None

    @property
    def type(self) -> str:
        """Envoy's request type (`produce_request`), or `unknown`."""
        return REQUEST_TYPES.get(self.api_key, UNKNOWN)

    @property
    def response_type(self) -> str:
        return RESPONSE_TYPES.get(self.api_key, UNKNOWN)


@dataclass(frozen=True, slots=True)
class Request:
    header: RequestHeader


@dataclass(frozen=True, slots=True)
class Response:
    size: int
    correlation_id: int
    request: RequestHeader | None  # None: no request with that correlation id was seen
    duration: float | None  # seconds from the request header to the response header

    @property
    def type(self) -> str:
        return self.request.response_type if self.request is not None else UNKNOWN


@dataclass(frozen=True, slots=True)
class Undecodable:
    direction: str  # "request" | "response"
    reason: str


Event = Request | Response | Undecodable


def _request_size(size: int) -> int:
    if size < _REQUEST_FIXED or size > MAX_REQUEST_SIZE:
        raise KafkaDecodeError(f"request size {size} out of range")
    return size


def _request_fields(head: bytes | bytearray) -> tuple[int, int, int, int]:
    """api_key, api_version, correlation_id, client_id length (-1 null; -2 absent, header v0)."""
    api_key, api_version = _I16.unpack_from(head, 0)[0], _I16.unpack_from(head, 2)[0]
    correlation_id = _I32.unpack_from(head, 4)[0]
    if api_key < 0:
        raise KafkaDecodeError(f"negative api_key {api_key}")
    if api_version < 0:
        raise KafkaDecodeError(f"negative api_version {api_version}")
    client_len = _I16.unpack_from(head, 8)[0] if len(head) >= 10 else -2
    if client_len < -1 and len(head) >= 10:
        raise KafkaDecodeError(f"client_id length {client_len}")
    return api_key, api_version, correlation_id, client_len


def parse_request_header(frame: bytes) -> RequestHeader:
    """The header of one request frame (starting at its size field); the body may be cut off."""
    if len(frame) < 4 + _REQUEST_FIXED:
        raise KafkaDecodeError(f"{len(frame)} bytes: too short for a request header")
    size = _request_size(_I32.unpack_from(frame, 0)[0])
    head = frame[4 : 4 + min(size, 10)]
    api_key, api_version, correlation_id, client_len = _request_fields(head)
    client_id = None
    if client_len >= 0:
        if 10 + client_len > size:
            raise KafkaDecodeError(f"client_id of {client_len} bytes overruns the frame")
        if len(frame) < 14 + client_len:
            raise KafkaDecodeError("frame cut off inside client_id")
        client_id = bytes(frame[14 : 14 + client_len]).decode("utf-8", "replace")
    return RequestHeader(size, api_key, api_version, correlation_id, client_id)


def parse_response_header(frame: bytes) -> tuple[int, int]:
    """(size, correlation_id) of one response frame (starting at its size field)."""
    if len(frame) < 8:
        raise KafkaDecodeError(f"{len(frame)} bytes: too short for a response header")
    size = _I32.unpack_from(frame, 0)[0]
    if size < 4 or size > MAX_RESPONSE_SIZE:
        raise KafkaDecodeError(f"response size {size} out of range")
    return size, _I32.unpack_from(frame, 4)[0]


class _Frames:
    """One direction: gathers the few header bytes of each frame, skips the body uncopied."""

    __slots__ = ("head", "want", "skip", "size")

    def __init__(self) -> None:
        self.head = bytearray()
        self.want = 4  # bytes `head` must hold before the next step
        self.skip = 0  # body bytes of the current frame still to pass over
        self.size = -1  # the current frame's size, once read

    def finish(self) -> None:
        """The header is read: skip what is left of the frame, then expect the next one."""
        self.skip = self.size - (len(self.head) - 4)
        self.head = bytearray()
        self.want = 4
        self.size = -1


class KafkaConnection:
    """Decodes both directions of one Kafka connection; never raises, never holds bytes back."""

    __slots__ = ("plain", "_requests", "_responses", "_pending", "_clock", "_events")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.plain = False
        self._requests = _Frames()
        self._responses = _Frames()
        self._pending: dict[int, tuple[RequestHeader, float]] = {}
        self._clock = clock
        self._events: list[Event] = []

    def client_bytes(self, data: bytes) -> list[Event]:
        """Bytes from the client toward the broker."""
        return self._feed(data, self._requests, self._request_step, "request")

    def server_bytes(self, data: bytes) -> list[Event]:
        """Bytes from the broker toward the client."""
        return self._feed(data, self._responses, self._response_step, "response")

    def _feed(
        self,
        data: bytes,
        frames: _Frames,
        step: Callable[[_Frames], None],
        direction: str,
    ) -> list[Event]:
        if self.plain:
            return []
        try:
            view = memoryview(data)
            i, n = 0, len(view)
            while i < n:
                if frames.skip:
                    take = min(frames.skip, n - i)
                    frames.skip -= take
                    i += take
                    continue
                take = min(frames.want - len(frames.head), n - i)
                frames.head += view[i : i + take]
                i += take
                if len(frames.head) == frames.want:
                    step(frames)
        except KafkaDecodeError as exc:
            self._go_plain(direction, str(exc))
        except Exception as exc:  # a decoder bug must cost insight only, never traffic
            self._go_plain(direction, f"decoder error: {exc!r}")
        events, self._events = self._events, []
        return events

    def _go_plain(self, direction: str, reason: str) -> None:
        self.plain = True
        self._pending.clear()
        self._events.append(Undecodable(direction, reason))

    def _request_step(self, frames: _Frames) -> None:
        head = frames.head
        if frames.size < 0:
            frames.size = _request_size(_I32.unpack_from(head, 0)[0])
            frames.want = 4 + min(frames.size, 10)
            return
        if len(head) == 4 + min(frames.size, 10):
            _, _, _, client_len = _request_fields(head[4:])
            if client_len > 0:
                if 10 + client_len > frames.size:
                    raise KafkaDecodeError(f"client_id of {client_len} bytes overruns the frame")
                frames.want = 14 + client_len
                return
        header = parse_request_header(bytes(head))
        frames.finish()
        self._events.append(Request(header))
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            del pending[next(iter(pending))]
        pending[header.correlation_id] = (header, self._clock())

    def _response_step(self, frames: _Frames) -> None:
        if frames.size < 0:
            size = _I32.unpack_from(frames.head, 0)[0]
            if size < 4 or size > MAX_RESPONSE_SIZE:
                raise KafkaDecodeError(f"response size {size} out of range")
            frames.size = size
            frames.want = 8
            return
        size, correlation_id = parse_response_header(bytes(frames.head))
        frames.finish()
        found = self._pending.pop(correlation_id, None)
        if found is None:
            self._events.append(Response(size, correlation_id, None, None))
        else:
            request, started = found
            self._events.append(Response(size, correlation_id, request, self._clock() - started))
