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
    takes an idle ``_Transfer`` (an easy handle configured once, with its callbacks bound to the
    transfer), sets the four per-request options (URL, range, timeouts), appends it to the submit
    queue, wakes the loop (an eventfd, only when the queue was empty) and blocks on the transfer's
    own eventfd (written by the loop with the GIL let go, so the caller runs at once). The loop thread (``_Loop``) owns the ``CurlMulti``: an epoll over libcurl's sockets
    and the eventfd (``M_SOCKETFUNCTION``/``M_TIMERFUNCTION``, ``socket_action``), so each wake-up
    costs libcurl's work for the sockets that are ready, not a scan of every transfer. Finished
    transfers (``info_read``) are released to their callers; the easy handle goes back to the idle
    list, its connection to libcurl's connection cache (shared by every handle of the multi).

Without a waiting thread
    ``submit`` is ``get`` for callers that have better to do than wait (prefetch of many small files:
    a thread per transfer cost ~0.4 ms of CPU per 100 KiB GET in wake-ups and GIL hand-offs): the
    transfer carries a callback that the loop calls instead of writing its eventfd, with what ``get``
    would have returned or raised, and then the handle goes back to the idle list.

Body straight into the caller's buffer
    ``WRITEFUNCTION`` copies each received block into ``out`` at the running offset (pycurl hands a
    ``bytes`` per block; ``BUFFERSIZE`` is raised so a 100 KiB body arrives in one or two blocks).
    Before the first block the fetcher's ``accept`` judges the final response (status, headers) --
    after redirects, whose bodies libcurl never passes on. A refused response writes nothing: an
    error body up to ``ERROR_BODY_MAX`` is read and discarded so the connection is kept; a longer one
    aborts the transfer. A body longer than ``out`` (a 200 for the whole object) is cut at
    ``len(out)`` by aborting the transfer (libcurl closes that connection).

Options, once per easy handle: redirects (5), http/https only (redirects too), ``Accept-Encoding:
identity``, ``TCP_NODELAY``, TCP keep-alive, HTTP/1.1, a ``CurlShare`` of DNS and TLS sessions, ``CAINFO`` (``ca_file``, else
OpenSSL's default file and directory: PyPI's libcurl is built with a CentOS CA path that Debian does
not have), ``NOSIGNAL``. Proxies: libcurl reads ``http_proxy``, ``https_proxy``, ``all_proxy``,
``no_proxy`` itself. At most ``max_connections`` connections (``M_MAX_TOTAL_CONNECTIONS``: further
transfers wait in libcurl's queue) and as many kept.

HTTP/2 (``http2=True``: ``CURL_HTTP_VERSION_2TLS``, h2 when a TLS server offers it by ALPN, with
``PIPEWAIT`` so transfers multiplex on one connection) is off by default: against nginx over TLS on
loopback it cost 273 µs of client CPU per 100 KiB GET against 180 µs with HTTP/1.1 (952 against
1,912 requests/s, 8 threads) and 1.04 against 0.86 s per GiB of 8 MiB ranges
(``benchmarks/transport.py --tls --http2 --clients curl-h2,curl``). Keep-alive connections already
save the handshakes; h2's framing is extra work on this CPU-bound client.

Timeouts: ``TIMEOUT_MS`` is the fetcher's time left for the call, ``CONNECTTIMEOUT_MS`` the smaller
of that and the stall timeout. Stalls are the loop's: each transfer notes the time of its last
received body byte (or its submission); the loop wakes at the earliest ``last + stall_timeout_s``,
counts header lines that came in since its previous look as activity (``HEADERFUNCTION`` is a bare
``list.append``, no Python frame per line, so they carry no time stamp), and abandons the transfers
that received nothing (``remove_handle``: libcurl closes their connections). libcurl's own
``LOW_SPEED_TIME`` counts whole seconds only.

Failures, by table (``_FAILURES``): libcurl's result code -> ``Failure``; codes not listed (connect,
send, receive errors, a body shorter than announced, HTTP/2 stream errors, TLS handshakes cut short)
are ``NETWORK``. libcurl's messages name hosts, never queries; the fetcher scrubs them anyway.

Invariants: libcurl is called from the loop thread only, except ``setopt`` on an idle easy handle by
the thread that took it. A transfer's state is written by the loop while it is in flight and read by
its caller after the loop signalled its eventfd, exactly once per transfer (the syscalls order the
two). A caller waits at most ``timeout_s + stall_timeout_s + 10 s``: if the loop died, the call
fails instead of hanging.

Lock order: ``CurlTransport._lock`` (submit queue, idle list, loop start, the wake-up write) is a
leaf, never held while libcurl runs. Transfers hold no lock: their eventfds are signals, not guards.
"""

from __future__ import annotations

import logging
import math
import os
import select
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote

import pycurl

from encordfs import __version__
from encordfs.core.fetch import ERROR_BODY_MAX, MAX_REDIRECTS, Accept, Failure, Reply, TransportError

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

_now = time.monotonic
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # what percent-encoding a non-ASCII URL leaves alone (RFC 3986)


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
    """One easy handle and the state of the GET it carries. Callbacks run on the loop thread."""

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
        c.setopt(pycurl.WRITEFUNCTION, self._write)
        self.lines: list[bytes] = []  # every header line received, responses after redirects included
        c.setopt(pycurl.HEADERFUNCTION, self.lines.append)  # a C method: no Python frame per line
        # The loop signals the end of a transfer through an eventfd: ``os.eventfd_write`` lets go of
        # the GIL around the syscall, so the woken caller can run at once (a ``Lock.release`` wakes it
        # while the loop still holds the GIL: measured ~10% more CPU per small GET).
        self._done_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._done_poll = select.poll()
        self._done_poll.register(self._done_fd, select.POLLIN)
        self.out = memoryview(b"")
        self.accept: Accept | None = None
        self.length = self.pos = 0
        self.stall_timeout_s = 0.0
        self.active_at = 0.0
        self.lines_seen = 0  # len(lines) at the loop's last stall check
        self.status = 0
        self.headers: dict[str, str] = {}
        self.judged = False
        self.refusal: Exception | None = None
        self.drain_left = 0
        self.full = False
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
        self.out, self.accept, self.length, self.pos = out, accept, len(out), 0
        self.stall_timeout_s = stall_timeout_s
        self.active_at = _now()
        self.lines.clear()
        self.lines_seen, self.status, self.headers = 0, 0, {}
        self.judged, self.refusal, self.full, self.failure = False, None, False, None
        self.code, self.message = 0, ""
        self.callback = None

    def release_buffers(self) -> None:
        self.out, self.accept, self.refusal = memoryview(b""), None, None
        self.lines.clear()

    # -- libcurl's callbacks (loop thread); they must not raise

    def _write(self, data: bytes) -> int | None:
        self.active_at = _now()
        if not self.judged:
            self._judge()
        if self.refusal is not None:
            self.drain_left -= len(data)
            return None if self.drain_left >= 0 else 0  # 0: abort, libcurl closes the connection
        pos = self.pos
        end = pos + len(data)
        if end <= self.length:
            self.out[pos:end] = data
            self.pos = end
            return None
        self.out[pos:] = memoryview(data)[: self.length - pos]
        self.pos = self.length
        self.full = True
        return 0  # the rest is not wanted (a 200 for the whole object): abort, the connection goes

    def _judge(self) -> None:
        """Parse the final response's head and let the fetcher accept or refuse it (once)."""
        self.judged = True
        try:
            lines = self.lines
            at = len(lines) - 1  # the final response's status line: the last one (redirects, 1xx before it)
            while at > 0 and not lines[at].startswith(b"HTTP/"):
                at -= 1
            first = lines[at].split(None, 2) if lines else []
            self.status = int(first[1]) if len(first) > 1 else 0
            headers = self.headers
            for line in lines[at + 1 :]:
                name, sep, value = line.decode("latin-1").partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            assert self.accept is not None
            self.accept(self.status, headers)
        except Exception as exc:  # the fetcher's verdict (refused, gone, retry later), or a garbled head
            self.refusal = exc
            announced = self.headers.get("content-length", "")
            small = not (announced.isdigit() and int(announced) > ERROR_BODY_MAX)
            self.drain_left = ERROR_BODY_MAX if self.status not in (200, 206) and small else -1

    def finish(self, code: int, message: str) -> None:
        """The loop's last word on this transfer (libcurl's result); wakes the caller."""
        if code == 0 and not self.judged:
            self._judge()  # a response without a body (416 with nothing, a 0-byte 200)
        self.code, self.message = code, message
        self._signal()

    def fail(self, failure: TransportError) -> None:
        self.failure = failure
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
        self.handle.close()
        os.close(self._done_fd)

    def result(self) -> Reply:
        """The caller's view once signalled: a ``Reply``, the fetcher's own refusal, or a failure."""
        if self.refusal is not None:
            raise self.refusal
        if self.full:
            return Reply(self.status, self.headers, self.pos)
        if self.failure is not None:
            raise self.failure
        if self.code == 0:
            return Reply(self.status, self.headers, self.pos)
        failure = _FAILURES.get(self.code, Failure.NETWORK)
        raise TransportError(failure, f"{self.message or 'libcurl error'} (curl {self.code})", self.pos)


class _Loop:
    """The event-loop thread and everything it owns (the multi handle, the epoll, the timers)."""

    def __init__(self, max_connections: int, lock: threading.Lock, queue: list[_Transfer]) -> None:
        self._lock = lock  # CurlTransport's: guards ``queue``
        self._queue = queue
        self._max_connections = max_connections
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stopping = False
        self.dead: str | None = None  # why the loop ended, once it has
        self._thread = threading.Thread(target=self._run, name="encordfs-curl", daemon=True)
        # Owned by the loop thread once it runs:
        self._multi: pycurl.CurlMulti | None = None
        self._epoll: select.epoll | None = None
        self._watched: dict[int, int] = {}
        self._timer_at: float | None = None
        self._stall_check_at = math.inf
        self._active: dict[pycurl.Curl, _Transfer] = {}

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass  # closed: the loop is gone and ``get`` sees ``dead``

    def stop(self) -> None:
        self._stopping = True
        self.wake()
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            os.close(self._wake_fd)

    # -- the loop thread

    def _run(self) -> None:
        try:
            self._setup()
            while not self._stopping:
                self._turn()
            self.dead = "transport closed"
        except BaseException as exc:  # a bug, or libcurl out of memory: fail every caller, never hang one
            self.dead = f"libcurl's event loop failed: {type(exc).__name__}"
            log.exception("the libcurl event loop failed; reads fail with EIO until remount")
        finally:
            self._teardown()

    def _setup(self) -> None:
        multi = self._multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, self._max_connections)
        multi.setopt(pycurl.M_MAXCONNECTS, self._max_connections)
        self._epoll = select.epoll()
        self._epoll.register(self._wake_fd, select.EPOLLIN)

    def _turn(self) -> None:
        assert self._epoll is not None and self._multi is not None
        due = min(self._timer_at if self._timer_at is not None else math.inf, self._stall_check_at)
        wait_s = -1.0 if due == math.inf else max(0.0, due - _now())
        for fd, events in self._epoll.poll(wait_s):
            if fd == self._wake_fd:
                self._admit()
                continue
            mask = 0
            if events & select.EPOLLIN:
                mask |= pycurl.CSELECT_IN
            if events & select.EPOLLOUT:
                mask |= pycurl.CSELECT_OUT
            if events & (select.EPOLLERR | select.EPOLLHUP):
                mask |= pycurl.CSELECT_ERR
            self._multi.socket_action(fd, mask)
        now = _now()
        if self._timer_at is not None and now >= self._timer_at:
            self._timer_at = None
            self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        self._reap()
        if now >= self._stall_check_at:
            self._abandon_stalled(now)

    def _admit(self) -> None:
        assert self._multi is not None
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        with self._lock:
            batch = self._queue[:]
            self._queue.clear()
        for transfer in batch:
            self._multi.add_handle(transfer.handle)
            self._active[transfer.handle] = transfer
            self._stall_check_at = min(self._stall_check_at, transfer.active_at + transfer.stall_timeout_s)

    def _reap(self) -> None:
        assert self._multi is not None
        while True:
            queued, ok, failed = self._multi.info_read()
            for handle in ok:
                self._end(handle).finish(0, "")
            for handle, code, message in failed:
                self._end(handle).finish(code, message)
            if not queued:
                return

    def _end(self, handle: pycurl.Curl) -> _Transfer:
        assert self._multi is not None
        self._multi.remove_handle(handle)
        return self._active.pop(handle)

    def _abandon_stalled(self, now: float) -> None:
        """Abandon the transfers that received nothing for their stall timeout; plan the next check."""
        next_check = math.inf
        for transfer in list(self._active.values()):
            if len(transfer.lines) != transfer.lines_seen:  # header lines came in since the last check
                transfer.lines_seen = len(transfer.lines)
                transfer.active_at = max(transfer.active_at, now - 0.001)
            due = transfer.active_at + transfer.stall_timeout_s
            if now >= due:
                self._end(transfer.handle).fail(
                    TransportError(Failure.STALL, f"no byte for {transfer.stall_timeout_s:g} s", transfer.pos)
                )
            else:
                next_check = min(next_check, due)
        self._stall_check_at = next_check

    def _on_socket(self, what: int, fd: int, multi: object, socketp: object) -> None:
        assert self._epoll is not None
        if what == pycurl.POLL_REMOVE:
            if self._watched.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass  # already closed: epoll forgot it
            return
        events = (select.EPOLLIN if what & pycurl.POLL_IN else 0) | (select.EPOLLOUT if what & pycurl.POLL_OUT else 0)
        try:
            if fd in self._watched:
                self._epoll.modify(fd, events)
            else:
                self._epoll.register(fd, events)
        except FileExistsError:  # a reused fd number epoll still knew
            self._epoll.modify(fd, events)
        except FileNotFoundError:  # closed and reopened under the same number: epoll forgot it
            self._epoll.register(fd, events)
        self._watched[fd] = events

    def _on_timer(self, timeout_ms: int) -> None:
        self._timer_at = None if timeout_ms < 0 else _now() + timeout_ms / 1000

    def _teardown(self) -> None:
        reason = self.dead or "transport closed"
        with self._lock:
            queued = self._queue[:]
            self._queue.clear()
        for transfer in queued:
            transfer.fail(TransportError(Failure.FATAL, reason))
        for handle, transfer in list(self._active.items()):
            if self._multi is not None:
                try:
                    self._multi.remove_handle(handle)
                except pycurl.error:
                    pass
            transfer.fail(TransportError(Failure.FATAL, reason, transfer.pos))
        self._active.clear()
        if self._multi is not None:
            self._multi.close()
        if self._epoll is not None:
            self._epoll.close()


def _make_share() -> pycurl.CurlShare:
    share = pycurl.CurlShare()
    share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_DNS)
    share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_SSL_SESSION)
    return share
