"""The one retry policy for background writes: capped exponential backoff with full jitter.

Owns only arithmetic: given how many attempts in a row have failed and what the server asked for
(``Retry-After``), how long to wait before the next attempt. Who waits, and on what clock, is the
caller's business (the write queue's worker waits on its condition variable, so ``flush``/``close``
can interrupt the wait); randomness is injected so tests are deterministic.

Algorithm ("full jitter", AWS Architecture Blog, *Exponential Backoff and Jitter*):
``delay = uniform(0, min(cap_s, base_s * 2**(failures - 1)))``. Full jitter spreads many clients
(or mounts) that failed together instead of having them retry in lock step.
A server's ``Retry-After`` is a floor: ``delay = max(retry_after_s, jittered)``, itself capped by
``max_retry_after_s`` so a bogus huge value cannot stall the queue for hours.

Defaults: ``base_s`` 0.5 s (a 5xx blip is retried within a second), ``cap_s`` 60 s (an outage costs at
most one request a minute, and a recovered service is noticed within a minute), ``max_retry_after_s``
300 s (Encord's rate-limit windows are far shorter; five minutes bounds a misbehaving proxy).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 0.5
    cap_s: float = 60.0
    max_retry_after_s: float = 300.0
    rand: Callable[[], float] = field(default=random.random, compare=False)  # uniform in [0, 1)

    def delay_s(self, failures: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (``failures >= 1``)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(0, min(failures - 1, 62)))
        jittered = self.rand() * ceiling
        if retry_after_s is None:
            return jittered
        return max(min(max(retry_after_s, 0.0), self.max_retry_after_s), jittered)
