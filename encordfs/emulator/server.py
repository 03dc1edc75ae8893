"""The emulator's HTTP server: request plumbing, authentication gate, faults, blobs.

:class:`Emulator` is the Python API (tests, benchmarks, the CLI)::

    emu = Emulator(data_dir, authorized_keys=["ssh-ed25519 AAAA..."], shape=shapes.RECORDED)  # shape optional
    emu.store.ingest(spec)          # optional, before start: becomes part of the startup state
    emu.start()                     # binds, snapshots the startup state, serves in daemon threads
                                    # (recorded shape: first gives image sequences their MP4, ``mp4``)
    emu.key_file                    # the data dir's demo key when authorized_keys was empty
    emu.domain                      # "http://127.0.0.1:PORT" — pass as the SDK's domain=
    emu.stop()

One request, in order (:meth:`_Handler._dispatch`): read the whole body (keeps keep-alive in
sync); ``/blobs/*`` → signed-URL check and byte serving; ``/_emulator/*`` → admin; otherwise find
the route, count it in the stats, sleep ``latency_ms`` (+ fault latency), answer an injected fault
if one fires, authenticate (legacy or v2 scheme, by family), run the handler.
Blob requests go through the same fault rules (endpoint ``blob.get``) and may also get a body fault
(``faults``: connection reset or clean close mid-body, a stall); the signer's clock is the
emulator's clock plus the runtime ``clock_skew_s``, and its URL lifetime the runtime ``url_ttl_s``
when set (``/_emulator/settings``). Every failure is an
:class:`~encordfs.emulator.errors.ApiError` rendered by ``errors.render``; unexpected exceptions
are logged once and become a 500 — never a traceback to the client.

Speed (blob endpoint): HTTP/1.1 keep-alive, Nagle off, ``socket.sendfile`` for file bytes,
a daemon-thread-per-connection server with a 1024-deep accept queue, and an in-memory cache of
blob metadata (blobs are immutable; the cache is cleared when rows are deleted or data reset).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from encordfs.emulator import auth, errors, mp4, shapes, synthetic
from encordfs.emulator.api import (
    AdminApi,
    Api,
    Request,
    Response,
    find_route,
    legacy_endpoint,
    request_ids,
)
from encordfs.emulator.blobs import (
    BLOB_PREFIX,
    RangeNotSatisfiable,
    UrlSigner,
    load_or_create_secret,
    parse_range,
)
from encordfs.emulator.errors import ApiError, Family
from encordfs.emulator.faults import BodyFault, FaultRule, Faults, Stats
from encordfs.emulator.store import BlobInfo, Store

log = logging.getLogger("encordfs.emulator")

DEFAULT_URL_TTL_S = 3600  # like an S3 presigned URL's default lifetime
DEFAULT_MAX_METADATA_BYTES = 65536
MAX_SIGNATURE_SKEW_S = 300  # v2 signatures: `created` must be this close to server time


class Emulator:
    """A running (or runnable) emulator over one data dir. See the module docstring."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        url_ttl_s: int = DEFAULT_URL_TTL_S,
        authorized_keys: Iterable[str] = (),
        latency_ms: int = 0,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
        clock: Callable[[], float] = time.time,
        blob_base_url: str | None = None,  # benchmarks only: see ``blobs`` (signatures go unchecked)
        faults: Iterable[FaultRule] = (),  # rules in force from the start (``--fault``); reset clears them
        shape: shapes.Shape = shapes.DEFAULT,  # how data is rendered (``--shape``; see ``shapes``)
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.url_ttl_s = url_ttl_s
        self.authorized_keys = list(authorized_keys)
        self.latency_ms = latency_ms
        self.max_metadata_bytes = max_metadata_bytes
        self.clock = clock
        self.blob_base_url = blob_base_url
        self.shape = shape
        self.stats = Stats()
        self.faults = Faults()
        self.faults.add(list(faults))
        self.domain = ""
        self.key_file: Path | None = None  # the demo key, when no authorized_keys were given
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._signer: UrlSigner | None = None
        self._blob_cache: dict[str, BlobInfo] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> Store:
        with self._store_lock:
            if self._store is None:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._store = Store.open(self.data_dir, self.shape)
            return self._store

    def start(self) -> Emulator:
        """Register keys, bind (``OSError`` if the port is taken), snapshot, serve in the background."""
        store = self.store
        if not self.authorized_keys:
            self.key_file, line = auth.ensure_demo_key(self.data_dir)
            self.authorized_keys = [line]
        store.set_keys([auth.keyid_from_line(line) for line in self.authorized_keys])
        if self.shape.sequence_video:
            made = store.ensure_sequence_videos(mp4.encode_frames)
            if made:
                log.info("made the MP4 of %d image sequence(s)", made)
        server = _Server((self.host, self.port), _Handler)
        server.app = self
        self._server = server
        bound_host, bound_port = server.server_address[:2]
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else str(bound_host)
        shown = f"[{shown}]" if ":" in shown else shown
        self.port = int(bound_port)
        self.domain = f"http://{shown}:{self.port}"
        self._signer = UrlSigner(
            load_or_create_secret(self.data_dir), self.domain, self._url_ttl_now, self._skewed_clock, self.blob_base_url
        )
        self.api = Api(store, self.signer, self.max_metadata_bytes)
        self.admin = AdminApi(store, self.stats, self.faults, self.api, self._data_changed)
        self.authenticator = auth.Authenticator(store, MAX_SIGNATURE_SKEW_S, self.clock)
        store.snapshot_startup_state()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.name = "encordfs-emulator"
        self._thread.start()
        log.info("emulator serving %s from %s", self.domain, self.data_dir)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _skewed_clock(self) -> float:
        return self.clock() + self.faults.clock_skew_s

    def _url_ttl_now(self) -> int:
        override = self.faults.url_ttl_s
        return self.url_ttl_s if override is None else override

    def signer(self) -> UrlSigner:
        assert self._signer is not None, "emulator not started"
        return self._signer

    def sign_blob(self, blob_key: str) -> str:
        return self.signer().sign(blob_key)

    # ------------------------------------------------------------------ blob metadata cache

    def _data_changed(self) -> None:
        self._blob_cache = {}

    def blob_info(self, blob_key: str) -> BlobInfo | None:
        info = self._blob_cache.get(blob_key)
        if info is None:
            info = self.store.blob_info(blob_key)
            if info is not None and info.synthetic_seed is None:  # a million synthetic keys: not cached
                self._blob_cache[blob_key] = info
        return info


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    app: Emulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server
    server_version = "encordfs-emulator"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_GET

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self) -> None:
        app = self.server.app
        try:
            body = self._read_body()
        except ApiError as err:
            self.close_connection = True
            self._send_error("v2", err)
            return
        split = urlsplit(self.path)
        path = split.path
        if path.startswith(BLOB_PREFIX):
            self._serve_blob(app, path, split.query)
            return
        if path.startswith("/_emulator/"):
            self._run("admin", lambda: app.admin.handle(self.command, path, body))
            return
        family: Family = "legacy" if path in ("/public", "/public/") else "v2"
        route, params, other_method = find_route(self.command, path)
        endpoint = route.endpoint if route else f"{family}.other"
        if route is not None and route.family == "legacy":
            endpoint = legacy_endpoint(body)
        app.stats.api_call(endpoint)
        uids = request_ids(family, params, body) if app.faults.targets_ids() else frozenset()
        decision = app.faults.apply(endpoint, uids=uids)
        delay_s = decision.delay_s + app.latency_ms / 1000.0
        if delay_s > 0:
            time.sleep(delay_s)
        if decision.error is not None:
            self._send_error(family, decision.error)
            return
        req = Request(self.command, self.path, path, parse_qs(split.query), self.headers, body, params)

        def handle() -> Response:
            req.user_id = self._authenticate(app, family, req)
            if route is None:
                raise ApiError(405 if other_method else 404, f"no endpoint {self.command} {path}")
            return route.handler(app.api, req)

        self._run(family, handle)

    def _authenticate(self, app: Emulator, family: Family, req: Request) -> int:
        try:
            if family == "legacy":
                return app.authenticator.legacy(req.headers, req.body)  # type: ignore[arg-type]
            return app.authenticator.v2(req.method, req.target, req.headers, req.body)  # type: ignore[arg-type]
        except auth.AuthFailure as failure:
            code = "SSH_KEY_NOT_FOUND_ERROR" if failure.kind == "unknown_key" else "AUTHENTICATION_ERROR"
            raise ApiError(401, failure.message, legacy_code=code) from None

    def _run(self, family: Family, handler: Callable[[], Response]) -> None:
        try:
            response = handler()
        except ApiError as err:
            self._send_error(family, err)
            return
        except Exception:
            log.exception("internal error on %s %s", self.command, self.path)
            self._send_error(family, ApiError(500, "internal emulator error"))
            return
        self._send(response)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise ApiError(411, "chunked request bodies are not supported; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        return self.rfile.read(length) if length > 0 else b""

    # ------------------------------------------------------------------ responses

    def _send_error(self, family: Family, err: ApiError) -> None:
        out = errors.render(family, err, self.server.app.shape.legacy_error_http_status)
        self._send(Response(out.status, out.body, out.content_type, out.headers))

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if isinstance(response.body, bytes):
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for chunk in response.body:
                    if chunk:
                        self.wfile.write(b"%X\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            finally:
                close = getattr(response.body, "close", None)
                if close is not None:
                    close()  # a generator releases its SQLite read transaction now, not at GC
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            # Headers are gone already: the only honest signal left is to drop the connection.
            log.exception("failed while streaming %s %s", self.command, self.path)
            self.close_connection = True

    # ------------------------------------------------------------------ blobs

    def _blob_headers(self, blob_key: str, info: BlobInfo, first_last: tuple[int, int] | None, count: int) -> None:
        self.send_response(200 if first_last is None else 206)
        self.send_header("Content-Type", info.mime_type)
        self.send_header("Content-Length", str(count))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{blob_key}"')
        if first_last is not None:
            self.send_header("Content-Range", f"bytes {first_last[0]}-{first_last[1]}/{info.size}")
        self.end_headers()

    def _serve_synthetic(
        self,
        app: Emulator,
        blob_key: str,
        info: BlobInfo,
        first_last: tuple[int, int] | None,
        start: int,
        count: int,
        fault: BodyFault | None,
    ) -> None:
        """Bytes of a synthetic blob, generated block by block (``emulator.synthetic``)."""
        assert info.synthetic_seed is not None
        try:
            self._blob_headers(blob_key, info, first_last, count)
            if self.command == "GET":
                self._write_body(app, synthetic.iter_range(info.synthetic_seed, info.size, start, count), count, fault)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_body(self, app: Emulator, chunks: Iterable[bytes], count: int, fault: BodyFault | None) -> None:
        """Send ``count`` bytes from ``chunks``, applying ``fault`` at its byte (see ``faults``)."""
        cut = fault.cut_at(count) if fault is not None and count > 0 else None
        sent = 0
        for chunk in chunks:
            if fault is not None and cut is not None and cut < sent + len(chunk):
                head = chunk[: cut - sent]
                if head:
                    self.wfile.write(head)
                    app.stats.blob(nbytes=len(head))
                    sent += len(head)
                app.faults.body_fault_done(fault)
                if not self._body_fault(fault):
                    return
                chunk, cut = chunk[len(head) :], None
            if chunk:
                self.wfile.write(chunk)
                app.stats.blob(nbytes=len(chunk))
                sent += len(chunk)

    def _body_fault(self, fault: BodyFault) -> bool:
        """Carry out ``fault`` on the connection; True when the rest of the body is still to be sent."""
        if fault.kind == "stall":
            time.sleep(fault.stall_ms / 1000.0)
            return True
        self.close_connection = True
        if fault.kind == "drop":
            # Linger 0: the close below sends RST, not FIN. The socket is closed here so that the
            # server's own ``shutdown(SHUT_WR)`` afterwards fails instead of sending a clean FIN first.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:  # truncate: a clean end of stream, short of the Content-Length that was promised
            self.connection.shutdown(socket.SHUT_WR)
        return False

    @staticmethod
    def _file_chunks(fh: Any, start: int, count: int, size: int = 256 * 1024) -> Iterable[bytes]:
        fh.seek(start)
        left = count
        while left > 0:
            chunk = fh.read(min(size, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def _serve_blob(self, app: Emulator, path: str, query: str) -> None:
        if self.command not in ("GET", "HEAD"):
            self._send_error("blob", ApiError(405, "only GET and HEAD on blobs"))
            return
        app.stats.blob(requests=1)
        app.stats.blob_begin()
        try:
            self._serve_blob_counted(app, path, query)
        finally:
            app.stats.blob_end()

    def _serve_blob_counted(self, app: Emulator, path: str, query: str) -> None:
        decision = app.faults.apply("blob.get", body_faults=True)
        if decision.delay_s > 0:
            time.sleep(decision.delay_s)
        if decision.error is not None:
            self._send_error("blob", decision.error)
            return
        try:
            blob_key = app.signer().verify(path, query)
        except ApiError as err:
            self._send_error("blob", err)
            return
        info = app.blob_info(blob_key)
        if info is None:
            self._send_error("blob", ApiError(404, "The specified key does not exist."))
            return
        try:
            first_last = parse_range(self.headers.get("Range"), info.size)
        except RangeNotSatisfiable:
            refusal = ApiError(
                416, "The requested range is not satisfiable", headers={"Content-Range": f"bytes */{info.size}"}
            )
            self._send_error("blob", refusal)
            return
        start, count = (0, info.size) if first_last is None else (first_last[0], first_last[1] - first_last[0] + 1)
        if info.path is None:
            self._serve_synthetic(app, blob_key, info, first_last, start, count, decision.body)
            return
        try:
            fh = open(info.path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            self._send_error("blob", ApiError(404, "The specified key does not exist."))
            return
        with fh:
            try:
                self._blob_headers(blob_key, info, first_last, count)
                if self.command == "GET" and count > 0 and decision.body is not None:
                    self._write_body(app, self._file_chunks(fh, start, count), count, decision.body)
                elif self.command == "GET" and count > 0:
                    sent = self.connection.sendfile(fh, start, count)
                    app.stats.blob(nbytes=sent)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
