"""Observability with `--workers N`: one admin API for the sidecar as a whole.

Worker 0 (the primary) serves the admin API, metrics, probes and health; every other worker serves
a `Channel` on a unix socket and answers it from its own state (see `sidecar.workers` for the
layout and the reasons). This object is the observability layer's part of that, on both sides:

- on a secondary worker, `handle` answers the primary: a stats snapshot (refreshed as for a read
  of its own), its connection counts per endpoint, and the admin mutations every worker applies;
- on the primary, `collect` asks every other worker for its snapshot before a read, `merged` sums
  them with its own (`sidecar.observe.aggregate`), `broadcast` passes mutations on, and
  `workers` describes each process for `/workers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from sidecar.observe import aggregate, metrics
from sidecar.observe.stats import StatsStore
from sidecar.workers import Peers, WorkerInfo, serve_channel

if TYPE_CHECKING:
    from sidecar.observe.observability import Observability

log = logging.getLogger("sidecar.observe.workers")

HostCounts = dict[str, dict[str, dict[str, int]]]  # cluster → host → cx_ and rq_active, _total


class WorkerView:
    def __init__(self, obs: Observability, info: WorkerInfo) -> None:
        self.obs = obs
        self.info = info
        self.started = time.time()
        self.peers = Peers(info) if info.primary else None
        self.channel: asyncio.AbstractServer | None = None
        self.answers: dict[int, dict[str, Any] | None] = {}  # the last collect's, by index
        self.last: dict[int, dict[str, Any]] = {}  # the last good answer of each worker
        self.retired = StatsStore()  # counters of workers that died (as last read)

    @property
    def primary(self) -> bool:
        return self.info.primary

    async def start(self) -> None:
        if not self.primary:
            self.channel = await serve_channel(self.info.socket_path(self.info.index), self.handle)

    async def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
            with contextlib.suppress(OSError):
                self.info.socket_path(self.info.index).unlink()

    # -- a secondary answering the primary -------------------------------------------------------

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        obs = self.obs
        if op == "stats":
            return self.own()
        if op == "reset_counters":
            metrics.reset_counters(obs.sidecar.stats)
            return {"ok": True}
        if op == "drain_listeners":
            await obs.drain_listeners(
                bool(request.get("inbound_only")),
                graceful=bool(request.get("graceful")),
                skip_exit=bool(request.get("skip_exit")),
                broadcast=False,
            )
            return {"ok": True}
        if op == "logging":
            from sidecar.observe.admin import set_log_levels

            set_log_levels(request.get("levels", {}))
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    def own(self) -> dict[str, Any]:
        """This worker's snapshot, as fresh as a read of its own admin would be."""
        obs = self.obs
        obs.refresh()
        return {
            "index": self.info.index,
            "pid": os.getpid(),
            "started": self.started,
            "draining": obs.sidecar.draining,
            "stats": aggregate.snapshot(obs.sidecar.stats),
            "hosts": obs.local_host_counts(),
        }

    # -- the primary ---------------------------------------------------------------------------

    async def collect(self) -> None:
        """Ask every other worker for its snapshot (before a read of stats)."""
        if self.peers is None:
            return
        self.answers = await self.peers.ask({"op": "stats"})
        for index, answer in self.answers.items():
            if answer is None:
                continue
            previous = self.last.get(index)
            if previous is not None and previous["pid"] != answer["pid"]:
                # It was restarted: what its predecessor counted stays in the totals.
                aggregate.add(self.retired, previous["stats"], primary=False, gauges=False)
            self.last[index] = answer

    def merged(self, local: StatsStore) -> StatsStore:
        """The sum of every worker's stats (as of the last `collect`) and this one's."""
        total = StatsStore()
        aggregate.add(total, aggregate.snapshot(local), primary=True)
        for index, answer in self.answers.items():
            if answer is not None:
                aggregate.add(total, answer["stats"], primary=False)
            elif index in self.last:  # not there right now (restarting): keep its counters
                aggregate.add(total, self.last[index]["stats"], primary=False, gauges=False)
        aggregate.add(total, aggregate.snapshot(self.retired), primary=False, gauges=False)
        return total

    def host_counts(self, local: HostCounts) -> HostCounts:
        total: HostCounts = {}
        for counts in (local, *(a["hosts"] for a in self.answers.values() if a is not None)):
            for cluster, hosts in counts.items():
                into = total.setdefault(cluster, {})
                for host, values in hosts.items():
                    aggregate.add_counts(into.setdefault(host, {}), values)
        return total

    async def broadcast(self, request: dict[str, Any]) -> None:
        if self.peers is not None:
            await self.peers.ask(request)

    def workers(self) -> list[dict[str, Any]]:
        """Each worker with its own counts, for /workers (after `collect`)."""
        rows = [self._row(self.own())]
        for index in sorted(self.answers):
            answer = self.answers[index]
            if answer is None:
                rows.append({"index": index, "state": "unreachable"})
            else:
                rows.append(self._row(answer))
        return rows

    def _row(self, answer: dict[str, Any]) -> dict[str, Any]:
        store = StatsStore()
        aggregate.add(store, answer["stats"], primary=True)
        listeners = store.listeners.values()
        return {
            "index": answer["index"],
            "pid": answer["pid"],
            "state": "draining" if answer.get("draining") else "serving",
            "started": answer["started"],
            "downstream_cx_total": sum(lst.downstream_cx_total for lst in listeners),
            "downstream_cx_active": sum(lst.downstream_cx_active for lst in listeners),
            "memory_allocated": store.server.memory_allocated,
            "listeners": {
                lst.address: {
                    "downstream_cx_total": lst.downstream_cx_total,
                    "downstream_cx_active": lst.downstream_cx_active,
                }
                for lst in listeners
            },
        }
