"""Log lines on failure paths that can repeat thousands of times a second (a dead endpoint under
load, descriptors exhausted): at most one line per key per interval, and the next line says how
many were held back."""

from __future__ import annotations

import time
from collections.abc import Hashable


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
