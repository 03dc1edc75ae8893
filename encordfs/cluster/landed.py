"""Landed writes, cluster-wide: when a node's metadata change or rename lands in Encord, the other nodes
show it at once instead of at their next refresh.

Writes themselves stay local: each node journals its own edits and pushes them (``core.writes``). What
is shared is the outcome, the server's state of the row after the push:

- ``publish(outcomes)``: for each landed row, ``HSET {ns}:landed uid {t, metadata, title}`` (``t``:
  Redis's clock), then ``PUBLISH {ns}:landed:feed`` of the batch (in messages of at most
  ``MESSAGE_ROWS`` rows: Redis disconnects a subscriber whose output buffer grows past its limit).
- a subscriber thread applies other nodes' messages to the local catalog: metadata through
  ``Catalog.set_rows_state`` (as the node's own landed writes), titles through ``Catalog.retitle``
  (title and name) unless this node has its own rename of that row queued (its view shows that one).
- ``catch_up(since)``: apply every entry of the hash landed at or after ``since``: after taking a
  published listing (which may predate them: ``SharedFolders.on_image``) and after the subscriber
  reconnects (messages published while Redis was away are lost; the hash is not).

The hash keeps each row's latest state for ``KEEP_S`` (pruned by the publishers, a script that deletes
entries older than that): a listing taken from Redis is at most a refresh period old, or is refreshed
right after it is taken.

Trust: a message or entry that is not the expected shape (``FORMAT``, uid strings, a metadata object
or null, a title string or null) is ignored and counted (``shared.landed_rejected``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from encordfs.backend import PushOutcome
from encordfs.cluster.keys import Keys
from encordfs.cluster.link import RedisLink, SharedDown
from encordfs.core.catalog import Catalog
from encordfs.core.counters import Counters

log = logging.getLogger(__name__)

FORMAT = 1
MESSAGE_ROWS = 200
KEEP_S = 6 * 3600.0
PRUNE_EVERY_S = 600.0
CATCH_UP_MARGIN_S = 5.0  # clock-free: entries are stamped by Redis, but a message may race its hash entry
_PRUNE = """
local cutoff = tonumber(ARGV[1])
local all = redis.call('hgetall', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if not ok or type(entry) ~= 'table' or type(entry.t) ~= 'number' or entry.t < cutoff then
    redis.call('hdel', KEYS[1], all[i]); n = n + 1
  end
end
return n
"""

Row = tuple[str, dict[str, Any] | None, str | None]
TitleView = Callable[[str, str], str]  # (row uid, incoming title) -> the title this node shows


class LandedFeed:
    def __init__(self, link: RedisLink, keys: Keys, counters: Counters, node_id: str) -> None:
        self.link = link
        self.keys = keys
        self.counters = counters
        self.node_id = node_id
        self._catalog: Catalog | None = None
        self._title_view: TitleView | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_seen = 0.0  # Redis time of the newest message applied
        self._last_prune = 0.0

    def start(self, catalog: Catalog, title_view: TitleView | None) -> None:
        self._catalog = catalog
        self._title_view = title_view
        self._thread = threading.Thread(target=self._subscribe, name="encordfs-landed", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    # -- publishing

    def publish(self, outcomes: list[PushOutcome]) -> None:
        rows: list[Row] = [
            (o.row_uid, dict(o.metadata) if o.metadata is not None else None, o.title) for o in outcomes if o.ok
        ]
        rows = [r for r in rows if r[1] is not None or r[2] is not None]
        if not rows:
            return
        try:
            now = self.link.server_time()

            def fill(p: Any) -> None:
                for uid, metadata, title in rows:
                    p.hset(self.keys.landed, uid, json.dumps({"t": now, "m": metadata, "title": title}))
                for start in range(0, len(rows), MESSAGE_ROWS):
                    body = {"v": FORMAT, "node": self.node_id, "t": now, "rows": rows[start : start + MESSAGE_ROWS]}
                    p.publish(self.keys.landed_feed, json.dumps(body))

            self.link.pipeline(fill)
            self.counters.inc("shared.landed_published", len(rows))
            if now - self._last_prune > PRUNE_EVERY_S:
                self._last_prune = now
                self.link.run(lambda r: r.eval(_PRUNE, 1, self.keys.landed, now - KEEP_S))
        except SharedDown:
            pass  # the other nodes see it at their next refresh

    # -- applying

    def catch_up(self, since: float) -> None:
        """Apply every landed entry stamped at or after ``since`` (Redis time)."""
        try:
            entries = self.link.run(lambda r: r.hgetall(self.keys.landed))
        except SharedDown:
            return
        rows: list[Row] = []
        for uid, raw in entries.items():
            parsed = _entry(uid, raw)
            if parsed is None:
                self.counters.inc("shared.landed_rejected")
            elif parsed[0] >= since - CATCH_UP_MARGIN_S:
                rows.append(parsed[1])
        if rows:
            self._apply(rows)

    def _apply(self, rows: list[Row]) -> None:
        catalog = self._catalog
        if catalog is None:
            return
        catalog.set_rows_state([(uid, metadata, None) for uid, metadata, _ in rows if metadata is not None])
        titles = [(uid, title) for uid, _, title in rows if title is not None]
        if self._title_view is not None:
            titles = [(uid, title) for uid, title in titles if self._title_view(uid, title) == title]
        if titles:
            catalog.retitle(titles)
        self.counters.inc("shared.landed_applied", len(rows))

    def _subscribe(self) -> None:
        """Apply other nodes' messages; after a lost connection, resubscribe and catch up."""
        while not self._stop.is_set():
            if not self.link.wait_up(1.0):
                continue
            pubsub = self.link.pubsub()
            try:
                pubsub.subscribe(self.keys.landed_feed)
                if self._last_seen:
                    self.catch_up(self._last_seen)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message.get("data"))
            except Exception as exc:  # the connection, or redis-py's parser: resubscribe once Redis answers
                if not self._stop.is_set():
                    self.link.mark_down(exc)
            finally:
                try:
                    pubsub.close()
                except Exception:  # closing a broken connection
                    pass

    def _on_message(self, data: Any) -> None:
        try:
            body = json.loads(data)
            ok = isinstance(body, dict) and body.get("v") == FORMAT and isinstance(body.get("rows"), list)
            rows = [_row(r) for r in body["rows"]] if ok else []
        except (ValueError, TypeError, KeyError):
            ok, rows = False, []
        if not ok or any(r is None for r in rows):
            self.counters.inc("shared.landed_rejected")
            return
        t = body.get("t")
        if isinstance(t, int | float):
            self._last_seen = max(self._last_seen, float(t))
        if body.get("node") == self.node_id:
            return  # this node's own: applied when it landed
        try:
            self._apply([r for r in rows if r is not None])
        except Exception:  # a thread boundary: one bad apply must not end the subscription
            log.exception("shared: applying a landed write from another node failed")


def _row(value: Any) -> Row | None:
    if not isinstance(value, list) or len(value) != 3:
        return None
    uid, metadata, title = value
    if not isinstance(uid, str) or not (metadata is None or isinstance(metadata, dict)):
        return None
    if not (title is None or isinstance(title, str)):
        return None
    return uid, metadata, title


def _entry(uid: bytes | str, raw: bytes | str) -> tuple[float, Row] | None:
    try:
        body = json.loads(raw)
        key = uid.decode() if isinstance(uid, bytes) else uid
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, Mapping) or not isinstance(body.get("t"), int | float):
        return None
    row = _row([key, body.get("m"), body.get("title")])
    return None if row is None else (float(body["t"]), row)


def node_id() -> str:
    """This mount's name in messages: host, pid and a nonce (two mounts on one host differ)."""
    return f"{os.uname().nodename}:{os.getpid()}:{time.monotonic_ns() % 100000}"
