"""Fault injection and request counters, the test-facing knobs of the emulator.

``Faults`` holds an ordered list of rules posted to ``/_emulator/faults`` (or given as ``--fault
RULE_JSON`` on the command line) and two runtime settings (``/_emulator/settings``). For each API or
blob request the server calls :meth:`Faults.apply` with the request's stable endpoint name
(``legacy.dataset``, ``v2.items.patch``, ``blob.get`` ...) and gets a :class:`Decision`.

Rules
    ``{"endpoint": GLOB, "status": N, "count": N, "rate": P, "retry_after": S, "latency_ms": MS,
    "drop_after_bytes": N, "truncate_after_bytes": N, "stall_ms": MS, "stall_after_bytes": N}``

    ``"uid": ID`` narrows a rule to requests that name that id: a legacy call's ``values.uid`` (a data
    hash), a v2 path's item or folder uuid, or one of a ``get-bulk`` body's ``itemUuids`` (so one row
    or item can be refused while its neighbours are served).

    Every matching rule contributes its ``latency_ms``. A rule with an *action* -- ``status`` (answer
    that error, with ``Retry-After`` when given), or a body fault (blob responses only) -- fires on a
    ``rate`` coin toss while its ``count`` lasts; the first rule that fires decides the request's
    action and ``count`` is decremented only when a rule fires. Endpoint patterns are ``fnmatch`` globs
    (``v2.items.*``, ``blob.*``).

    Body faults, counted from the first byte of the body, always cut it (``N`` is clamped to
    ``body length - 1``, so every firing is a real fault; an empty body is sent as it is):

    - ``drop_after_bytes``: send N bytes, then reset the connection (RST, ``SO_LINGER`` 0);
    - ``truncate_after_bytes``: ``Content-Length`` promises the whole range, N bytes are sent, then
      the connection is closed cleanly (FIN): a short body;
    - ``stall_ms`` (+ ``stall_after_bytes``, default half the body): send N bytes, send nothing for
      ``stall_ms``, then the rest.

Settings (runtime; ``reset`` and ``DELETE /_emulator/faults`` restore them)
    ``url_ttl_s`` overrides the lifetime of newly signed blob URLs (seconds, e.g. 2);
    ``clock_skew_s`` is added to the emulator's clock for signing *and* checking blob URLs (the
    ``Expires`` a client sees is off by that much from its own clock). API authentication keeps the
    true clock, so a mount can still sign in while its URLs look skewed.

``Stats`` counts requests per endpoint name; ``api_calls`` counts every non-blob, non-admin request
(including ones then rejected by auth or a fault: they reached the API); ``blob.in_flight_peak`` is
the most blob requests served at once (a client's parallelism, seen from the server). Fault firings
are counted by ``Faults`` (``faults.injected`` and one counter per kind) and merged into ``/_emulator/stats``;
``reset`` zeroes them, ``DELETE /_emulator/faults`` does not (a soak reads them after the faults end).

Both are thread-safe (one lock each; never held while sleeping or doing I/O).
"""

from __future__ import annotations

import fnmatch
import json
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
FAULT_KINDS = ("status", "drop", "truncate", "stall")
_RULE_KEYS = frozenset(
    {
        "endpoint",
        "uid",
        "status",
        "count",
        "rate",
        "retry_after",
        "latency_ms",
        "message",
        "drop_after_bytes",
        "truncate_after_bytes",
        "stall_ms",
        "stall_after_bytes",
    }
)
_SETTING_KEYS = frozenset({"url_ttl_s", "clock_skew_s"})


@dataclass
class FaultRule:
    endpoint: str
    status: int | None = None
    uid: str | None = None  # only requests naming this id (see the module docstring)
    count: int | None = None  # remaining firings; None = unlimited
    rate: float = 1.0
    retry_after: int | None = None
    latency_ms: int = 0
    message: str | None = None
    drop_after_bytes: int | None = None
    truncate_after_bytes: int | None = None
    stall_ms: int | None = None
    stall_after_bytes: int | None = None  # None: half the body

    @classmethod
    def from_json(cls, raw: Any) -> FaultRule:
        if not isinstance(raw, dict) or not isinstance(raw.get("endpoint"), str):
            raise ApiError(400, "each fault rule must be an object with a string 'endpoint'")
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise ApiError(400, f"unknown fault rule field(s): {', '.join(sorted(unknown))}")
        try:
            rule = cls(
                endpoint=raw["endpoint"],
                status=_opt_int(raw.get("status")),
                uid=None if raw.get("uid") is None else str(raw["uid"]).lower(),
                count=_opt_int(raw.get("count")),
                rate=float(raw.get("rate", 1.0)),
                retry_after=_opt_int(raw.get("retry_after")),
                latency_ms=int(raw.get("latency_ms") or 0),
                message=raw.get("message"),
                drop_after_bytes=_opt_int(raw.get("drop_after_bytes")),
                truncate_after_bytes=_opt_int(raw.get("truncate_after_bytes")),
                stall_ms=_opt_int(raw.get("stall_ms")),
                stall_after_bytes=_opt_int(raw.get("stall_after_bytes")),
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad fault rule {raw!r}: {exc}") from None
        rule._check()
        return rule

    def _check(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ApiError(400, "fault 'rate' must be within 0..1")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ApiError(400, "fault 'status' must be an HTTP error status (400..599)")
        for name in (
            "count",
            "retry_after",
            "latency_ms",
            "drop_after_bytes",
            "truncate_after_bytes",
            "stall_ms",
            "stall_after_bytes",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ApiError(400, f"fault {name!r} must be >= 0")
        actions = [
            self.status is not None,
            self.drop_after_bytes is not None,
            self.truncate_after_bytes is not None,
            self.stall_ms is not None,
        ]
        if sum(actions) > 1:
            raise ApiError(
                400, "a fault rule has one action: status, drop_after_bytes, truncate_after_bytes or stall_ms"
            )
        if self.stall_after_bytes is not None and self.stall_ms is None:
            raise ApiError(400, "fault 'stall_after_bytes' needs 'stall_ms'")

    def kind(self) -> str | None:
        if self.status is not None:
            return "status"
        if self.drop_after_bytes is not None:
            return "drop"
        if self.truncate_after_bytes is not None:
            return "truncate"
        if self.stall_ms is not None:
            return "stall"
        return None


def parse_rule_text(text: str) -> FaultRule:
    """One ``--fault RULE_JSON`` argument; ``ValueError`` with a one-line message otherwise."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValueError(f"--fault wants a JSON object, got {text!r}") from None
    try:
        return FaultRule.from_json(raw)
    except ApiError as err:
        raise ValueError(f"--fault {text!r}: {err.message}") from None


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool):
        raise TypeError("a number is needed, not a boolean")
    return None if value is None else int(value)


@dataclass(frozen=True)
class BodyFault:
    """What to do to a response body of ``length`` bytes (see the module docstring)."""

    kind: str  # "drop", "truncate" or "stall"
    after_bytes: int | None
    stall_ms: int = 0

    def cut_at(self, length: int) -> int:
        """Bytes sent before the fault: clamped so that the fault always lands inside the body."""
        wanted = self.after_bytes if self.after_bytes is not None else length // 2
        return max(0, min(wanted, length - 1))


@dataclass(frozen=True)
class Decision:
    delay_s: float = 0.0
    error: ApiError | None = None
    body: BodyFault | None = None


@dataclass
class Settings:
    url_ttl_s: int | None = None  # None: the emulator's --url-ttl
    clock_skew_s: float = 0.0

    def update(self, raw: Any) -> None:
        if not isinstance(raw, dict) or set(raw) - _SETTING_KEYS:
            raise ApiError(400, f"settings are an object with keys among {sorted(_SETTING_KEYS)}")
        try:
            if "url_ttl_s" in raw:
                ttl = raw["url_ttl_s"]
                self.url_ttl_s = None if ttl is None else int(ttl)
                if self.url_ttl_s is not None and self.url_ttl_s <= 0:
                    raise ValueError("url_ttl_s must be positive")
            if "clock_skew_s" in raw:
                self.clock_skew_s = float(raw["clock_skew_s"] or 0.0)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad settings {raw!r}: {exc}") from None


class Faults:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._rng = rng or random.Random()
        self._settings = Settings()
        self._injected: dict[str, int] = {}
        self.reset_counts()

    def add(self, rules: list[FaultRule]) -> None:
        with self._lock:
            self._rules.extend(rules)

    def clear(self) -> None:
        """Drop every rule and restore the settings (the counters stay: see ``reset_counts``)."""
        with self._lock:
            self._rules.clear()
            self._settings = Settings()

    def reset_counts(self) -> None:
        with self._lock:
            self._injected = {"faults.injected": 0, **{f"faults.{kind}": 0 for kind in FAULT_KINDS}}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._injected)

    def targets_ids(self) -> bool:
        """Whether any rule has a ``uid`` (only then does the server work out the ids a request names)."""
        with self._lock:
            return any(r.uid is not None for r in self._rules)

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def settings(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._settings)

    def update_settings(self, raw: Any) -> dict[str, Any]:
        with self._lock:
            candidate = Settings(**asdict(self._settings))
            candidate.update(raw)
            self._settings = candidate
            return asdict(candidate)

    @property
    def url_ttl_s(self) -> int | None:
        return self._settings.url_ttl_s

    @property
    def clock_skew_s(self) -> float:
        return self._settings.clock_skew_s

    def apply(self, endpoint: str, body_faults: bool = False, uids: frozenset[str] = frozenset()) -> Decision:
        """The delay and the action (error or body fault, at most one) for one request.

        ``body_faults`` says whether the endpoint can honour body faults (blobs); rules with one
        never fire elsewhere. ``uids``: the ids the request names (lower case), for rules with ``uid``.
        """
        delay_ms = 0
        fired: FaultRule | None = None
        with self._lock:
            for rule in self._rules:
                if not fnmatch.fnmatchcase(endpoint, rule.endpoint) or (rule.uid is not None and rule.uid not in uids):
                    continue
                delay_ms += rule.latency_ms
                kind = rule.kind()
                if kind is None or fired is not None or (kind != "status" and not body_faults):
                    continue
                if rule.count is not None and rule.count <= 0:
                    continue
                if rule.rate < 1.0 and self._rng.random() >= rule.rate:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                fired = rule
            if fired is not None and fired.kind() == "status":
                self._count_locked("status")
        return Decision(delay_ms / 1000.0, *_action(fired, endpoint))

    def body_fault_done(self, fault: BodyFault) -> None:
        """Count a body fault once it has happened (not for bodies too short to cut)."""
        with self._lock:
            self._count_locked(fault.kind)

    def _count_locked(self, kind: str) -> None:
        self._injected["faults.injected"] += 1
        self._injected[f"faults.{kind}"] += 1


def _action(rule: FaultRule | None, endpoint: str) -> tuple[ApiError | None, BodyFault | None]:
    if rule is None:
        return None, None
    if rule.status is not None:
        error = ApiError(
            rule.status,
            rule.message or f"injected fault {rule.status} on {endpoint}",
            legacy_code="RATE_LIMIT_ERROR" if rule.status == 429 else None,
            retry_after_s=rule.retry_after,
        )
        return error, None
    if rule.drop_after_bytes is not None:
        return None, BodyFault("drop", rule.drop_after_bytes)
    if rule.truncate_after_bytes is not None:
        return None, BodyFault("truncate", rule.truncate_after_bytes)
    return None, BodyFault("stall", rule.stall_after_bytes, rule.stall_ms or 0)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._blobs_in_flight = 0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counts = {"api_calls": 0, "blob.requests": 0, "blob.bytes": 0, "blob.in_flight_peak": 0}
            self._counts.update({name: 0 for name in API_ENDPOINTS})

    def api_call(self, endpoint: str) -> None:
        with self._lock:
            self._counts["api_calls"] += 1
            self._counts[endpoint] = self._counts.get(endpoint, 0) + 1

    def blob(self, requests: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self._counts["blob.requests"] += requests
            self._counts["blob.bytes"] += nbytes

    def blob_begin(self) -> None:
        """A blob request is being served (``blob.in_flight_peak``: the most at once since the reset)."""
        with self._lock:
            self._blobs_in_flight += 1
            self._counts["blob.in_flight_peak"] = max(self._counts["blob.in_flight_peak"], self._blobs_in_flight)

    def blob_end(self) -> None:
        with self._lock:
            self._blobs_in_flight -= 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


__all__ = [
    "API_ENDPOINTS",
    "FAULT_KINDS",
    "BodyFault",
    "Decision",
    "FaultRule",
    "Faults",
    "Settings",
    "Stats",
    "parse_rule_text",
]
