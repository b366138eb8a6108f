"""Python's cyclic garbage collector, set for a long-running proxy.

CPython collects the youngest generation every 700 net container allocations and, now and then,
all of them: a full collection walks every object the process holds — the modules, the
configuration, every connection — and stops the event loop for as long as that takes (28 ms for
the 33,000 objects a sidecar holds after its imports, on the 2-core bench machine; 1 ms for a
middle-generation one). At 1,000 requests/s such pauses land on every hundredth request or so:
they were the sidecars' p99. Nearly all of what the process allocates at start-up lives as long
as it does, so once the sidecar serves, `settle()` collects once and moves every survivor to the
permanent generation (`gc.freeze()`), which no collection walks again; and the youngest
generation is collected less often (objects that die by reference count, which is nearly all
that a request allocates, never count toward it). `PYSIDECAR_GC=default` leaves CPython's
settings as they are (for A/B measurements).
"""

from __future__ import annotations

import gc
import logging
import os

from sidecar import defaults

log = logging.getLogger("sidecar.collector")


def settle() -> bool:
    """Freeze what start-up built and space the collections out; False when turned off."""
    if os.environ.get("PYSIDECAR_GC", "tuned") == "default":
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*defaults.GC_THRESHOLDS)
    log.debug("event=gc_settled frozen=%d", gc.get_freeze_count())
    return True
