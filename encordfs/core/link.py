"""What the byte server's link measures like: first-byte latency, bandwidth, and their product.

Owns one number the read path sizes its parallelism from: the bandwidth-delay product (BDP), the
bytes that must be in flight to keep the link busy while each request waits for its first byte. On
loopback it is tens of KB and 4 parts of 8 MiB in flight are plenty; behind 25 ms of first-byte
latency at 1 Gbit/s it is ~3 MB; at 100 ms and 10 Gbit/s it is 125 MB, and a fixed 4 × 8 MiB would
use a quarter of the link. The reader asks ``bdp_bytes`` and keeps about twice that in flight per
sequential stream (``ReadPipeline._readahead_limits``).

Measured, never configured: the fetcher calls ``observe`` after every successful range GET with its
size, its time to the first byte (request sent -> status and headers in) and its total time.

- latency: the median first-byte time of the last ``samples`` GETs (a median: one slow request,
  or one that waited for a new TLS connection, does not move it).
- floor: the least first-byte time ever seen: the link's own delay without the queueing that the
  transfers in flight add (a saturated link or a busy process makes every first byte later, and the
  median with it). What a reader that sizes its parallelism by latency must use, or more transfers
  would raise the latency that asks for more transfers (BBR keeps its minimum RTT for the same
  reason). It never rises: a floor that expired and re-based on recent samples would re-base on
  queued ones while the transfers that queue them are still running. A link that got slower is
  under-sized by it, never over-driven.
- bandwidth: the delivery rate of the whole link, not of one transfer: bytes of the GETs that ended
  in the last ``window_s`` (at least 4 latencies) divided by that window, the highest such rate seen,
  decaying by half every ``decay_s`` so a link that got slower is followed within seconds. Small
  files alone measure what they achieved, not what the link could do: that only under-sizes the BDP,
  and big sequential reads (which use it) measure the link themselves.

Thread-safe: one leaf lock held for a deque update; ``observe`` is called from many fetching threads.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any


class LinkEstimate:
    """Latency and bandwidth of the byte server's link, from the GETs the mount makes."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        samples: int = 64,
        window_s: float = 0.5,
        decay_s: float = 10.0,
    ) -> None:
        self._clock = clock
        self._window_s = window_s
        self._decay_s = decay_s
        self._floor = float("inf")
        self._lock = threading.Lock()
        self._first_byte_s: deque[float] = deque(maxlen=samples)
        self._ended: deque[tuple[float, int]] = deque()  # (when, bytes) of GETs inside the window
        self._in_window = 0
        self._bandwidth = 0.0  # bytes/s, the decaying peak
        self._bandwidth_at = 0.0
        self._latency_cache: float | None = None

    def observe(self, nbytes: int, first_byte_s: float, total_s: float) -> None:
        """One successful GET: ``nbytes`` of body, first byte after ``first_byte_s``, done after ``total_s``."""
        now = self._clock()
        with self._lock:
            first = max(0.0, first_byte_s)
            self._first_byte_s.append(first)
            self._latency_cache = None
            self._floor = min(self._floor, first)
            self._ended.append((now, nbytes))
            self._in_window += nbytes
            window = max(self._window_s, 4 * self._latency_locked())
            while self._ended and self._ended[0][0] <= now - window:
                self._in_window -= self._ended.popleft()[1]
            rate = self._in_window / window
            self._bandwidth = max(rate, self._decayed_locked(now))
            self._bandwidth_at = now

    @property
    def latency_s(self) -> float:
        """Median time to first byte of recent GETs (0 before any)."""
        with self._lock:
            return self._latency_locked()

    @property
    def floor_s(self) -> float:
        """The least first-byte time ever seen (see the module docstring; 0 before any GET)."""
        with self._lock:
            return self._floor if self._first_byte_s else 0.0

    @property
    def bandwidth_bytes_s(self) -> float:
        """Peak delivery rate of the link lately (decaying), bytes per second (0 before any)."""
        with self._lock:
            return self._decayed_locked(self._clock())

    def bdp_bytes(self) -> int:
        """Bandwidth × latency: bytes in flight that keep the link busy (0 until measured)."""
        with self._lock:
            return int(self._decayed_locked(self._clock()) * self._latency_locked())

    def snapshot(self) -> dict[str, Any]:
        """For ``status.json``: ``latency_ms``, ``bandwidth_mbit_s``, ``bdp_bytes``, ``samples``."""
        with self._lock:
            latency = self._latency_locked()
            bandwidth = self._decayed_locked(self._clock())
            samples = len(self._first_byte_s)
        return {
            "latency_ms": round(latency * 1000, 2),
            "bandwidth_mbit_s": round(bandwidth * 8 / 1e6, 1),
            "bdp_bytes": int(bandwidth * latency),
            "samples": samples,
        }

    def _latency_locked(self) -> float:
        if self._latency_cache is None:
            self._latency_cache = statistics.median(self._first_byte_s) if self._first_byte_s else 0.0
        return self._latency_cache

    def _decayed_locked(self, now: float) -> float:
        age = max(0.0, now - self._bandwidth_at)
        return float(self._bandwidth * 0.5 ** (age / self._decay_s))


__all__ = ["LinkEstimate"]
