"""Fault injection and request counters, the test-facing knobs of the emulator.

``Faults`` holds an ordered list of rules posted to ``/_emulator/faults``. For each API or blob
request the server calls :meth:`Faults.apply` with the request's stable endpoint name
(``legacy.dataset``, ``v2.items.patch``, ``blob.get`` ...). Every matching rule contributes its
``latency_ms``; the first matching rule that has a ``status`` and fires (``rate`` coin toss, ``count``
not exhausted) yields the :class:`~encordfs.emulator.errors.ApiError` to answer with. ``count`` is
decremented only when the rule fires. Endpoint patterns are ``fnmatch`` globs (``v2.items.*``).

``Stats`` counts requests per endpoint name; ``api_calls`` counts every non-blob, non-admin
request (including ones then rejected by auth or a fault: they reached the API).

Both are thread-safe (one lock each; never held while sleeping or doing I/O).
"""

from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

from encordfs.emulator.errors import ApiError

# Stable endpoint names, always present in the stats (zero when unused).
API_ENDPOINTS = (
    "legacy.dataset",
    "legacy.datarows",
    "legacy.datarow.get",
    "legacy.datarow.post",
    "legacy.other",
    "v2.datasets.list",
    "v2.items.get",
    "v2.items.get_bulk",
    "v2.items.child_items",
    "v2.items.patch",
    "v2.items.patch_bulk",
    "v2.folders.get",
    "v2.folders.items",
    "v2.folders.list",
    "v2.folders.subfolders",
    "v2.bearer_token",
    "v2.other",
)


@dataclass
class FaultRule:
    endpoint: str
    status: int | None = None
    count: int | None = None  # remaining firings; None = unlimited
    rate: float = 1.0
    retry_after: int | None = None
    latency_ms: int = 0
    message: str | None = None

    @classmethod
    def from_json(cls, raw: Any) -> "FaultRule":
        if not isinstance(raw, dict) or not isinstance(raw.get("endpoint"), str):
            raise ApiError(400, "each fault rule must be an object with a string 'endpoint'")
        try:
            rule = cls(
                endpoint=raw["endpoint"],
                status=_opt_int(raw.get("status")),
                count=_opt_int(raw.get("count")),
                rate=float(raw.get("rate", 1.0)),
                retry_after=_opt_int(raw.get("retry_after")),
                latency_ms=int(raw.get("latency_ms") or 0),
                message=raw.get("message"),
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad fault rule {raw!r}: {exc}") from None
        if not 0.0 <= rule.rate <= 1.0:
            raise ApiError(400, "fault 'rate' must be within 0..1")
        if rule.status is not None and not 400 <= rule.status <= 599:
            raise ApiError(400, "fault 'status' must be an HTTP error status (400..599)")
        return rule


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


class Faults:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._rng = rng or random.Random()

    def add(self, rules: list[FaultRule]) -> None:
        with self._lock:
            self._rules.extend(rules)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def apply(self, endpoint: str) -> tuple[float, ApiError | None]:
        """Return (delay in seconds, error to answer with or None) for one request."""
        delay_ms = 0
        error: ApiError | None = None
        with self._lock:
            for rule in self._rules:
                if not fnmatch.fnmatchcase(endpoint, rule.endpoint):
                    continue
                delay_ms += rule.latency_ms
                if rule.status is None or error is not None:
                    continue
                if rule.count is not None and rule.count <= 0:
                    continue
                if rule.rate < 1.0 and self._rng.random() >= rule.rate:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                error = ApiError(
                    rule.status,
                    rule.message or f"injected fault {rule.status} on {endpoint}",
                    legacy_code="RATE_LIMIT_ERROR" if rule.status == 429 else None,
                    retry_after_s=rule.retry_after,
                )
        return delay_ms / 1000.0, error


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counts = {"api_calls": 0, "blob.requests": 0, "blob.bytes": 0}
            self._counts.update({name: 0 for name in API_ENDPOINTS})

    def api_call(self, endpoint: str) -> None:
        with self._lock:
            self._counts["api_calls"] += 1
            self._counts[endpoint] = self._counts.get(endpoint, 0) + 1

    def blob(self, requests: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self._counts["blob.requests"] += requests
            self._counts["blob.bytes"] += nbytes

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
