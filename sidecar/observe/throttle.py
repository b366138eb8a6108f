"""Log lines on failure paths that can repeat thousands of times a second (a dead endpoint under
load, descriptors exhausted): at most one line per key per interval, and the next line says how
many were held back."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterable


class LogThrottle:
    def __init__(self, interval: float = 1.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable) -> int | None:
        """None: hold this line back. Otherwise log it, with the returned count of lines held
        back since the last one (0 for the first)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self.max_keys:
            self._last.clear()  # bounded: a churn of keys forgets the old ones
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0


# Lines a remote peer causes, one per connection or request it sends: an attacker's flood of bad
# requests must not become a flood of log lines (the stats count every one of them).
PEER_EVENTS = frozenset({"bad_request", "request_headers_timeout", "h2_protocol_error", "h2_abuse"})


class PeerEventFilter(logging.Filter):
    """Lets through at most one line per second of each peer-caused event; the next one that
    passes says how many were held back (`held_back=N`). Installed on the process's log
    handlers, so it applies whichever module logs the event."""

    def __init__(self, events: Iterable[str] = PEER_EVENTS, interval: float = 1.0) -> None:
        super().__init__()
        self.events = frozenset(events)
        self.throttle = LogThrottle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if not isinstance(msg, str) or not msg.startswith("event="):
            return True
        event = msg[6:].split(" ", 1)[0]
        if event not in self.events:
            return True
        held_back = self.throttle.allow((record.name, event))
        if held_back is None:
            return False
        if held_back:
            record.msg = f"{record.getMessage()} held_back={held_back}"
            record.args = None
        return True
