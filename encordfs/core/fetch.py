"""HTTP range fetcher: bytes ``[start, start + len(out))`` of a signed URL, into a caller's buffer.

Owns every decision about HTTP statuses, retries, re-signing, TLS trust and what may be logged, for
two interchangeable transports below it. The reader depends on ``fetch_into`` only (``RangeFetcher``).

Layers
    ``HttpFetcher``   the one status table, the retry loop, re-sign-once, redaction. Knows no library.
    ``Transport``     one GET: send it, follow redirects, stream the body into ``out``, detect stalls.
                      Translates its library's failures, by table, into a ``TransportError`` of one
                      ``Failure`` kind; the fetcher decides what each kind means (the table below).

    ``curl`` (``core.curl_transport``, the default): libcurl's multi interface through pycurl, one
    event-loop thread driving every transfer (the GIL is released while libcurl waits); per request a
    C-speed HTTP stack, kept connections, TLS session reuse (HTTP/1.1: HTTP/2 measured slower here),
    proxies from the environment (``http_proxy``, ``https_proxy``, ``no_proxy``; libcurl ignores an
    upper-case ``HTTP_PROXY``). On this project's 2-core machine, where the mount is CPU-bound,
    it measured (``benchmarks/transport.py``, loopback nginx, 8 threads) 150 µs of client CPU per
    100 KiB GET against 225 µs for the ``http.client`` pool it replaced and 980 µs for httpx; over
    TLS 275 / 407 / 1,245 µs. 8 MiB ranges cost it more than ``http.client``'s ``readinto`` over
    plain HTTP (0.52 against 0.34 s of CPU per GiB: libcurl hands the body over in 16 KiB blocks,
    each a Python call and a copy) and less over TLS (0.98 against 1.24 s); httpx 1.1 and 2.9 s.
    ``httpx`` (``core.httpx_transport``, ``--http-client httpx``): pure Python, the fallback. When
    pycurl is missing or does not load, the fetcher warns once and uses it.

TLS trust
    Both verify certificates, always. ``ca_file`` (``--ca-file``) replaces the trust store with that
    PEM bundle (like ``curl --cacert``); without it, OpenSSL's default store (the system's, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``). ``check_ca_file`` is what the CLI runs before mounting. A
    certificate that does not verify fails the read with ``EIO`` at once (no retry: it would not
    verify the next time either); the error names the reason and the redacted URL, and the FUSE
    adapter logs it as a warning, like every ``EIO``.

Algorithm (``fetch_into``)
    Retries follow the one ``core.retry.RetryPolicy`` (``READ_RETRY`` by default: full-jitter backoff
    from 0.1 s capped at 5 s, ``Retry-After`` honoured up to 5 s, at most 10 attempts and 30 s per call,
    waits included). One deadline per call: ``clock() + policy.budget_s``. Each attempt asks
    ``url_source(force)`` for a URL and sends ``Range: bytes=a-b`` with ``Accept-Encoding: identity``;
    the transport calls ``_accept`` with the final response's status and headers before any body
    byte lands in ``out``, then streams the body straight into it (no intermediate ``bytes`` object
    per response; the ceilings measured a reused buffer 1.5x faster).

    ======================  ================================================================
    206 (or 200 at 0)       copy exactly ``len(out)`` bytes; ``Content-Range`` must match
    400 / 401 / 403         signed URL refused: re-sign ONCE (``url_source(True)``) and retry
                            at once; the re-signed URL refused too -> ``PermissionDenied``
                            (400: ``RemoteIOError``). Before each backoff retry the URL is asked
                            for again (``url_source(False)``: cached unless it is expiring), so a
                            URL that expires during a long retry is replaced, not refused twice
    404 / 410 / 412 / 416   the object is gone or shorter than the catalog said -> ``Stale``
    408 / 429 / 5xx         retried after the policy's backoff (``Retry-After`` honoured, capped)
    other statuses          ``RemoteIOError``
    Failure.NETWORK         refused or reset connection, DNS, cut body: retried like a 5xx
    Failure.STALL           no byte for ``stall_timeout_s``, or the call's time ran out: retried
    Failure.TLS             the certificate does not verify -> ``RemoteIOError`` at once
    Failure.FATAL           not an http(s) URL, more than 5 redirects -> ``RemoteIOError``
    short body              announced shorter (Content-Length / Content-Range) -> ``Stale``;
                            ended early without saying so -> retried like a network error
    ======================  ================================================================

    Stalls: each attempt is given ``timeout_s`` = the call's time left and ``stall_timeout_s``; the
    transport abandons a transfer that has received nothing (no header, no body byte) for
    ``stall_timeout_s`` and any transfer at ``timeout_s``. A reader therefore gets its bytes or
    ``EIO`` within ``budget_s`` plus one stall timeout at worst, never a hang. A successful call
    never returns fewer bytes than asked.

Priorities
    Demand reads (a FUSE read that needs bytes now) call ``fetch_into``; readahead and prefetch go
    through ``background()``, the same fetcher behind a semaphore of ``max_connections -
    DEMAND_RESERVE`` slots. Background GETs therefore never hold every connection: a demand GET finds
    one free (the transport's own cap) instead of queueing behind prefetch. ``fetch.background_requests``
    counts them. Both share the one transport and its loop thread, which also runs the completions of
    the prefetches in flight: behind 25 ms, a cold 100 KiB read of another folder
    during a hinted epoch takes 1.7-2.0 x what it takes on the idle link (``benchmarks/run --regime wan
    --only wan_epoch``: ``wan_demand_*``), where a direct GET takes 1.0-1.2 x. A transport of
    their own for background GETs was tried: that read fell to 1.2-1.5 x, but the hinted epoch ran
    4-7 % slower in 8 of 9 alternated pairs (5 % faster in one) and ``tar`` 4-13 % slower in two,
    for a reason not found. Not kept. What a demand GET waited for there: during a hinted epoch the
    loop's turns (then driven by socket callbacks) lasted 5.6-6.7 ms on average, 14-16 at p90, ~6.5
    sockets each, 2.0-2.4 s of the ~2.6 s epoch; ~2.8 x their CPU, the rest most likely spent taking
    the GIL back for the Python callbacks of each GET (7 writes and 2 socket changes counted, plus its
    header lines). The loop now runs no Python while bytes move
    (``core.curl_transport``): 19-24 context switches per file instead of 29-31 in that epoch, but
    the demand read's ratio moved little (1.66 and 1.83 against 1.90 and 1.85, two pairs).

Link measurement
    With a ``link`` (``core.link.LinkEstimate``), every successful GET reports its size, its time to
    the first byte (request handed to the transport -> its first byte, as the transport tells it) and its total
    time; the reader sizes its parallel readahead from the resulting bandwidth-delay product.

Invariants: URLs are logged and put into messages only through ``redact`` (no query string, hence no
signature); a transport's messages go through ``_scrub``. Whatever escapes ``fetch_into`` is an
``encordfs.errors.FsError``. A transport passed in is closed by ``close()``.

Lock order: the fetcher holds no lock; each transport's lock is a leaf, never held during I/O (see
its module).
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from encordfs.core.counters import Counters
from encordfs.core.link import LinkEstimate
from encordfs.core.retry import READ_RETRY, RetryPolicy
from encordfs.core.urls import UrlSource, redact
from encordfs.errors import FsError, InvalidValue, PermissionDenied, RemoteIOError, Stale

log = logging.getLogger(__name__)

HTTP_CLIENTS = ("curl", "httpx")
_REFUSED = frozenset({400, 401, 403})
_GONE = frozenset({404, 410, 412, 416})
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
ERROR_BODY_MAX = 64 * 1024  # error bodies up to this size are drained so the connection stays pooled
MAX_REDIRECTS = 5
# A healthy byte server sends something within a second even under load (S3's first byte is ~0.1 s
# at p99 for small objects); 10 s of silence mid-body is a stalled connection, not a slow one, and
# two such stalls and a retry still fit the 30 s read budget.
DEFAULT_STALL_TIMEOUT_S = 10.0
# Of the connections below, background GETs (readahead, prefetch: ``HttpFetcher.background``) never
# take the last this many, so a demand read (FUSE threads: 16 at most with either binding) never
# queues behind them.
DEMAND_RESERVE = 16
# At most this many connections at once (per fetcher), and as many kept idle: a burst of readers
# queues for a connection instead of opening one each (mountpoint-s3 and httpx cap theirs too). Sized
# for latency hiding: the prefetcher keeps up to 256 small files in flight behind a slow link
# (``PrefetchConfig.max_parallel``: 2,000 files/s behind 100 ms of first-byte latency need ~200), and
# only as many connections as are used at once are ever opened (prefetch: 32 on loopback, a peak of
# 52-55 at 25 ms in the WAN epoch; demand reads up to 16 more).
DEFAULT_MAX_CONNECTIONS = 256 + DEMAND_RESERVE

Headers = Mapping[str, str]  # response headers; names looked up in lower case
# ``accept(status, headers, since_s)`` raises to refuse a response; ``since_s``: how long ago its first
# byte came in (0 when it is called as the head arrives)
Accept = Callable[[int, Headers, float], None]
OnDone = Callable[[FsError | None], None]  # ``fetch_async``'s completion: None once every byte landed


class RangeFetcher(Protocol):
    """The seam the reader depends on; tests may pass any object with this method."""

    def fetch_into(self, url_source: UrlSource, start: int, out: memoryview, total: int | None = None) -> None: ...

    def probe_size(self, url_source: UrlSource) -> int: ...


class Failure(enum.Enum):
    """What went wrong below HTTP; the fetcher's table says what each kind means."""

    NETWORK = "network"  # connect refused, reset, DNS, body cut, protocol error: worth another attempt
    STALL = "stall"  # nothing received for the stall timeout, or the attempt's time ran out
    TLS = "tls"  # the server's certificate does not verify (or the trust store is unusable)
    FATAL = "fatal"  # no attempt will do better: not an http(s) URL, a redirect loop, a closed transport


class TransportError(Exception):
    """A GET failed below HTTP. ``reason`` never holds a URL's query (transports scrub it)."""

    def __init__(self, failure: Failure, reason: str, received: int = 0) -> None:
        super().__init__(reason)
        self.failure = failure
        self.reason = reason
        self.received = received  # body bytes written into ``out`` before the failure


@dataclass(slots=True)
class Reply:
    status: int
    headers: Headers
    received: int  # body bytes written into ``out``: ``len(out)`` unless the body ended early


class Transport(Protocol):
    """One GET at a time per calling thread; any number of threads at once.

    ``get`` sends ``GET url`` with ``Range: bytes=start-(start+len(out)-1)`` and ``Accept-Encoding:
    identity``, following up to ``MAX_REDIRECTS`` redirects. Once the final response's headers are
    in, it calls ``accept(status, headers, since_s)`` exactly once: either as the head arrives
    (httpx: ``since_s`` 0), or once the transfer has ended (libcurl: ``since_s`` says how long ago
    the first byte came). The body is written to ``out`` from offset 0, at most ``len(out)`` bytes
    (the rest of a longer body is not read and its connection is dropped). If ``accept`` raises,
    the transport re-raises that exception: what ``out`` holds then is unspecified (an error body, or
    nothing), and the connection is kept if the body was read whole. Otherwise a ``Reply`` is
    returned. Failures below HTTP raise ``TransportError``; ``timeout_s`` bounds the
    whole GET, ``stall_timeout_s`` any stretch without a received byte.
    """

    name: str

    def get(
        self, url: str, start: int, out: memoryview, accept: Accept, timeout_s: float, stall_timeout_s: float
    ) -> Reply: ...

    def close(self) -> None: ...


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying (after ``delay_s`` at least)."""

    def __init__(self, reason: str, delay_s: float | None = None, stalled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s
        self.stalled = stalled


class _Refused(Exception):
    """Internal: the server refused the signed URL (400/401/403)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class HttpFetcher:
    """Range GETs over one transport, with re-sign-once and budgeted retries.

    ``http_client`` picks the transport (``"curl"``, the default, or ``"httpx"``) unless
    ``transport`` is given; ``ca_file`` is the PEM bundle to trust instead of the system's.
    ``retry`` is the policy (default ``READ_RETRY``); ``retry_budget_s``, ``backoff_base_s`` and
    ``backoff_cap_s`` are shorthands that replace its ``budget_s``, ``base_s`` and ``cap_s`` (and
    ``max_retry_after_s``).
    """

    def __init__(
        self,
        http_client: str = "curl",
        *,
        transport: Transport | None = None,
        ca_file: str | Path | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        retry: RetryPolicy = READ_RETRY,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        retry_budget_s: float | None = None,
        backoff_base_s: float | None = None,
        backoff_cap_s: float | None = None,
        link: LinkEstimate | None = None,
    ) -> None:
        self.transport = transport if transport is not None else make_transport(http_client, max_connections, ca_file)
        self.stall_timeout_s = stall_timeout_s
        self.retry = _policy(retry, retry_budget_s, backoff_base_s, backoff_cap_s)
        self.counters = counters if counters is not None else Counters()
        self.link = link
        self._clock = clock
        self._sleep = sleep
        self._background_slots = threading.Semaphore(max(1, max_connections - DEMAND_RESERVE))

    @property
    def retry_budget_s(self) -> float:
        return self.retry.budget_s if self.retry.budget_s is not None else float("inf")

    def close(self) -> None:
        self.transport.close()

    def background(self) -> RangeFetcher:
        """The same fetcher for work nobody waits on yet (readahead, prefetch): at most
        ``max_connections - DEMAND_RESERVE`` such GETs at once, so demand reads always find a
        connection (see the module docstring, "Priorities")."""
        return _BackgroundFetcher(self)

    def fetch(self, url_source: UrlSource, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; convenience over ``fetch_into`` (one extra copy)."""
        buf = bytearray(end - start)
        self.fetch_into(url_source, start, memoryview(buf))
        return bytes(buf)

    def fetch_into(self, url_source: UrlSource, start: int, out: memoryview, total: int | None = None) -> None:
        """Fill ``out`` with bytes ``[start, start + len(out))`` or raise an ``FsError``. ``total``: the
        object's size as the catalog knows it; a reply naming another size (Content-Range ``/N``, or a
        whole-object 200) is ``Stale``: the object changed on the server."""
        if len(out) == 0:
            return
        started = self._clock()
        deadline = started + self.retry_budget_s
        resigned = False
        failures = 0
        url = url_source(False)
        while True:
            try:
                self._attempt(url, start, out, deadline, total)
                return
            except FsError:  # an answer no retry changes (gone, shorter, Range ignored, bad URL, TLS)
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

    def fetch_async(self, url: str, start: int, out: memoryview, on_done: OnDone, total: int | None = None) -> bool:
        """One attempt at ``fetch_into`` without a waiting thread, when the transport can (libcurl's
        ``submit``); False when it cannot (httpx): use ``fetch_into`` on a thread. ``on_done(error)`` is
        called once, on the transport's thread (hand over, nothing more), with None once ``out`` holds
        every byte, else the ``FsError`` of the first failure: no retry and no re-sign here (the caller
        falls back to ``fetch_into``, which does both). ``url`` is resolved by the caller; ``total`` as in
        ``fetch_into``."""
        submit = getattr(self.transport, "submit", None)
        if submit is None or len(out) == 0:
            return False
        length = len(out)
        sent = self._clock()
        first_byte = [sent]
        self.counters.inc("fetch.requests")
        self.counters.inc("fetch.async_requests")

        accept = self._acceptor(url, start, length, total, first_byte)

        def done(reply: Reply | None, error: BaseException | None) -> None:
            received = reply.received if reply is not None else getattr(error, "received", 0)
            self.counters.inc("fetch.bytes_fetched", received)
            outcome: FsError | None = None
            if error is None and received < length:
                outcome = RemoteIOError(f"body cut short at {received} of {length} bytes")
            elif isinstance(error, FsError):
                outcome = error
            elif isinstance(error, TransportError):
                outcome = RemoteIOError(f"cannot fetch {redact(url)}: {_scrub(error.reason, url)}")
            elif isinstance(error, _Refused):
                outcome = RemoteIOError(f"{redact(url)} answered HTTP {error.status}")
            elif isinstance(error, _Retry):
                outcome = RemoteIOError(f"{redact(url)}: {error.reason}")
            elif error is not None:
                outcome = RemoteIOError(f"{redact(url)}: {type(error).__name__}")
            if outcome is not None:
                self.counters.inc("fetch.async_failures")
            elif self.link is not None:
                self.link.observe(length, first_byte[0] - sent, self._clock() - sent)
            on_done(outcome)

        try:
            submit(url, start, out, accept, min(self.retry_budget_s, 60.0), self.stall_timeout_s, done)
        except TransportError as exc:
            raise RemoteIOError(f"cannot fetch {redact(url)}: {_scrub(exc.reason, url)}") from None
        return True

    # -- one attempt

    def _acceptor(self, url: str, start: int, length: int, total: int | None, first_byte: list[float]) -> Accept:
        """The ``Accept`` of a request for ``length`` bytes from ``start``: checks the status, the range
        and (when known) the total before the body lands, and notes when it came in ``first_byte[0]``."""

        def accept(status: int, headers: Headers, since_s: float) -> None:
            first_byte[0] = self._clock() - since_s
            self._check_status(status, headers, url)
            self._check_range(status, headers, start, length, url)
            if total is not None:
                self._check_total(status, headers, total, url)

        return accept

    def _attempt(self, url: str, start: int, out: memoryview, deadline: float, total: int | None = None) -> None:
        length = len(out)
        sent = self._clock()
        timeout_s = max(0.001, deadline - sent)
        self.counters.inc("fetch.requests")
        first_byte = [sent]

        accept = self._acceptor(url, start, length, total, first_byte)
        try:
            reply = self.transport.get(url, start, out, accept, timeout_s, self.stall_timeout_s)
        except TransportError as exc:
            self.counters.inc("fetch.bytes_fetched", exc.received)
            reason = _scrub(exc.reason, url)
            if exc.failure is Failure.TLS:  # the FUSE adapter logs it (a warning, as every EIO)
                raise RemoteIOError(f"TLS: cannot trust {redact(url)}: {reason}") from None
            if exc.failure is Failure.FATAL:
                raise RemoteIOError(f"cannot fetch {redact(url)}: {reason}") from None
            raise _Retry(reason, stalled=exc.failure is Failure.STALL) from None
        self.counters.inc("fetch.bytes_fetched", reply.received)
        if reply.received < length:
            raise _Retry(f"body cut short at {reply.received} of {length} bytes")
        if self.link is not None:
            self.link.observe(length, first_byte[0] - sent, self._clock() - sent)

    def _check_status(self, status: int, headers: Headers, url: str) -> None:
        if status in (200, 206):
            return
        if status in _REFUSED:
            raise _Refused(status)
        if status in _GONE:
            raise Stale(f"{redact(url)} answered HTTP {status}: object gone or shorter than expected")
        if status in _RETRYABLE_STATUS:
            raise _Retry(f"HTTP {status}", _retry_after_s(headers))
        raise RemoteIOError(f"{redact(url)} answered HTTP {status}")

    def _check_range(self, status: int, headers: Headers, start: int, length: int, url: str) -> None:
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

    def _check_total(self, status: int, headers: Headers, total: int, url: str) -> None:
        """The object's size now (Content-Range ``/N``, or a 200's Content-Length) must be ``total``."""
        now: int | None = None
        if status == 206:
            now = _content_range_total(headers.get("content-range") or "")
        else:
            announced = headers.get("content-length")
            now = int(announced) if announced is not None and announced.isdigit() else None
        if now is not None and now != total:
            self.counters.inc("fetch.size_changed")
            raise Stale(f"{redact(url)} is now {now} bytes, not {total}: it changed on the server")

    def probe_size(self, url_source: UrlSource) -> int:
        """The object's size, from a one-byte range request (``Content-Range: bytes 0-0/N``; an empty
        object answers 416 with ``bytes */0``): for rows whose metadata has no size."""
        found: list[int] = []
        url = url_source(False)

        def accept(status: int, headers: Headers, since_s: float) -> None:
            size = _content_range_total(headers.get("content-range") or "")
            if status == 416 and size == 0:
                found.append(0)
                raise _SizeKnown
            self._check_status(status, headers, url)
            if status == 200:
                announced = headers.get("content-length")
                size = int(announced) if announced is not None and announced.isdigit() else None
            if size is None:
                raise RemoteIOError(f"{redact(url)} did not say how large it is")
            found.append(size)

        self.counters.inc("fetch.size_probes")
        try:
            self.transport.get(url, 0, memoryview(bytearray(1)), accept, self.retry_budget_s, self.stall_timeout_s)
        except _SizeKnown:
            pass
        except TransportError as exc:
            if not found:
                raise RemoteIOError(f"cannot learn the size of {redact(url)}: {_scrub(exc.reason, url)}") from None
        except _Refused as refused:
            raise RemoteIOError(f"{redact(url)} refused the size probe (HTTP {refused.status})") from None
        except _Retry as retry:
            raise RemoteIOError(f"cannot learn the size of {redact(url)}: {retry.reason}") from None
        if not found:
            raise RemoteIOError(f"{redact(url)} did not say how large it is")
        return found[0]


class _SizeKnown(Exception):
    """An empty object answered the size probe with 416 (``bytes */0``): the answer, not an error."""


def _content_range_total(value: str) -> int | None:
    """``bytes a-b/N`` or ``bytes */N`` -> N; ``/*`` or anything else -> None."""
    _, _, total = value.strip().rpartition("/")
    return int(total) if total.isdigit() else None


class _BackgroundFetcher:
    """``HttpFetcher.background``: the fetcher behind a semaphore of background slots."""

    def __init__(self, fetcher: HttpFetcher) -> None:
        self._fetcher = fetcher

    def fetch_async(self, url: str, start: int, out: memoryview, on_done: OnDone, total: int | None = None) -> bool:
        """``HttpFetcher.fetch_async`` in a background slot; False also when no slot is free now."""
        f = self._fetcher
        if not f._background_slots.acquire(blocking=False):
            return False

        def done(error: FsError | None) -> None:
            f._background_slots.release()
            on_done(error)

        try:
            started = f.fetch_async(url, start, out, done, total)
        except BaseException:
            f._background_slots.release()
            raise
        if not started:
            f._background_slots.release()
        else:
            f.counters.inc("fetch.background_requests")
        return started

    def fetch_into(self, url_source: UrlSource, start: int, out: memoryview, total: int | None = None) -> None:
        f = self._fetcher
        if not f._background_slots.acquire(timeout=f.retry_budget_s if f.retry.budget_s is not None else None):
            raise RemoteIOError("no connection for background reads within the read budget")
        try:
            f.counters.inc("fetch.background_requests")
            f.fetch_into(url_source, start, out, total)
        finally:
            f._background_slots.release()

    def probe_size(self, url_source: UrlSource) -> int:
        return self._fetcher.probe_size(url_source)


# ---------------------------------------------------------------------------------------------- transports

_fallback_lock = threading.Lock()
_fallback_warned = False


def make_transport(
    http_client: str = "curl", max_connections: int = DEFAULT_MAX_CONNECTIONS, ca_file: str | Path | None = None
) -> Transport:
    """The transport named ``http_client``; ``curl`` falls back to ``httpx`` (one warning per process)
    when pycurl is not installed or does not load."""
    if http_client not in HTTP_CLIENTS:
        raise InvalidValue(f"--http-client must be one of {', '.join(HTTP_CLIENTS)}, not {http_client!r}")
    ca = check_ca_file(ca_file) if ca_file is not None else None
    if http_client == "curl":
        try:
            from encordfs.core.curl_transport import CurlTransport
        except (ImportError, OSError, AttributeError) as exc:  # not installed, its libcurl does not load, too old
            _warn_fallback(exc)
        else:
            return CurlTransport(max_connections=max_connections, ca_file=ca)
    from encordfs.core.httpx_transport import HttpxTransport

    return HttpxTransport(max_connections=max_connections, ca_file=ca)


def _warn_fallback(exc: BaseException) -> None:
    global _fallback_warned
    with _fallback_lock:
        if _fallback_warned:
            return
        _fallback_warned = True
    log.warning(
        "pycurl is not usable (%s: %s); reading with httpx instead, which costs more CPU per request "
        "(pip install pycurl, or pass --http-client httpx to silence this)",
        type(exc).__name__,
        str(exc).splitlines()[0][:200] if str(exc) else "",
    )


def ca_file_problem(path: str) -> str | None:
    """What is wrong with ``path`` as a PEM bundle of CA certificates (``does not exist``, ...), or None."""
    try:
        context = ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        return "does not exist"
    except IsADirectoryError:
        return "is a directory, not a PEM file"
    except PermissionError:
        return "is not readable"
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"holds no usable PEM certificate ({getattr(exc, 'reason', None) or type(exc).__name__})"
    if not context.cert_store_stats().get("x509"):
        return "holds no certificate"
    return None


def check_ca_file(path: str | Path) -> str:
    """The absolute path of a PEM bundle of CA certificates, or ``InvalidValue`` saying what is wrong."""
    ca = Path(path).expanduser()
    problem = ca_file_problem(str(ca))
    if problem is not None:
        raise InvalidValue(f"CA file {ca} {problem}")
    return str(ca.resolve())


# ---------------------------------------------------------------------------------------------- helpers


def _policy(policy: RetryPolicy, budget_s: float | None, base_s: float | None, cap_s: float | None) -> RetryPolicy:
    changes: dict[str, object] = {}
    if budget_s is not None:
        changes["budget_s"] = budget_s
    if base_s is not None:
        changes["base_s"] = base_s
    if cap_s is not None:
        changes["cap_s"] = changes["max_retry_after_s"] = cap_s
    return dataclasses.replace(policy, **changes) if changes else policy  # type: ignore[arg-type]


def _retry_after_s(headers: Headers) -> float | None:
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


def _parse_content_range(value: str) -> tuple[int, int] | None:
    """``bytes a-b/total`` -> (a, b); anything else -> None."""
    unit, _, rest = value.strip().partition(" ")
    span, _, _total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit.lower() != "bytes" or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last)


def _scrub(reason: str, url: str) -> str:
    """A transport's message without ``url``'s query (libraries may quote the URL they were given)."""
    query = urlsplit(url).query
    if url in reason:
        reason = reason.replace(url, redact(url))
    if query and query in reason:
        reason = reason.replace(query, "...")
    return reason


__all__ = [
    "DEFAULT_STALL_TIMEOUT_S",
    "HTTP_CLIENTS",
    "Failure",
    "HttpFetcher",
    "RangeFetcher",
    "Reply",
    "Transport",
    "TransportError",
    "check_ca_file",
    "make_transport",
]
