"""The shared block tier (``--shared-blocks``): file contents fetched by one node are read by the others
from Redis instead of the origin. A ``core.blockcache.BlockCache`` in front of the node's own tiers.

Order of a read: the local tiers (memory, disk), then Redis, then the origin (the reader fetches on a
miss). Blocks are the reader's: a whole small file or one part of a big one, at most
``--shared-block-limit`` (8 MiB, the part size) bytes; larger ones stay local.

``get(key)`` on a local miss
    ``GET {ns}:b:{digest}``. A hit is checked (below), put into the local tiers and returned
    (``shared.block_hits``). On a miss, the node takes the block's lease (``SET NX PX``, with a second
    look at the block in the same transaction) and returns None: the reader fetches from the origin
    and ``put`` publishes the block and drops the lease. If another node holds the lease, it is
    fetching that block now: wait for it (``POLL_S``; at most ``WAIT_S``, or until that lease
    vanishes), so eight nodes reading the same file cost the origin one GET, not eight
    (``shared.leases_waited``).

``put(key, data)``: the local tiers, then (if small enough) a background writer publishes it: a
    bounded queue (``MAX_BACKLOG_BYTES``; past it blocks are skipped, ``shared.block_skipped``), so a
    read never waits for Redis. ``contains`` asks the local tiers only: it must stay free of I/O.

Value: ``MAGIC`` (format), a digest of the block's key, its length and crc32, then the bytes. A value
whose magic, key digest, length or crc32 does not match is ignored (``shared.block_rejected``) and the
block is fetched from the origin. Redis evicts blocks by its own ``maxmemory-policy allkeys-lru``
(encordfs never assumes one is still there); each also expires after ``BLOCK_TTL_MS``, so a Redis with
no memory limit does not grow without bound.

Degrade: any ``SharedDown`` is a miss; a publication that fails is dropped.
Lock order: ``_cond`` is a leaf.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from encordfs.cluster.keys import Keys
from encordfs.cluster.link import RedisLink, SharedDown
from encordfs.core.blockcache import Block, BlockCache, BlockKey, FileLayout, crc32
from encordfs.core.counters import Counters

log = logging.getLogger(__name__)

MAGIC = b"EFSRB002"
# magic, key digest, payload length, crc32, and the file's layout (size, part bytes) so that a node that
# reads the block from Redis can store it in its own disk cache at the right offset
_HEADER = struct.Struct("<8s16sQIQQ")
# The lease on fetching one block: longer than fetching 8 MiB takes; a holder that fails leaves it to expire.
LEASE_MS = 10_000
WAIT_S = 10.0
POLL_S = 0.02
MAX_BACKLOG_BYTES = 64 << 20
BLOCK_TTL_MS = 24 * 3600 * 1000
MAX_LEASED = 10_000


class SharedBlockCache:
    """``BlockCache``: ``local`` first, then Redis (module docstring)."""

    def __init__(self, local: BlockCache, link: RedisLink, keys: Keys, counters: Counters, limit_bytes: int) -> None:
        self.local = local
        self.link = link
        self.keys = keys
        self.counters = counters
        self.limit_bytes = limit_bytes
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[tuple[BlockKey, Block, FileLayout]] = deque()
        self._backlog_bytes = 0
        self._leased: dict[BlockKey, str] = {}  # blocks this node took the lease of: key -> token
        self._closing = False
        self._writer = threading.Thread(target=self._run_writer, name="encordfs-shared-blocks", daemon=True)
        self._writer.start()

    # -- BlockCache

    def get(self, key: BlockKey) -> Block | None:
        data = self.local.get(key)
        return data if data is not None else self._from_redis(key, wait=True)

    def lookup(self, key: BlockKey) -> Block | None:
        data = self.local.lookup(key)
        return data if data is not None else self._from_redis(key, wait=False)

    def held(self, key: BlockKey) -> Block | None:
        return self.local.held(key)

    def contains(self, key: BlockKey) -> bool:
        return self.local.contains(key)

    def put(self, key: BlockKey, data: Block, layout: FileLayout, *, wait: bool = False) -> None:
        self.local.put(key, data, layout, wait=wait)
        if len(data) > self.limit_bytes or not self.link.up:
            self._release(key)
            return
        with self._cond:
            if not self._closing and self._backlog_bytes + len(data) <= MAX_BACKLOG_BYTES:
                self._queue.append((key, data, layout))
                self._backlog_bytes += len(data)
                self._cond.notify()
                return
        self.counters.inc("shared.block_skipped")
        self._release(key)

    def open_complete(self, content_key: str, size: int) -> int | None:
        return self.local.open_complete(content_key, size)

    def complete_now(self, content_key: str, size: int) -> bool:
        return self.local.complete_now(content_key, size)

    def still_complete(self, content_key: str, size: int) -> bool:
        return self.local.still_complete(content_key, size)

    def backlogged(self, size: int) -> bool:
        return self.local.backlogged(size)

    def watch_drops(self, callback: Callable[[str], None]) -> None:
        self.local.watch_drops(callback)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until queued publications are done (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._backlog_bytes == 0, timeout_s)

    def stop(self) -> None:
        """Stop publishing (what is queued is dropped); the local tiers stay open."""
        with self._cond:
            self._closing = True
            self._queue.clear()
            self._backlog_bytes = 0
            self._cond.notify_all()
        self._writer.join(5)

    def close(self) -> None:
        self.stop()
        self.local.close()

    # -- reading

    def _from_redis(self, key: BlockKey, wait: bool) -> Block | None:
        if not self.link.up:
            return None
        digest = _digest(key)
        try:
            raw = self.link.run(lambda r: r.get(self.keys.block(digest)))
            if raw is None and wait:
                raw = self._lease_or_wait(key, digest)
        except SharedDown:
            return None
        if raw is None:
            self.counters.inc("shared.block_misses")
            return None
        decoded = _decode(raw, digest)
        if decoded is None:
            self.counters.inc("shared.block_rejected")
            log.debug("shared: a block in Redis failed its check; fetching it from the origin")
            return None
        data, layout = decoded
        self.counters.inc("shared.block_hits")
        self.counters.inc("shared.block_hit_bytes", len(data))
        self.local.put(key, data, layout)
        return data

    def _lease_or_wait(self, key: BlockKey, digest: str) -> bytes | None:
        """None after taking the block's lease (this node fetches it); else the block once the node that
        holds the lease has published it (None if it gives up or ``WAIT_S`` passes)."""
        token = secrets.token_hex(8)
        lease_key = self.keys.block_lease(digest)
        # The lease and a second look at the block in one transaction: a holder publishes its block, then
        # drops its lease, so one that did both since our first look has left the block here to read.
        got, raw = self.link.pipeline(
            lambda p: (p.set(lease_key, token, nx=True, px=LEASE_MS), p.get(self.keys.block(digest))),
            transaction=True,
        )
        if got and isinstance(raw, bytes):
            try:
                self.link.run(lambda r: r.delete(lease_key))
            except SharedDown:
                pass  # it expires by itself
            return raw
        if got:
            with self._cond:
                if len(self._leased) >= MAX_LEASED:  # fetches that failed leave theirs; Redis expires them
                    self._leased.clear()
                self._leased[key] = token
            return None
        self.counters.inc("shared.leases_waited")
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            raw, leased = self.link.pipeline(lambda p: (p.get(self.keys.block(digest)), p.exists(lease_key)))
            if raw is not None or not leased:
                return raw if isinstance(raw, bytes) else None
        return None

    def _release(self, key: BlockKey) -> None:
        with self._cond:
            token = self._leased.pop(key, None)
        if token is not None:
            lease_key = self.keys.block_lease(_digest(key))
            try:
                self.link.run(lambda r: r.delete(lease_key))
            except SharedDown:
                pass

    # -- publishing

    def _run_writer(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if self._closing:
                    return
                key, data, layout = self._queue.popleft()
            try:
                self._publish(key, data, layout)
            finally:
                with self._cond:
                    self._backlog_bytes -= len(data)
                    self._cond.notify_all()

    def _publish(self, key: BlockKey, data: Block, layout: FileLayout) -> None:
        digest = _digest(key)
        value = _encode(data, digest, layout)
        with self._cond:
            token = self._leased.pop(key, None)

        def fill(p: Any) -> None:
            p.set(self.keys.block(digest), value, px=BLOCK_TTL_MS)
            if token is not None:
                p.delete(self.keys.block_lease(digest))

        try:
            self.link.pipeline(fill)
        except SharedDown:
            return
        self.counters.inc("shared.blocks_published")
        self.counters.inc("shared.block_bytes_published", len(data))


def _digest(key: BlockKey) -> str:
    content_key, index = key
    return hashlib.blake2b(f"{content_key}\0{index}".encode(), digest_size=16).hexdigest()


def _encode(data: Block, digest: str, layout: FileLayout) -> bytes:
    header = _HEADER.pack(MAGIC, bytes.fromhex(digest), len(data), crc32(data), *layout)
    return header + bytes(data)


def _decode(raw: bytes, digest: str) -> tuple[bytes, FileLayout] | None:
    if len(raw) < _HEADER.size:
        return None
    magic, key_digest, length, crc, size, part_bytes = _HEADER.unpack_from(raw)
    payload = raw[_HEADER.size :]
    if magic != MAGIC or key_digest != bytes.fromhex(digest) or length != len(payload) or crc32(payload) != crc:
        return None
    if part_bytes <= 0 or size < length:
        return None
    return payload, FileLayout(size, part_bytes)
