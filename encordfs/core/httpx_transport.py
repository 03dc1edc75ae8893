"""The pure-Python transport of the read path: one pooled ``httpx.Client`` (``--http-client httpx``).

The fallback when pycurl is not usable (``core.fetch.make_transport``), and the reference the libcurl
transport is tested against: both pass the same fetcher tests. HTTP/1.1 keep-alive only (the
ceilings measured httpx's HTTP/2 2-9x slower, with stream resets across threads). Proxies come
from the environment (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, any case); certificates are
verified against ``ca_file`` or OpenSSL's default store.

Algorithm (``get``)
    ``client.stream`` with ``Range`` and ``Accept-Encoding: identity``, redirects followed (5 at most).
    The timeout of every socket operation (connect, each read) is ``min(stall_timeout_s,
    timeout_s)``; between chunks the attempt's own deadline is checked, so a server that trickles is
    cut off at ``timeout_s``. A 206 is read to its end (leaving earlier would close the connection
    rather than pool it); the rest of a 200 longer than ``out`` is not read (its connection closes).

Failures, by table (``_failure``): timeouts -> ``STALL``; a certificate that does not verify ->
``TLS``; other connect, read and protocol errors -> ``NETWORK``; anything else httpx raises (bad URL,
unsupported scheme, too many redirects) -> ``FATAL``.

At most ``max_connections`` GETs at once: callers queue on ``_slots`` (a semaphore, waited for at most
the stall timeout, like a connection) rather than in httpcore's pool. httpcore 1.0.9's sync pool can
close a connection it has already handed to a queued request (encode/httpcore#1110, open): that
request then hangs until its read timeout. With the semaphore no request ever queues inside httpcore.

Lock order: ``_slots`` is a leaf (httpx's pool locks are taken inside it). A ``client`` passed in is
not closed by ``close``.
"""

from __future__ import annotations

import ssl
import threading
import time

import httpx

from encordfs.core.fetch import ERROR_BODY_MAX, MAX_REDIRECTS, Accept, Failure, Reply, TransportError

_HEADERS = {"Accept-Encoding": "identity"}


class HttpxTransport:
    name = "httpx"

    def __init__(
        self, max_connections: int = 16, ca_file: str | None = None, client: httpx.Client | None = None
    ) -> None:
        self._owns_client = client is None
        self._client = client if client is not None else _default_client(max_connections, ca_file)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._owns_client:
            self._client.close()

    def get(
        self, url: str, start: int, out: memoryview, accept: Accept, timeout_s: float, stall_timeout_s: float
    ) -> Reply:
        if not self._slots.acquire(timeout=min(stall_timeout_s, timeout_s)):
            raise TransportError(Failure.STALL, "no free connection within the stall timeout")
        try:
            return self._get(url, start, out, accept, timeout_s, stall_timeout_s)
        finally:
            self._slots.release()

    def _get(
        self, url: str, start: int, out: memoryview, accept: Accept, timeout_s: float, stall_timeout_s: float
    ) -> Reply:
        if self._closed:
            raise TransportError(Failure.FATAL, "transport closed")
        deadline = time.monotonic() + timeout_s
        headers = {**_HEADERS, "Range": f"bytes={start}-{start + len(out) - 1}"}
        pos = 0
        try:
            with self._client.stream("GET", url, headers=headers, timeout=min(stall_timeout_s, timeout_s)) as response:
                try:
                    accept(response.status_code, response.headers, 0.0)
                except Exception:
                    _drain_small(response)  # a small error body: httpx then pools the connection
                    raise
                pos = _read_body(response, out, deadline)
                return Reply(response.status_code, response.headers, pos)
        except _Deadline as exc:
            raise TransportError(Failure.STALL, f"deadline reached at {exc.pos} of {len(out)} bytes", exc.pos) from None
        except httpx.HTTPError as exc:
            failure = _failure(exc)
            raise TransportError(failure, _describe(exc, failure), pos) from None


class _Deadline(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def _read_body(response: httpx.Response, out: memoryview, deadline: float) -> int:
    pos, length = 0, len(out)
    for chunk in response.iter_raw():
        if pos + len(chunk) < length and time.monotonic() >= deadline:
            raise _Deadline(pos)
        take = min(len(chunk), length - pos)
        out[pos : pos + take] = chunk[:take] if take < len(chunk) else chunk
        pos += take
        if pos == length and (take < len(chunk) or response.status_code == 200):
            break  # more body than asked (a 200 for the whole object): stop; httpx drops the connection
    # A 206 is read to its end: leaving the iterator before h11 sees the end of the body would close
    # the connection instead of returning it to the pool (one TCP connect per range GET).
    return pos


def _failure(exc: httpx.HTTPError) -> Failure:
    if isinstance(exc, httpx.TimeoutException):
        return Failure.STALL
    if _cert_error(exc) is not None:
        return Failure.TLS
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return Failure.NETWORK
    return Failure.FATAL  # bad URL, unsupported scheme, too many redirects, ...


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore's error, which wraps ssl's
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(exc: httpx.HTTPError, failure: Failure) -> str:
    """The reason for the fetcher's message: the exception's kind, and ssl's verdict for a TLS failure
    (httpx's own text can quote the URL; the fetcher scrubs it anyway)."""
    if failure is Failure.TLS:
        cert = _cert_error(exc)
        return f"certificate verify failed: {cert.verify_message if cert is not None else exc}"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"more than {MAX_REDIRECTS} redirects"
    return type(exc).__name__


def _default_client(max_connections: int, ca_file: str | None) -> httpx.Client:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.Client(
        limits=limits,
        verify=ssl.create_default_context(cafile=ca_file),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        http2=False,
    )


def _drain_small(response: httpx.Response) -> None:
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= ERROR_BODY_MAX:
        try:
            response.read()
        except httpx.HTTPError:
            pass  # the connection is dropped instead of pooled; the status is what matters
