"""Stats of several worker processes as one sidecar: a JSON snapshot of a `StatsStore`, and sums.

With `--workers N` every worker counts in its own `StatsStore` (the hot path stays a plain
attribute increment, no locks, no shared memory). The worker that serves the admin API asks the
others for a snapshot at each read (`sidecar.workers`) and reads the sum: the admin API and the
metrics endpoint show the sidecar as a whole, exact at the moment of the read.

How values combine: counters, histograms and most gauges (active connections, memory) add up;
the gauges every worker computes alike from the same mesh view (cluster membership) or that
describe the server as a whole (live, state, uptime, certificate expiry) are taken from the
admin's own worker (`SHARED`). A worker that died takes its gauges with it, and its counters as of
the last read before it died are kept (`retire`), so totals do not fall when a worker restarts.

The snapshot format is generic over the stats dataclasses: a field that is a `str` names the
object (an address, a cluster name) and is never summed; every other field is a number, a
`Histogram`, or a dict of those or of stats objects (e.g. `ListenerStats.by_source`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sidecar.observe import metrics, stats
from sidecar.observe.stats import Histogram, StatsStore

# Taken from the admin's worker, not summed.
SHARED = frozenset(
    {"membership_healthy", "membership_total", "live", "state", "uptime",
     "days_until_first_cert_expiring"}
)  # fmt: skip
# Dropped when a dead worker's last snapshot is kept: what it had open went with it.
GAUGES = frozenset(f.attr for f in metrics.FAMILIES if f.type == metrics.GAUGE)

_CLASSES = {
    cls.__name__: cls
    for cls in (
        stats.ServerStats,
        stats.ListenerStats,
        stats.SourceStats,
        stats.ClusterStats,
        stats.HttpStats,
        stats.KafkaStats,
        stats.DnsStats,
    )
}
_STORE_MAPS = ("listeners", "clusters", "http_managers", "kafka_brokers", "dns_filters")


def snapshot(store: StatsStore) -> dict[str, Any]:
    """The store as JSON-able data."""
    store.settle()  # the counts by response status travel as the code and class counts
    doc: dict[str, Any] = {"server": _encode(store.server)}
    for name in _STORE_MAPS:
        doc[name] = {key: _encode(obj) for key, obj in getattr(store, name).items()}
    return doc


def add(store: StatsStore, doc: dict[str, Any], *, primary: bool, gauges: bool = True) -> None:
    """Add a snapshot into `store`. `primary`: this snapshot's SHARED values are the ones shown;
    `gauges=False` adds counters and histograms only (a dead worker's last snapshot)."""
    rules = _Rules(primary, gauges)
    _merge(store.server, doc["server"], rules)
    for name in _STORE_MAPS:
        target = getattr(store, name)
        for key, encoded in doc.get(name, {}).items():
            obj = target.get(key)
            if obj is None:
                obj = target[key] = _new(encoded)
            _merge(obj, encoded, rules)


def add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    """Sum `counts` into `into`, key by key (a host's /clusters counts, from several sources)."""
    for key, value in counts.items():
        into[key] = into.get(key, 0) + value


def retire(doc: dict[str, Any]) -> dict[str, Any]:
    """The part of a snapshot that outlives its worker: counters and histograms."""
    kept = StatsStore()
    add(kept, doc, primary=False, gauges=False)
    return snapshot(kept)


@dataclasses.dataclass(frozen=True)
class _Rules:
    primary: bool
    gauges: bool

    def skip(self, attr: str) -> bool:
        if attr in SHARED:
            return not self.primary or not self.gauges
        return not self.gauges and attr in GAUGES


def _encode(value: Any) -> Any:
    if isinstance(value, Histogram):
        return {"~h": [value.counts, value.sum, value.count]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"~d": type(value).__name__, "f": fields}
    if isinstance(value, dict):
        return {"~m": {str(k): _encode(v) for k, v in value.items()}}
    return value


def _new(encoded: dict[str, Any]) -> Any:
    cls = _CLASSES[encoded["~d"]]
    names = {k: v for k, v in encoded["f"].items() if isinstance(v, str)}
    return cls(**names)


def _merge(obj: Any, encoded: dict[str, Any], rules: _Rules) -> None:
    for attr, value in encoded["f"].items():
        if isinstance(value, str) or rules.skip(attr):
            continue
        current = getattr(obj, attr)
        if isinstance(value, dict):
            if "~h" in value:
                current.add(*value["~h"])
            else:
                _merge_map(current, value["~m"], rules)
        elif value is None:
            continue
        elif current is None or attr in SHARED:
            setattr(obj, attr, value)
        else:
            setattr(obj, attr, current + value)


def _merge_map(target: dict[str, Any], encoded: dict[str, Any], rules: _Rules) -> None:
    for key, value in encoded.items():
        if isinstance(value, dict):
            if "~h" in value:
                hist = target.get(key)
                if hist is None:
                    hist = target[key] = Histogram()
                hist.add(*value["~h"])
            else:
                obj = target.get(key)
                if obj is None:
                    obj = target[key] = _new(value)
                _merge(obj, value, rules)
        elif value is not None:
            target[key] = target.get(key, 0) + value
