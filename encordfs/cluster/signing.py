"""Shared signed URLs: each URL is signed once per cluster per lifetime (a ``Backend`` wrapper).

``SharedBackend`` passes every call to the backend it wraps except ``sign``, which goes through a map
of signed URLs in Redis (``{ns}:u:{handle}``, PX = the URL's expiry minus the margin, the rule of
``core.urls``, so Redis drops a URL exactly when a node would stop handing it out).

``sign(handles)``
    1. ``MGET`` the handles' URLs: those present are answered (``shared.url_hits``).
    2. For the rest, one transaction of ``SET {ns}:ul:{handle} token NX PX`` per handle (two nodes' SETs
       never interleave: two nodes asking for one window at once do not split it): the handles whose
       lease this node got are signed in one bulk call (the backend chunks at 1,000), published, and
       their leases dropped (``shared.url_misses``, ``shared.leases_taken``).
    3. Handles leased by other nodes are waited for (``MGET`` every ``POLL_S``; ``shared.leases_waited``):
       their URLs appear when the other node's bulk call returns. A handle whose lease vanishes without
       a URL (its signer died, or the service refused it) goes round again; past ``WAIT_S`` the node
       signs what is left itself. Refusals and gone items are never shared: each node learns them itself.

Re-signing a refused URL
    The URL cache above asks again for a handle only when the URL it has will not do: near expiry, or
    refused by the storage (403). Redis may still hold that same URL, so this node remembers (a bounded
    map of digests) the URL it last got for each handle; when Redis offers exactly that one again, it is
    dropped from Redis (only if unchanged, by a compare-and-delete) and signed anew under the lease.

Degrade: any ``SharedDown`` signs whatever is still unanswered through the wrapped backend directly.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from encordfs.backend import Backend, DatasetRecord, GroupRef, Members, PushOutcome, RowPatch, RowRecord
from encordfs.cluster.keys import Keys
from encordfs.cluster.link import RedisLink, SharedDown
from encordfs.core.counters import Counters
from encordfs.core.urls import parse_expiry
from encordfs.errors import BackendError

# A signing lease outlives a bulk signing call of 1,000 items under load; past it, others sign again.
LEASE_MS = 30_000
POLL_S = 0.05
WAIT_S = 30.0
# URLs this node got, remembered to recognise a refused one that Redis still holds (digests: ~100 B each).
REMEMBERED = 200_000
# The URL cache's rules (``core.urls.SignedUrlCache`` defaults): the margin before expiry, and the
# lifetime assumed when a URL does not say.
MARGIN_S = 60.0
DEFAULT_TTL_S = 300.0
_DEL_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

Signed = dict[str, str | BackendError | None]


class SharedBackend:
    """``Backend`` whose ``sign`` is shared through Redis (module docstring); the rest passes through."""

    def __init__(
        self,
        inner: Backend,
        link: RedisLink,
        keys: Keys,
        counters: Counters,
        *,
        margin_s: float = MARGIN_S,
        default_ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.link = link
        self.keys = keys
        self.counters = counters
        self.margin_s = margin_s
        self.default_ttl_s = default_ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._got: OrderedDict[str, bytes] = OrderedDict()  # handle -> digest of the URL this node last got

    # -- passed through

    def list_datasets(self) -> list[DatasetRecord]:
        return self.inner.list_datasets()

    def iter_rows(self, dataset_uid: str) -> Iterator[RowRecord]:
        return self.inner.iter_rows(dataset_uid)

    def list_children(self, groups: list[GroupRef]) -> dict[str, Members]:
        return self.inner.list_children(groups)

    def push(self, patches: list[RowPatch]) -> dict[str, PushOutcome]:
        return self.inner.push(patches)

    def close(self) -> None:
        self.inner.close()

    # -- signing

    def sign(self, handles: list[str]) -> Signed:
        out: Signed = {}
        wanted = list(dict.fromkeys(handles))
        try:
            self._sign_shared(wanted, out)
        except SharedDown:
            left = [h for h in wanted if h not in out]
            if left:
                out.update(self.inner.sign(left))
        return out

    def _sign_shared(self, wanted: list[str], out: Signed) -> None:
        deadline = time.monotonic() + WAIT_S
        pending = wanted
        waited = False
        while pending:
            missing = self._from_redis(pending, out)
            if not missing:
                return
            ours = self._lease(missing)
            if ours:
                # Another node may have published these and dropped its leases between our MGET and our
                # SETs: look once more before signing.
                ours = self._recheck(ours, out)
            if ours:
                self._sign_ours(ours, out)
            pending = [h for h in missing if h not in out]
            if not pending:
                return
            if time.monotonic() > deadline:
                out.update(self.inner.sign(pending))
                return
            if not waited:
                self.counters.inc("shared.leases_waited")
                waited = True
            time.sleep(POLL_S)

    def _lease(self, handles: list[str]) -> list[str]:
        """The handles whose signing lease this node got (one round trip). One transaction: Redis runs a
        plain pipeline's commands as it reads them, between other clients' commands, so two nodes asking
        for the same window at once each got part of it and each signed its part (two calls for one
        window: ``test_nodes_asking_for_one_window_at_once_never_split_it``)."""
        token = secrets.token_hex(8)
        got = self.link.pipeline(
            lambda p: [p.set(self.keys.url_lease(h), token, nx=True, px=LEASE_MS) for h in handles],
            transaction=True,
        )
        return [h for h, ok in zip(handles, got) if ok]

    def _recheck(self, ours: list[str], out: Signed) -> list[str]:
        found = self.link.run(lambda r: r.mget([self.keys.url(h) for h in ours]))
        late = {h: url for h, raw in zip(ours, found) if (url := _url(raw)) is not None and not self._seen(h, url)}
        if late:
            for handle, url in late.items():
                out[handle] = url
                self._remember(handle, url)
            self.counters.inc("shared.url_hits", len(late))
            self._drop_leases(list(late))
        return [h for h in ours if h not in late]

    def _from_redis(self, pending: list[str], out: Signed) -> list[str]:
        """Answer what Redis holds; returns the handles still missing (a URL this node already got and
        asks for again is dropped from Redis: module docstring)."""
        found = self.link.run(lambda r: r.mget([self.keys.url(h) for h in pending]))
        missing, refused = [], []
        for handle, raw in zip(pending, found):
            url = _url(raw)
            if url is None:
                missing.append(handle)
            elif self._seen(handle, url):
                refused.append((handle, raw))
                missing.append(handle)
            else:
                out[handle] = url
                self._remember(handle, url)
        hits = len(pending) - len(missing)
        if hits:
            self.counters.inc("shared.url_hits", hits)
        if refused:
            self.link.pipeline(lambda p: [p.eval(_DEL_IF, 1, self.keys.url(h), raw) for h, raw in refused])
        return missing

    def _sign_ours(self, ours: list[str], out: Signed) -> None:
        self.counters.inc("shared.leases_taken")
        self.counters.inc("shared.url_misses", len(ours))
        try:
            signed = self.inner.sign(ours)
        except BaseException:
            self._drop_leases(ours)
            raise
        now = self.clock()
        publish = []
        for handle in ours:
            url = signed.get(handle)
            out[handle] = url
            if isinstance(url, str):
                self._remember(handle, url)
                ttl_ms = self._ttl_ms(url, now)
                if ttl_ms > 0:
                    publish.append((handle, url, ttl_ms))

        def fill(p: Any) -> None:
            for handle, url, ttl_ms in publish:
                p.set(self.keys.url(handle), url, px=ttl_ms)
            p.delete(*[self.keys.url_lease(h) for h in ours])

        try:
            self.link.pipeline(fill)
            self.counters.inc("shared.urls_published", len(publish))
        except SharedDown:
            pass  # signed all the same; the leases expire by themselves

    def _drop_leases(self, ours: list[str]) -> None:
        try:
            self.link.run(lambda r: r.delete(*[self.keys.url_lease(h) for h in ours]))
        except SharedDown:
            pass

    def _ttl_ms(self, url: str, now: float) -> int:
        expires = parse_expiry(url)
        if expires is None:
            expires = now + self.default_ttl_s
        margin = min(self.margin_s, max(0.0, expires - now) / 2)
        return int((expires - margin - now) * 1000)

    def _seen(self, handle: str, url: str) -> bool:
        with self._lock:
            return self._got.get(handle) == _digest(url)

    def _remember(self, handle: str, url: str) -> None:
        with self._lock:
            self._got[handle] = _digest(url)
            self._got.move_to_end(handle)
            while len(self._got) > REMEMBERED:
                self._got.popitem(last=False)


def _digest(url: str) -> bytes:
    return hashlib.blake2b(url.encode(), digest_size=16).digest()


def _url(raw: bytes | None) -> str | None:
    """A URL from Redis, or None for anything that is not an http(s) URL in ASCII."""
    if raw is None:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.startswith(("https://", "http://")) and len(text) < 16384 else None
