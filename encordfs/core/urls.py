"""Signed URLs: when they expire, how they are logged, and a thread-safe cache of them per item.

Owns
    ``parse_expiry``  absolute unix expiry read from a signed URL's query string, for the styles Encord's
                      storage can hand out: S3 SigV4 (``X-Amz-Date`` + ``X-Amz-Expires``), S3 SigV2 /
                      CloudFront canned policy / GCS V2 (``Expires=<unix>``), CloudFront custom policy
                      (``Policy=`` base64 JSON, ``DateLessThan``), GCS V4 (``X-Goog-Date`` +
                      ``X-Goog-Expires``), Azure SAS (``se=`` ISO 8601). Anything else: ``None``.
    ``redact``        a URL without its query, fragment and user info: the only form that may be logged or
                      put into an error message.
    ``SignedUrlCache`` item id -> (url, expires_at), signing through one injected seam,
                      ``sign_many(ids) -> {id: url | None | FsError}`` (``None``: the item cannot be signed,
                      e.g. gone; an ``FsError``: the service refused that one id -- a ``get`` of it raises
                      that error, the other ids of the call are served, and the reason is kept in
                      ``failures()`` until the id is signed again). Ids are ``encordfs.backend`` handles.

Expiry policy
    A URL is served while ``clock() < expires_at - margin``. ``margin_s`` (default 60 s) covers the
    time between handing a URL out and the last range GET that uses it (a retry budget of 30 s plus clock
    skew). When the URL's lifetime is unknown we assume ``default_ttl_s`` (default 300 s): Encord's signed
    URLs have lived for an hour or more, so 5 minutes is conservative; if it is still wrong the fetcher
    sees 403 and forces a re-sign. For URLs whose whole lifetime is shorter than twice the margin (test
    servers, aggressive policies) the margin shrinks to half the lifetime, so a fresh URL is never
    "already expiring" (which would re-sign on every call).

Single flight, bounded waits
    Concurrent ``get``s for one id sign once: the first caller registers a ``_Flight`` and starts the
    signing call on a thread of its own; every caller, the first included, waits for it at most
    ``wait_s`` (30 s) and then fails with ``RemoteIOError`` (EIO), so a slow or unreachable service never
    holds a FUSE thread longer than that; the call still lands in the cache when it completes. ``prime`` registers one flight per chunk of ``batch`` ids (≤ 1000, the
    bulk signing limit), so a ``get`` racing a prime waits for the prime instead of signing again.

Forced re-sign after a 403
    ``source(item_id)`` returns the ``UrlSource`` the fetcher takes: ``source(force_resign=False)``. When
    several range GETs of one file see 403 at once, each forces; to sign once, a ``UrlSource``
    remembers (per thread) the URL it last handed out, and ``get(item_id, stale_url=...)`` re-signs only
    if the cache still holds that stale URL -- otherwise somebody already replaced it.

One bad id
    The real bulk call refuses all its ids (403) when one item is gone or forbidden. A refused call of
    several ids is split in halves until the bad ones are alone (``_sign_split``: about 2 log2(n) extra
    calls per bad id, at most ``SPLIT_BUDGET`` per flight); a bad id gets the refusal (EACCES/ENOENT for
    its file only) and every other id its URL, so a deleted neighbour never fails a read.

Counters: ``urls.signs`` signing calls made through the seam, ``urls.sign_splits`` refused calls split, ``urls.urls_signed`` URLs they returned,
``urls.legacy_signs`` rows without a storage item among them (each one API call of its own: the legacy
data-row call), ``urls.sign_refusals`` ids the service refused, and hits, misses and re-signs.

Lock order: ``SignedUrlCache._lock`` is a leaf; ``sign_many`` is never called with it held.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import cachetools

from encordfs.backend import BULK_LIMIT, parse_legacy_key
from encordfs.core.counters import Counters
from encordfs.errors import FsError, NotFound, PermissionDenied, RemoteIOError

SignMany = Callable[[list[str]], Mapping[str, "str | FsError | None"]]
# Refusals kept for ``failures()`` (the status shows them): the most recent ones.
MAX_FAILURES_KEPT = 100
# The longest a caller (a FUSE thread) waits for a signing call, its own or another's: under the read
# path's 30 s retry budget; past it the read fails with EIO and the call lands in the cache later.
WAIT_S = 30.0
# Signed URLs kept (LRU): 64k URLs of a few hundred bytes, tens of MB at most, cover a window of 64
# signing batches ahead of and behind the readers.
MAX_URLS = 65536
# Extra signing calls one flight may spend splitting a refused bulk call (about 2 log2(1000) = 20 per bad id).
SPLIT_BUDGET = 64

_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


class UrlSource(Protocol):
    """What the fetcher calls to get a URL; ``force_resign=True`` after the server refused the last one."""

    def __call__(self, force_resign: bool) -> str: ...


# ---------------------------------------------------------------------------------------------- parsing


def parse_expiry(url: str) -> float | None:
    """Absolute unix time at which ``url`` stops working, or ``None`` when the URL does not say."""
    params = {key.lower(): value for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    for date_key, ttl_key in (("x-amz-date", "x-amz-expires"), ("x-goog-date", "x-goog-expires")):
        if date_key in params and ttl_key in params:
            return _date_plus_ttl(params[date_key], params[ttl_key])
    if "expires" in params:
        return _float_or_none(params["expires"])
    if "policy" in params:
        return _cloudfront_policy_expiry(params["policy"])
    if "se" in params:
        return _iso8601_or_none(params["se"])
    return None


def _date_plus_ttl(date: str, ttl: str) -> float | None:
    try:
        signed_at = datetime.strptime(date, _AMZ_DATE_FORMAT).replace(tzinfo=UTC)
        return signed_at.timestamp() + int(ttl)
    except ValueError:
        return None


def _float_or_none(text: str) -> float | None:
    try:
        return float(int(text))
    except ValueError:
        return None


def _iso8601_or_none(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # Azure's se= is always UTC, even in its short forms
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _cloudfront_policy_expiry(policy: str) -> float | None:
    # CloudFront's URL-safe base64 swaps + = / for - _ ~.
    raw = policy.translate(str.maketrans("-_~", "+=/"))
    try:
        document = json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        return float(document["Statement"][0]["Condition"]["DateLessThan"]["AWS:EpochTime"])
    except (binascii.Error, ValueError, KeyError, IndexError, TypeError):
        return None


def redact(url: str) -> str:
    """``url`` without query string, fragment or user info: safe to log (signatures live in the query)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# ---------------------------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class _Entry:
    url: str
    signed_at: float
    expires_at: float

    def fresh(self, now: float, margin_s: float) -> bool:
        margin = min(margin_s, (self.expires_at - self.signed_at) / 2)
        return now < self.expires_at - margin


class _Flight:
    """One in-progress signing call; waiters read ``urls`` or ``error`` after ``done`` is set."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.urls: dict[str, str | FsError | None] = {}
        self.error: BaseException | None = None


class SignedUrlCache:
    """Item id -> signed URL, re-signed before expiry; thread-safe with single-flight signing."""

    def __init__(
        self,
        sign_many: SignMany,
        clock: Callable[[], float] = time.time,
        margin_s: float = 60.0,
        default_ttl_s: float = 300.0,
        batch: int = BULK_LIMIT,
        counters: Counters | None = None,
        max_entries: int = MAX_URLS,
        wait_s: float = WAIT_S,
    ) -> None:
        self._sign_many = sign_many
        self._wait_s = wait_s
        self._clock = clock
        self._margin_s = margin_s
        self._default_ttl_s = default_ttl_s
        self._batch = max(1, min(batch, BULK_LIMIT))
        self.counters = counters if counters is not None else Counters()
        self._lock = threading.Lock()
        # Bounded, least recently used out first: an epoch over a million files must not keep a million
        # URLs (a few hundred bytes each). An evicted URL is signed again, with its siblings, if needed.
        self._entries: cachetools.LRUCache[str, _Entry] = cachetools.LRUCache(maxsize=max_entries)
        self._flights: dict[str, _Flight] = {}
        self._failures: dict[str, str] = {}  # id -> why the service refused to sign it (bounded, newest last)

    # -- public surface

    def get(self, item_id: str, stale_url: str | None = None) -> str:
        """A URL for ``item_id`` that is not within the margin of expiry.

        ``stale_url``: the server refused this URL; re-sign unless the cache already holds another one.
        Raises ``NotFound`` if the item cannot be signed, or whatever ``sign_many`` raised.
        """
        while True:
            with self._lock:
                url, flight, owner = self._lookup_locked(item_id, stale_url)
            if url is not None:
                return url
            assert flight is not None
            if owner:
                self._start_flight([item_id], flight)
            self._wait(flight, item_id)
            if flight.error is not None:
                raise flight.error
            signed = flight.urls.get(item_id)
            if isinstance(signed, FsError):
                raise signed
            if signed is None:
                raise NotFound(f"item {item_id} has no signed URL (deleted, or not readable)")
            if owner or signed != stale_url:
                return signed
            # The flight we joined returned the URL the server refused: go round and sign ourselves.

    def prime(self, item_ids: Iterable[str], wait: bool = True) -> None:
        """Bulk-sign the ids that are missing or near expiry, at most ``batch`` (≤ 1000) per call.

        Ids the server will not sign are left out silently (a later ``get`` raises ``NotFound``).
        ``wait=False``: start the calls and return at once (signing ahead of readers: a ``get`` of an
        id meanwhile joins its call).
        """
        with self._lock:
            now = self._clock()
            wanted = [i for i in dict.fromkeys(item_ids) if i not in self._flights and not self._fresh_locked(i, now)]
            expired = sum(1 for i in wanted if i in self._entries)
        if expired:
            self.counters.inc("urls.resigns_expired", expired)
        for start in range(0, len(wanted), self._batch):
            flight = _Flight()
            with self._lock:  # re-check: a concurrent get may have signed some meanwhile
                now = self._clock()
                todo = [
                    i
                    for i in wanted[start : start + self._batch]
                    if i not in self._flights and not self._fresh_locked(i, now)
                ]
                for item_id in todo:
                    self._flights[item_id] = flight
            if todo:
                self._start_flight(todo, flight)
                if not wait:
                    continue
                self._wait(flight, todo[0])
                if flight.error is not None:
                    raise flight.error

    def put(self, item_id: str, url: str) -> None:
        """Store a URL obtained elsewhere (e.g. returned by a listing)."""
        with self._lock:
            self._entries[item_id] = self._entry(url, self._clock())

    def is_fresh(self, item_id: str) -> bool:
        """True when ``get`` would answer from the cache (a URL not within the margin of expiry)."""
        with self._lock:
            return self._fresh_locked(item_id, self._clock())

    def is_pending(self, item_id: str) -> bool:
        """True while a signing call that covers ``item_id`` is in flight (a ``get`` would join it)."""
        with self._lock:
            return item_id in self._flights

    def failures(self) -> dict[str, str]:
        """Ids the service refused to sign at their last attempt, with the reason (for the status)."""
        with self._lock:
            return dict(self._failures)

    def invalidate(self, item_id: str) -> None:
        with self._lock:
            self._entries.pop(item_id, None)

    def source(self, item_id: str) -> UrlSource:
        """The ``url_source`` callable the fetcher and reader take, bound to ``item_id``."""
        return _CachedUrlSource(self, item_id)

    # -- internals

    def _lookup_locked(self, item_id: str, stale_url: str | None) -> tuple[str | None, _Flight | None, bool]:
        """(url, None, _) on a hit; else (None, flight, owner) -- owner must run the flight."""
        flight = self._flights.get(item_id)
        if flight is not None:
            return None, flight, False
        entry = self._entries.get(item_id)
        now = self._clock()
        if entry is not None and entry.url != stale_url and entry.fresh(now, self._margin_s):
            self.counters.inc("urls.hits")
            return entry.url, None, False
        if entry is None:
            self.counters.inc("urls.misses")
        elif entry.url == stale_url:
            self.counters.inc("urls.resigns_forced")
        else:
            self.counters.inc("urls.resigns_expired")
        flight = _Flight()
        self._flights[item_id] = flight
        return None, flight, True

    def _fresh_locked(self, item_id: str, now: float) -> bool:
        entry = self._entries.get(item_id)
        return entry is not None and entry.fresh(now, self._margin_s)

    def _start_flight(self, item_ids: list[str], flight: _Flight) -> None:
        """Sign on a thread of its own: a caller (a FUSE thread) waits at most ``wait_s`` for it, while the
        call itself may take the SDK's timeouts and retries; its URLs are cached whenever it lands."""
        threading.Thread(target=self._run_flight, args=(item_ids, flight), name="encordfs-sign", daemon=True).start()

    def _wait(self, flight: _Flight, item_id: str) -> None:
        if not flight.done.wait(self._wait_s):
            self.counters.inc("urls.sign_timeouts")
            raise RemoteIOError(
                f"signing item {item_id} took longer than {self._wait_s:g} s (Encord is slow or unreachable)"
            )

    def _run_flight(self, item_ids: list[str], flight: _Flight) -> None:
        """Sign ``item_ids`` (already registered under ``flight``) and wake the waiters."""
        try:
            self.counters.inc("urls.signs")
            legacy_rows = {p[:2] for i in item_ids if (p := parse_legacy_key(i)) is not None}
            if legacy_rows:
                self.counters.inc("urls.legacy_signs", len(legacy_rows))
            signed = self._sign_split(list(item_ids), [SPLIT_BUDGET])
            flight.urls = {i: signed.get(i) for i in item_ids}
        except Exception as exc:  # handed to every waiter; each re-raises it
            flight.error = exc
        finally:
            self._land_flight(item_ids, flight)

    def _sign_split(self, item_ids: list[str], budget: list[int]) -> Mapping[str, str | FsError | None]:
        """``sign_many``, surviving one bad id: the real bulk call refuses all of them (403/404) when one
        item is gone or forbidden, so a refused call of several ids is split in halves until the bad
        ones are alone; they get the refusal, the others their URLs. At most ``budget[0]`` extra calls
        (shared by the recursion); past it, the ids of a refused part all get the refusal."""
        try:
            return self._sign_many(item_ids)
        except (PermissionDenied, NotFound) as exc:
            if len(item_ids) == 1 or budget[0] < 2:
                return dict.fromkeys(item_ids, exc)
        budget[0] -= 2
        self.counters.inc("urls.sign_splits")
        mid = len(item_ids) // 2
        out = dict(self._sign_split(item_ids[:mid], budget))
        out.update(self._sign_split(item_ids[mid:], budget))
        return out

    def _land_flight(self, item_ids: list[str], flight: _Flight) -> None:
        now = self._clock()
        with self._lock:
            for item_id in item_ids:
                url = flight.urls.get(item_id)
                if isinstance(url, FsError):
                    self._entries.pop(item_id, None)
                    self._failures.pop(item_id, None)
                    self._failures[item_id] = url.message
                    if len(self._failures) > MAX_FAILURES_KEPT:
                        del self._failures[next(iter(self._failures))]
                    self.counters.inc("urls.sign_refusals")
                elif url is not None:
                    self._entries[item_id] = self._entry(url, now)
                    self._failures.pop(item_id, None)
                    self.counters.inc("urls.urls_signed")
                else:
                    self._entries.pop(item_id, None)
                if self._flights.get(item_id) is flight:
                    del self._flights[item_id]
        flight.done.set()

    def _entry(self, url: str, now: float) -> _Entry:
        expires_at = parse_expiry(url)
        if expires_at is None:
            expires_at = now + self._default_ttl_s
        return _Entry(url=url, signed_at=min(now, expires_at), expires_at=expires_at)


class _CachedUrlSource:
    """``UrlSource`` over a ``SignedUrlCache``; remembers per thread the URL it handed out last."""

    def __init__(self, cache: SignedUrlCache, item_id: str) -> None:
        self._cache = cache
        self._item_id = item_id
        self._last = threading.local()

    def __call__(self, force_resign: bool = False) -> str:
        stale = getattr(self._last, "url", None) if force_resign else None
        if force_resign and stale is None:
            stale = self._cache.get(self._item_id)  # nothing handed out on this thread: treat current as bad
        url = self._cache.get(self._item_id, stale_url=stale)
        self._last.url = url
        return url
