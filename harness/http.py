"""A tiny range-capable byte server for read-path tests (stdlib only, 127.0.0.1, port 0).

It plays the storage bucket behind Encord's signed URLs:

- ``add(name, data)`` stores a blob; ``sign(name, ttl_s, expose_expiry=True)`` returns a CloudFront-style
  URL ``/blob/<name>?Expires=<unix>&Signature=<hmac>`` (the emulator's format) or, with
  ``expose_expiry=False``, an opaque ``?token=...`` whose expiry only the server knows;
- it answers ``Range: bytes=a-b`` with 206, no Range with 200, past the end with 416, and an expired or
  forged URL with 403, using its own ``clock`` (inject the test's fake clock to line both sides up);
- ``inject(*statuses)`` makes the next blob requests answer those statuses (500, 503, 429, ...);
- ``log`` records every blob request (name, range, status), so tests count GETs and 403s;
- ``/hop/<n>/blob/...`` answers 302 to ``/hop/<n-1>/...`` (``/blob/...`` at 0): ``n`` redirects,
  the query kept; ``redirect(url, hops)`` builds such a URL;
- ``ignore_range = True`` answers every GET with 200 and the whole object, as a server without
  range support; ``rewrite(status, headers, body) -> (status, headers, body)`` edits any answer (a
  ``Content-Length`` it sets is sent as is: more than the body, and the connection is closed after it);
- ``connections`` counts accepted TCP connections (keep-alive checks);
- ``ByteServer(tls=server_context)`` serves HTTPS (``harness.tls``); ``base_url`` says so.

Keep-alive (HTTP/1.1) and Nagle off, as the ceilings note the stdlib server needs.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit


@dataclass(frozen=True)
class Hit:
    name: str
    range: str | None
    status: int
    accept_encoding: str | None = None


Answer = tuple[int, dict[str, str], bytes]
_HOP = re.compile(r"^/hop/(\d+)(/.*)$")


class ByteServer:
    def __init__(self, clock: Callable[[], float] = time.time, tls: ssl.SSLContext | None = None) -> None:
        self.clock = clock
        self.tls = tls
        self.ignore_range = False
        self.connections = 0  # TCP connections accepted
        self.rewrite: Callable[[int, dict[str, str], bytes], Answer] | None = None
        self.blobs: dict[str, bytes] = {}
        self.log: list[Hit] = []
        self._secret = os.urandom(16)
        self._tokens: dict[str, tuple[str, float]] = {}
        self._faults: deque[int] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.base_url = ""

    # -- test-facing API

    def add(self, name: str, data: bytes) -> None:
        self.blobs[name] = data

    def sign(self, name: str, ttl_s: float = 3600, expose_expiry: bool = True) -> str:
        expires_at = self.clock() + ttl_s
        if not expose_expiry:
            token = os.urandom(8).hex()
            with self._lock:
                self._tokens[token] = (name, expires_at)
            return f"{self.base_url}/blob/{quote(name)}?token={token}"
        expires = math.ceil(expires_at)
        return f"{self.base_url}/blob/{quote(name)}?Expires={expires}&Signature={self._mac(name, expires)}"

    def redirect(self, url: str, hops: int) -> str:
        """``url`` (of this server) reached through ``hops`` 302 redirects."""
        return url.replace(self.base_url, f"{self.base_url}/hop/{hops}", 1)

    def inject(self, *statuses: int) -> None:
        with self._lock:
            self._faults.extend(statuses)

    def hits(self, name: str | None = None, status: int | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.log if (name is None or h.name == name) and (status is None or h.status == status)]

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- server side

    def _mac(self, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{name}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _authorised(self, name: str, query: dict[str, list[str]]) -> bool:
        now = self.clock()
        if "token" in query:
            with self._lock:
                owner, expires_at = self._tokens.get(query["token"][0], ("", 0.0))
            return owner == name and now < expires_at
        try:
            expires = int(query["Expires"][0])
            signature = query["Signature"][0]
        except (KeyError, ValueError):
            return False
        return hmac.compare_digest(signature, self._mac(name, expires)) and now < expires

    def _answer(self, path: str, range_header: str | None, accept_encoding: str | None = None) -> Answer:
        hop = _HOP.match(path)
        if hop is not None:
            hops, rest = int(hop.group(1)), hop.group(2)
            return 302, {"Location": f"/hop/{hops - 1}{rest}" if hops > 1 else rest}, b"moved"
        parts = urlsplit(path)
        name = unquote(parts.path.removeprefix("/blob/"))
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if self.ignore_range:
            range_header = None
        status, headers, body = self._route(name, parse_qs(parts.query), range_header, fault)
        if self.rewrite is not None:
            status, headers, body = self.rewrite(status, headers, body)
        with self._lock:
            self.log.append(Hit(name, range_header, status, accept_encoding))
        return status, headers, body

    def _route(self, name: str, query: dict[str, list[str]], range_header: str | None, fault: int | None) -> Answer:
        if fault is not None:
            return fault, {"Retry-After": "0"} if fault in (429, 503) else {}, b"injected"
        if not self._authorised(name, query):
            return 403, {}, b"<Error>AccessDenied</Error>"
        data = self.blobs.get(name)
        if data is None:
            return 404, {}, b"no such blob"
        if range_header is None:
            return 200, {}, data
        first_text, _, last_text = range_header.removeprefix("bytes=").partition("-")
        first = int(first_text)
        last = min(int(last_text) if last_text else len(data) - 1, len(data) - 1)
        if first >= len(data):
            return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
        return 206, {"Content-Range": f"bytes {first}-{last}/{len(data)}"}, data[first : last + 1]

    @contextmanager
    def running(self) -> Iterator[ByteServer]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.do_handshake()  # here, on the handler's thread, not in accept()
                super().setup()

            def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
                status, headers, body = server._answer(
                    self.path, self.headers.get("Range"), self.headers.get("Accept-Encoding")
                )
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(body)))
                    elif int(headers["Content-Length"]) != len(body):
                        self.close_connection = True  # a body shorter than announced: end it by closing
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # a burst of 64 connections (the fetcher's cap) is not dropped

            def get_request(self) -> tuple[socket.socket, object]:
                sock, address = self.socket.accept()
                with server._lock:
                    server.connections += 1
                if server.tls is not None:
                    sock = server.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, address

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients hanging up mid-body (a 200 cut short on purpose), or refusing our certificate

        httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd = httpd
        scheme = "https" if self.tls is not None else "http"
        self.base_url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)


class FakeClock:
    """A clock tests move by hand; callable like ``time.time``."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
