"""Block caches for file contents: memory (LRU by bytes), disk (LRU, survives remounts), and both tiered.

Keys are ``(content_key, block_index)``. ``content_key`` names the item AND its content identity (e.g.
``f"{item_id}:{size}:{last_edited}"``), so new content gets new keys and a stale block can never be
served; old blocks simply age out of the LRU. A block is immutable once put: callers must never mutate
a buffer they put or got (``bytearray`` blocks are stored without copying). The caches do not know block
sizes; the reader decides them (one part, or a whole small file).

``get`` counts hits and misses; ``lookup`` is the same without counting (for composition:
``TieredBlockCache`` counts once per request). ``contains`` is cheap (in-memory index, no I/O).

DiskBlockCache layout and invariants
    ::

        DIR/                 mode 0700
          LOCK               flock(LOCK_EX) held for the cache's lifetime; contains the owner's pid
          blocks/ab/<sha256> mode 0600: 20-byte header (magic, payload length, crc32) + payload
                             (the 256 fan-out dirs are created at open: a write never mkdirs)
          tmp/               in-progress writes, emptied on open

    Filesystem only, no separate index: the file name is sha256 of the key, and the in-memory LRU
    index is rebuilt on open from a directory scan ordered by mtime. Nothing can drift out of sync with
    the files, and a crash loses at most the in-progress ``tmp`` files. Writes are atomic: tmp file +
    ``os.replace``; only then is the block indexed.

    Writes are off the caller's thread. ``put`` queues the block and returns; one writer thread writes
    the queue in order. Until a block has landed it stays in ``_pending`` and ``lookup``/``contains``
    serve that buffer, so a queued block is never fetched twice; it leaves ``_pending`` and enters the
    index in one step under the lock. The queue is bounded: past ``max_backlog_bytes`` a ``put`` is
    skipped (``cache.skipped_disk_backlog``; the memory tier still has it) rather than making readers
    wait for the disk. ``close`` lets the writer drain the queue (at most the backlog), then drops what
    is left after ``close_timeout_s``: a dropped block was never indexed, so nothing indexed is lost.

    Recency: a hit moves the block to the end of the in-memory LRU and remembers the wall-clock time;
    the writer copies those times to the files' mtimes in batches (when idle, every 4096 hits, at
    close), so recency survives a remount without a ``utime`` on the read path. A crash loses the
    recency of the unpersisted hits only.

    Reads: one ``open`` + ``readv`` into a buffer of the indexed size. Magic, lengths and file size are
    checked on every hit; the crc32 on the first hit of a block inherited from a previous owner (see
    ``_read_block_file``). A file that is missing, truncated or damaged is deleted and reported as a
    miss (``cache.corrupt_disk``).

    Eviction (oldest first) keeps the total under ``capacity_bytes`` and the filesystem's free space
    above ``min_free_bytes``. Free space comes from ``statvfs`` every ``free_check_bytes`` written or
    ``free_check_interval_s``, and is estimated from our own writes and evictions in between (the
    injectable ``free_bytes(dir)`` is called with the cache's lock held and must not call back into
    the cache); a block that cannot fit is not written (``cache.skipped_disk``).

    Exclusive ownership: a second ``DiskBlockCache`` on the same dir (another mount process, or another
    object in this one -- flock is per open file) raises ``Busy``. The kernel drops the lock when the
    owner dies, so a crashed mount never blocks the next one. ``close`` releases the lock only after
    the writer has stopped.

Lock order: ``TieredBlockCache`` holds no lock; each cache's ``_lock`` is a leaf (file reads, writes
and renames happen outside it; evictions' unlinks and statvfs happen under it).
``DiskBlockCache._changed`` is a condition on that same lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeAlias

from encordfs.core.counters import Counters
from encordfs.errors import Busy

BlockKey: TypeAlias = tuple[str, int]
Block: TypeAlias = bytes | bytearray

log = logging.getLogger(__name__)

MiB = 1 << 20
_HEADER = struct.Struct("<8sQI")  # magic, payload length, crc32 of the payload
_MAGIC = b"EFSBLK01"


class BlockCache(Protocol):
    """What the reader needs from a cache."""

    def get(self, key: BlockKey) -> Block | None: ...

    def lookup(self, key: BlockKey) -> Block | None: ...

    def contains(self, key: BlockKey) -> bool: ...

    def put(self, key: BlockKey, data: Block, *, wait: bool = False) -> None:
        """Store a block. ``wait``: block until a slow tier has room instead of skipping it (prefetch)."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------- memory


class MemoryBlockCache:
    """LRU by bytes, in process memory. A block larger than the capacity is not stored."""

    def __init__(self, capacity_bytes: int, counters: Counters | None = None) -> None:
        self.capacity_bytes = capacity_bytes
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

    def put(self, key: BlockKey, data: Block, *, wait: bool = False) -> None:
        size = len(data)
        if size > self.capacity_bytes:
            return
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self._used_bytes -= len(old)
            self._evict_locked(self.capacity_bytes - size)
            self._blocks[key] = data
            self._used_bytes += size

    def close(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._used_bytes = 0

    def _evict_locked(self, target_bytes: int) -> None:
        while self._used_bytes > target_bytes and self._blocks:
            _, evicted = self._blocks.popitem(last=False)
            self._used_bytes -= len(evicted)
            self.counters.inc("cache.evictions_mem")


# ---------------------------------------------------------------------------------------------- disk


def _statvfs_free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskBlockCache:
    """LRU block files under ``dir``, exclusively owned, capped by size and by a free-space floor.

    ``put`` only queues: one background thread writes the files (see the module docstring).
    """

    def __init__(
        self,
        dir: Path,
        capacity_bytes: int,
        min_free_bytes: int = 1 << 30,  # leave 1 GiB free: a cache must never fill the user's disk
        counters: Counters | None = None,
        free_bytes: Callable[[Path], int] = _statvfs_free_bytes,
        # 8 parts of 8 MiB: absorbs a burst at network speed; past it the disk is the bottleneck and
        # blocks are skipped (they stay in the memory tier) instead of queueing unbounded memory
        max_backlog_bytes: int = 64 * MiB,
        # statvfs at most every 64 MiB written or 5 s; in between, free space is estimated from our own
        # writes and evictions. Others can eat at most that much of the 1 GiB floor before we notice.
        free_check_bytes: int = 64 * MiB,
        free_check_interval_s: float = 5.0,
        # hits are remembered in memory and written to mtimes in batches or after this long idle
        touch_persist_interval_s: float = 60.0,
        close_timeout_s: float = 30.0,  # the backlog is <= 64 MiB: a healthy disk drains it in < 1 s
        write_file: Callable[[str, Block], None] | None = None,  # a seam for tests (slow/failing disks)
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
        self._free_bytes = free_bytes
        self._write_file = write_file if write_file is not None else _write_block_file
        self._clock = clock
        self._blocks_dir = str(self.dir / "blocks")
        self._tmp_dir = str(self.dir / "tmp")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # queue, pending or closing changed
        self._index: OrderedDict[str, int] = OrderedDict()  # file name -> bytes on disk, oldest first
        self._used_bytes = 0
        self._unverified: set[str] = set()  # inherited from a previous owner, crc not yet checked
        self._touched: dict[str, int] = {}  # name -> wall-clock ns of its last hit, not yet on disk
        self._pending: dict[str, Block] = {}  # queued or being written; served by lookup meanwhile
        self._queue: deque[str] = deque()
        self._backlog_bytes = 0
        self._writer: threading.Thread | None = None
        self._closing = False
        self._dropping = False
        self._free_seen_bytes = 0  # statvfs at the last check, and our own changes since
        self._free_checked_at: float | None = None
        self._written_since_check = 0
        self._freed_since_check = 0
        self._tmp_seq = 0
        self._lock_fd = self._open_exclusive()
        try:
            self._load_index()
        except BaseException:
            self.close()
            raise

    # -- public surface

    @property
    def used_bytes(self) -> int:
        """Bytes of the indexed block files (queued writes are not counted until they land)."""
        with self._lock:
            return self._used_bytes

    @property
    def backlog_bytes(self) -> int:
        with self._lock:
            return self._backlog_bytes

    def get(self, key: BlockKey) -> Block | None:
        data = self.lookup(key)
        self.counters.inc("cache.hits_disk" if data is not None else "cache.misses")
        return data

    def lookup(self, key: BlockKey) -> Block | None:
        name = _file_name(key)
        with self._lock:
            pending = self._pending.get(name)
            if pending is not None:
                return pending  # not on disk yet: the queued buffer is the block
            size = self._index.get(name)
            if size is None:
                return None
            self._index.move_to_end(name)
            self._touched[name] = time.time_ns()  # persisted later by the writer: no utime per hit
            verify = name in self._unverified
            if self._writer is None or len(self._touched) >= _TOUCH_BATCH:
                self._start_writer_locked()  # it persists the hits
        data = _read_block_file(self._path(name), size, verify_crc=verify)
        if data is None:
            self.counters.inc("cache.corrupt_disk")
            self._forget(name)
            return None
        if verify:
            with self._lock:
                self._unverified.discard(name)
        return data

    def contains(self, key: BlockKey) -> bool:
        name = _file_name(key)
        with self._lock:
            return name in self._index or name in self._pending

    def put(self, key: BlockKey, data: Block, *, wait: bool = False) -> None:
        """Queue ``data`` for writing and return. When the backlog is full the block is skipped (counted),
        or, with ``wait``, queued once the writer has made room (prefetch: filling the cache is its point).
        """
        name = _file_name(key)
        size = len(data)
        with self._changed:
            if wait:
                self._changed.wait_for(lambda: self._closing or not self._backlogged_locked(size))
            if (
                self._closing
                or name in self._index
                or name in self._pending
                or _HEADER.size + size > self.capacity_bytes
            ):
                return
            backlogged = self._backlogged_locked(size)
            if not backlogged:
                self._pending[name] = data
                self._queue.append(name)
                self._backlog_bytes += size
                self._start_writer_locked()
        if backlogged:
            self.counters.inc("cache.skipped_disk_backlog")

    def _backlogged_locked(self, size: int) -> bool:
        return self._backlog_bytes > 0 and self._backlog_bytes + size > self.max_backlog_bytes

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued block has landed (or was skipped); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending, timeout_s)

    def close(self) -> None:
        """Drain the queue (up to ``close_timeout_s``, then drop the rest), persist recency, release the dir.

        Idempotent. Blocks stay on disk for the next owner; a dropped block was never indexed, so
        nothing indexed is lost. The flock is released only after the writer has stopped.
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
                    "disk cache %s: writer still busy after %g s; dropping %d queued block(s)",
                    self.dir,
                    self.close_timeout_s,
                    dropped,
                )
                writer.join(self.close_timeout_s)
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)  # drops the flock

    def __enter__(self) -> DiskBlockCache:
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
        """Write queued blocks in order; persist hit recency in batches, when idle, and at close."""
        while True:
            with self._changed:
                if not self._queue and not self._closing and len(self._touched) < _TOUCH_BATCH:
                    self._changed.wait(self.touch_persist_interval_s)
                while self._dropping and self._queue:
                    self._land_locked(self._queue.popleft())  # dropped unwritten: never indexed
                name = self._queue.popleft() if self._queue else None
                data = self._pending[name] if name is not None else b""
                take_touched = name is None or len(self._touched) >= _TOUCH_BATCH
                touched, self._touched = (self._touched, {}) if take_touched else ({}, self._touched)
                done = name is None and self._closing
            self._persist_touched(touched)
            if name is not None:
                try:
                    self._write_block(name, data)
                except Exception:  # a thread boundary: log, drop the block, keep serving the queue
                    log.exception("disk cache %s: writing a block failed", self.dir)
                    with self._changed:
                        if name in self._pending:
                            self._land_locked(name)
            if done:
                return

    def _write_block(self, name: str, data: Block) -> None:
        """Write, make room, rename, index. Only this thread adds files or index entries, and nobody
        touches the path of a pending name, so the syscalls run outside the lock (lookups never wait
        for the disk); the switch from ``_pending`` to the index is the one step under it.
        """
        size = _HEADER.size + len(data)
        self._tmp_seq += 1  # the writer's own
        tmp = f"{self._tmp_dir}/{name}.{self._tmp_seq}"
        try:
            self._write_file(tmp, data)
            written = True
        except OSError:
            written = False  # disk full or gone: caching is best effort
        with self._lock:
            stored = written and self._make_room_locked(size)
        stored = stored and self._rename(tmp, name)
        if not stored:
            _unlink_quietly(tmp)
        with self._changed:
            if stored:
                self._index[name] = size
                self._used_bytes += size
                self._written_since_check += size
                self.counters.inc("cache.bytes_written", size)
            elif written:
                self.counters.inc("cache.skipped_disk")
            self._land_locked(name)  # after counting, so that whoever ``flush``\ es sees the counters too

    def _land_locked(self, name: str) -> None:
        """The block leaves the queue: lookups switch from the buffer to the index in this same step."""
        data = self._pending.pop(name)
        self._backlog_bytes -= len(data)
        self._changed.notify_all()

    def _rename(self, tmp: str, name: str) -> bool:
        final = self._path(name)
        try:
            os.replace(tmp, final)
        except FileNotFoundError:  # a fan-out dir removed behind our back: recreate it once
            try:
                os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
                os.replace(tmp, final)
            except OSError:
                return False
        except OSError:
            return False
        return True

    def _persist_touched(self, touched: dict[str, int]) -> None:
        """Write hit times into mtimes, which order the index at the next open."""
        for name, ns in touched.items():
            try:
                os.utime(self._path(name), ns=(ns, ns))
            except OSError:
                pass  # evicted meanwhile

    # -- internals

    def _open_exclusive(self) -> int:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
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

    def _load_index(self) -> None:
        """Rebuild the LRU index from the files, oldest mtime first; clear leftover tmp files.

        Also creates the 256 fan-out dirs, so a write never needs a mkdir.
        """
        os.makedirs(self._tmp_dir, mode=0o700, exist_ok=True)
        for leftover in os.scandir(self._tmp_dir):
            _unlink_quietly(leftover.path)
        os.makedirs(self._blocks_dir, mode=0o700, exist_ok=True)  # makedirs gives parents 0o777 & ~umask
        found: list[tuple[int, str, int]] = []
        for fan in range(256):
            fan_dir = f"{self._blocks_dir}/{fan:02x}"
            os.makedirs(fan_dir, mode=0o700, exist_ok=True)
            for entry in os.scandir(fan_dir):
                st = entry.stat(follow_symlinks=False)
                found.append((st.st_mtime_ns, entry.name, st.st_size))
        with self._lock:
            for _, name, size in sorted(found):
                self._index[name] = size
                self._used_bytes += size
            self._unverified = set(self._index)
            self._make_room_locked(0)  # the capacity may have been lowered since the last mount

    def _make_room_locked(self, size: int) -> bool:
        """Evict oldest blocks until ``size`` more bytes fit under both limits; False if they cannot."""
        while self._index:
            over_cap = self._used_bytes + size > self.capacity_bytes
            if not over_cap and self._free_bytes_locked() - size >= self.min_free_bytes:
                return True
            name, evicted = self._index.popitem(last=False)
            self._used_bytes -= evicted
            self._freed_since_check += evicted
            self._unverified.discard(name)
            self._touched.pop(name, None)
            _unlink_quietly(self._path(name))
            self.counters.inc("cache.evictions_disk")
        return size <= self.capacity_bytes and self._free_bytes_locked() - size >= self.min_free_bytes

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

    def _forget(self, name: str) -> None:
        with self._lock:
            size = self._index.pop(name, None)
            if size is not None:
                self._used_bytes -= size
            self._unverified.discard(name)
            self._touched.pop(name, None)
        _unlink_quietly(self._path(name))

    def _path(self, name: str) -> str:
        return f"{self._blocks_dir}/{name[:2]}/{name}"


_TOUCH_BATCH = 4096  # hits remembered before the writer persists them (~0.5 MiB of dict)


def _file_name(key: BlockKey) -> str:
    content_key, block_index = key
    return hashlib.sha256(f"{content_key}\0{block_index}".encode()).hexdigest()


def _write_block_file(path: str, data: Block) -> None:
    """Header and payload with one ``writev`` (looped on short writes) into a new file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        views = [memoryview(_HEADER.pack(_MAGIC, len(data), zlib.crc32(data))), memoryview(data)]
        while views:
            written = os.writev(fd, views)
            if not written:
                raise OSError(errno.EIO, "short write")
            views = _advance(views, written)
    finally:
        os.close(fd)


def _read_block_file(path: str, size: int, verify_crc: bool) -> bytearray | None:
    """The payload of a block file of ``size`` bytes (as indexed), or None if it is missing or damaged.

    One ``open`` and, normally, one ``readv`` straight into a buffer of the known size (plus one spare
    byte that detects trailing garbage). Always checked: magic, the header's length against the
    indexed size, the file's length. The crc32 (~2 ms per 8 MiB here) is checked when
    ``verify_crc``: the cache verifies each block inherited from a previous owner on its first hit
    of a session, where damage can come from (a crash or power loss before the kernel wrote a renamed
    file back, bit rot, someone editing the dir), and trusts blocks it wrote itself or already
    verified: they are complete by construction (tmp file + rename) and nothing else writes them.
    """
    if size < _HEADER.size:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    header, data = bytearray(_HEADER.size), bytearray(size - _HEADER.size)
    try:
        got = _read_full(fd, [memoryview(header), memoryview(data), memoryview(bytearray(1))], size)
    except OSError:
        return None
    finally:
        os.close(fd)
    if got != size:
        return None
    magic, length, crc = _HEADER.unpack(header)
    if magic != _MAGIC or length != len(data) or (verify_crc and zlib.crc32(data) != crc):
        return None
    return data


def _read_full(fd: int, views: list[memoryview], want: int) -> int:
    """``readv`` until ``want`` bytes arrived or EOF; returns the bytes read (more than ``want`` if the file is)."""
    got = 0
    while views and got < want:  # normally one call: a regular file reads short only at EOF
        n = os.readv(fd, views)
        if not n:
            break
        got += n
        views = _advance(views, n)
    return got


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """``views`` with the first ``n`` bytes consumed."""
    while views and n >= len(views[0]):
        n -= len(views[0])
        views = views[1:]
    if n:
        views = [views[0][n:], *views[1:]]
    return views


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------- tiered


class TieredBlockCache:
    """Memory in front of disk: reads try memory then disk (promoting disk hits); writes go to both."""

    def __init__(self, memory: MemoryBlockCache, disk: DiskBlockCache, counters: Counters | None = None) -> None:
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

    def put(self, key: BlockKey, data: Block, *, wait: bool = False) -> None:
        self.memory.put(key, data)
        self.disk.put(key, data, wait=wait)

    def flush(self, timeout_s: float | None = None) -> bool:
        return self.disk.flush(timeout_s)

    def close(self) -> None:
        self.memory.close()
        self.disk.close()
