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
          tmp/               in-progress writes, emptied on open

    Filesystem only, no separate index: the file name is sha256 of the key, and the in-memory LRU
    index is rebuilt on open from a directory scan ordered by mtime (a hit touches the file's mtime, so
    recency survives a remount). Nothing can drift out of sync with the files, and a crash loses at most
    the in-progress ``tmp`` files. Writes are atomic: tmp file + ``os.replace``. A file that is missing,
    truncated or fails its crc32 is deleted and reported as a miss (``cache.corrupt_disk``). Eviction
    (oldest first) keeps the total under ``capacity_bytes`` and the filesystem's free space above
    ``min_free_bytes`` (statvfs before each write; the injectable ``free_bytes(dir)`` is called with the
    cache's lock held and must not call back into the cache); a block that cannot fit is not written.

    Exclusive ownership: a second ``DiskBlockCache`` on the same dir (another mount process, or another
    object in this one -- flock is per open file) raises ``Busy``. The kernel drops the lock when the
    owner dies, so a crashed mount never blocks the next one.

Lock order: ``TieredBlockCache`` holds no lock; each cache's ``_lock`` is a leaf (file reads and the
bulk of writes happen outside it).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeAlias

from encordfs.core.counters import Counters
from encordfs.errors import Busy

BlockKey: TypeAlias = tuple[str, int]
Block: TypeAlias = bytes | bytearray

_HEADER = struct.Struct("<8sQI")  # magic, payload length, crc32 of the payload
_MAGIC = b"EFSBLK01"


class BlockCache(Protocol):
    """What the reader needs from a cache."""

    def get(self, key: BlockKey) -> Block | None: ...

    def lookup(self, key: BlockKey) -> Block | None: ...

    def contains(self, key: BlockKey) -> bool: ...

    def put(self, key: BlockKey, data: Block) -> None: ...

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

    def put(self, key: BlockKey, data: Block) -> None:
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
    """LRU block files under ``dir``, exclusively owned, capped by size and by a free-space floor."""

    def __init__(
        self,
        dir: Path,
        capacity_bytes: int,
        min_free_bytes: int = 1 << 30,  # leave 1 GiB free: a cache must never fill the user's disk
        counters: Counters | None = None,
        free_bytes: Callable[[Path], int] = _statvfs_free_bytes,
    ) -> None:
        self.dir = Path(dir)
        self.capacity_bytes = capacity_bytes
        self.min_free_bytes = min_free_bytes
        self.counters = counters if counters is not None else Counters()
        self._free_bytes = free_bytes
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()  # file name -> bytes on disk, oldest first
        self._used_bytes = 0
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
        with self._lock:
            return self._used_bytes

    def get(self, key: BlockKey) -> Block | None:
        data = self.lookup(key)
        self.counters.inc("cache.hits_disk" if data is not None else "cache.misses")
        return data

    def lookup(self, key: BlockKey) -> Block | None:
        name = _file_name(key)
        with self._lock:
            if name not in self._index:
                return None
            self._index.move_to_end(name)
        path = self._path(name)
        data = _read_block_file(path)
        if data is None:
            self.counters.inc("cache.corrupt_disk")
            self._forget(name)
            return None
        try:
            os.utime(path)  # recency survives a remount (the index is rebuilt by mtime)
        except OSError:
            pass
        return data

    def contains(self, key: BlockKey) -> bool:
        with self._lock:
            return _file_name(key) in self._index

    def put(self, key: BlockKey, data: Block) -> None:
        name = _file_name(key)
        size = _HEADER.size + len(data)
        with self._lock:
            if name in self._index or size > self.capacity_bytes:
                return
            self._tmp_seq += 1
            tmp = self.dir / "tmp" / f"{name}.{threading.get_ident()}.{self._tmp_seq}"
        try:
            _write_block_file(tmp, data)
        except OSError:
            _unlink_quietly(tmp)  # disk full or gone: caching is best effort
            return
        with self._lock:
            if name in self._index:  # another thread stored the same (immutable) block meanwhile
                _unlink_quietly(tmp)
                return
            if not self._make_room_locked(size):
                _unlink_quietly(tmp)
                self.counters.inc("cache.skipped_disk")
                return
            final = self._path(name)
            final.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(tmp, final)
            self._index[name] = size
            self._used_bytes += size
        self.counters.inc("cache.bytes_written", size)

    def close(self) -> None:
        """Release the directory (idempotent). Blocks stay on disk for the next owner."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)  # drops the flock

    def __enter__(self) -> DiskBlockCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        """Rebuild the LRU index from the files, oldest mtime first; clear leftover tmp files."""
        tmp_dir = self.dir / "tmp"
        tmp_dir.mkdir(mode=0o700, exist_ok=True)
        for leftover in tmp_dir.iterdir():
            _unlink_quietly(leftover)
        blocks_dir = self.dir / "blocks"
        blocks_dir.mkdir(mode=0o700, exist_ok=True)
        found: list[tuple[int, str, int]] = []
        for fan in os.scandir(blocks_dir):
            if not fan.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(fan.path):
                st = entry.stat(follow_symlinks=False)
                found.append((st.st_mtime_ns, entry.name, st.st_size))
        with self._lock:
            for _, name, size in sorted(found):
                self._index[name] = size
                self._used_bytes += size
            self._make_room_locked(0)  # the capacity may have been lowered since the last mount

    def _make_room_locked(self, size: int) -> bool:
        """Evict oldest blocks until ``size`` more bytes fit under both limits; False if they cannot."""
        while self._index:
            over_cap = self._used_bytes + size > self.capacity_bytes
            if not over_cap and self._free_bytes(self.dir) - size >= self.min_free_bytes:
                return True
            name, evicted = self._index.popitem(last=False)
            self._used_bytes -= evicted
            _unlink_quietly(self._path(name))
            self.counters.inc("cache.evictions_disk")
        return size <= self.capacity_bytes and self._free_bytes(self.dir) - size >= self.min_free_bytes

    def _forget(self, name: str) -> None:
        with self._lock:
            size = self._index.pop(name, None)
            if size is not None:
                self._used_bytes -= size
        _unlink_quietly(self._path(name))

    def _path(self, name: str) -> Path:
        return self.dir / "blocks" / name[:2] / name


def _file_name(key: BlockKey) -> str:
    content_key, block_index = key
    return hashlib.sha256(f"{content_key}\0{block_index}".encode()).hexdigest()


def _write_block_file(path: Path, data: Block) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb", buffering=0) as f:
        f.write(_HEADER.pack(_MAGIC, len(data), zlib.crc32(data)))
        view = memoryview(data)
        while view:
            written = f.write(view)
            if not written:
                raise OSError(errno.EIO, "short write")
            view = view[written:]


def _read_block_file(path: Path) -> bytes | None:
    try:
        with open(path, "rb", buffering=0) as f:
            header = f.read(_HEADER.size)
            if len(header) != _HEADER.size:
                return None
            magic, length, crc = _HEADER.unpack(header)
            if magic != _MAGIC:
                return None
            data = f.read(length + 1)  # one more byte than announced: detects trailing garbage
    except OSError:
        return None
    if len(data) != length or zlib.crc32(data) != crc:
        return None
    return data


def _unlink_quietly(path: Path) -> None:
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

    def put(self, key: BlockKey, data: Block) -> None:
        self.memory.put(key, data)
        self.disk.put(key, data)

    def close(self) -> None:
        self.memory.close()
        self.disk.close()

