"""The Kafka tap: a read-only observer on a relayed connection of a `kafka` service.

It rides the relay's `Side.on_data` hook, so it sees each chunk just before the relay forwards it
and can neither change nor delay it. Decoding is `sidecar.kafka`'s; here the events become Envoy's
kafka_broker counts. When the decoder gives up (garbage, a bug), the tap unhooks itself and the
connection goes on as plain TCP at zero cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sidecar.kafka import FAILURE, UNKNOWN, Event, KafkaConnection, Request, Response, Undecodable
from sidecar.observe.stats import KafkaStats
from sidecar.transport.relay import Relay

log = logging.getLogger("sidecar.kafka")


class KafkaTap:
    __slots__ = ("stats", "decoder", "relay")

    def __init__(
        self, stats: KafkaStats, relay: Relay, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stats = stats
        self.decoder = KafkaConnection(clock)
        self.relay = relay
        relay.downstream.on_data = self.client_bytes  # the client's requests
        relay.upstream.on_data = self.server_bytes  # the broker's responses

    def client_bytes(self, data: bytes) -> None:
        try:
            events = self.decoder.client_bytes(data)
            if events:
                self._count(events)
        except Exception:  # never let insight cost traffic
            log.exception("event=kafka_tap_failed")
            self.decoder.plain = True
        if self.decoder.plain:
            self._detach()

    def server_bytes(self, data: bytes) -> None:
        try:
            events = self.decoder.server_bytes(data)
            if events:
                self._count(events)
        except Exception:
            log.exception("event=kafka_tap_failed")
            self.decoder.plain = True
        if self.decoder.plain:
            self._detach()

    def _count(self, events: list[Event]) -> None:
        stats = self.stats
        for event in events:
            if isinstance(event, Request):
                kind = event.header.type
                stats.request[kind] = stats.request.get(kind, 0) + 1
            elif isinstance(event, Response):
                kind = event.type
                stats.response[kind] = stats.response.get(kind, 0) + 1
                if kind != UNKNOWN and event.duration is not None:
                    stats.duration(kind).observe(event.duration * 1000)
            elif isinstance(event, Undecodable):
                counts = stats.request if event.direction == "request" else stats.response
                counts[FAILURE] = counts.get(FAILURE, 0) + 1
                log.info(
                    "event=kafka_plain kafka_name=%s direction=%s reason=%r",
                    stats.name,
                    event.direction,
                    event.reason,
                )

    def _detach(self) -> None:
        self.relay.downstream.on_data = None
        self.relay.upstream.on_data = None
