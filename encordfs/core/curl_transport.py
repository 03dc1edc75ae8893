"""The default transport of the read path: libcurl's multi interface, driven by one thread.

The only module that imports pycurl. ``core.fetch`` imports it lazily and falls back to httpx when
the import fails.

Why
    On a 2-core machine the mount is CPU-bound and a small-file read was dominated by the Python HTTP
    stack's per-request work. libcurl parses HTTP, manages connections and TLS in C; with its multi
    interface one thread drives every transfer and releases the GIL while it waits. Measured on
    loopback (``benchmarks/transport.py``, 8 threads): 150 µs of client CPU per 100 KiB GET against
    225 µs with ``http.client`` and 980 µs with httpx (over TLS 275 / 407 / 1,245 µs). The raw multi
    interface driven by a single thread needs ~40-55 µs; the rest is handing requests to the loop
    and results back across threads (GIL and context switches), and the fetcher above.

Shape
    Callers (the reader's and FUSE's threads) never touch libcurl while a transfer runs. ``get``
    takes an idle ``_Transfer`` (an easy handle configured once), sets the four per-request options
    (URL, range, timeouts) and its body's destination, appends it to the submit queue, wakes the loop
    (``curl_multi_wakeup``, only when the queue was empty) and blocks on the transfer's own eventfd
    (written by the loop with the GIL let go, so the caller runs at once). The loop thread (``_Loop``)
    owns the multi handle and turns: ``curl_multi_poll`` (waits on libcurl's sockets, its timers and
    the wake-up), admit what was queued, ``curl_multi_perform`` (every transfer that can move does),
    hand out what finished (``curl_multi_info_read``). The easy handle goes back to the idle list,
    its connection to libcurl's connection cache (shared by every handle of the multi).

No Python while bytes move
    pycurl runs libcurl's callbacks in Python: each takes the GIL back, and a 100 KiB GET over TLS
    made ~20 of them: 7 writes (one per 16 KiB TLS record) and 2 socket changes per GET, counted in
    a WAN epoch, plus a header line each (~10 from nginx, not counted) and timer changes.
    With the mount's other threads wanting the GIL, each take could wait. So the loop calls the
    multi interface through ctypes (``_Native``: ``curl_multi_poll`` and ``curl_multi_perform`` let go
    of the GIL for their whole run), sets no socket, timer or header callback, and has libcurl write
    the body itself: ``CURLOPT_WRITEFUNCTION`` is libc's ``fwrite`` (libcurl's own default) on an
    unbuffered ``fmemopen`` stream over ``out``, which refuses bytes past ``len(out)`` (that ends the
    transfer: a 200 for the whole object is cut there, its connection dropped). Measured
    (``benchmarks/run --only big``, alternated pairs): a cold 1 GiB read through the mount at
    972-987 -> 1,199-1,293 MB/s, mount CPU 1.15-1.21 -> 0.94-0.99 s; small files (``--only small``):
    21 -> 17-18 context switches per file, but files/s and CPU per file within noise (753-787
    against 817-824 µs in two pairs, 826 against 796 in a full run), as was the WAN hinted epoch.
    The ``CURL *`` of a pycurl ``Curl`` is found in its object and proved (libcurl's magic, and
    ``CURLINFO_PRIVATE`` naming the object back); a pycurl whose layout hides it is "not usable", as
    a missing one: the fetcher falls back to httpx with a warning.

Judged at the end
    The final response (after redirects: ``CURLINFO_RESPONSE_CODE``, ``curl_easy_nextheader`` of the
    last request) is judged by the fetcher's ``accept`` once the transfer has ended, on the caller's
    thread (``result``), with how long ago its first byte came (total minus start-transfer time) for
    the link's latency. A refused response's body (an error page) has then landed in ``out``; the
    refusal is raised all the same, and the connection is kept when the body fit.

Without a waiting thread
    ``submit`` is ``get`` for callers that have better to do than wait (prefetch of many small files:
    a thread per transfer cost ~0.4 ms of CPU per 100 KiB GET in wake-ups and GIL hand-offs): the
    transfer carries a callback that the loop calls instead of writing its eventfd, and then the
    handle goes back to the idle list.

Options, once per easy handle: redirects (5), http/https only (redirects too), ``Accept-Encoding:
identity``, ``TCP_NODELAY``, TCP keep-alive, HTTP/1.1, a ``CurlShare`` of DNS and TLS sessions,
``CAINFO`` (``ca_file``, else OpenSSL's default file and directory: PyPI's libcurl is built with a
CentOS CA path that Debian does not have), ``NOSIGNAL``. Proxies: libcurl reads ``http_proxy``, ``https_proxy``, ``all_proxy``,
``no_proxy`` itself. At most ``max_connections`` connections (``M_MAX_TOTAL_CONNECTIONS``: further
transfers wait in libcurl's queue) and as many kept.

HTTP/2 (``http2=True``: ``CURL_HTTP_VERSION_2TLS``, h2 when a TLS server offers it by ALPN, with
``PIPEWAIT`` so transfers multiplex on one connection) is off by default: against nginx over TLS on
loopback it cost 273 µs of client CPU per 100 KiB GET against 180 µs with HTTP/1.1 (952 against
1,912 requests/s, 8 threads) and 1.04 against 0.86 s per GiB of 8 MiB ranges
(``benchmarks/transport.py --tls --http2 --clients curl-h2,curl``). Keep-alive connections already
save the handshakes; h2's framing is extra work on this CPU-bound client.

Timeouts: ``TIMEOUT_MS`` is the fetcher's time left for the call, ``CONNECTTIMEOUT_MS`` the smaller
of that and the stall timeout. Stalls are the loop's: while transfers run it looks every 1 % of
their stall timeout at the head and body bytes each received (``CURLINFO_HEADER_SIZE`` +
``SIZE_DOWNLOAD_T``), notes the time for those that received some, and abandons those that received
nothing since their noted time plus the stall timeout (``curl_multi_remove_handle``: libcurl closes
their connections). A stall is thus caught between its timeout and 1 % later. libcurl's own
``LOW_SPEED_TIME`` counts whole seconds only.

Failures, by table (``_FAILURES``): libcurl's result code -> ``Failure``; codes not listed (connect,
send, receive errors, a body shorter than announced, HTTP/2 stream errors, TLS handshakes cut short)
are ``NETWORK``. libcurl's messages name hosts, never queries; the fetcher scrubs them anyway.

Invariants: libcurl is called from the loop thread only, except: ``setopt`` and ``getinfo`` on an
easy handle outside the multi, by the thread that holds it; ``curl_multi_wakeup``, by any thread;
the multi's creation (before the loop thread starts) and cleanup (after it ended). A transfer's state
is written by the loop while it is in flight and read by its caller after the loop signalled its
eventfd, exactly once per transfer (the syscalls order the two). A caller waits at most
``timeout_s + stall_timeout_s + 10 s``: if the loop died, the call fails instead of hanging.

Lock order: ``CurlTransport._lock`` (submit queue, idle list, loop start, the wake-up) is a leaf; no
transfer runs under it. Transfers hold no lock: their eventfds are signals, not guards.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import select
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import pycurl

from encordfs import __version__
from encordfs.core.fetch import MAX_REDIRECTS, Accept, Failure, Reply, TransportError
from encordfs.libc import libc_keeping_gil

log = logging.getLogger(__name__)

# libcurl's receive buffer per easy handle (default 16 KiB): a 100 KiB body in one or two write
# callbacks instead of seven, an 8 MiB range in ~32.
_BUFFER_BYTES = 256 * 1024
# The caller's own bound beyond the transfer's timeouts: only reached if the loop thread is gone.
_CALLER_GRACE_S = 10.0

_FAILURES: Mapping[int, Failure] = {
    pycurl.E_OPERATION_TIMEDOUT: Failure.STALL,  # TIMEOUT_MS (the call's time left) or CONNECTTIMEOUT_MS
    pycurl.E_PEER_FAILED_VERIFICATION: Failure.TLS,  # untrusted issuer, expired, wrong host name
    pycurl.E_SSL_CACERT_BADFILE: Failure.TLS,  # the CA file cannot be read
    pycurl.E_SSL_ISSUER_ERROR: Failure.TLS,
    pycurl.E_SSL_PINNEDPUBKEYNOTMATCH: Failure.TLS,
    pycurl.E_SSL_INVALIDCERTSTATUS: Failure.TLS,
    pycurl.E_UNSUPPORTED_PROTOCOL: Failure.FATAL,  # not http(s), or a redirect to another scheme
    pycurl.E_URL_MALFORMAT: Failure.FATAL,
    pycurl.E_TOO_MANY_REDIRECTS: Failure.FATAL,
}

# The longest the loop waits with nothing due (a wake-up or a socket ends it sooner).
_MAX_WAIT_MS = 60_000
_CURLMSG_DONE = 1
_CURLH_HEADER = 1  # ``curl_easy_nextheader``'s origin: headers the server sent (not trailers, not 1xx)
_CURLE_OK = _CURLM_OK = 0
_IONBF = 2  # ``setvbuf``: unbuffered
_CURLINFO_PRIVATE = 0x100000 + 21  # CURLINFO_STRING + 21 (pycurl does not name it)
_CURLEASY_MAGIC = 0xC0DEDBAD  # the first field of libcurl's ``struct Curl_easy``

_now = time.monotonic
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # what percent-encoding a non-ASCII URL leaves alone (RFC 3986)


class _CurlMsg(ctypes.Structure):
    _fields_ = [("msg", ctypes.c_int), ("easy_handle", ctypes.c_void_p), ("result", ctypes.c_int)]


class _CurlHeader(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("value", ctypes.c_char_p),
        ("amount", ctypes.c_size_t),
        ("index", ctypes.c_size_t),
        ("origin", ctypes.c_uint),
        ("anchor", ctypes.c_void_p),
    ]


class _Native:
    """The libcurl (and libc) entry points pycurl does not offer, through ctypes, on the very libcurl
    pycurl loaded. Calls that wait or move bytes (``curl_multi_poll``, ``curl_multi_perform``) let go
    of the GIL; the short ones keep it (taking it back is what costs, when other threads want it)."""

    def __init__(self) -> None:
        path = _loaded_libcurl()
        short = ctypes.PyDLL(path)  # keeps the GIL
        long = ctypes.CDLL(path)  # lets go of it
        libc = libc_keeping_gil()  # (fmemopen, setvbuf, ftell and fclose on memory: short too)
        vp, i, p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER

        def bind(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
            function = lib[name]  # a new function object: ``curl_*_setopt`` is bound twice, typed apart
            function.restype, function.argtypes = restype, list(argtypes)
            return function

        self.easy_setopt_ptr = bind(short, "curl_easy_setopt", i, vp, i, vp)
        self.easy_getinfo_ptr = bind(short, "curl_easy_getinfo", i, vp, i, p(vp))
        self.easy_nextheader = bind(short, "curl_easy_nextheader", p(_CurlHeader), vp, ctypes.c_uint, i, p(_CurlHeader))
        self.multi_init = bind(short, "curl_multi_init", vp)
        self.multi_setopt_long = bind(short, "curl_multi_setopt", i, vp, i, ctypes.c_long)
        self.multi_add = bind(short, "curl_multi_add_handle", i, vp, vp)
        self.multi_remove = bind(short, "curl_multi_remove_handle", i, vp, vp)
        self.multi_info_read = bind(short, "curl_multi_info_read", p(_CurlMsg), vp, p(i))
        self.multi_wakeup = bind(short, "curl_multi_wakeup", i, vp)
        self.multi_cleanup = bind(short, "curl_multi_cleanup", i, vp)
        self.multi_poll = bind(long, "curl_multi_poll", i, vp, vp, ctypes.c_uint, i, p(i))
        self.multi_perform = bind(long, "curl_multi_perform", i, vp, p(i))
        self.fmemopen = bind(libc, "fmemopen", vp, vp, ctypes.c_size_t, ctypes.c_char_p)
        self.setvbuf = bind(libc, "setvbuf", i, vp, vp, i, ctypes.c_size_t)
        self.ftell = bind(libc, "ftell", ctypes.c_long, vp)
        self.fclose = bind(libc, "fclose", i, vp)
        self.fwrite = ctypes.cast(libc.fwrite, vp).value  # libcurl's own default write callback
        probe = pycurl.Curl()  # a pycurl that hides its handle fails the import, not the first read
        try:
            self.easy_pointer(probe)
        finally:
            probe.close()

    def easy_pointer(self, curl: pycurl.Curl) -> int:
        """The ``CURL *`` inside a pycurl ``Curl``. pycurl keeps it among the first fields of its object
        and sets ``CURLOPT_PRIVATE`` to the object itself: the field is the one whose pointee starts with
        libcurl's easy-handle magic and names this object back. Every field looked at is a pointer (or
        NULL) in every pycurl layout, so reading what it points to is safe."""
        base = id(curl)
        found = ctypes.c_void_p()
        for offset in range(16, 72, 8):
            candidate = ctypes.c_void_p.from_address(base + offset).value
            if not candidate or ctypes.c_uint.from_address(candidate).value != _CURLEASY_MAGIC:
                continue
            if (
                self.easy_getinfo_ptr(candidate, _CURLINFO_PRIVATE, ctypes.byref(found)) == _CURLE_OK
                and found.value == base
            ):
                return candidate
        raise ImportError("cannot find libcurl's handle inside pycurl's Curl object")

    def headers(self, easy: int) -> dict[str, str]:
        """The final response's headers (after redirects), names in lower case; the last of a repeated
        name wins."""
        found: dict[str, str] = {}
        header = self.easy_nextheader(easy, _CURLH_HEADER, -1, None)
        while header:
            h = header.contents
            found[(h.name or b"").decode("latin-1").lower()] = (h.value or b"").decode("latin-1")
            header = self.easy_nextheader(easy, _CURLH_HEADER, -1, header)
        return found

    @staticmethod
    def check(code: int, what: str) -> None:
        if code != _CURLE_OK:
            raise TransportError(Failure.FATAL, f"libcurl refused {what} (curl {code})")

    @staticmethod
    def check_multi(code: int, what: str) -> None:
        if code != _CURLM_OK:
            raise TransportError(Failure.FATAL, f"libcurl's multi {what} failed (CURLM {code})")


def _loaded_libcurl() -> str:
    """The path of the libcurl pycurl runs on (a wheel bundles its own): the mapped one whose version
    is pycurl's."""
    wanted = pycurl.version_info()[1]
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if "libcurl" in line and "/" in line}
    except (OSError, IndexError) as exc:
        raise ImportError(f"cannot find pycurl's libcurl: {exc}") from None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        lib.curl_version.restype = ctypes.c_char_p
        if f"libcurl/{wanted}".encode() in (lib.curl_version() or b""):
            return path
    raise ImportError("cannot find pycurl's libcurl among the loaded libraries")


_NATIVE = _Native()


def default_ca() -> tuple[str | None, str | None]:
    """OpenSSL's default CA file and directory (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured), as
    Python's ``ssl`` and httpx's transport use them; certifi's bundle when the system has neither."""
    paths = ssl.get_default_verify_paths()
    cafile = paths.cafile if paths.cafile and os.path.isfile(paths.cafile) else None
    capath = paths.capath if paths.capath and os.path.isdir(paths.capath) else None
    if cafile is None and capath is None:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            pass
    return cafile, capath


class CurlTransport:
    name = "curl"

    def __init__(self, max_connections: int = 16, ca_file: str | None = None, http2: bool = False) -> None:
        self._max_connections = max_connections
        self._ca = (ca_file, None) if ca_file is not None else default_ca()
        self._http2 = http2
        self._share = _make_share()
        self._lock = threading.Lock()
        self._queue: list[_Transfer] = []
        self._idle: list[_Transfer] = []
        self._loop: _Loop | None = None
        self._closed = False

    # -- caller side

    def get(
        self, url: str, start: int, out: memoryview, accept: Accept, timeout_s: float, stall_timeout_s: float
    ) -> Reply:
        transfer = self._take()
        transfer.prepare(url, start, out, accept, timeout_s, stall_timeout_s)
        loop = self._enqueue(transfer)
        if not transfer.wait(timeout_s + stall_timeout_s + _CALLER_GRACE_S):
            # The loop is gone or stuck: fail rather than hang. The transfer is never reused.
            raise TransportError(Failure.FATAL, loop.dead or "libcurl's event loop did not answer")
        try:
            return transfer.result()
        finally:
            self._give_back(transfer)

    def submit(
        self,
        url: str,
        start: int,
        out: memoryview,
        accept: Accept,
        timeout_s: float,
        stall_timeout_s: float,
        on_done: Callable[[Reply | None, BaseException | None], None],
    ) -> None:
        """``get`` without a waiting thread: ``on_done(reply, error)`` is called once, on the loop thread,
        when the transfer has ended (``error``: what ``get`` would have raised). It must only hand the
        outcome over: every other transfer waits while it runs. Raises like ``get`` when the transfer
        cannot be queued (then ``on_done`` is never called)."""
        transfer = self._take()
        transfer.prepare(url, start, out, accept, timeout_s, stall_timeout_s)
        transfer.callback = lambda: self._complete(transfer, on_done)
        self._enqueue(transfer)

    def _enqueue(self, transfer: _Transfer) -> _Loop:
        if self._closed:
            transfer.close()
            raise TransportError(Failure.FATAL, "transport closed")
        refused: str | None = "transport closed"
        loop = None
        with self._lock:
            if not self._closed:
                loop = self._loop if self._loop is not None else self._start_locked()
                refused = loop.dead  # a dead loop drains the queue once, after ``dead`` is set
                if refused is None:
                    self._queue.append(transfer)
                    if len(self._queue) == 1:
                        # Under the lock: ``close`` cannot close the eventfd (and the number be
                        # reused by some file) between this decision and the write.
                        loop.wake()
        if refused is not None:
            transfer.close()
            raise TransportError(Failure.FATAL, refused)
        assert loop is not None
        return loop

    def _complete(self, transfer: _Transfer, on_done: Callable[[Reply | None, BaseException | None], None]) -> None:
        """The loop thread: an asynchronous transfer ended; tell its owner, then reuse the handle."""
        reply: Reply | None = None
        error: BaseException | None = None
        try:
            reply = transfer.result()
        except BaseException as exc:  # the fetcher's refusal, or a TransportError
            error = exc
        try:
            on_done(reply, error)
        except Exception:  # the owner's bug must not end the loop
            log.exception("a transfer's completion callback failed")
        finally:
            self._give_back(transfer)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            loop, self._loop = self._loop, None
            idle, self._idle = self._idle, []
        if loop is not None:
            loop.stop()
        for transfer in idle:
            transfer.close()
        try:
            self._share.close()
        except pycurl.error:
            pass  # a handle still holds it (a caller abandoned by a dead loop); the GC closes it

    def _take(self) -> _Transfer:
        if self._closed:
            raise TransportError(Failure.FATAL, "transport closed")
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Transfer(self._share, self._ca, self._http2)

    def _give_back(self, transfer: _Transfer) -> None:
        transfer.release_buffers()
        with self._lock:
            if not self._closed and len(self._idle) < self._max_connections:
                self._idle.append(transfer)
                return
        transfer.close()

    def _start_locked(self) -> _Loop:
        self._loop = _Loop(self._max_connections, self._lock, self._queue)
        self._loop.start()
        return self._loop


class _Transfer:
    """One easy handle and the state of the GET it carries. libcurl writes the body into ``out`` itself
    (``fwrite`` on an ``fmemopen`` stream over it): no Python runs while the transfer does."""

    def __init__(self, share: pycurl.CurlShare, ca: tuple[str | None, str | None], http2: bool) -> None:
        c = self.handle = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.SHARE, share)
        c.setopt(pycurl.FOLLOWLOCATION, 1)
        c.setopt(pycurl.MAXREDIRS, MAX_REDIRECTS)
        c.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.HTTPHEADER, ["Accept-Encoding: identity"])
        c.setopt(pycurl.USERAGENT, f"encordfs/{__version__} {pycurl.version.split()[1]}")
        c.setopt(pycurl.TCP_NODELAY, 1)
        c.setopt(pycurl.TCP_KEEPALIVE, 1)
        c.setopt(pycurl.BUFFERSIZE, _BUFFER_BYTES)
        if http2:
            c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
            c.setopt(pycurl.PIPEWAIT, 1)
        else:
            c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        cafile, capath = ca
        if cafile is not None:
            c.setopt(pycurl.CAINFO, cafile)
        if capath is not None:
            c.setopt(pycurl.CAPATH, capath)
        c.setopt(pycurl.SSL_VERIFYPEER, 1)
        c.setopt(pycurl.SSL_VERIFYHOST, 2)
        self.easy = _NATIVE.easy_pointer(c)
        _NATIVE.check(_NATIVE.easy_setopt_ptr(self.easy, pycurl.WRITEFUNCTION, _NATIVE.fwrite), "WRITEFUNCTION")
        # The loop signals the end of a transfer through an eventfd: ``os.eventfd_write`` lets go of
        # the GIL around the syscall, so the woken caller can run at once (a ``Lock.release`` wakes it
        # while the loop still holds the GIL: measured ~10% more CPU per small GET).
        self._done_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._done_poll = select.poll()
        self._done_poll.register(self._done_fd, select.POLLIN)
        self.out = memoryview(b"")
        self._sink: int | None = None  # the ``FILE *`` over ``out`` while the transfer runs
        self._pinned: object = None  # the ctypes view of ``out`` that ``_sink`` writes into
        self._scratch = bytearray(2)  # the sink's memory when ``out`` is shorter
        self.accept: Accept | None = None
        self.length = self.pos = 0
        self.stall_timeout_s = 0.0
        self.active_at = 0.0
        self.progress = 0  # head and body bytes received at the loop's last stall check
        self.code = 0
        self.message = ""
        self.failure: TransportError | None = None
        self.callback: Callable[[], None] | None = None  # ``submit``: called instead of waking a caller

    def prepare(
        self, url: str, start: int, out: memoryview, accept: Accept, timeout_s: float, stall_timeout_s: float
    ) -> None:
        c = self.handle
        # libcurl takes bytes: a URL with non-ASCII characters is sent percent-encoded (as httpx does).
        c.setopt(pycurl.URL, url if url.isascii() else quote(url, safe=_URL_SAFE))
        c.setopt(pycurl.RANGE, f"{start}-{start + len(out) - 1}")
        c.setopt(pycurl.TIMEOUT_MS, max(1, math.ceil(timeout_s * 1000)))
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, math.ceil(min(timeout_s, stall_timeout_s) * 1000)))
        self._open_sink(out)
        self.out, self.accept, self.length, self.pos = out, accept, len(out), 0
        self.stall_timeout_s = stall_timeout_s
        self.active_at = _now()
        self.progress = 0
        self.failure = None
        self.code, self.message = 0, ""
        self.callback = None

    def _open_sink(self, out: memoryview) -> None:
        """A ``FILE *`` over ``out``'s memory (``r+``: nothing truncated, no NUL appended), unbuffered:
        libcurl's ``fwrite`` copies each received block straight into place, and fails once ``out`` is
        full, which ends the transfer. glibc's stream over a single byte fails any longer write whole,
        so an ``out`` under two bytes gets a scratch pair, copied at the end."""
        target = out if len(out) >= 2 else self._scratch
        pinned = (ctypes.c_char * len(target)).from_buffer(target)
        sink = _NATIVE.fmemopen(ctypes.addressof(pinned), len(target), b"r+")
        if not sink:
            raise TransportError(Failure.FATAL, f"fmemopen: {os.strerror(ctypes.get_errno())}")
        _NATIVE.setvbuf(sink, None, _IONBF, 0)
        self._sink, self._pinned = sink, pinned
        _NATIVE.check(_NATIVE.easy_setopt_ptr(self.easy, pycurl.WRITEDATA, sink), "WRITEDATA")

    def close_sink(self) -> None:
        """Note how many bytes landed and close the stream (the loop, once libcurl let go of it)."""
        sink, self._sink = self._sink, None
        if sink is not None:
            self.pos = min(_NATIVE.ftell(sink), self.length)
            _NATIVE.fclose(sink)
            if self.length < 2:
                self.out[: self.pos] = self._scratch[: self.pos]
        self._pinned = None

    def release_buffers(self) -> None:
        self.close_sink()
        self.out, self.accept = memoryview(b""), None

    def finish(self, code: int, message: str) -> None:
        """The loop's last word on this transfer (libcurl's result); wakes the caller."""
        self.close_sink()
        self.code, self.message = code, message
        self._signal()

    def fail(self, failure: Failure, reason: str) -> None:
        """The loop gave up on this transfer (stalled, or the loop is ending); wakes the caller."""
        self.close_sink()
        self.failure = TransportError(failure, reason, self.pos)
        self._signal()

    def _signal(self) -> None:
        callback = self.callback
        if callback is not None:
            callback()
        else:
            os.eventfd_write(self._done_fd, 1)

    def wait(self, timeout_s: float) -> bool:
        """The caller's side: True once the loop has finished or failed the transfer."""
        if not self._done_poll.poll(timeout_s * 1000):
            return False
        os.eventfd_read(self._done_fd)
        return True

    def close(self) -> None:
        self.close_sink()
        self.handle.close()
        os.close(self._done_fd)

    def received(self) -> int:
        """Head and body bytes received so far (the loop's stall check)."""
        c = self.handle
        return int(c.getinfo(pycurl.HEADER_SIZE)) + int(c.getinfo(pycurl.SIZE_DOWNLOAD_T))

    def result(self) -> Reply:
        """The caller's view once signalled: a ``Reply``, the fetcher's own refusal, or a failure.

        The final response (after redirects) is judged here, once the transfer has ended: when it
        completed, or when some of its body landed (a refusal then wins over a failure that followed)."""
        c = self.handle
        status = int(c.getinfo(pycurl.RESPONSE_CODE))
        full = self.code == pycurl.E_WRITE_ERROR and self.pos == self.length
        if status and (self.pos > 0 or (self.code == 0 and self.failure is None)):
            headers = _NATIVE.headers(self.easy)
            since_us = int(c.getinfo(pycurl.TOTAL_TIME_T)) - int(c.getinfo(pycurl.STARTTRANSFER_TIME_T))
            assert self.accept is not None
            self.accept(status, headers, max(0, since_us) / 1e6)
            if full or (self.code == 0 and self.failure is None):
                return Reply(status, headers, self.pos)
        if self.failure is not None:
            raise self.failure
        if self.code == 0:  # a response with no status line (HTTP/0.9 is off): not ours to judge
            raise TransportError(Failure.NETWORK, "no HTTP response", self.pos)
        failure = _FAILURES.get(self.code, Failure.NETWORK)
        raise TransportError(failure, f"{self.message or 'libcurl error'} (curl {self.code})", self.pos)


class _Loop:
    """The event-loop thread and everything it owns (the multi handle, the timers)."""

    def __init__(self, max_connections: int, lock: threading.Lock, queue: list[_Transfer]) -> None:
        self._lock = lock  # CurlTransport's: guards ``queue``
        self._queue = queue
        self._stopping = False
        self.dead: str | None = None  # why the loop ended, once it has
        self._thread = threading.Thread(target=self._run, name="encordfs-curl", daemon=True)
        # Created here so that ``wake`` works before the thread runs; used by the loop thread only.
        self._multi = _NATIVE.multi_init()
        if not self._multi:
            raise TransportError(Failure.FATAL, "curl_multi_init failed")
        _NATIVE.multi_setopt_long(self._multi, pycurl.M_MAX_TOTAL_CONNECTIONS, max_connections)
        _NATIVE.multi_setopt_long(self._multi, pycurl.M_MAXCONNECTS, max_connections)
        self._stall_check_at = math.inf
        self._active: dict[int, _Transfer] = {}  # easy handle's address -> transfer
        self._running = ctypes.c_int(0)
        self._numfds = ctypes.c_int(0)
        self._left = ctypes.c_int(0)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Any thread: end the loop's current (or next) wait."""
        if self._multi:
            _NATIVE.multi_wakeup(self._multi)

    def stop(self) -> None:
        self._stopping = True
        self.wake()
        self._thread.join(timeout=10)
        if not self._thread.is_alive() and self._multi:
            multi, self._multi = self._multi, None
            _NATIVE.multi_cleanup(multi)

    # -- the loop thread

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._turn()
            self.dead = "transport closed"
        except BaseException as exc:  # a bug, or libcurl out of memory: fail every caller, never hang one
            self.dead = f"libcurl's event loop failed: {type(exc).__name__}"
            log.exception("the libcurl event loop failed; reads fail with EIO until remount")
        finally:
            self._teardown()

    def _turn(self) -> None:
        """Wait for sockets, a timer or a wake-up (the GIL let go), then let libcurl run every transfer
        that can move (the GIL let go again: reading, TLS, writing into ``out``), then hand out the
        finished ones."""
        multi = self._multi
        due = self._stall_check_at
        wait_ms = _MAX_WAIT_MS if due == math.inf else min(_MAX_WAIT_MS, max(0, math.ceil((due - _now()) * 1000)))
        _NATIVE.check_multi(_NATIVE.multi_poll(multi, None, 0, wait_ms, ctypes.byref(self._numfds)), "poll")
        if self._queue:
            self._admit()
        _NATIVE.check_multi(_NATIVE.multi_perform(multi, ctypes.byref(self._running)), "perform")
        self._reap()
        now = _now()
        if now >= self._stall_check_at:
            self._abandon_stalled(now)

    def _admit(self) -> None:
        with self._lock:
            batch = self._queue[:]
            self._queue.clear()
        for transfer in batch:
            _NATIVE.check_multi(_NATIVE.multi_add(self._multi, transfer.easy), "add_handle")
            self._active[transfer.easy] = transfer
            self._stall_check_at = min(self._stall_check_at, _now() + _stall_probe_s(transfer))

    def _reap(self) -> None:
        while True:
            msg = _NATIVE.multi_info_read(self._multi, ctypes.byref(self._left))
            if not msg:
                return
            if msg.contents.msg != _CURLMSG_DONE:
                continue
            easy, code = msg.contents.easy_handle, msg.contents.result
            transfer = self._end(easy)
            transfer.finish(code, transfer.handle.errstr() if code else "")

    def _end(self, easy: int) -> _Transfer:
        _NATIVE.multi_remove(self._multi, easy)
        return self._active.pop(easy)

    def _abandon_stalled(self, now: float) -> None:
        """Abandon the transfers that received nothing for their stall timeout; plan the next look.

        A transfer that received bytes since the previous look is noted active now, which is at most
        one probe interval (1 % of its stall timeout) after its last byte: so a stall is caught
        between its timeout and 1 % later, never sooner."""
        next_check = math.inf
        for transfer in list(self._active.values()):
            received = transfer.received()
            if received != transfer.progress:  # bytes came in since the last look
                transfer.progress = received
                transfer.active_at = max(transfer.active_at, now)
            due = transfer.active_at + transfer.stall_timeout_s
            if now >= due:
                self._end(transfer.easy).fail(Failure.STALL, f"no byte for {transfer.stall_timeout_s:g} s")
            else:
                next_check = min(next_check, due, now + _stall_probe_s(transfer))
        self._stall_check_at = next_check

    def _teardown(self) -> None:
        reason = self.dead or "transport closed"
        with self._lock:
            queued = self._queue[:]
            self._queue.clear()
        for transfer in queued:
            transfer.fail(Failure.FATAL, reason)
        for easy, transfer in list(self._active.items()):
            if self._multi:
                _NATIVE.multi_remove(self._multi, easy)
            transfer.fail(Failure.FATAL, reason)
        self._active.clear()


def _stall_probe_s(transfer: _Transfer) -> float:
    """How often the loop looks whether ``transfer`` received bytes (see ``_abandon_stalled``)."""
    return max(0.005, transfer.stall_timeout_s / 100)


def _make_share() -> pycurl.CurlShare:
    share = pycurl.CurlShare()
    share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_DNS)
    share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_SSL_SESSION)
    return share
