"""``--metrics-port``: the core's counters and the write queue's status as Prometheus text on 127.0.0.1.

Owns ``render`` (a pure function: a counters snapshot and ``EncordFS.status()`` in, exposition
format 0.0.4 out) and ``serve`` (a ``ThreadingHTTPServer`` on a daemon thread answering
``GET /metrics``; anything else is 404). Bound to loopback only: counters are not secret, but a
mount is a private thing and nothing here authenticates.

Names: ``encordfs_`` + the counter's dotted name with ``.`` → ``_``. Counts are ``counter`` type with
the ``_total`` suffix; high-water marks (``*_peak_*``) and the queue's current state are ``gauge``.
Values are read at scrape time; nothing is cached.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_WRITE_GAUGES = {
    "pending_rows": "rows with queued metadata changes",
    "pending_ops": "queued metadata edits",
    "oldest_pending_age_s": "age of the oldest queued change, seconds",
}
_WRITE_COUNTERS = {
    "pushed_rows_total": "rows pushed to Encord",
    "push_calls_total": "push calls made to Encord",
}


def _name(counter: str) -> str:
    return "encordfs_" + re.sub(r"[^a-zA-Z0-9_]", "_", counter)


def render(counters: dict[str, int], status: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: float) -> None:
        lines.extend(
            [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} {kind}",
                f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}",
            ]
        )

    for counter, value in sorted(counters.items()):
        if "peak" in counter:
            metric(_name(counter), "gauge", f"high-water mark {counter}", value)
        else:
            metric(_name(counter) + "_total", "counter", f"count {counter}", value)
    metric("encordfs_open_handles", "gauge", "open file handles", int(status.get("open_handles") or 0))
    metric("encordfs_read_only", "gauge", "1 if the mount is read-only", int(bool(status.get("read_only"))))
    writes = status.get("writes") or {}
    for key, help_text in _WRITE_GAUGES.items():
        metric(f"encordfs_writes_{key}", "gauge", help_text, writes.get(key) or 0)
    for key, help_text in _WRITE_COUNTERS.items():
        metric(f"encordfs_writes_{key}", "counter", help_text, writes.get(key) or 0)
    metric(
        "encordfs_writes_parked_rows",
        "gauge",
        "rows whose changes were refused and are parked",
        len(writes.get("parked") or []),
    )
    return "\n".join(lines) + "\n"


def serve(
    port: int, snapshot: Callable[[], tuple[dict[str, int], dict[str, Any]]], host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    """Start answering ``GET /metrics`` on ``host:port``; call ``.shutdown()`` on the result to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            try:
                body = render(*snapshot()).encode()
            except Exception:  # a scrape must never take the mount down
                log.exception("metrics: cannot render")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="encordfs-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
