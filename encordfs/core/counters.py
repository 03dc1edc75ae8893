"""Named integer counters shared by the read path (URL cache, fetcher, block caches, reader).

One ``Counters`` object is passed to every component of a mount so that ``encordfs status`` and the
benchmarks read a single snapshot. Names are dotted by owner so components never collide:

- ``urls.*``    signed-URL cache (signs, urls_signed, resigns_expired, resigns_forced, hits, misses)
- ``fetch.*``   HTTP range fetcher (requests, bytes_fetched, retries, resigns_after_error, stalls, errors)
- ``cache.*``   block caches (hits_mem, hits_disk, misses, bytes_written, evictions_mem, evictions_disk,
                corrupt_disk, skipped_disk, skipped_disk_backlog, write_errors, unlink_errors, backing_opens,
                backing_reuses)
- ``reader.*``  read pipeline (reads, bytes_read, demand_fetches, readahead_fetches, budget_peak_bytes, ...)

Two kinds of value: monotonically increasing counts (``inc``) and high-water marks (``set_max``).
Thread-safe: one lock, held only for a dict update (never while calling out).
"""

from __future__ import annotations

import threading


class Counters:
    """Thread-safe named integer counters; missing names read as 0."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def set_max(self, name: str, value: int) -> None:
        """Record a high-water mark: keep the larger of the stored value and ``value``."""
        with self._lock:
            if value > self._values.get(name, 0):
                self._values[name] = value

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
