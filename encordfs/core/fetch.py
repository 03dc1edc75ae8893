"""HTTP range fetcher: bytes ``[start, start + len(out))`` of a signed URL, into a caller's buffer.

Owns the connection pool of the read path (HTTP/1.1 keep-alive; HTTP/2 measured slower and unsafe
across threads) and every decision about HTTP statuses. Foreign exceptions (``http.client``, ``ssl``,
sockets, httpx) are translated here, by table, into the ``encordfs.errors`` family; nothing above sees them.

Two transports, one status table
    By default the fetcher speaks HTTP/1.1 itself through a small pool of ``http.client`` connections
    (``_StdlibPool``): the body is read with ``readinto`` straight into the caller's buffer, no chunk
    objects, and a request costs a fraction of httpx's per-request Python work -- on a 2-core machine
    the mount is CPU-bound, and this was the largest single cost of a small-file read. An ``httpx.Client``
    is used instead when one is passed in, or when a proxy is configured in the environment
    (``HTTP(S)_PROXY``; httpx honours it and the stdlib pool does not). Redirects are followed (5 at most)
    by both.

Algorithm (``fetch_into``)
    Retries follow the one ``core.retry.RetryPolicy`` (``READ_RETRY`` by default: full-jitter backoff
    from 0.1 s capped at 5 s, ``Retry-After`` honoured up to 5 s, at most 10 attempts and 30 s per call,
    waits included). One deadline per call: ``clock() + policy.budget_s``. Each attempt asks ``url_source(force)`` for a URL
    and sends ``Range: bytes=a-b`` with ``Accept-Encoding: identity``; the body is streamed straight into
    the caller's buffer (no intermediate ``bytes``; the ceilings measured a reused buffer 1.5x faster).

    ======================  ================================================================
    206 (or 200 at 0)       copy exactly ``len(out)`` bytes; ``Content-Range`` must match
    400 / 401 / 403         signed URL refused: re-sign ONCE (``url_source(True)``) and retry
                            at once; the re-signed URL refused too -> ``PermissionDenied``
                            (400: ``RemoteIOError``). Before each backoff retry the URL is asked
                            for again (``url_source(False)``: cached unless it is expiring), so a
                            URL that expires during a long retry is replaced, not refused twice
    404 / 410 / 412 / 416   the object is gone or shorter than the catalog said -> ``Stale``
    408 / 429 / 5xx,        retried after the policy's backoff (``Retry-After`` honoured, capped)
    network errors          while the policy allows (attempts, time); then ``RemoteIOError``
    short body              announced shorter (Content-Length / Content-Range) -> ``Stale``;
                            cut mid-stream (reset, early close) -> retried like a network error
    stalled body            no byte for ``stall_timeout_s`` -> abandoned, retried like a network error
    ======================  ================================================================

    Stalls: every socket operation (connect, send, each receive) has the timeout
    ``min(stall_timeout_s, time left)``; the body is received in slices of ``_SLICE_BYTES`` and the
    timeout is set again before each, so a server that stops sending mid-body is given up on after
    ``stall_timeout_s`` of silence, and one that trickles is cut off at the deadline. No call outlives
    its budget by more than one socket operation; a reader therefore gets its bytes or ``EIO`` within
    ``budget_s + stall_timeout_s`` at worst, never a hang. A successful call never returns fewer bytes
    than asked.

Invariants: URLs are logged and put into messages only through ``redact`` (no query string, hence no
signature). A ``client`` passed in is not closed by ``close()``. A pooled connection is reused only
after its response was read to the end; anything else closes it.

Lock order: ``_StdlibPool._lock`` is a leaf, never held during I/O; httpx's pool is thread-safe.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import logging
import socket as _socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httpx

from encordfs.core.counters import Counters
from encordfs.core.retry import READ_RETRY, RetryPolicy
from encordfs.core.urls import UrlSource, redact
from encordfs.errors import FsError, PermissionDenied, RemoteIOError, Stale

log = logging.getLogger(__name__)

_REFUSED = frozenset({400, 401, 403})
_GONE = frozenset({404, 410, 412, 416})
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Transport errors worth another attempt; anything else from httpx (bad URL, unsupported scheme) is not.
_RETRYABLE_EXC: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# The stdlib transport's equivalents: timeouts, resets, truncated or garbled responses, TLS failures.
_RETRYABLE_STDLIB_EXC: tuple[type[Exception], ...] = (OSError, http.client.HTTPException, ssl.SSLError)
_ERROR_BODY_MAX = 64 * 1024  # error bodies up to this size are drained so the connection stays pooled
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_SLICE_BYTES = 1 << 20  # body received in slices this big, the stall timeout and the deadline checked between
# A healthy byte server sends something within a second even under load (S3's first byte is ~0.1 s
# at p99 for small objects); 10 s of silence mid-body is a stalled connection, not a slow one, and
# two such stalls and a retry still fit the 30 s read budget.
DEFAULT_STALL_TIMEOUT_S = 10.0


class RangeFetcher(Protocol):
    """The seam the reader depends on; tests may pass any object with this method."""

    def fetch_into(self, url_source: UrlSource, start: int, out: memoryview) -> None: ...


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying (after ``delay_s`` at least)."""

    def __init__(self, reason: str, delay_s: float | None = None, stalled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s
        self.stalled = stalled  # no byte for the stall timeout (or the deadline came mid-body)


class _Refused(Exception):
    """Internal: the server refused the signed URL (400/401/403)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class HttpFetcher:
    """Range GETs over one pooled keep-alive client, with re-sign-once and budgeted retries.

    ``retry`` is the policy (default ``READ_RETRY``); ``retry_budget_s``, ``backoff_base_s`` and
    ``backoff_cap_s`` are shorthands that replace its ``budget_s``, ``base_s`` and ``cap_s`` (and
    ``max_retry_after_s``).
    """

    def __init__(
        self,
        client: httpx.Client | None = None,
        max_connections: int = 16,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        retry: RetryPolicy = READ_RETRY,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        *,
        retry_budget_s: float | None = None,
        backoff_base_s: float | None = None,
        backoff_cap_s: float | None = None,
    ) -> None:
        self._owns_client = client is None
        self._pool: _StdlibPool | None = None
        if client is None and not _proxy_configured():
            self._pool = _StdlibPool(max_connections)
        elif client is None:
            client = _default_client(max_connections, stall_timeout_s)
        self._client = client
        self.stall_timeout_s = stall_timeout_s
        self.retry = _policy(retry, retry_budget_s, backoff_base_s, backoff_cap_s)
        self.counters = counters if counters is not None else Counters()
        self._clock = clock
        self._sleep = sleep

    @property
    def retry_budget_s(self) -> float:
        return self.retry.budget_s if self.retry.budget_s is not None else float("inf")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._owns_client and self._client is not None:
            self._client.close()

    def fetch(self, url_source: UrlSource, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; convenience over ``fetch_into`` (one extra copy)."""
        buf = bytearray(end - start)
        self.fetch_into(url_source, start, memoryview(buf))
        return bytes(buf)

    def fetch_into(self, url_source: UrlSource, start: int, out: memoryview) -> None:
        """Fill ``out`` with bytes ``[start, start + len(out))`` or raise an ``FsError``."""
        if len(out) == 0:
            return
        started = self._clock()
        deadline = started + self.retry_budget_s
        resigned = False
        failures = 0
        url = url_source(False)
        while True:
            try:
                self._attempt(url, start, out, deadline)
                return
            except FsError:  # an answer no retry changes (gone, shorter, Range ignored, bad URL)
                self.counters.inc("fetch.errors")
                raise
            except _Refused as refused:
                if resigned:
                    self.counters.inc("fetch.errors")
                    what = f"signed URL refused twice (HTTP {refused.status}) for {redact(url)}"
                    raise (PermissionDenied(what) if refused.status != 400 else RemoteIOError(what)) from None
                resigned = True
                self.counters.inc("fetch.resigns_after_error")
                url = url_source(True)
            except _Retry as retry:
                failures += 1
                if retry.stalled:
                    self.counters.inc("fetch.stalls")
                delay_s = self.retry.next_delay_s(failures, self._clock() - started, retry.delay_s)
                if delay_s is None:
                    self.counters.inc("fetch.errors")
                    raise RemoteIOError(
                        f"gave up on {redact(url)} after {failures} attempts in {self._clock() - started:.1f} s "
                        f"({self.retry_budget_s:g} s budget): {retry.reason}"
                    ) from None
                self.counters.inc("fetch.retries")
                log.debug("retrying %s in %.3f s: %s", redact(url), delay_s, retry.reason)
                self._sleep(delay_s)
                # The URL may have expired while this call retried (short-lived URLs): ask again (the
                # cache answers at once while it is fresh). The URL was not refused, so a later refusal
                # is a new expiry and earns its own re-sign.
                url = url_source(False)
                resigned = False

    # -- one attempt

    def _timeout_s(self, deadline: float) -> float:
        """The timeout of the next socket operation: the stall timeout, or less near the deadline."""
        return max(0.001, min(self.stall_timeout_s, deadline - self._clock()))

    def _attempt(self, url: str, start: int, out: memoryview, deadline: float) -> None:
        left_s = self._timeout_s(deadline)
        headers = {"Range": f"bytes={start}-{start + len(out) - 1}", "Accept-Encoding": "identity"}
        self.counters.inc("fetch.requests")
        if self._pool is not None:
            self._attempt_stdlib(self._pool, url, headers, start, out, deadline)
            return
        assert self._client is not None
        try:
            with self._client.stream("GET", url, headers=headers, timeout=left_s) as response:
                if response.status_code not in (200, 206):
                    _drain_small(response)  # a small error body: httpx then pools the connection
                self._check_status(response.status_code, response.headers, url)
                self._check_range(response.status_code, response.headers, start, len(out), url)
                self._read_body(response, out, deadline)
        except httpx.TimeoutException as exc:
            raise _Retry(type(exc).__name__, stalled=True) from None
        except _RETRYABLE_EXC as exc:
            raise _Retry(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise RemoteIOError(f"cannot fetch {redact(url)}: {type(exc).__name__}") from None

    def _attempt_stdlib(
        self, pool: _StdlibPool, url: str, headers: dict[str, str], start: int, out: memoryview, deadline: float
    ) -> None:
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                try:
                    conn, response = pool.request(url, headers, self._timeout_s(deadline))
                except ValueError as exc:  # not an http(s) URL, or no host
                    raise RemoteIOError(f"cannot fetch {redact(url)}: {exc}") from None
                reusable = False
                try:
                    status = response.status
                    if status not in (200, 206):
                        reusable = _drain_stdlib(response)  # a small error or redirect body: keep the connection
                        location = response.getheader("location")
                        if status in _REDIRECTS and location:
                            url = urljoin(url, location)
                            continue
                    self._check_status(status, response.headers, url)
                    self._check_range(status, response.headers, start, len(out), url)
                    reusable = self._read_body_stdlib(conn, response, out, deadline)
                    return
                finally:
                    pool.release(conn, response, reusable)
        except TimeoutError as exc:
            raise _Retry(type(exc).__name__, stalled=True) from None
        except _RETRYABLE_STDLIB_EXC as exc:
            raise _Retry(type(exc).__name__) from None
        raise _Retry(f"more than {_MAX_REDIRECTS} redirects")

    def _read_body_stdlib(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, out: memoryview, deadline: float
    ) -> bool:
        """Fill ``out`` with ``readinto``; True when the response was consumed to its end (reusable).

        Slice by slice, the socket timeout set again before each (see the module docstring: stalls).
        """
        pos, length = 0, len(out)
        try:
            while pos < length:
                if self._clock() >= deadline:
                    raise _Retry(f"deadline reached at {pos} of {length} bytes", stalled=True)
                if conn.sock is not None:
                    conn.sock.settimeout(self._timeout_s(deadline))
                n = response.readinto(out[pos : min(length, pos + _SLICE_BYTES)])
                if not n:
                    break
                pos += n
        finally:
            self.counters.inc("fetch.bytes_fetched", pos)
        if pos < length:
            raise _Retry(f"body cut short at {pos} of {length} bytes")
        # http.client closes its side of a response read to its announced end: only then is the
        # connection free for the next request (a 200 longer than ``out`` is not, and gets closed).
        return response.isclosed() and not response.will_close

    def _check_status(self, status: int, headers: Mapping[str, str] | Message, url: str) -> None:
        """Classify a status; the caller has drained a small error body already."""
        if status in (200, 206):
            return
        if status in _REFUSED:
            raise _Refused(status)
        if status in _GONE:
            raise Stale(f"{redact(url)} answered HTTP {status}: object gone or shorter than expected")
        if status in _RETRYABLE_STATUS:
            raise _Retry(f"HTTP {status}", _retry_after_s(headers))
        raise RemoteIOError(f"{redact(url)} answered HTTP {status}")

    def _check_range(
        self, status: int, headers: Mapping[str, str] | Message, start: int, length: int, url: str
    ) -> None:
        if status == 200:
            if start != 0:
                raise RemoteIOError(f"{redact(url)} ignored the Range header")
            announced = headers.get("content-length")
            if announced is not None and announced.isdigit() and int(announced) < length:
                raise Stale(f"{redact(url)} is shorter ({announced} bytes) than expected")
            return
        got = _parse_content_range(headers.get("content-range") or "")
        if got is None or got[0] != start:
            raise RemoteIOError(f"{redact(url)} answered an unexpected Content-Range")
        if got[1] - got[0] + 1 < length:
            raise Stale(f"{redact(url)} is shorter than expected (Content-Range ends at {got[1]})")

    def _read_body(self, response: httpx.Response, out: memoryview, deadline: float) -> None:
        pos, length = 0, len(out)
        for chunk in response.iter_raw():
            if self._clock() >= deadline and pos + len(chunk) < length:
                self.counters.inc("fetch.bytes_fetched", pos)
                raise _Retry(f"deadline reached at {pos} of {length} bytes", stalled=True)
            take = min(len(chunk), length - pos)
            out[pos : pos + take] = chunk[:take] if take < len(chunk) else chunk
            pos += take
            if pos == length and take < len(chunk) or pos == length and response.status_code == 200:
                break  # more body than asked (a 200 for the whole object): stop; httpx drops the connection
        # A 206 is read to its end: leaving the iterator before h11 sees the end of the body would
        # close the connection instead of returning it to the pool (one TCP connect per range GET).
        self.counters.inc("fetch.bytes_fetched", pos)
        if pos < length:
            raise _Retry(f"body cut short at {pos} of {length} bytes")


def _policy(policy: RetryPolicy, budget_s: float | None, base_s: float | None, cap_s: float | None) -> RetryPolicy:
    changes: dict[str, object] = {}
    if budget_s is not None:
        changes["budget_s"] = budget_s
    if base_s is not None:
        changes["base_s"] = base_s
    if cap_s is not None:
        changes["cap_s"] = changes["max_retry_after_s"] = cap_s
    return dataclasses.replace(policy, **changes) if changes else policy  # type: ignore[arg-type]


def _default_client(max_connections: int, timeout_s: float) -> httpx.Client:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.Client(
        limits=limits, timeout=timeout_s, follow_redirects=True, max_redirects=_MAX_REDIRECTS, http2=False
    )


def _drain_small(response: httpx.Response) -> None:
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= _ERROR_BODY_MAX:
        try:
            response.read()
        except httpx.HTTPError:
            pass  # the connection is dropped instead of pooled; the status is what matters


def _retry_after_s(headers: Mapping[str, str] | Message) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _drain_stdlib(response: http.client.HTTPResponse) -> bool:
    """Read a small error/redirect body so the connection can be reused; True if it can."""
    length = response.getheader("content-length")
    if length is not None and length.isdigit() and int(length) <= _ERROR_BODY_MAX:
        try:
            response.read()
        except _RETRYABLE_STDLIB_EXC:
            return False
        return not response.will_close
    return False


def _proxy_configured() -> bool:
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


class _StdlibPool:
    """Keep-alive ``http.client`` connections: at most ``max_connections`` in use at once (like httpx's
    pool limit: a burst of readers queues here instead of opening a connection each), and as many kept
    idle per (scheme, host, port).

    ``request`` takes an idle connection (or opens one) and sends a GET; a reused connection the server
    has closed meanwhile (its keep-alive timeout) fails before any byte of a response: that request is
    sent once more on a fresh connection, as urllib3 does, without counting as an attempt.
    """

    def __init__(self, max_connections: int) -> None:
        self._max_idle = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    def request(
        self, url: str, headers: dict[str, str], timeout_s: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not self._slots.acquire(timeout=timeout_s):
            raise TimeoutError("no free connection in the pool")
        try:
            return self._request(key, target, headers, timeout_s)
        except BaseException:
            self._slots.release()
            raise

    def _request(
        self, key: tuple[str, str, int], target: str, headers: dict[str, str], timeout_s: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._take(key)
        if conn is not None:
            try:
                return conn, self._send(conn, target, headers, timeout_s)
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                conn.close()  # stale keep-alive connection: go again on a new one
        conn = self._connect(key, timeout_s)
        try:
            return conn, self._send(conn, target, headers, timeout_s)
        except BaseException:
            conn.close()
            raise

    def release(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, reusable: bool) -> None:
        """Give back what ``request`` returned (exactly once): pooled when reusable, else closed."""
        self._slots.release()
        if not reusable or not response.isclosed():
            conn.close()
            return
        key = (conn.scheme_name, conn.host, conn.port)  # type: ignore[attr-defined]
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

    def _take(self, key: tuple[str, str, int]) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def _connect(self, key: tuple[str, str, int], timeout_s: float) -> http.client.HTTPConnection:
        scheme, host, port = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        conn.scheme_name = scheme  # type: ignore[attr-defined]
        conn.connect()
        # Small requests on a keep-alive connection: never wait for an ACK (Nagle) before sending.
        conn.sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return conn

    @staticmethod
    def _send(
        conn: http.client.HTTPConnection, target: str, headers: dict[str, str], timeout_s: float
    ) -> http.client.HTTPResponse:
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        conn.timeout = timeout_s
        conn.request("GET", target, headers=headers)
        return conn.getresponse()


def _parse_content_range(value: str) -> tuple[int, int] | None:
    """``bytes a-b/total`` -> (a, b); anything else -> None."""
    unit, _, rest = value.strip().partition(" ")
    span, _, _total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit.lower() != "bytes" or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last)


__all__ = ["HttpFetcher", "RangeFetcher"]
