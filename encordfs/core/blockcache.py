"""Caches for file contents: memory (LRU of blocks by bytes), disk (one sparse file per item, LRU, survives
remounts, complete files can back a FUSE passthrough open), and both tiered.

Keys and layout
    Blocks are keyed ``(content_key, part_index)``. ``content_key`` names the item AND its content identity
    (``f"{item_id}:{size}:{last_edited}"``), so new content gets new keys and a stale block can never be
    served; old content simply ages out of the LRU. Every ``put`` also carries the item's ``FileLayout``
    (its size and part size: part ``k`` is bytes ``[k*part_bytes, min((k+1)*part_bytes, size))``), which
    the reader decides (one 8 MiB part, or a whole small file as part 0); the memory tier ignores it, the
    disk tier writes part ``k`` at offset ``k*part_bytes`` of the item's file. A block is immutable once
    put: callers must never mutate a buffer they put or got (``bytearray`` blocks are stored without
    copying).

``get`` counts hits and misses; ``lookup`` is the same without counting (for composition:
``TieredBlockCache`` counts once per request). ``contains`` is cheap (in-memory index, no I/O).

DiskFileCache layout
    ::

        DIR/                   mode 0700
          LOCK                 flock(LOCK_EX) held for the cache's lifetime; contains the owner's pid
          index.sqlite         which parts of which files are present, with their crc32, and each file's
                               last use (SQLite, WAL; only the writer thread writes it)
          ab/<sha256(key)>     mode 0600: the item's bytes at their own offsets, ``size`` long, sparse
                               where parts are missing (the 256 fan-out dirs are created at open)
          tmp/                 a new item's file until its first part is in it, emptied on open

    Why one file per item: the kernel's passthrough mode reads a *backing file* with the FUSE file's own
    offsets, so a complete item file is handed to the binding as is (``open_complete``). Why a SQLite
    index rather than a sidecar per file or xattrs: a part lands as one row in a transaction the writer
    batches (no extra file, fsync or rename per part), recency is a column updated in batches instead
    of a ``utime`` per file, xattrs are not on every filesystem, and the project already relies on
    SQLite for its catalog and journal. The index can only be behind or ahead of the files after a
    crash, and both are safe (see Reads). On open, the index and a scan of the fan-out dirs are
    reconciled: files without an item row are deleted, rows without a file (or whose file has another
    size) are dropped, an index that cannot be read is deleted with every file.

Writes
    ``put`` only queues (``sync`` waits for it, see below): one writer thread lands the queue in order.
    Until a part has landed it stays in ``_pending`` and ``lookup``/``contains`` serve that buffer, so a
    queued part is never fetched twice; it leaves ``_pending`` and enters the index in one step under the
    lock. The queue is bounded: past ``max_backlog_bytes`` a ``put`` is skipped
    (``cache.skipped_disk_backlog``; the memory tier still has it) rather than making readers wait for
    the disk; ``wait`` (prefetch) waits for room instead; ``sync`` (a small file fetched by a passthrough
    open) goes to the head of the queue, past the cap, and waits until it has landed. The first part of
    an item creates its file as ``tmp/<name>.<n>`` (``ftruncate`` to the full size, the part written at its
    offset) and renames it into place, so a path never names a half-made file and a replaced file never
    changes under an fd that has it open; later parts are written in place with one ``pwrite`` into a
    hole of that file. A failed write is counted (``cache.write_errors``), logged (at most once a minute)
    and dropped; the index rows of landed parts are committed in batches (whenever the queue runs empty,
    during a stream every 128 changes or 0.25 s, at close). ``close`` lets the writer drain the queue
    (at most the backlog), then drops what is left after ``close_timeout_s``.

Reads
    One ``open`` + ``preadv`` straight into a buffer of the part's recorded length. A part read short
    (the file was truncated) is damage. The crc32 (~2 ms per 8 MiB here) is checked on the first hit in
    this session of a part inherited from a previous owner (``cache.verified_bytes``): that is where
    damage can come from (a crash or power loss before the kernel wrote a part back -- parts are not
    fsynced, the index may be --, bit rot, someone editing the dir); parts this process wrote are trusted
    (it wrote them to that inode), and so are the parts of a sealed file.
    Damage of any part drops the whole item: its file is deleted, the lookup is a miss
    (``cache.corrupt_disk``), never wrong bytes. A read that raced with the item's eviction is a miss
    too: the lookup checks, after reading, that the item it read is still the indexed one (an evicted
    name may already be a new file whose part is a hole).

Complete files and passthrough
    ``open_complete(content_key, size)`` returns a read-only fd of the item's file when every part is
    present, the file is ``size`` long and every inherited part has passed its crc32 (an unsealed
    inherited file is read whole once per session for that, on the opener's thread); the caller owns the
    fd. ``complete_path`` is the same as a path. An fd keeps its file whatever happens next: eviction only
    unlinks, and a complete file is never written again (a new incarnation of the same name is a new
    inode, renamed over it).

Sealed files
    Reading a 1 GiB file whole to check it at its first open of a session would cost a passthrough
    reader ~20% of the read. So once a file of at least ``seal_min_bytes`` (64 MiB) is complete, the
    writer (when idle, and at close) fsyncs it (``fdatasync``) and records its inode number and ctime
    in the index (``cache.sealed_files``); so it does with an inherited unsealed one once
    ``open_complete`` has checked it whole. At the next open a sealed file whose inode and ctime are
    unchanged is trusted without a crc check: its bytes reached the disk before the seal was recorded,
    and any change to the file since -- a write, a truncate, a copy or restore over it, a chmod -- sets
    a new ctime, which nobody can set back. What a seal does not catch is the disk itself rotting bits
    under an unchanged inode; smaller files are cheaper to check at open than to fsync, and are not
    sealed.

Eviction and space
    Items, oldest first, keep the total under ``capacity_bytes`` and the filesystem's free space above
    ``min_free_bytes``; an item being written is never the one evicted for it. An item is charged its
    parts' lengths rounded up to 4 KiB (at open: at least the blocks its file holds, which counts what a
    crash wrote but did not record). Free space comes from ``statvfs`` every ``free_check_bytes``
    written or ``free_check_interval_s``, estimated from our own writes and evictions in between (the
    injectable ``free_bytes(dir)`` is called with the lock held and must not call back into the cache);
    a part that cannot fit is not written (``cache.skipped_disk``). An eviction unlinks the whole file
    (open fds, passthrough backing handles included, keep reading it). If the unlink fails the bytes
    stay counted in ``used_bytes`` (``cache.unlink_errors``) and the unlink is retried every
    ``free_check_interval_s``; eviction goes on with the next item.

Recency
    A hit (and an ``open_complete``: a passthrough reader sends no reads) moves the item to the end of
    the in-memory LRU and remembers the wall-clock time; the writer copies those times to the index with
    its next commit (at the latest after ``touch_persist_interval_s`` idle or 4096 hits, and at close),
    so recency survives a remount without a syscall on the read path. A crash loses the recency of the
    unpersisted hits only.

Exclusive ownership
    A second ``DiskFileCache`` on the same dir (another mount process, or another object in this one --
    flock is per open file) raises ``Busy``. The kernel drops the lock when the owner dies, so a crashed
    mount never blocks the next one. ``close`` releases the lock only after the writer has stopped.

Lock order: ``TieredBlockCache`` holds no lock; each cache's ``_lock`` is a leaf (file reads, writes
and renames happen outside it; evictions' unlinks and statvfs happen under it). ``DiskFileCache._changed``
is a condition on that same lock. The SQLite connection belongs to the writer thread (to ``__init__``
before it starts and to ``close`` after it stopped) and is never used under ``_lock``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol, TypeAlias

from encordfs.core.counters import Counters
from encordfs.errors import Busy, InvalidValue

BlockKey: TypeAlias = tuple[str, int]
Block: TypeAlias = bytes | bytearray

log = logging.getLogger(__name__)

MiB = 1 << 20


class FileLayout(NamedTuple):
    """How an item is cut into parts: part ``k`` is ``[k*part_bytes, min((k+1)*part_bytes, size_bytes))``."""

    size_bytes: int
    part_bytes: int

    @property
    def part_count(self) -> int:
        return -(-self.size_bytes // self.part_bytes)

    def part_length(self, index: int) -> int:
        """Bytes in part ``index`` (0 outside the file)."""
        if not 0 <= index < self.part_count:
            return 0
        return min(self.part_bytes, self.size_bytes - index * self.part_bytes)


class BlockCache(Protocol):
    """What the reader needs from a cache."""

    def get(self, key: BlockKey) -> Block | None: ...

    def lookup(self, key: BlockKey) -> Block | None: ...

    def contains(self, key: BlockKey) -> bool: ...

    def put(self, key: BlockKey, data: Block, layout: FileLayout, *, wait: bool = False, sync: bool = False) -> None:
        """Store part ``key[1]`` of a file cut as ``layout``. ``wait``: block until a slow tier has room
        instead of skipping it (prefetch). ``sync``: return once a slow tier has stored it (or gave up)."""
        ...

    def open_complete(self, content_key: str, size: int) -> int | None:
        """A read-only fd of a local file holding all ``size`` bytes at their own offsets, or None."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------- memory


# What one block costs in memory besides its bytes, measured with tracemalloc (~330 B for a 64-byte block
# under a 62-character content key): the key tuple and its content-key string, the OrderedDict's node and
# slots, the block's own object header. Charged to the capacity with every block, so that a million tiny
# blocks cannot hold several times ``capacity_bytes`` of Python objects (64 MB of payload was ~400 MB).
MEMORY_ENTRY_OVERHEAD_BYTES = 352
# At most this many blocks, whatever their size: the memory tier is for the parts being read now (a few
# hundred 8 MiB parts fill it); an epoch over a million tiny files is served again by the kernel's page
# cache and the disk cache, not from here. 65,536 blocks cost at most ~23 MB besides their bytes.
MEMORY_MAX_ENTRIES = 65536


class MemoryBlockCache:
    """LRU by bytes, in process memory. A block larger than the capacity is not stored.

    Each block is charged its length plus ``entry_overhead_bytes`` (what its key and slot cost), and at
    most ``max_entries`` blocks are kept: ``capacity_bytes`` bounds the memory really used, tiny blocks
    included.
    """

    def __init__(
        self,
        capacity_bytes: int,
        counters: Counters | None = None,
        max_entries: int = MEMORY_MAX_ENTRIES,
        entry_overhead_bytes: int = MEMORY_ENTRY_OVERHEAD_BYTES,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.max_entries = max_entries
        self.entry_overhead_bytes = entry_overhead_bytes
        self.counters = counters if counters is not None else Counters()
        self._lock = threading.Lock()
        self._blocks: OrderedDict[BlockKey, Block] = OrderedDict()
        self._used_bytes = 0

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes

    def get(self, key: BlockKey) -> Block | None:
        data = self.lookup(key)
        self.counters.inc("cache.hits_mem" if data is not None else "cache.misses")
        return data

    def lookup(self, key: BlockKey) -> Block | None:
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
            return data

    def contains(self, key: BlockKey) -> bool:
        with self._lock:
            return key in self._blocks

    def put(
        self, key: BlockKey, data: Block, layout: FileLayout | None = None, *, wait: bool = False, sync: bool = False
    ) -> None:
        """Keep the block (``layout``, ``wait`` and ``sync`` mean nothing in memory)."""
        charge = len(data) + self.entry_overhead_bytes
        if charge > self.capacity_bytes or self.max_entries < 1:
            return
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self._used_bytes -= len(old) + self.entry_overhead_bytes
            self._evict_locked(self.capacity_bytes - charge, self.max_entries - 1)
            self._blocks[key] = data
            self._used_bytes += charge

    def open_complete(self, content_key: str, size: int) -> int | None:
        return None  # no file to back anything

    def close(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._used_bytes = 0

    def _evict_locked(self, target_bytes: int, target_entries: int) -> None:
        while (self._used_bytes > target_bytes or len(self._blocks) > target_entries) and self._blocks:
            _, evicted = self._blocks.popitem(last=False)
            self._used_bytes -= len(evicted) + self.entry_overhead_bytes
            self.counters.inc("cache.evictions_mem")


# ---------------------------------------------------------------------------------------------- disk


def _statvfs_free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class _Item:
    """One item's file as indexed: its layout, the parts present, what it is charged."""

    __slots__ = ("name", "layout", "parts", "unverified", "charged_bytes", "seal")

    def __init__(self, name: str, layout: FileLayout) -> None:
        self.name = name
        self.layout = layout
        self.parts: dict[int, tuple[int, int]] = {}  # part index -> (length, crc32)
        self.unverified: set[int] = set()  # inherited from a previous owner, crc not checked yet
        self.charged_bytes = 0
        self.seal: tuple[int, int] | None = None  # as indexed: (st_ino, st_ctime_ns) once fsynced complete

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.layout.part_count


class _Queued(NamedTuple):
    data: Block
    layout: FileLayout


_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    name TEXT PRIMARY KEY, size INTEGER NOT NULL, part_bytes INTEGER NOT NULL, used_ns INTEGER NOT NULL,
    sealed_ino INTEGER, sealed_ctime_ns INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts (
    name TEXT NOT NULL, part INTEGER NOT NULL, length INTEGER NOT NULL, crc32 INTEGER NOT NULL,
    PRIMARY KEY (name, part)
) WITHOUT ROWID;
"""
_TOUCH_BATCH = 4096  # hits remembered before the writer persists them (~0.5 MiB of dict)
# The writer commits index changes (parts landed, files dropped) whenever its queue runs empty, and during
# a stream every _COMMIT_CHANGES changes or _COMMIT_INTERVAL_S. A commit costs ~15 us of CPU and a change
# ~8 us here (WAL, no fsync), next to ~700 us to write a 100 KiB file. A process killed before a commit
# (kill -9, or a SIGTERM while it drains its queue at unmount) forgets those parts: their bytes are
# fetched again, and a file whose first part was never recorded is deleted at the next open.
_COMMIT_CHANGES = 128
_COMMIT_INTERVAL_S = 0.25
_ERROR_LOG_INTERVAL_S = 60.0  # a failing disk logs once a minute, counters count every failure
_CHARGE_UNIT = 4096  # filesystem block: what a part really takes on disk, rounded up


def _charge(length: int) -> int:
    return -(-length // _CHARGE_UNIT) * _CHARGE_UNIT


class DiskFileCache:
    """Item files under ``dir``, LRU, exclusively owned, capped by size and by a free-space floor.

    ``put`` only queues: one background thread writes the files and the index (see the module docstring).
    """

    def __init__(
        self,
        dir: Path,
        capacity_bytes: int,
        min_free_bytes: int = 1 << 30,  # leave 1 GiB free: a cache must never fill the user's disk
        counters: Counters | None = None,
        free_bytes: Callable[[Path], int] = _statvfs_free_bytes,
        # 8 parts of 8 MiB: absorbs a burst at network speed; past it the disk is the bottleneck and
        # parts are skipped (they stay in the memory tier) instead of queueing unbounded memory
        max_backlog_bytes: int = 64 * MiB,
        # statvfs at most every 64 MiB written or 5 s; in between, free space is estimated from our own
        # writes and evictions. Others can eat at most that much of the 1 GiB floor before we notice.
        free_check_bytes: int = 64 * MiB,
        free_check_interval_s: float = 5.0,
        # hits are remembered in memory and written to the index in batches or after this long idle
        touch_persist_interval_s: float = 60.0,
        close_timeout_s: float = 30.0,  # the backlog is <= 64 MiB: a healthy disk drains it in < 1 s
        # a sync put (an open waiting for its small file) gives up after this: the open then reads normally
        sync_timeout_s: float = 10.0,
        # A complete file at least this big is fsynced once and sealed (see the module docstring): the next
        # owner trusts it without reading it whole. Smaller ones are cheaper to check than to fsync.
        seal_min_bytes: int = 64 * MiB,
        write_part: Callable[[int, Block, int], None] | None = None,  # (fd, data, offset): a seam for tests
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dir = Path(dir)
        self.capacity_bytes = capacity_bytes
        self.min_free_bytes = min_free_bytes
        self.counters = counters if counters is not None else Counters()
        self.max_backlog_bytes = max_backlog_bytes
        self.free_check_bytes = free_check_bytes
        self.free_check_interval_s = free_check_interval_s
        self.touch_persist_interval_s = touch_persist_interval_s
        self.close_timeout_s = close_timeout_s
        self.sync_timeout_s = sync_timeout_s
        self.seal_min_bytes = seal_min_bytes
        self._free_bytes = free_bytes
        self._write_part = write_part if write_part is not None else _pwrite_all
        self._clock = clock
        self._root = str(self.dir)
        self._tmp_dir = str(self.dir / "tmp")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # queue, pending or closing changed
        self._items: OrderedDict[str, _Item] = OrderedDict()  # file name -> item, least recently used first
        self._used_bytes = 0
        self._complete_items = 0
        self._undeletable: dict[str, int] = {}  # evicted, but the unlink failed: name -> bytes still counted
        self._undeletable_retry_at = 0.0
        self._touched: dict[str, int] = {}  # name -> wall-clock ns of its last hit, not yet in the index
        self._index_changes: list[tuple[object, ...]] = []  # for the index, in the order they happened
        self._pending: dict[BlockKey, _Queued] = {}  # queued or being written; served by lookup meanwhile
        self._queue: deque[BlockKey] = deque()
        self._to_seal: list[_Item] = []  # complete, big, not fsynced yet: sealed when the writer is idle
        self._backlog_bytes = 0
        self._writer: threading.Thread | None = None
        self._closing = False
        self._dropping = False
        self._free_seen_bytes = 0  # statvfs at the last check, and our own changes since
        self._free_checked_at: float | None = None
        self._written_since_check = 0
        self._freed_since_check = 0
        self._committed_at = time.monotonic()
        self._error_logged_at: float | None = None
        self._tmp_seq = 0
        self._db: sqlite3.Connection | None = None
        self._lock_fd = self._open_exclusive()
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # -- public surface

    @property
    def used_bytes(self) -> int:
        """Bytes charged to the item files (queued writes are not counted until they land)."""
        with self._lock:
            return self._used_bytes

    @property
    def backlog_bytes(self) -> int:
        with self._lock:
            return self._backlog_bytes

    def stats(self) -> dict[str, int]:
        """For ``status``: bytes used, items (and how many are complete), bytes queued."""
        with self._lock:
            return {
                "used_bytes": self._used_bytes,
                "items": len(self._items),
                "complete_items": self._complete_items,
                "backlog_bytes": self._backlog_bytes,
            }

    def get(self, key: BlockKey) -> Block | None:
        data = self.lookup(key)
        self.counters.inc("cache.hits_disk" if data is not None else "cache.misses")
        return data

    def lookup(self, key: BlockKey) -> Block | None:
        content_key, index = key
        name = _file_name(content_key)
        with self._lock:
            queued = self._pending.get(key)
            if queued is not None:
                return queued.data  # not on disk yet: the queued buffer is the part
            item = self._items.get(name)
            part = item.parts.get(index) if item is not None else None
            if item is None or part is None:
                return None
            self._note_hit_locked(name)
            verify = index in item.unverified
        length, crc = part
        data = _read_part(self._path(name), index * item.layout.part_bytes, length, crc if verify else None)
        with self._lock:
            if self._items.get(name) is not item:
                return None  # evicted while we read: the name may already be a new file with a hole there
            if data is None:
                self._forget_locked(item)
            elif verify:
                item.unverified.discard(index)
        if data is None:
            self.counters.inc("cache.corrupt_disk")
        elif verify:
            self.counters.inc("cache.verified_bytes", length)
        return data

    def contains(self, key: BlockKey) -> bool:
        name = _file_name(key[0])
        with self._lock:
            return key in self._pending or self._stored_locked(name, key[1])

    def put(self, key: BlockKey, data: Block, layout: FileLayout, *, wait: bool = False, sync: bool = False) -> None:
        """Queue part ``key[1]`` of ``layout`` for writing and return. When the backlog is full it is
        skipped (counted), or, with ``wait``, queued once the writer has made room (prefetch: filling the
        cache is its point). ``sync`` queues it first, past the backlog cap, and returns once it has
        landed (or was skipped, or ``sync_timeout_s`` passed).
        """
        if not data or len(data) != layout.part_length(key[1]):
            raise InvalidValue(f"part {key[1]} of {len(data)} bytes does not fit a layout {layout}")
        name = _file_name(key[0])
        size = len(data)
        backlogged = False
        with self._changed:
            if wait and not sync:
                self._changed.wait_for(lambda: self._closing or not self._backlogged_locked(size))
            if self._closing or self._stored_locked(name, key[1], layout):
                return
            if key in self._pending:
                if sync and key in self._queue:  # queued behind others: to the head
                    self._queue.remove(key)
                    self._queue.appendleft(key)
            elif sync or not self._backlogged_locked(size):
                self._pending[key] = _Queued(data, layout)
                self._queue.appendleft(key) if sync else self._queue.append(key)
                self._backlog_bytes += size
                self._start_writer_locked()
            else:
                backlogged = True
            if sync:
                self._changed.wait_for(lambda: key not in self._pending, self.sync_timeout_s)
        if backlogged:
            self.counters.inc("cache.skipped_disk_backlog")

    def open_complete(self, content_key: str, size: int) -> int | None:
        """A read-only fd of the item's file if all ``size`` bytes are in it and verified, else None.

        Every part must be present, the file ``size`` long, and each part inherited from a previous owner
        must pass its crc32 now (once per session: a big inherited file is read whole here). The caller
        closes the fd; eviction never takes the file away from it. Damage drops the item (a miss).
        """
        name = _file_name(content_key)
        with self._lock:
            item = self._items.get(name)
            if item is None or size <= 0 or item.layout.size_bytes != size or not item.complete:
                return None
            to_verify = {k: item.parts[k] for k in sorted(item.unverified)}
            part_bytes = item.layout.part_bytes
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        sound = fd >= 0 and _verify_file(fd, size, part_bytes, to_verify)
        with self._lock:
            current = self._items.get(name) is item
            if current and not sound:
                self._forget_locked(item)
            elif current:
                item.unverified.difference_update(to_verify)
                self._note_hit_locked(name)
                if to_verify and size >= self.seal_min_bytes:  # inherited unsealed, checked whole: seal it now
                    self._to_seal.append(item)
                    self._start_writer_locked()
        if not (current and sound):
            if fd >= 0:
                os.close(fd)
            if current:
                self.counters.inc("cache.corrupt_disk")
            return None
        self.counters.inc("cache.backing_opens")
        self.counters.inc("cache.verified_bytes", sum(length for length, _ in to_verify.values()))
        return fd

    def complete_path(self, content_key: str, size: int) -> str | None:
        """The absolute path of the item's file when all ``size`` bytes are present and verified, else
        None. The path names that file until it is evicted; ``open_complete`` gives an fd that outlives it."""
        fd = self.open_complete(content_key, size)
        if fd is None:
            return None
        os.close(fd)
        return os.path.abspath(self._path(_file_name(content_key)))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued part has landed (or was skipped); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending, timeout_s)

    def close(self) -> None:
        """Drain the queue (up to ``close_timeout_s``, then drop the rest), commit the index and recency,
        release the dir.

        Idempotent. Files stay on disk for the next owner; a dropped part was never indexed, so nothing
        indexed is lost. The flock is released only after the writer has stopped.
        """
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(self.close_timeout_s)
            if writer.is_alive():
                with self._changed:
                    dropped = len(self._queue)
                    self._dropping = True
                    self._changed.notify_all()
                log.warning(
                    "disk cache %s: writer still busy after %g s; dropping %d queued part(s)",
                    self.dir,
                    self.close_timeout_s,
                    dropped,
                )
                writer.join(self.close_timeout_s)
        if writer is None or not writer.is_alive():
            self._close_index()
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)  # drops the flock

    def __enter__(self) -> DiskFileCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the writer thread

    def _start_writer_locked(self) -> None:
        if self._writer is None and not self._closing:
            self._writer = threading.Thread(target=self._run_writer, name="encordfs-disk-cache", daemon=True)
            self._writer.start()
        self._changed.notify_all()

    def _run_writer(self) -> None:
        """Land queued parts in order; commit the index and hit recency in batches, when idle, at close."""
        while True:
            with self._changed:
                busy = self._queue or self._closing or self._to_seal or self._index_changes
                if not busy and len(self._touched) < _TOUCH_BATCH:
                    self._changed.wait(self.touch_persist_interval_s)
                while self._dropping and self._queue:
                    self._land_locked(self._queue.popleft())  # dropped unwritten: never indexed
                key = self._queue.popleft() if self._queue else None
                queued = self._pending[key] if key is not None else None
                to_seal = self._to_seal.pop() if key is None and self._to_seal and not self._dropping else None
                idle, changes = key is None and to_seal is None, bool(self._index_changes)
                done = idle and self._closing
                due = time.monotonic() - self._committed_at >= _COMMIT_INTERVAL_S
                commit = (
                    done
                    or len(self._touched) >= _TOUCH_BATCH
                    or len(self._index_changes) >= _COMMIT_CHANGES
                    or (idle and (changes or due))
                    or (changes and due)
                )
            if key is not None and queued is not None:
                try:
                    self._store(key, queued.data, queued.layout)
                except Exception:  # a thread boundary: log, drop the part, keep serving the queue
                    log.exception("disk cache %s: storing a part failed", self.dir)
                    with self._changed:
                        if key in self._pending:
                            self._land_locked(key)
            if to_seal is not None:
                self._seal(to_seal)
            if commit:
                self._commit_index()
            if done:
                return

    def _store(self, key: BlockKey, data: Block, layout: FileLayout) -> None:
        """Make room, write, index. Only this thread creates files or adds parts, and nobody writes the
        file of an indexed item but it, so the syscalls run outside the lock (lookups never wait for the
        disk); the switch from ``_pending`` to the index is the one step under it.
        """
        content_key, index = key
        name = _file_name(content_key)
        charge = _charge(len(data))
        with self._lock:
            item = self._items.get(name)
            if item is not None and item.layout != layout:
                self._forget_locked(item)  # another cut of the same content (the part size changed): anew
                item = None
            if item is not None and index in item.parts:
                self._land_locked(key)
                return
            if item is not None:
                self._items.move_to_end(name)  # being filled: recent, and never the one evicted for it
            fits = self._make_room_locked(charge, keep=item)
        written = fits and self._write(name, data, index * layout.part_bytes, layout.size_bytes, fresh=item is None)
        crc = zlib.crc32(data) if written else 0  # ~2 ms per 8 MiB: not under the lock
        with self._changed:
            if written and item is None:
                item = self._add_item_locked(name, layout)
            elif written and self._items.get(name) is not item:
                written = False  # evicted, or found damaged, while we wrote: the bytes went to an unlinked file
            if written and item is not None:
                item.parts[index] = (len(data), crc)
                self._complete_items += item.complete
                if item.complete and layout.size_bytes >= self.seal_min_bytes:
                    self._to_seal.append(item)
                item.charged_bytes += charge
                self._used_bytes += charge
                self._written_since_check += charge
                self._index_changes.append(("part", name, index, *item.parts[index]))
                self.counters.inc("cache.bytes_written", len(data))
            elif not fits:
                self.counters.inc("cache.skipped_disk")
            self._land_locked(key)  # after counting, so that whoever ``flush``\ es sees the counters too

    def _write(self, name: str, data: Block, offset: int, size: int, fresh: bool) -> bool:
        """Write one part: into a new file renamed into place (``fresh``), or into the item's file."""
        if fresh:
            self._tmp_seq += 1  # the writer's own
            path = f"{self._tmp_dir}/{name}.{self._tmp_seq}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        else:
            path = self._path(name)
            flags = os.O_WRONLY | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                if not fresh:
                    raise
                os.makedirs(self._tmp_dir, mode=0o700, exist_ok=True)  # removed behind our back
                fd = os.open(path, flags, 0o600)
            try:
                if fresh:
                    os.ftruncate(fd, size)
                self._write_part(fd, data, offset)
            finally:
                os.close(fd)
            if fresh:
                self._rename(path, self._path(name))
            return True
        except OSError as exc:
            if fresh:
                _unlink_quietly(path)
            self._write_failed(name, exc)
            return False

    def _write_failed(self, name: str, exc: OSError) -> None:
        """Count it, log it (at most once a minute), and drop an item whose file has gone."""
        self.counters.inc("cache.write_errors")
        now = time.monotonic()
        if self._error_logged_at is None or now - self._error_logged_at >= _ERROR_LOG_INTERVAL_S:
            self._error_logged_at = now
            log.warning("disk cache %s: a write failed (%s); the part stays uncached", self.dir, exc)
        if exc.errno == errno.ENOENT:
            with self._lock:
                item = self._items.get(name)
                if item is not None:
                    self._forget_locked(item)

    def _rename(self, tmp: str, final: str) -> None:
        try:
            os.replace(tmp, final)
        except FileNotFoundError:  # a fan-out dir removed behind our back: recreate it once
            os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
            os.replace(tmp, final)

    def _add_item_locked(self, name: str, layout: FileLayout) -> _Item:
        item = _Item(name, layout)
        self._items[name] = item
        self._used_bytes -= self._undeletable.pop(name, 0)  # a file we failed to delete was renamed over
        self._index_changes.append(("add", name, layout.size_bytes, layout.part_bytes, time.time_ns(), None, None))
        return item

    def _land_locked(self, key: BlockKey) -> None:
        """The part leaves the queue: lookups switch from the buffer to the index in this same step."""
        queued = self._pending.pop(key)
        self._backlog_bytes -= len(queued.data)
        self._changed.notify_all()

    def _seal(self, item: _Item) -> None:
        """fsync a complete file and record its inode and ctime: from then on its bytes are on the disk, and
        any later change to the file (a write, a truncate, a copy over it) changes one of the two."""
        try:
            fd = os.open(self._path(item.name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fdatasync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._write_failed(item.name, exc)
            return
        with self._lock:
            sealed = self._items.get(item.name) is item and st.st_size == item.layout.size_bytes  # the fd was its file
            if sealed:
                self._index_changes.append(("seal", item.name, st.st_ino, st.st_ctime_ns))
        if sealed:
            self.counters.inc("cache.sealed_files")

    def _commit_index(self) -> None:
        """Write the index changes and hit times gathered since the last commit, in one transaction."""
        with self._lock:
            changes, self._index_changes = self._index_changes, []
            touched, self._touched = self._touched, {}
            self._committed_at = time.monotonic()
        db = self._db
        if db is None or not (changes or touched):
            return
        try:
            with db:
                for change in changes:
                    _apply_change(db, change)
                db.executemany("UPDATE items SET used_ns = ? WHERE name = ?", [(ns, n) for n, ns in touched.items()])
        except sqlite3.Error as exc:  # the files are still right; the next owner re-fetches what is unrecorded
            self.counters.inc("cache.write_errors")
            log.warning("disk cache %s: the index could not be written: %s", self.dir, exc)

    def _close_index(self) -> None:
        if self._db is None:
            return
        self._commit_index()
        db, self._db = self._db, None
        db.close()

    # -- opening: ownership, the index, reconciliation

    def _open_exclusive(self) -> int:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise Busy(f"cache dir {self.dir} is in use by another encordfs mount (pid {owner})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return fd

    def _load(self) -> None:
        """Read the index, reconcile it with the files, order the LRU by last use, clear leftover tmp files.

        Also creates the 256 fan-out dirs, so a write never needs a mkdir.
        """
        os.makedirs(self._tmp_dir, mode=0o700, exist_ok=True)  # makedirs gives parents 0o777 & ~umask
        for leftover in os.scandir(self._tmp_dir):
            _unlink_quietly(leftover.path)
        items = self._read_index()
        on_disk: dict[str, tuple[int, int, int]] = {}  # name -> (bytes allocated, st_ino, st_ctime_ns)
        for fan in range(256):
            fan_dir = f"{self._root}/{fan:02x}"
            os.makedirs(fan_dir, mode=0o700, exist_ok=True)
            for entry in os.scandir(fan_dir):
                st = entry.stat(follow_symlinks=False)
                item = items.get(entry.name)
                if item is None or not entry.is_file(follow_symlinks=False) or st.st_size != item.layout.size_bytes:
                    _unlink_quietly(entry.path)  # not indexed (a crash before its row), or not the size indexed
                else:
                    on_disk[entry.name] = (st.st_blocks * 512, st.st_ino, st.st_ctime_ns)
        with self._lock:
            for name, item in items.items():
                if name not in on_disk or not item.parts:
                    self._index_changes.append(("drop", name))
                    if name in on_disk:
                        _unlink_quietly(self._path(name))
                    continue
                allocated, ino, ctime_ns = on_disk[name]
                sealed = item.complete and item.seal == (ino, ctime_ns)  # fsynced complete, untouched since
                item.unverified = set() if sealed else set(item.parts)
                item.charged_bytes = max(sum(_charge(length) for length, _ in item.parts.values()), allocated)
                self._items[name] = item
                self._used_bytes += item.charged_bytes
                self._complete_items += item.complete
            self._make_room_locked(0)  # the capacity may have been lowered since the last mount
        self._commit_index()

    def _read_index(self) -> dict[str, _Item]:
        """Items and their parts from ``index.sqlite``, least recently used first; an unreadable index
        (or one of another schema) is deleted, and with it every file (then unindexed)."""
        path = str(self.dir / "index.sqlite")
        for attempt in range(2):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))  # SQLite's -wal/-shm copy its mode
            try:
                self._db = sqlite3.connect(path, check_same_thread=False)  # only one thread at a time uses it
                return _read_items(self._db)
            except sqlite3.DatabaseError as exc:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                if attempt:
                    raise
                log.warning("disk cache %s: index unreadable (%s); starting empty", self.dir, exc)
                for suffix in ("", "-wal", "-shm"):
                    _unlink_quietly(path + suffix)
        raise AssertionError("unreachable")

    # -- eviction and space (all under the lock)

    def _make_room_locked(self, size: int, keep: _Item | None = None) -> bool:
        """Evict oldest items (never ``keep``) until ``size`` more bytes fit under both limits; False if
        they cannot."""
        self._retry_undeletable_locked()
        while True:
            over_cap = self._used_bytes + size > self.capacity_bytes
            if not over_cap and self._free_bytes_locked() - size >= self.min_free_bytes:
                return True
            oldest = next(iter(self._items.values()), None)
            if oldest is None or oldest is keep:
                return False
            self._forget_locked(oldest)
            self.counters.inc("cache.evictions_disk")

    def _forget_locked(self, item: _Item) -> None:
        """Drop an item from the index and delete its file (open fds keep reading it). A failed unlink
        keeps its bytes counted until a retry succeeds."""
        del self._items[item.name]
        self._complete_items -= item.complete
        self._touched.pop(item.name, None)
        self._index_changes.append(("drop", item.name))
        if self._unlink_locked(item.name):
            self._used_bytes -= item.charged_bytes
            self._freed_since_check += item.charged_bytes
        else:
            self._undeletable[item.name] = self._undeletable.get(item.name, 0) + item.charged_bytes

    def _unlink_locked(self, name: str) -> bool:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            return True  # already gone: its blocks are free
        except OSError as exc:
            self.counters.inc("cache.unlink_errors")
            log.warning("disk cache %s: cannot delete an evicted file (%s); its bytes stay counted", self.dir, exc)
            return False
        return True

    def _retry_undeletable_locked(self) -> None:
        if not self._undeletable or self._clock() < self._undeletable_retry_at:
            return
        self._undeletable_retry_at = self._clock() + self.free_check_interval_s
        for name, charged in list(self._undeletable.items()):
            if name not in self._items and self._unlink_locked(name):
                del self._undeletable[name]
                self._used_bytes -= charged
                self._freed_since_check += charged

    def _free_bytes_locked(self) -> int:
        """Free bytes on the cache's filesystem: statvfs when due, else the last figure minus our net writes."""
        now = self._clock()
        checked_at = self._free_checked_at
        if (
            checked_at is None
            or self._written_since_check >= self.free_check_bytes
            or now - checked_at >= self.free_check_interval_s
        ):
            self._free_seen_bytes = self._free_bytes(self.dir)
            self._free_checked_at = now
            self._written_since_check = self._freed_since_check = 0
        return self._free_seen_bytes - self._written_since_check + self._freed_since_check

    # -- small helpers

    def _stored_locked(self, name: str, index: int, layout: FileLayout | None = None) -> bool:
        item = self._items.get(name)
        return item is not None and index in item.parts and (layout is None or item.layout == layout)

    def _backlogged_locked(self, size: int) -> bool:
        return self._backlog_bytes > 0 and self._backlog_bytes + size > self.max_backlog_bytes

    def _note_hit_locked(self, name: str) -> None:
        self._items.move_to_end(name)
        self._touched[name] = time.time_ns()  # persisted later by the writer: no syscall per hit
        if self._writer is None or len(self._touched) >= _TOUCH_BATCH:
            self._start_writer_locked()  # it persists the hits

    def _path(self, name: str) -> str:
        return f"{self._root}/{name[:2]}/{name}"


def _file_name(content_key: str) -> str:
    return hashlib.sha256(content_key.encode()).hexdigest()


def _read_items(db: sqlite3.Connection) -> dict[str, _Item]:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, _SCHEMA_VERSION):
        raise sqlite3.DatabaseError(f"index schema {version}, this version reads {_SCHEMA_VERSION}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # a crash may lose the last commits, never corrupt the file
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    items: dict[str, _Item] = {}
    rows = db.execute("SELECT name, size, part_bytes, sealed_ino, sealed_ctime_ns FROM items ORDER BY used_ns")
    for name, size, part_bytes, ino, ctime_ns in rows:
        if isinstance(size, int) and isinstance(part_bytes, int) and size > 0 and part_bytes > 0:
            item = items[name] = _Item(name, FileLayout(size, part_bytes))
            item.seal = (ino, ctime_ns) if isinstance(ino, int) and isinstance(ctime_ns, int) else None
    for name, index, length, crc in db.execute("SELECT name, part, length, crc32 FROM parts"):
        owner = items.get(name)
        if owner is not None and isinstance(index, int) and length == owner.layout.part_length(index):
            owner.parts[index] = (length, crc)
    return items


def _apply_change(db: sqlite3.Connection, change: tuple[object, ...]) -> None:
    kind, name = change[0], change[1]
    if kind == "part":
        db.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?)", change[1:])
        return
    if kind == "seal":
        db.execute("UPDATE items SET sealed_ino = ?, sealed_ctime_ns = ? WHERE name = ?", (*change[2:], name))
        return
    db.execute("DELETE FROM parts WHERE name = ?", (name,))
    if kind == "add":
        db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?)", change[1:])
    else:
        db.execute("DELETE FROM items WHERE name = ?", (name,))


def _pwrite_all(fd: int, data: Block, offset: int) -> None:
    """``pwrite`` looped on short writes."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if not written:
            raise OSError(errno.EIO, "short write")
        view, offset = view[written:], offset + written


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """``preadv`` until ``view`` is full or EOF; the bytes read. Normally one call: a regular file reads
    short only at EOF."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            break
        got += n
    return got


def _read_part(path: str, offset: int, length: int, crc: int | None) -> bytearray | None:
    """``length`` bytes at ``offset`` of the file, or None if it is missing, short, or fails ``crc``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    data = bytearray(length)
    try:
        got = _pread_into(fd, memoryview(data), offset)
    except OSError:
        return None
    finally:
        os.close(fd)
    if got != length or (crc is not None and zlib.crc32(data) != crc):
        return None
    return data


def _verify_file(fd: int, size: int, part_bytes: int, parts: dict[int, tuple[int, int]]) -> bool:
    """The file is ``size`` long and each of ``parts`` (index -> (length, crc32)) reads back with its crc32."""
    try:
        if os.fstat(fd).st_size != size:
            return False
        buf = memoryview(bytearray(max((length for length, _ in parts.values()), default=0)))
        for index, (length, crc) in parts.items():
            view = buf[:length]
            if _pread_into(fd, view, index * part_bytes) != length or zlib.crc32(view) != crc:
                return False
    except OSError:
        return False
    return True


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------- tiered


class TieredBlockCache:
    """Memory in front of disk: reads try memory then disk (promoting disk hits); writes go to both."""

    def __init__(self, memory: MemoryBlockCache, disk: DiskFileCache, counters: Counters | None = None) -> None:
        self.memory = memory
        self.disk = disk
        self.counters = counters if counters is not None else memory.counters

    def get(self, key: BlockKey) -> Block | None:
        data = self.memory.lookup(key)
        if data is not None:
            self.counters.inc("cache.hits_mem")
            return data
        data = self.disk.lookup(key)
        if data is not None:
            self.counters.inc("cache.hits_disk")
            self.memory.put(key, data)
            return data
        self.counters.inc("cache.misses")
        return None

    def lookup(self, key: BlockKey) -> Block | None:
        data = self.memory.lookup(key)
        return data if data is not None else self.disk.lookup(key)

    def contains(self, key: BlockKey) -> bool:
        return self.memory.contains(key) or self.disk.contains(key)

    def put(self, key: BlockKey, data: Block, layout: FileLayout, *, wait: bool = False, sync: bool = False) -> None:
        self.memory.put(key, data, layout)
        self.disk.put(key, data, layout, wait=wait, sync=sync)

    def open_complete(self, content_key: str, size: int) -> int | None:
        return self.disk.open_complete(content_key, size)

    def complete_path(self, content_key: str, size: int) -> str | None:
        return self.disk.complete_path(content_key, size)

    def flush(self, timeout_s: float | None = None) -> bool:
        return self.disk.flush(timeout_s)

    def close(self) -> None:
        self.memory.close()
        self.disk.close()
