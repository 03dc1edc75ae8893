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
          tmp.<random>/        a new item's file until its first part is in it (a new one at each open:
                               those of earlier owners are emptied and removed)

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
    ``put`` only queues: one writer thread lands the queue in order.
    Until a part has landed it stays in ``_pending`` and ``lookup``/``contains`` serve that buffer, so a
    queued part is never fetched twice; it leaves ``_pending`` and enters the index in one step under the
    lock. The queue is bounded: past ``max_backlog_bytes`` (or ``max_backlog_parts``) a ``put`` is skipped
    (``cache.skipped_disk_backlog``; the memory tier still has it) rather than making readers wait for
    the disk; ``wait`` (prefetch, whole small files) waits for room instead, up to ``wait_timeout_s``.
    The first part of an item creates its file as ``tmp.<random>/<name>.<n>`` (``ftruncate`` to the
    full size unless the part is the whole file, the part written at its offset) and renames it into
    place, so a path never names a half-made file and a replaced file never changes under an fd that
    has it open; later parts are written in place with one ``pwrite`` into a hole of that file. A
    failed write is counted (``cache.write_errors``), logged (at most once a minute) and dropped; the
    index rows of landed parts are committed in batches (whenever the queue runs empty, during a
    stream every 128 changes or 0.25 s, at close). ``close`` lets the writer drain the queue
    (at most the backlog), then drops what is left after ``close_timeout_s``.

Reads
    One ``open`` + ``preadv`` straight into a buffer of the part's recorded length. A part read short
    (the file was truncated) is damage. The crc32 (ISA-L's, zlib's values: ~0.5 ms per 8 MiB here
    against ~2.5 for zlib's, ``benchmarks/disk_probe.py``) is checked on the first hit in this session
    of a part inherited from a previous owner (``cache.verified_bytes``): that is where
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
    inherited file is read whole once per session for that, on the opener's thread, then sealed); the
    caller owns the fd. ``complete_path`` is the same as a path. An fd keeps its file whatever happens
    next: eviction only
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
    under an unchanged inode. Smaller files are sealed in batches: once it has landed nothing for
    ``seal_idle_s``, at most every ``seal_batch_interval_s``, and at close, the writer hands the small
    files completed (or checked whole at open) since the last batch to a thread of their own, which
    reads each one's inode and ctime, makes one ``syncfs`` of the cache's filesystem and records them
    (``_seal_batch`` says why in that order); the writer goes on landing parts meanwhile. A sync in the
    middle of a stream of cold small files (every 5 s, on the writer's thread) held the writer 100-300
    ms each time: the queue filled and prefetch stopped (1,033-1,449 of 10,000 files fetched again on
    demand in P2 runs). Checking each at its first open instead reads it whole in Python (a
    passthrough open, which then lets the kernel read it again: a warm epoch of 100 KiB files measured
    slower with passthrough than without, until this); an fsync per small file costs a journal commit
    each. A crash before the
    batch leaves those files unsealed: checked at their next first open, as before.

New files
    ext4 without a journal (this VM kind's root filesystem) will not reuse an inode freed in the last
    60 s (360 s while its inode table block is dirty): a create scans every such free inode of its
    group first, ~0.1 us each, one new file taking up to ~0.8 ms of CPU in a group where thousands of
    files were just deleted (a test suite's temp dirs, or this cache's own evictions). A new inode goes
    to the group of the directory it is created in, so: the cache dir is marked a top of directory
    hierarchies (``chattr +T``: ext2/3/4 place its subdirectories in groups of their own choosing), each
    owner makes new files in a directory of its own, ``tmp.<random>``, and when 256 creates there
    averaged more than 300 us, the writer moves on to a new one (``cache.tmp_dir_moves``).
    ``benchmarks/disk_probe.py /tmp`` shows it: 1,000 creates per directory, plain subdirectories of a
    churned /tmp against spread ones.

Direct writes
    Parts of files of at least ``direct_min_bytes`` (64 MiB) are written with ``O_DIRECT``, from one
    page-aligned buffer of the writer's (a last part padded with zeros to whole 4 KiB blocks, then cut
    back to the file's size). Their reader's page cache holds those bytes already (the FUSE file's): a
    second copy in the cache file's page cache doubled the memory a big cold read dirtied, and on a
    machine whose memory was never touched (a fresh VM) buffered writes of 1 GiB ran at ~280 MB/s
    against ~1.3 GB/s direct (``benchmarks/disk_probe.py``). A filesystem that refuses ``O_DIRECT``
    (tmpfs) is written through the page cache from then on (logged once at INFO). Small files stay buffered: their next open is a
    passthrough read of the cache file, served from its page cache.

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
    ``free_check_interval_s``; eviction goes on with the next item. ``on_drop``, when set, is called with
    the ``item_name`` of every file dropped (evicted, found damaged, removed), with the lock held: it must
    only take note. A binding that keeps cache files registered with the kernel lets go of the evicted
    one's registration then, which would otherwise keep its blocks allocated.

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

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import logging
import mmap
import os
import queue
import sqlite3
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol, TypeAlias

from encordfs.core import directio
from encordfs.core.counters import Counters
from encordfs.errors import Busy, InvalidValue
from encordfs.libc import libc

try:  # ISA-L's CRC-32: the same checksum as zlib's, ~5x faster here (16 against 3.3 GB/s: disk_probe.py)
    from isal.isal_zlib import crc32
except ImportError:  # a platform without its wheels: zlib's, same values (an index stays valid either way)
    from zlib import crc32

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

    def held(self, key: BlockKey) -> Block | None:
        """The block if it is in memory now (no I/O, nothing counted), else None."""
        ...

    def contains(self, key: BlockKey) -> bool: ...

    def put(self, key: BlockKey, data: Block, layout: FileLayout, *, wait: bool = False) -> None:
        """Store part ``key[1]`` of a file cut as ``layout``. ``wait``: block until a slow tier has room
        instead of skipping it (prefetch)."""
        ...

    def open_complete(self, content_key: str, size: int) -> int | None:
        """A read-only fd of a local file holding all ``size`` bytes at their own offsets, or None."""
        ...

    def complete_now(self, content_key: str, size: int) -> bool:
        """Whether ``open_complete`` would answer at once: no index read, no crc32 to check (a sealed
        file's seal is checked by that open with one fstat; if it no longer holds, the open reads at most
        1 MiB); False when in doubt. A binding serves such an open inline."""
        ...

    def still_complete(self, content_key: str, size: int) -> bool:
        """Whether the item's file, which ``open_complete`` handed out and checked earlier in this session,
        still holds all ``size`` bytes as far as the cache knows (no system call); True counts as a use of
        it, as an open would. A binding keeping that file registered with the kernel may then skip the open."""
        ...

    def backlogged(self, size: int) -> bool:
        """Whether a slow tier would skip a ``put`` of ``size`` bytes now (its write queue is full)."""
        ...

    def watch_drops(self, callback: Callable[[str], None]) -> None:
        """Have ``callback`` told the ``item_name`` of every file the cache drops from disk, evicted or
        damaged (``DiskFileCache.on_drop``: called with a lock held, it must only take note)."""
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

    def held(self, key: BlockKey) -> Block | None:
        return self.lookup(key)

    def contains(self, key: BlockKey) -> bool:
        with self._lock:
            return key in self._blocks

    def put(self, key: BlockKey, data: Block, layout: FileLayout | None = None, *, wait: bool = False) -> None:
        """Keep the block (``layout`` and ``wait`` mean nothing in memory)."""
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

    def complete_now(self, content_key: str, size: int) -> bool:
        return False

    def still_complete(self, content_key: str, size: int) -> bool:
        return False

    def backlogged(self, size: int) -> bool:
        return False

    def watch_drops(self, callback: Callable[[str], None]) -> None:
        pass  # no files

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
    """A hot item's file as indexed: its layout, the parts in it (bit ``k``: part ``k``), the parts whose
    crc32 has not been checked in this session, what it is charged, and the (inode, ctime) its file was
    sealed with, if any. ~400 B with its slot in ``_items``."""

    __slots__ = ("name", "size_bytes", "part_bytes", "full", "present", "unchecked", "charged_bytes", "seal")

    def __init__(
        self,
        name: str,
        layout: FileLayout,
        present: int = 0,
        unchecked: int = 0,
        charged: int = 0,
        seal: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.size_bytes = layout.size_bytes
        self.part_bytes = layout.part_bytes
        self.full = (1 << layout.part_count) - 1  # ``present`` when complete (asked at every open)
        self.present = present
        self.unchecked = unchecked  # inherited (from a previous owner, or before it was last cold): crc not checked
        self.charged_bytes = charged
        self.seal = seal  # inherited complete and sealed: its unchecked parts are sound if the file still is

    def sealed_as(self, st: os.stat_result) -> bool:
        """Whether ``st`` is the file this item was sealed with (then every part is trusted)."""
        return self.seal is not None and self.complete and (st.st_ino, st.st_ctime_ns) == self.seal

    @property
    def layout(self) -> FileLayout:
        return FileLayout(self.size_bytes, self.part_bytes)

    @property
    def complete(self) -> bool:
        return self.present == self.full

    def holds_all(self, size: int) -> bool:
        """Whether the item is complete and ``size`` is its size (another size is another content)."""
        return 0 < size == self.size_bytes and self.present == self.full

    def has(self, index: int) -> bool:
        return index >= 0 and bool(self.present >> index & 1)


class _Cold(NamedTuple):
    """An item as the index has it (``_read_cold``): enough to make it hot."""

    layout: FileLayout
    present: int
    charged_bytes: int
    seal: tuple[int, int] | None  # complete and sealed with this (inode, ctime): checked at the first use


class _Victim(NamedTuple):
    """A cold item to evict, read ahead from the index (oldest last use first)."""

    name: str
    charged_bytes: int
    complete: bool


class _Queued(NamedTuple):
    data: Block
    layout: FileLayout


_SCHEMA_VERSION = 2  # 2: items.charged and an index by last use (the index is read, not held in memory)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    name TEXT PRIMARY KEY, size INTEGER NOT NULL, part_bytes INTEGER NOT NULL, used_ns INTEGER NOT NULL,
    sealed_ino INTEGER, sealed_ctime_ns INTEGER, charged INTEGER
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
# Items held in memory (the hot set, see "Memory" in the module docstring): 65,536 cost ~26 MB; a bigger
# cache keeps the rest in its index only, read back (~30 us) when used again.
HOT_ITEMS = 65536
# Small files waiting for a seal (~150 B each): past this the batch is due at once, busy or not.
_SEAL_BATCH_MAX = 65536
_CTIME_TICK_NS = 20_000_000  # more than the coarsest tick of the kernel's file time clock (HZ=100: 10 ms)
_COOLED = -1  # ``_open_complete_once``: the item left the hot set while being opened (look again)
_COOLED_RETRIES = 3
# New files: a sample of this many creates averaging more than this moves creation to a new directory.
_CREATE_SAMPLE = 256
_SLOW_CREATE_S = 300e-6
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000  # linux/fs.h
_DIRECT_ALIGN = directio.ALIGN
_pwrite_all = directio.pwrite_all
# The most ``open_complete`` reads to check a file whose seal no longer holds when ``complete_now`` said
# it would answer at once; a bigger one is no backing file that time, and checked at its next open.
_INLINE_CHECK_BYTES = 1 << 20
_VICTIM_BATCH = 256  # cold items read ahead for eviction per index query
_READERS = 4  # pooled read connections to the index (cold lookups, crc32s to check)
_READER_CACHE_KIB = 512  # page cache of each: the index's hot pages stay in the OS page cache anyway
_FANS = [f"{i:02x}" for i in range(256)]


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
        # and at most this many parts, whatever their size: a queued part costs ~400 B besides its bytes,
        # so 64 MiB of 64-byte parts would be ~400 MB of Python objects (4096 parts: ~2 MB, a few seconds
        # of writing for the smallest files)
        max_backlog_parts: int = 4096,
        # statvfs at most every 64 MiB written or 5 s; in between, free space is estimated from our own
        # writes and evictions. Others can eat at most that much of the 1 GiB floor before we notice.
        free_check_bytes: int = 64 * MiB,
        free_check_interval_s: float = 5.0,
        # hits are remembered in memory and written to the index in batches or after this long idle
        touch_persist_interval_s: float = 60.0,
        close_timeout_s: float = 30.0,  # the backlog is <= 64 MiB: a healthy disk drains it in < 1 s
        # a ``wait`` put gives up waiting for room after this and is skipped: a stalled disk never holds a
        # reader (or a prefetch thread) longer
        wait_timeout_s: float = 10.0,
        # A complete file at least this big is fsynced once and sealed (see the module docstring): the next
        # owner trusts it without reading it whole. Smaller ones are sealed in batches, one syncfs each.
        seal_min_bytes: int = 64 * MiB,
        # the writer seals complete small files when it has landed nothing for ``seal_idle_s``, at most
        # every ``seal_batch_interval_s`` (and at close, or when 65,536 wait)
        seal_batch_interval_s: float = 5.0,
        seal_idle_s: float = 1.0,
        write_part: Callable[[int, Block | memoryview, int], None] | None = None,  # (fd, data, offset): a test seam
        # Parts of files this big are written with O_DIRECT (see "Writes" in the module docstring).
        direct_min_bytes: int = 64 * MiB,
        clock: Callable[[], float] = time.monotonic,
        max_hot_items: int = HOT_ITEMS,
    ) -> None:
        self.dir = Path(dir)
        self.capacity_bytes = capacity_bytes
        self.min_free_bytes = min_free_bytes
        self.counters = counters if counters is not None else Counters()
        self.max_backlog_bytes = max_backlog_bytes
        self.max_backlog_parts = max_backlog_parts
        self.free_check_bytes = free_check_bytes
        self.free_check_interval_s = free_check_interval_s
        self.touch_persist_interval_s = touch_persist_interval_s
        self.close_timeout_s = close_timeout_s
        self.wait_timeout_s = wait_timeout_s
        self.seal_min_bytes = seal_min_bytes
        self.seal_batch_interval_s = seal_batch_interval_s
        self.seal_idle_s = seal_idle_s
        self.max_hot_items = max(1, max_hot_items)
        self._free_bytes = free_bytes
        self._write_part = write_part if write_part is not None else _pwrite_all
        self.direct_min_bytes = direct_min_bytes
        self._direct = hasattr(os, "O_DIRECT")  # until the cache's filesystem refuses it
        self._direct_buf: mmap.mmap | None = None  # the writer's page-aligned copy of a part
        self._clock = clock
        self._root = str(self.dir)
        self._tmp_dir = ""  # where new files are made (``_new_tmp_dir``)
        self._creates = 0  # files made in it so far, and the seconds that took (``_note_create``)
        self._create_s = 0.0
        self._index_path = str(self.dir / "index.sqlite")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # queue, pending or closing changed
        self._items: OrderedDict[str, _Item] = OrderedDict()  # the hot set: file name -> item, LRU first
        self._item_count = 0  # hot and cold
        self._used_bytes = 0
        self._complete_items = 0
        self._undeletable: dict[str, int] = {}  # evicted, but the unlink failed: name -> bytes still counted
        self.on_drop: Callable[[str], None] | None = None  # told each dropped item's name (see "Eviction")
        self._undeletable_retry_at = 0.0
        self._touched: dict[str, int] = {}  # name -> wall-clock ns of its last hit, not yet in the index
        self._index_changes: list[tuple[object, ...]] = []  # for the index, in the order they happened
        self._unsaved: set[str] = set()  # names of ``_index_changes`` and of the batch being committed
        self._commit_seq = 0  # commits so far: a cold read adopted only if none landed while it ran
        self._victims: deque[_Victim] = deque()  # cold items to evict next, read at ``_victims_seq``
        self._victims_seq = -1
        self._storing: str | None = None  # the name the writer is writing outside the lock
        self._pending: dict[BlockKey, _Queued] = {}  # queued or being written; served by lookup meanwhile
        self._queue: deque[BlockKey] = deque()
        self._to_seal: list[_Item] = []  # complete, big, not fsynced yet: sealed when the writer is idle
        self._to_seal_small: dict[str, int] = {}  # complete, small, not sealed yet: name -> size (a batch)
        self._sealed_small_at = time.monotonic()
        self._sealing = False  # a batch of small files is being sealed (``_run_sealer``)
        self._landed_at = 0.0  # when the writer last landed a part (a batch waits until it idles)
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
        self._readers: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue(maxsize=_READERS)
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
                "items": self._item_count,
                "complete_items": self._complete_items,
                "backlog_bytes": self._backlog_bytes,
            }

    def hot_items(self) -> int:
        """Items held in memory (at most ``max_hot_items``, plus those with a change not yet in the index)."""
        with self._lock:
            return len(self._items)

    def get(self, key: BlockKey) -> Block | None:
        data = self.lookup(key)
        self.counters.inc("cache.hits_disk" if data is not None else "cache.misses")
        return data

    def lookup(self, key: BlockKey) -> Block | None:
        content_key, index = key
        name = item_name(content_key)
        with self._lock:
            queued = self._pending.get(key)
            if queued is not None:
                return queued.data  # not on disk yet: the queued buffer is the part
            item = self._items.get(name)
            found = item is not None and self._hit_locked(item, index)
        if item is None:  # cold, or not cached
            item = self._find(name)
            with self._lock:
                found = item is not None and self._items.get(name) is item and self._hit_locked(item, index)
        if item is None or not found:
            return None
        verify = bool(item.unchecked >> index & 1)
        if verify and item.seal is not None and self._still_sealed(item):
            verify = False
        layout = item.layout
        length = layout.part_length(index)
        crc = self._crcs(name).get(index, -1) if verify else None
        data = _read_part(self._path(name), index * layout.part_bytes, length, crc)
        with self._lock:
            if self._items.get(name) is not item:
                return None  # evicted while we read: the name may already be a new file with a hole there
            if data is None:
                self._forget_locked(item)
            elif verify:
                item.unchecked &= ~(1 << index)
        if data is None:
            self.counters.inc("cache.corrupt_disk")
        elif verify:
            self.counters.inc("cache.verified_bytes", length)
        return data

    def held(self, key: BlockKey) -> Block | None:
        """A part queued for writing is in memory until it lands; nothing else is."""
        with self._lock:
            queued = self._pending.get(key)
            return queued.data if queued is not None else None

    def contains(self, key: BlockKey) -> bool:
        name = item_name(key[0])
        with self._lock:
            if key in self._pending:
                return True
            item = self._items.get(name)
        if item is None:
            item = self._find(name)
        return item is not None and item.has(key[1])

    def put(self, key: BlockKey, data: Block, layout: FileLayout, *, wait: bool = False) -> None:
        """Queue part ``key[1]`` of ``layout`` for writing and return. When the backlog is full it is
        skipped (counted), or, with ``wait``, queued once the writer has made room (prefetch and small
        files: filling the cache is the point), skipped after ``wait_timeout_s`` without room.
        """
        if not data or len(data) != layout.part_length(key[1]):
            raise InvalidValue(f"part {key[1]} of {len(data)} bytes does not fit a layout {layout}")
        name = item_name(key[0])
        size = len(data)
        backlogged = False
        with self._changed:
            if wait:
                self._changed.wait_for(lambda: self._closing or not self._backlogged_locked(size), self.wait_timeout_s)
            if self._closing or self._stored_locked(name, key[1], layout):
                return  # (a part of a cold item is queued, and the writer finds it there)
            if key in self._pending:
                pass
            elif not self._backlogged_locked(size):
                self._pending[key] = _Queued(data, layout)
                self._queue.append(key)
                self._backlog_bytes += size
                self._start_writer_locked()
            else:
                backlogged = True
        if backlogged:
            self.counters.inc("cache.skipped_disk_backlog")

    def open_complete(self, content_key: str, size: int) -> int | None:
        """A read-only fd of the item's file if all ``size`` bytes are in it and verified, else None.

        Every part must be present, the file ``size`` long, and each part inherited from a previous owner
        must pass its crc32 now (once per session: a big inherited file is read whole here). The caller
        closes the fd; eviction never takes the file away from it. Damage drops the item (a miss).
        """
        name = item_name(content_key)
        # An item read back from the index can go cold again before it is used here (another item made hot
        # meanwhile pushes it out of a full hot set): look it up again rather than call that a miss.
        for _ in range(_COOLED_RETRIES):
            fd = self._open_complete_once(name, size)
            if fd != _COOLED:
                return fd
        return None

    def _open_complete_once(self, name: str, size: int) -> int | None:
        """``open_complete`` of an item as found now; ``_COOLED`` if it left the hot set meanwhile."""
        with self._lock:
            item = self._items.get(name)
        if item is None:
            item = self._find(name)
        with self._lock:
            if item is None:
                return None
            if self._items.get(name) is not item:
                return _COOLED
            if not item.holds_all(size):
                return None
            unchecked = item.unchecked
            part_bytes = item.part_bytes
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        to_verify: dict[int, tuple[int, int]] = {}
        st = _fstat(fd)  # one for both the seal and the size (None: no file, or it cannot be read)
        if unchecked and st is not None and item.seal is not None:
            if self._still_sealed(item, st):
                unchecked = 0
            else:  # changed since it was sealed: checked like any inherited file from now on
                with self._lock:
                    item.seal = None
                self.counters.inc("cache.seals_broken")
                if size > _INLINE_CHECK_BYTES:  # ``complete_now`` promised no long read: the next open checks
                    os.close(fd)
                    return None
        if unchecked:
            crcs, layout = self._crcs(name), item.layout
            to_verify = {k: (layout.part_length(k), crcs.get(k, -1)) for k in _bits(unchecked)}
        sound = st is not None and st.st_size == size and _verify_file(fd, part_bytes, to_verify)
        with self._lock:
            current = self._items.get(name) is item
            if current and not sound:
                self._forget_locked(item)
            elif current:
                item.unchecked &= ~unchecked
                self._note_hit_locked(name)
                if to_verify and size >= self.seal_min_bytes:  # inherited unsealed, checked whole: seal it now
                    self._to_seal.append(item)
                    self._start_writer_locked()
                elif to_verify:  # the same, with the next batch of small ones
                    self._to_seal_small[name] = size
        if not (current and sound):
            if fd >= 0:
                os.close(fd)
            if not current:
                return _COOLED
            self.counters.inc("cache.corrupt_disk")
            return None
        self.counters.inc("cache.backing_opens")
        if to_verify:
            self.counters.inc("cache.verified_bytes", sum(length for length, _ in to_verify.values()))
        return fd

    def complete_now(self, content_key: str, size: int) -> bool:
        with self._lock:
            item = self._items.get(item_name(content_key))
            if item is None or not item.holds_all(size):
                return False
            # inherited: sealed is enough. ``open_complete`` checks the seal on the fd it opens (one fstat,
            # no path lookup here: with the dentry cache cold that was a directory read per file) and,
            # when it no longer holds, reads at most a small file to check it (a binding serves this open
            # on the thread reading requests)
            return not item.unchecked or item.seal is not None

    def still_complete(self, content_key: str, size: int) -> bool:
        name = item_name(content_key)
        with self._lock:
            item = self._items.get(name)
            if item is None or not item.holds_all(size) or item.unchecked:
                return False  # evicted, dropped as damaged, or never checked in this session
            self._note_hit_locked(name)
        self.counters.inc("cache.backing_reuses")
        return True

    def _still_sealed(self, item: _Item, st: os.stat_result | None = None) -> bool:
        """Whether an inherited item's file is the one it was sealed with (its inode and ctime unchanged):
        then every part is trusted for the session. Its first use checks, not its load: a file changed
        after the mount started is read and checked like any other inherited one. ``st``: the file's
        status, if the caller has it open (else it is looked up by name)."""
        if st is None:
            try:
                st = os.stat(self._path(item.name))
            except OSError:
                return False
        if not item.sealed_as(st):
            return False
        with self._lock:
            item.unchecked = 0
        return True

    def complete_path(self, content_key: str, size: int) -> str | None:
        """The absolute path of the item's file when all ``size`` bytes are present and verified, else
        None. The path names that file until it is evicted; ``open_complete`` gives an fd that outlives it."""
        fd = self.open_complete(content_key, size)
        if fd is None:
            return None
        os.close(fd)
        return os.path.abspath(self._path(item_name(content_key)))

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
            if self._direct_buf is not None:
                self._direct_buf.close()
                self._direct_buf = None
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)  # drops the flock

    def __enter__(self) -> DiskFileCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the hot set and the index

    def _find(self, name: str) -> _Item | None:
        """The item named ``name``, hot; a cold one is read from the index and becomes hot. None: not cached.

        No lock is held while the index is read; what was read is adopted only if no commit landed
        meanwhile (else it is read again): every change of an item is made while it is hot, and the
        name stays in ``_unsaved`` (so the item stays hot, or a dropped one stays known as dropped)
        until that change is committed.
        """
        while True:
            with self._lock:
                item = self._items.get(name)
                if item is not None or self._item_count <= len(self._items) or name in self._unsaved:
                    return item  # (nothing is cold, or it was dropped and the index does not show it yet)
                seq = self._commit_seq
            cold = self._read_cold(name)
            with self._lock:
                item = self._items.get(name)
                if item is not None or name in self._unsaved:
                    return item
                if self._commit_seq != seq:
                    continue
                if cold is None:
                    return None
                item = _Item(name, cold.layout, cold.present, cold.present, cold.charged_bytes, cold.seal)
                self._items[name] = item
                self._cool_locked()
                self.counters.inc("cache.cold_reads")
                return item

    def _read_cold(self, name: str) -> _Cold | None:
        """The item as the index has it (None: not there, or the index could not be read)."""
        try:
            rows = self._query(
                "SELECT i.size, i.part_bytes, i.charged, i.sealed_ino, i.sealed_ctime_ns, p.part, p.length "
                "FROM items i LEFT JOIN parts p ON p.name = i.name WHERE i.name = ?",
                (name,),
            )
        except sqlite3.Error as exc:
            self._index_read_failed(exc)
            return None
        if not rows:
            return None
        size, part_bytes, charged, ino, ctime_ns = rows[0][:5]
        if not (isinstance(size, int) and isinstance(part_bytes, int) and size > 0 and part_bytes > 0):
            return None
        layout = FileLayout(size, part_bytes)
        present = _present(layout, [(part, length) for *_, part, length in rows])
        seal = (ino, ctime_ns) if isinstance(ino, int) and isinstance(ctime_ns, int) else None
        return _Cold(layout, present, charged if isinstance(charged, int) else 0, seal)

    def _crcs(self, name: str) -> dict[int, int]:
        """The crc32 of each indexed part of ``name`` (needed only for parts inherited, hence committed)."""
        try:
            rows = self._query("SELECT part, crc32 FROM parts WHERE name = ?", (name,))
        except sqlite3.Error as exc:
            self._index_read_failed(exc)
            return {}  # nothing to check against: the check fails and the item is dropped, never served
        return {part: crc for part, crc in rows if isinstance(part, int) and isinstance(crc, int)}

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = sqlite3.connect(self._index_path, check_same_thread=False)  # one thread at a time
            conn.execute(f"PRAGMA cache_size = -{_READER_CACHE_KIB}")
            conn.execute("PRAGMA query_only = ON")
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            try:
                self._readers.put_nowait(conn)
            except queue.Full:
                conn.close()

    def _index_read_failed(self, exc: sqlite3.Error) -> None:
        self.counters.inc("cache.index_read_errors")
        now = time.monotonic()
        if self._error_logged_at is None or now - self._error_logged_at >= _ERROR_LOG_INTERVAL_S:
            self._error_logged_at = now
            log.warning("disk cache %s: the index could not be read: %s", self.dir, exc)

    def _cool_locked(self) -> None:
        """Let the least recently used hot items go cold until at most ``max_hot_items`` are hot. An item
        with something unsaved (a change or a hit not in the index yet, being written or sealed) stays, and
        so does the most recent one (just made hot: its caller is about to use it)."""
        excess = len(self._items) - self.max_hot_items
        if excess <= 0:
            return
        cooling: list[str] = []
        for seen, (name, item) in enumerate(self._items.items()):
            if len(cooling) >= excess or seen >= min(excess + 64, len(self._items) - 1):
                break
            if name in self._unsaved or name in self._touched or name == self._storing:
                continue
            if any(item is sealing for sealing in self._to_seal):
                continue
            cooling.append(name)
        for name in cooling:
            del self._items[name]

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
                seal_in = self._seal_batch_in_locked()
                busy = self._queue or self._closing or self._to_seal or self._index_changes or seal_in == 0
                if not busy and len(self._touched) < _TOUCH_BATCH:
                    self._changed.wait(min(self.touch_persist_interval_s, seal_in))
                    seal_in = self._seal_batch_in_locked()
                while self._dropping and self._queue:
                    self._land_locked(self._queue.popleft())  # dropped unwritten: never indexed
                key = self._queue.popleft() if self._queue else None
                queued = self._pending[key] if key is not None else None
                to_seal = self._to_seal[-1] if key is None and self._to_seal and not self._dropping else None
                batch: dict[str, int] = {}
                full = len(self._to_seal_small) >= _SEAL_BATCH_MAX  # due even mid-stream: memory stays bounded
                if (full or (key is None and to_seal is None)) and seal_in == 0 and not self._dropping:
                    batch, self._to_seal_small = self._to_seal_small, {}
                idle, changes = key is None and to_seal is None and not batch, bool(self._index_changes)
                done = idle and self._closing
                if done and self._sealing:  # the last batch's seals go in the index before the writer ends
                    self._changed.wait(0.1)
                    done = False
                if batch:
                    self._sealing = True
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
                    self._landed_at = time.monotonic()
                except Exception:  # a thread boundary: log, drop the part, keep serving the queue
                    log.exception("disk cache %s: storing a part failed", self.dir)
                    with self._changed:
                        self._storing = None
                        if key in self._pending:
                            self._land_locked(key)
            if to_seal is not None:
                self._seal(to_seal)
            if batch:
                threading.Thread(target=self._run_sealer, args=(batch,), name="encordfs-disk-seal", daemon=True).start()
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
        name = item_name(content_key)
        charge = _charge(len(data))
        while True:
            item = self._find(name)  # a cold item becomes hot: it is about to change
            with self._lock:
                if self._items.get(name) is not item:
                    continue  # went cold meanwhile (or was dropped): look again
                if item is not None and item.layout != layout:
                    self._forget_locked(item)  # another cut of the same content (the part size changed): anew
                    item = None
                if item is not None and item.has(index):
                    self._land_locked(key)
                    return
                if item is not None:
                    self._items.move_to_end(name)  # being filled: recent, and never the one evicted for it
                fits = self._make_room_locked(charge, keep=item)
                if fits is not None:
                    self._storing = name  # not to go cold while written
                    break
            self._read_victims()  # cold items must go first: read the oldest from the index, then again
        written = fits and self._write(name, data, index * layout.part_bytes, layout.size_bytes, fresh=item is None)
        crc = crc32(data) if written else 0  # not under the lock
        with self._changed:
            self._storing = None
            if written and item is None:
                item = self._add_item_locked(name, layout)
            elif written and self._items.get(name) is not item:
                written = False  # evicted, or found damaged, while we wrote: the bytes went to an unlinked file
            if written and item is not None:
                item.present |= 1 << index
                self._complete_items += item.complete
                if item.complete and layout.size_bytes >= self.seal_min_bytes:
                    self._to_seal.append(item)
                elif item.complete:
                    self._to_seal_small[name] = layout.size_bytes
                item.charged_bytes += charge
                self._used_bytes += charge
                self._written_since_check += charge
                self._change_locked(("part", name, index, len(data), crc, item.charged_bytes))
                self.counters.inc("cache.bytes_written", len(data))
            elif not fits:
                self.counters.inc("cache.skipped_disk")
            self._land_locked(key)  # after counting, so that whoever ``flush``\ es sees the counters too
            self._cool_locked()

    def _write(self, name: str, data: Block, offset: int, size: int, fresh: bool) -> bool:
        """Write one part: into a new file renamed into place (``fresh``), or into the item's file."""
        if fresh:
            self._tmp_seq += 1  # the writer's own
            path = f"{self._tmp_dir}/{name}.{self._tmp_seq}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        else:
            path = self._path(name)
            flags = os.O_WRONLY | os.O_CLOEXEC
        # whole 4 KiB blocks at 4 KiB offsets, but for the file's last part (padded, then cut to size)
        direct = (
            self._direct
            and size >= self.direct_min_bytes
            and offset % _DIRECT_ALIGN == 0
            and (len(data) % _DIRECT_ALIGN == 0 or offset + len(data) == size)
        )
        try:
            started = time.perf_counter()
            try:
                fd, direct = self._open_for_write(path, flags, direct)
            except FileNotFoundError:
                if not fresh:
                    raise
                os.makedirs(self._tmp_dir, mode=0o700, exist_ok=True)  # removed behind our back
                fd, direct = self._open_for_write(path, flags, direct)
            create_s = time.perf_counter() - started
            try:
                if fresh and (offset or len(data) != size):  # (a whole file's one part sizes it itself)
                    os.ftruncate(fd, size)
                if direct and self._write_direct(fd, data, offset):
                    if len(data) % _DIRECT_ALIGN:
                        os.ftruncate(fd, size)  # the last part, padded: cut back to size
                else:
                    self._write_part(fd, data, offset)
            finally:
                os.close(fd)
            if fresh:
                self._rename(path, self._path(name))
                self._note_create(create_s)  # (its directory is empty again: it may be replaced)
            return True
        except OSError as exc:
            if fresh:
                _unlink_quietly(path)
            self._write_failed(name, exc)
            return False

    def _new_tmp_dir(self) -> None:
        """Make new files in a new directory (see "New files" in the module docstring)."""
        old = self._tmp_dir
        path = f"{self._root}/tmp.{os.urandom(4).hex()}"
        os.mkdir(path, 0o700)
        self._tmp_dir, self._creates, self._create_s = path, 0, 0.0
        if old:
            with contextlib.suppress(OSError):  # empty: its files were renamed out as they were made
                os.rmdir(old)

    def _note_create(self, seconds: float) -> None:
        self._creates += 1
        self._create_s += seconds
        if self._creates >= _CREATE_SAMPLE and self._create_s > _CREATE_SAMPLE * _SLOW_CREATE_S:
            self.counters.inc("cache.tmp_dir_moves")
            log.debug("disk cache %s: creating a file took %.0f us: new files go to a new directory", self.dir,
                      self._create_s / self._creates * 1e6)  # fmt: skip
            self._new_tmp_dir()
        elif self._creates >= _CREATE_SAMPLE:
            self._creates, self._create_s = 0, 0.0

    def _open_for_write(self, path: str, flags: int, direct: bool) -> tuple[int, bool]:
        """(fd, opened with O_DIRECT): ``direct`` asks for it; a refusal turns it off for good."""
        fd, opened_direct = directio.open_for_write(path, flags, direct and self._direct)
        if direct and self._direct and not opened_direct:
            self._direct_refused(OSError(errno.EINVAL, os.strerror(errno.EINVAL)))
        return fd, opened_direct

    def _write_direct(self, fd: int, data: Block, offset: int) -> bool:
        """Write ``data`` at ``offset`` with O_DIRECT: as it is when it is whole 4 KiB blocks starting on a
        boundary (an ``aligned_bytearray``), else through the page-aligned buffer, padded to whole blocks
        with zeros (the caller cuts a padded last part back); False if the filesystem refused (then
        ``fd`` is buffered again, and nothing was written)."""
        length = len(data)
        if not length % _DIRECT_ALIGN and _aligned(data):
            return self._write_direct_from(fd, data, offset, length)
        padded = directio.padded(length)
        buf = self._direct_buf
        if buf is None or len(buf) < padded:
            if buf is not None:
                buf.close()  # (no view of it is left: the ``with`` below released them)
            buf = self._direct_buf = mmap.mmap(-1, padded)
        buf[:length] = data
        if padded > length:
            buf[length:padded] = bytes(padded - length)
        with memoryview(buf) as view, view[:padded] as source:
            return self._write_direct_from(fd, source, offset, length)

    def _write_direct_from(self, fd: int, source: Block | memoryview, offset: int, length: int) -> bool:
        """``_write_direct`` of an aligned ``source`` whose first ``length`` bytes are the part."""
        try:
            self._write_part(fd, source, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._direct_refused(exc)
            directio.to_buffered(fd)
            return False
        self.counters.inc("cache.direct_bytes", length)
        return True

    def _direct_refused(self, exc: OSError) -> None:
        self._direct = False
        log.info(
            "disk cache %s: O_DIRECT refused (%s): big files are written through the page cache", self.dir, exc.strerror
        )

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
        self._item_count += 1
        self._used_bytes -= self._undeletable.pop(name, 0)  # a file we failed to delete was renamed over
        self._change_locked(("add", name, layout.size_bytes, layout.part_bytes, time.time_ns(), None, None, 0))
        return item

    def _change_locked(self, change: tuple[object, ...]) -> None:
        """An index change for the next commit; its item stays hot (or known as dropped) until then."""
        self._index_changes.append(change)
        self._unsaved.add(str(change[1]))

    def _land_locked(self, key: BlockKey) -> None:
        """The part leaves the queue: lookups switch from the buffer to the index in this same step."""
        queued = self._pending.pop(key)
        self._backlog_bytes -= len(queued.data)
        if not self._pending:
            self._pending = {}  # a dict keeps the table of its largest size: let a burst's go
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
            st = None
            self._write_failed(item.name, exc)
        if st is not None:
            _past_ctime_tick(st.st_ctime_ns)
        with self._lock:
            self._to_seal = [other for other in self._to_seal if other is not item]
            sealed = st is not None and self._items.get(item.name) is item and st.st_size == item.size_bytes
            if sealed and st is not None:  # the fd was its file
                self._change_locked(("seal", item.name, st.st_ino, st.st_ctime_ns))
        if sealed:
            self.counters.inc("cache.sealed_files")

    def _seal_batch_in_locked(self) -> float:
        """Seconds until the small files waiting to be sealed are due (0: now; inf: none waits, or a batch
        is being sealed)."""
        if not self._to_seal_small or self._sealing:
            return float("inf")
        if self._closing or len(self._to_seal_small) >= _SEAL_BATCH_MAX:
            return 0.0
        due = max(self._sealed_small_at + self.seal_batch_interval_s, self._landed_at + self.seal_idle_s)
        return max(0.0, due - time.monotonic())

    def _run_sealer(self, batch: dict[str, int]) -> None:
        """A thread of its own per batch, so that the writer keeps landing parts meanwhile: a ``syncfs``
        on the writer's thread held every queued write for its length (100-300 ms here), the queue
        filled, and cold reads of small files fetched again what prefetch could no longer queue."""
        try:
            self._seal_batch(batch)
        except Exception:  # a thread boundary: those files stay unsealed (checked at their next owner's first open)
            log.exception("disk cache %s: sealing %d files failed", self.dir, len(batch))
        finally:
            with self._changed:
                self._sealing = False
                self._sealed_small_at = time.monotonic()
                self._changed.notify_all()

    def _seal_batch(self, batch: dict[str, int]) -> None:
        """Seal small complete files together: each file's inode and ctime are read, then one ``syncfs``
        puts every byte written before it on the disk, then the seals are recorded. In that order, because
        the writer goes on writing meanwhile: whatever it writes to one of these names after the stat,
        before the sync started is synced too, and after it started changes the file's ctime (the sync
        starts once the ctime clock has ticked past the ones read) or replaces its inode, so the seal
        recorded no longer matches and that file is checked at its next first open."""
        seals = []
        for name, size in batch.items():
            try:
                st = os.stat(self._path(name))
            except OSError:
                continue  # evicted or dropped meanwhile
            if st.st_size == size:
                seals.append(("seal", name, st.st_ino, st.st_ctime_ns))
        _past_ctime_tick(max((change[3] for change in seals), default=0))
        try:
            _syncfs(self._root)
        except OSError as exc:  # unsealed, they are checked at their next owner's first open
            self.counters.inc("cache.write_errors")
            log.warning("disk cache %s: syncfs failed (%s); %d files stay unsealed", self.dir, exc, len(batch))
            return
        with self._changed:
            for change in seals:
                self._change_locked(change)
            self._changed.notify_all()  # the writer commits them
        self.counters.inc("cache.sealed_files", len(seals))

    def _commit_index(self) -> None:
        """Write the index changes and hit times gathered since the last commit, in one transaction."""
        with self._lock:
            changes, self._index_changes = self._index_changes, []
            touched, self._touched = self._touched, {}
            self._committed_at = time.monotonic()
        db = self._db
        if db is not None and (changes or touched):
            try:
                with db:
                    for change in changes:
                        _apply_change(db, change)
                    db.executemany(
                        "UPDATE items SET used_ns = ? WHERE name = ?", [(ns, n) for n, ns in touched.items()]
                    )
            except sqlite3.Error as exc:  # the files are still right; the next owner re-fetches what is unrecorded
                self.counters.inc("cache.write_errors")
                log.warning("disk cache %s: the index could not be written: %s", self.dir, exc)
        with self._lock:
            self._unsaved = {str(change[1]) for change in self._index_changes}
            self._commit_seq += 1
            self._cool_locked()  # what stayed hot for its change may go now

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
        """Open the index, reconcile it with the files, load the most recently used items as the hot set,
        clear leftover tmp files; an unreadable index (or one of another schema) is deleted, and with it
        every file (then unindexed).

        Also creates the 256 fan-out dirs, so a write never needs a mkdir. Memory stays bounded: one
        fan-out dir's rows and files at a time, then at most ``max_hot_items`` items.
        """
        os.makedirs(self._root, mode=0o700, exist_ok=True)  # makedirs gives parents 0o777 & ~umask
        spread_subdirs(self._root)
        for old in os.scandir(self._root):  # tmp dirs of earlier owners ("tmp" before this layout)
            if (old.name == "tmp" or old.name.startswith("tmp.")) and old.is_dir(follow_symlinks=False):
                for leftover in os.scandir(old.path):
                    _unlink_quietly(leftover.path)
                with contextlib.suppress(OSError):
                    os.rmdir(old.path)
        self._new_tmp_dir()
        for attempt in range(2):
            os.close(os.open(self._index_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))  # -wal/-shm copy it
            try:
                self._db = sqlite3.connect(self._index_path, check_same_thread=False)  # one thread at a time
                _prepare_index(self._db)
                self._reconcile(self._db)
                self._load_hot(self._db)
                break
            except sqlite3.DatabaseError as exc:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                if attempt:
                    raise
                log.warning("disk cache %s: index unreadable (%s); starting empty", self.dir, exc)
                for suffix in ("", "-wal", "-shm"):
                    _unlink_quietly(self._index_path + suffix)
                with self._lock:
                    self._items.clear()
                    self._item_count = self._used_bytes = self._complete_items = 0
        while True:
            with self._lock:
                fits = self._make_room_locked(0)  # the capacity may have been lowered since the last mount
            if fits is not None:
                break
            self._read_victims()
        self._commit_index()

    def _reconcile(self, db: sqlite3.Connection) -> None:
        """Each fan-out dir against its rows (both in name order): files without a row are deleted, rows
        without a file (or whose file has another size, or without parts) are dropped, each item's charge
        is its parts' (rounded to 4 KiB), at least the blocks its file holds. Totals are counted."""
        used = count = complete = 0
        db.execute("DELETE FROM items WHERE name < '00' OR name >= 'g'")  # outside every fan-out range
        db.execute("DELETE FROM parts WHERE name < '00' OR name >= 'g'")
        for i, fan in enumerate(_FANS):
            fan_dir = f"{self._root}/{fan}"
            os.makedirs(fan_dir, mode=0o700, exist_ok=True)
            files = {entry.name: entry for entry in os.scandir(fan_dir)}
            upper = _FANS[i + 1] if i + 1 < len(_FANS) else "g"
            parts: dict[str, list[tuple[object, object]]] = {}
            for name, part, length in db.execute(
                "SELECT name, part, length FROM parts WHERE name >= ? AND name < ?", (fan, upper)
            ):
                parts.setdefault(name, []).append((part, length))
            rows = db.execute(
                "SELECT name, size, part_bytes, charged FROM items WHERE name >= ? AND name < ?", (fan, upper)
            ).fetchall()
            drops: list[str] = []
            charges: list[tuple[int, str]] = []
            for name, size, part_bytes, charged in rows:
                entry = files.pop(name, None)
                item_parts = parts.pop(name, [])
                st = entry.stat(follow_symlinks=False) if entry is not None else None
                usable = isinstance(size, int) and isinstance(part_bytes, int) and size > 0 and part_bytes > 0
                layout = FileLayout(size, part_bytes) if usable else FileLayout(1, 1)
                present = _present(layout, item_parts) if usable else 0
                if (
                    entry is None
                    or st is None
                    or not present
                    or not entry.is_file(follow_symlinks=False)
                    or st.st_size != layout.size_bytes
                ):
                    drops.append(name)
                    if entry is not None:
                        _unlink_quietly(entry.path)  # not the size indexed, or nothing recorded in it
                    continue
                charge = max(sum(_charge(layout.part_length(k)) for k in _bits(present)), st.st_blocks * 512)
                if charge != charged:
                    charges.append((charge, name))
                used += charge
                count += 1
                complete += present == (1 << layout.part_count) - 1
            for entry in files.values():
                _unlink_quietly(entry.path)  # not indexed (a crash before its row)
            drops.extend(parts)  # parts without an item
            if drops or charges:
                with db:
                    db.executemany("DELETE FROM parts WHERE name = ?", [(n,) for n in drops])
                    db.executemany("DELETE FROM items WHERE name = ?", [(n,) for n in drops])
                    db.executemany("UPDATE items SET charged = ? WHERE name = ?", charges)
        with self._lock:
            self._used_bytes, self._item_count, self._complete_items = used, count, complete

    def _load_hot(self, db: sqlite3.Connection) -> None:
        """The ``max_hot_items`` most recently used items into memory, least recent first. Their parts are
        unchecked (crc32 at the first hit), except a sealed file's whose inode and ctime are unchanged."""
        recent = "SELECT name FROM items ORDER BY used_ns DESC LIMIT ?"  # the index by last use: no sort
        parts: dict[str, list[tuple[object, object]]] = {}
        for name, part, length in db.execute(
            f"SELECT p.name, p.part, p.length FROM parts p JOIN ({recent}) r ON r.name = p.name",
            (self.max_hot_items,),
        ):
            parts.setdefault(name, []).append((part, length))
        rows = db.execute(
            "SELECT name, size, part_bytes, charged, sealed_ino, sealed_ctime_ns FROM items "
            "ORDER BY used_ns DESC LIMIT ?",
            (self.max_hot_items,),
        ).fetchall()
        with self._lock:
            for name, size, part_bytes, charged, ino, ctime_ns in reversed(rows):
                layout = FileLayout(size, part_bytes)  # reconciled: usable
                present = _present(layout, parts.get(name, []))
                seal = (ino, ctime_ns) if isinstance(ino, int) and isinstance(ctime_ns, int) else None
                self._items[name] = _Item(name, layout, present, present, charged, seal)

    # -- eviction and space (all under the lock)

    def _make_room_locked(self, size: int, keep: _Item | None = None) -> bool | None:
        """Evict items, cold ones first, oldest first (never ``keep``), until ``size`` more bytes fit under
        both limits; False if they cannot, None if cold items must go first and none has been read from
        the index yet (the writer then calls ``_read_victims`` without the lock, and this again)."""
        self._retry_undeletable_locked()
        while True:
            over_cap = self._used_bytes + size > self.capacity_bytes
            if not over_cap and self._free_bytes_locked() - size >= self.min_free_bytes:
                return True
            if self._item_count > len(self._items):
                victim = self._next_victim_locked()
                if victim is None:
                    return None
                self._item_count -= 1
                self._complete_items -= victim.complete
                self._drop_locked(victim.name, victim.charged_bytes)
            else:
                oldest = next(iter(self._items.values()), None)
                if oldest is None or oldest is keep:
                    return False
                self._forget_locked(oldest)
            self.counters.inc("cache.evictions_disk")

    def _next_victim_locked(self) -> _Victim | None:
        """The oldest cold item read ahead, if the index has not moved since (a commit may have dropped it)."""
        if self._victims_seq != self._commit_seq:
            self._victims.clear()
        while self._victims:
            victim = self._victims.popleft()
            if victim.name not in self._items and victim.name not in self._unsaved:
                return victim
        return None

    def _read_victims(self) -> None:
        """Read the oldest cold items from the index (the writer's or the opener's thread, without the lock),
        after a commit, so that the index has every drop and hit so far. Hot items are passed over (an item
        made hot by a lookup keeps its last use in the index until it is hit)."""
        self._commit_index()
        db = self._db
        victims: list[_Victim] = []
        after: tuple[object, object] = (-(1 << 63), "")
        scanned = 0
        while db is not None and not victims:
            try:
                rows = db.execute(
                    "SELECT i.used_ns, i.name, i.charged, i.size, i.part_bytes, "
                    "(SELECT count(*) FROM parts p WHERE p.name = i.name) "
                    "FROM items i WHERE (i.used_ns, i.name) > (?, ?) ORDER BY i.used_ns, i.name LIMIT ?",
                    (*after, _VICTIM_BATCH),
                ).fetchall()
            except sqlite3.Error as exc:
                self._index_read_failed(exc)
                break
            if not rows:
                break
            scanned += len(rows)
            after = (rows[-1][0], rows[-1][1])
            with self._lock:
                victims = [_victim(row) for row in rows if row[1] not in self._items]
        with self._lock:
            self._victims = deque(victims)
            self._victims_seq = self._commit_seq
            if not victims and self._item_count > len(self._items):
                log.warning(
                    "disk cache %s: %d item(s) counted cold, none in the index",
                    self.dir,
                    self._item_count - len(self._items),
                )
                self._item_count = len(self._items)  # never wait for victims that are not there

    def _forget_locked(self, item: _Item) -> None:
        """Drop a hot item from the index and delete its file (open fds keep reading it)."""
        del self._items[item.name]
        self._item_count -= 1
        self._complete_items -= item.complete
        self._drop_locked(item.name, item.charged_bytes)

    def _drop_locked(self, name: str, charged_bytes: int) -> None:
        """Drop an item (no longer hot) from the index and delete its file. A failed unlink keeps its bytes
        counted until a retry succeeds."""
        self._touched.pop(name, None)
        self._change_locked(("drop", name))
        if self.on_drop is not None:
            self.on_drop(name)
        if self._unlink_locked(name):
            self._used_bytes -= charged_bytes
            self._freed_since_check += charged_bytes
        else:
            self._undeletable[name] = self._undeletable.get(name, 0) + charged_bytes

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
            if name not in self._items and self._unlink_locked(name):  # (a name added again left this dict)
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

    def _stored_locked(self, name: str, index: int, layout: FileLayout) -> bool:
        """The part is in a hot item cut as ``layout`` (a cold item's parts are not looked up here)."""
        item = self._items.get(name)
        return item is not None and item.has(index) and item.layout == layout

    def backlogged(self, size: int) -> bool:
        with self._lock:
            return self._backlogged_locked(size)

    def _backlogged_locked(self, size: int) -> bool:
        return self._backlog_bytes > 0 and (
            self._backlog_bytes + size > self.max_backlog_bytes or len(self._pending) >= self.max_backlog_parts
        )

    def _hit_locked(self, item: _Item, index: int) -> bool:
        """Whether the hot ``item`` has part ``index``; if so, a hit (recency)."""
        if not item.has(index):
            return False
        self._note_hit_locked(item.name)
        return True

    def _note_hit_locked(self, name: str) -> None:
        self._items.move_to_end(name)
        self._touched[name] = time.time_ns()  # persisted later by the writer: no syscall per hit
        if self._writer is None or len(self._touched) >= _TOUCH_BATCH:
            self._start_writer_locked()  # it persists the hits

    def _path(self, name: str) -> str:
        return f"{self._root}/{name[:2]}/{name}"


def _past_ctime_tick(ctime_ns: int) -> None:
    """Wait (at most ``_CTIME_TICK_NS``) until the wall clock is a coarse clock tick past ``ctime_ns``: the
    kernel stamps ctimes from a clock that moves in ticks (4-10 ms), so a change made within the tick of
    the last write would keep the ctime a seal records. After this, any change gets a later one."""
    wait_ns = ctime_ns + _CTIME_TICK_NS - time.time_ns()
    if wait_ns > 0:
        time.sleep(min(wait_ns, _CTIME_TICK_NS) / 1e9)


def _syncfs(path: str) -> None:
    """Write back every dirty page and inode of the filesystem holding ``path`` (``syncfs(2)``; ``sync``
    where the C library has no ``syncfs``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syncfs = getattr(libc(), "syncfs", None)
        if syncfs is None:
            os.sync()
        elif syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=256)
def item_name(content_key: str) -> str:
    """The name the disk cache keeps a file's content under (its file's, and ``on_drop``'s). Kept for
    the last 256 keys: an open of a cached file asks for it three times within microseconds (the
    binding's question whether the open may wait, the open itself, the passthrough state), 2.2 µs
    each as a SHA-256. (4,096 of them held 650 KB, which ``test_blockcache`` counts per file cached.)"""
    return hashlib.sha256(content_key.encode()).hexdigest()


def _prepare_index(db: sqlite3.Connection) -> None:
    """The index's schema, this version's (a version 1 index gains ``charged`` and the index by last use)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, 1, _SCHEMA_VERSION):
        raise sqlite3.DatabaseError(f"index schema {version}, this version reads {_SCHEMA_VERSION}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # a crash may lose the last commits, never corrupt the file
    with db:
        db.executescript(_SCHEMA)
        if version == 1:
            db.execute("ALTER TABLE items ADD COLUMN charged INTEGER")  # filled in by the reconciliation
        db.execute("CREATE INDEX IF NOT EXISTS items_by_use ON items (used_ns, name)")
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")


def _present(layout: FileLayout, parts: list[tuple[object, object]]) -> int:
    """The parts of ``layout`` that ``(index, length)`` rows record (bit ``k``: part ``k``); a row whose
    length is not that part's is ignored."""
    present = 0
    for index, length in parts:
        if isinstance(index, int) and isinstance(length, int) and length and length == layout.part_length(index):
            present |= 1 << index
    return present


def _bits(mask: int) -> list[int]:
    """The indexes of the bits set in ``mask``, lowest first."""
    return [k for k, bit in enumerate(reversed(bin(mask)[2:])) if bit == "1"]


def _victim(row: tuple[object, ...]) -> _Victim:
    _, name, charged, size, part_bytes, parts = row
    complete = (
        isinstance(size, int) and isinstance(part_bytes, int) and part_bytes > 0 and parts == -(-size // part_bytes)
    )
    return _Victim(str(name), charged if isinstance(charged, int) else 0, complete)


def _apply_change(db: sqlite3.Connection, change: tuple[object, ...]) -> None:
    kind, name = change[0], change[1]
    if kind == "part":
        db.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?)", change[1:5])
        db.execute("UPDATE items SET charged = ? WHERE name = ?", (change[5], name))
        return
    if kind == "seal":
        db.execute("UPDATE items SET sealed_ino = ?, sealed_ctime_ns = ? WHERE name = ?", (*change[2:], name))
        return
    db.execute("DELETE FROM parts WHERE name = ?", (name,))
    if kind == "add":
        db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", change[1:])
    else:
        db.execute("DELETE FROM items WHERE name = ?", (name,))


def spread_subdirs(path: str) -> None:
    """Mark ``path`` a top of directory hierarchies (``chattr +T``): ext2/3/4 then place each new
    subdirectory in a group of its own choosing (Orlov), not next to ``path``. Best effort: other
    filesystems refuse it, and nothing depends on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
        flags = int.from_bytes(buf, sys.byteorder, signed=True)
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (flags | _FS_TOPDIR_FL).to_bytes(4, sys.byteorder, signed=True))
    except OSError:
        pass
    finally:
        os.close(fd)


def aligned_bytearray(length: int, zeroed: bool = True) -> bytearray:
    """A ``bytearray`` of ``length`` bytes whose first byte is on a 4 KiB boundary, so that the disk
    cache can write it with ``O_DIRECT`` as it is (a big file's parts are fetched into these) instead of
    copying it into its aligned buffer first. Over-allocates by 4 KiB and drops the head: deleting a
    bytearray's first bytes only moves its start (no copy), and trimming its tail keeps its storage
    while it keeps at least half of it, hence only above 4 KiB (smaller ones are plain, zeroed).

    ``zeroed=False`` skips clearing it, for a buffer that is written whole before any byte of it is
    read (the reader's parts: a fetch fills them or fails and drops them). On a cold 1 GiB read that
    clearing and the page faults it took were 23 % of the perf samples of the mount's threads other
    than libcurl's loop (one run, start-up excluded)."""
    if length <= _DIRECT_ALIGN:
        return bytearray(length)
    buf = bytearray(length + _DIRECT_ALIGN) if zeroed else _new_bytearray(None, length + _DIRECT_ALIGN)
    del buf[: -_address(buf) % _DIRECT_ALIGN]
    del buf[length:]
    return buf


# CPython's constructor with no source: the storage is allocated, not cleared (``bytearray(n)`` clears it).
_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.restype = ctypes.py_object
_new_bytearray.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def _address(buf: bytearray) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _aligned(data: Block) -> bool:
    """Whether ``data`` starts on an ``O_DIRECT`` boundary (bytes cannot be exported writable: never)."""
    return isinstance(data, bytearray) and bool(data) and not _address(data) % _DIRECT_ALIGN


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
    if got != length or (crc is not None and crc32(data) != crc):
        return None
    return data


def _fstat(fd: int) -> os.stat_result | None:
    if fd < 0:
        return None
    try:
        return os.fstat(fd)
    except OSError:
        return None


def _verify_file(fd: int, part_bytes: int, parts: dict[int, tuple[int, int]]) -> bool:
    """Each of ``parts`` (index -> (length, crc32)) reads back with its crc32 (the caller checked the
    file's size)."""
    if not parts:
        return True
    try:
        buf = memoryview(bytearray(max((length for length, _ in parts.values()), default=0)))
        for index, (length, crc) in parts.items():
            view = buf[:length]
            if _pread_into(fd, view, index * part_bytes) != length or crc32(view) != crc:
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
    """Memory in front of disk: reads try memory then disk (promoting disk hits); writes go to both (a
    passthrough fill to the disk only: memory would hold bytes nobody reads through us)."""

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

    def held(self, key: BlockKey) -> Block | None:
        data = self.memory.held(key)
        return data if data is not None else self.disk.held(key)

    def contains(self, key: BlockKey) -> bool:
        return self.memory.contains(key) or self.disk.contains(key)

    def put(self, key: BlockKey, data: Block, layout: FileLayout, *, wait: bool = False) -> None:
        """Into both tiers."""
        self.memory.put(key, data, layout)
        self.disk.put(key, data, layout, wait=wait)

    def open_complete(self, content_key: str, size: int) -> int | None:
        return self.disk.open_complete(content_key, size)

    def complete_now(self, content_key: str, size: int) -> bool:
        return self.disk.complete_now(content_key, size)

    def still_complete(self, content_key: str, size: int) -> bool:
        return self.disk.still_complete(content_key, size)

    def backlogged(self, size: int) -> bool:
        return self.disk.backlogged(size)

    def watch_drops(self, callback: Callable[[str], None]) -> None:
        self.disk.on_drop = callback

    def complete_path(self, content_key: str, size: int) -> str | None:
        return self.disk.complete_path(content_key, size)

    def flush(self, timeout_s: float | None = None) -> bool:
        return self.disk.flush(timeout_s)

    def close(self) -> None:
        self.memory.close()
        self.disk.close()
