"""The one retry policy: capped exponential backoff with full jitter, an optional attempt and time budget.

Owns only arithmetic: given how many attempts in a row have failed, how long they took and what the
server asked for (``Retry-After``), whether to try again and after how long. Who waits, and on what
clock, is the caller's business (the write queue's worker waits on its condition variable, so
``flush``/``close`` can interrupt the wait; the range fetcher sleeps); randomness is injected so tests
are deterministic.

Algorithm ("full jitter", AWS Architecture Blog, *Exponential Backoff and Jitter*):
``delay = uniform(0, min(cap_s, base_s * 2**(failures - 1)))``. Full jitter spreads many clients
(or mounts) that failed together instead of having them retry in lock step.
A server's ``Retry-After`` is a floor: ``delay = max(retry_after_s, jittered)``, itself capped by
``max_retry_after_s`` so a bogus huge value cannot stall the caller for hours.

Budgets (``next_delay_s``): ``max_attempts`` bounds the attempts of one operation and ``budget_s`` its
total time, waits included: no retry is scheduled whose wait would end past ``budget_s`` after the
first attempt started. ``None`` means unbounded (the write queue retries forever while the mount runs:
its changes are durable in the journal, nobody waits on them).

Defaults: ``base_s`` 0.5 s (a 5xx blip is retried within a second), ``cap_s`` 60 s (an outage costs at
most one request a minute, and a recovered service is noticed within a minute), ``max_retry_after_s``
300 s (Encord's rate-limit windows are far shorter; five minutes bounds a misbehaving proxy). The read
path's policy (``READ_RETRY``) is tighter, since a process is blocked in ``read(2)`` meanwhile.
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
    max_attempts: int | None = None  # attempts per operation, the first included; None = unbounded
    budget_s: float | None = None  # seconds per operation, waits included; None = unbounded
    rand: Callable[[], float] = field(default=random.random, compare=False)  # uniform in [0, 1)

    def delay_s(self, failures: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (``failures >= 1``)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(0, min(failures - 1, 62)))
        jittered = self.rand() * ceiling
        if retry_after_s is None:
            return jittered
        return max(min(max(retry_after_s, 0.0), self.max_retry_after_s), jittered)

    def next_delay_s(self, failures: int, elapsed_s: float, retry_after_s: float | None = None) -> float | None:
        """The wait before attempt ``failures + 1``, or None when the budget says give up.

        ``elapsed_s`` is the time since the operation's first attempt started.
        """
        if self.max_attempts is not None and failures >= self.max_attempts:
            return None
        delay = self.delay_s(failures, retry_after_s)
        if self.budget_s is not None and elapsed_s + delay >= self.budget_s:
            return None
        return delay


# The read path: a process waits in read(2) for this. 0.1 s first backoff (a blip costs little),
# 5 s cap and Retry-After capped at 5 s (a reader is better served by EIO within the budget than by a
# minute's sleep), 10 attempts (mountpoint-s3's default too; the backoff alone then averages ~11 s and
# is at most ~21 s) and 30 s in all, stalled attempts included: past either the read fails with EIO.
# 30 s outlasts a typical load balancer failover or a short 503 storm, and stays below the 60 s a user
# or a data loader tolerates before deciding that the file system hangs.
READ_RETRY = RetryPolicy(base_s=0.1, cap_s=5.0, max_retry_after_s=5.0, max_attempts=10, budget_s=30.0)

__all__ = ["READ_RETRY", "RetryPolicy"]
