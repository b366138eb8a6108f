"""Python's cyclic garbage collector, for a long-running proxy.

CPython collects the youngest generation every 700 net container allocations and, now and then,
all of them: a full collection walks every object the process holds — the modules, the
configuration, every connection — and stops the event loop for as long as that takes (28 ms for
the 33,000 objects a sidecar holds after its imports, on the 2-core bench machine). Nearly all of
what start-up builds lives as long as the process, so once the sidecar serves, `settle()`
collects once and moves every survivor to the permanent generation (`gc.freeze()`), which no
collection walks again.

The request path itself leaves no cyclic garbage (a `Body` drops its codec callback once nothing
more can be read: that callback closed a cycle through the stream, ~20 objects per request that
only a collection freed), so young-generation collections find little to do and stay short; the
thresholds stay CPython's (a larger first threshold, tried, made each collection longer and the
p99 at a fixed rate worse). `PYSIDECAR_GC=default` skips the freeze (for A/B measurements).
"""

from __future__ import annotations

import gc
import logging
import os

log = logging.getLogger("sidecar.collector")


def settle() -> bool:
    """Freeze what start-up built; False when turned off."""
    if os.environ.get("PYSIDECAR_GC", "tuned") == "default":
        return False
    gc.collect()
    gc.freeze()
    log.debug("event=gc_settled frozen=%d", gc.get_freeze_count())
    return True
