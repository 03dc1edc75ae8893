"""Block caches: LRU by bytes in memory; on disk one sparse file per item at its own offsets, a durable
record of its parts, integrity, the capacity and free-space limits, exclusive ownership, the writer's
backlog, complete files for passthrough."""

from __future__ import annotations

import errno
import gc
import hashlib
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from encordfs.app import retire_block_cache
from encordfs.core import blockcache
from encordfs.core.blockcache import (
    MEMORY_ENTRY_OVERHEAD_BYTES,
    Block,
    DiskFileCache,
    FileLayout,
    MemoryBlockCache,
    TieredBlockCache,
    _address,
    _pwrite_all,
    aligned_bytearray,
    item_name,
)
from encordfs.core.counters import Counters
from encordfs.errors import Busy, InvalidValue

KiB = 1024
PART = 8 * KiB  # parts of 8 KiB (a multiple of the 4 KiB charge unit: charges equal lengths)


def block(tag: int, size: int = PART) -> bytes:
    return bytes([tag % 256]) * size


def content(seed: int, size: int) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(size)


def whole(key: str, data: bytes) -> tuple[tuple[str, int], bytes, FileLayout]:
    """``put`` arguments of a one-part file."""
    return (key, 0), data, FileLayout(len(data), len(data))


def put_file(cache: DiskFileCache | TieredBlockCache, key: str, data: bytes, part_bytes: int = PART) -> None:
    layout = FileLayout(len(data), part_bytes)
    for k in range(layout.part_count):
        cache.put((key, k), data[k * part_bytes : (k + 1) * part_bytes], layout)


def item_path(root: Path, key: str) -> Path:
    name = hashlib.sha256(key.encode()).hexdigest()
    return root / name[:2] / name


def tmp_files(root: Path) -> list[Path]:
    """Files in the cache's directories for new files (``tmp.*``)."""
    return [p for d in root.glob("tmp*") if d.is_dir() for p in d.iterdir()]


def item_files(root: Path) -> list[Path]:
    return [p for p in root.glob("[0-9a-f][0-9a-f]/*") if p.is_file()]


HOT_ITEMS: list[int | None] = [None]  # the disk cache's hot set size in this run (None: the default)


@pytest.fixture(autouse=True, params=[None, 1], ids=["hot", "cold"])
def hot_set_size(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs twice: with the default hot set (everything a test puts is in memory), and with one
    item hot, so that what is said of the disk cache holds as well for items read back from its index."""
    HOT_ITEMS[0] = request.param
    yield
    HOT_ITEMS[0] = None


def open_cache(root: Path, **kwargs: object) -> DiskFileCache:
    hot = {} if HOT_ITEMS[0] is None else {"max_hot_items": HOT_ITEMS[0]}
    options: dict[str, object] = {"capacity_bytes": 1 << 20, "min_free_bytes": 0, **hot, **kwargs}
    return DiskFileCache(root, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- memory


def test_memory_lru_by_bytes() -> None:
    cache = MemoryBlockCache(capacity_bytes=3 * (PART + MEMORY_ENTRY_OVERHEAD_BYTES))
    for i in range(3):
        cache.put(("f:1", i), block(i))
    assert cache.get(("f:1", 0)) == block(0)  # 0 is now the most recent
    cache.put(("f:1", 3), block(3))
    assert cache.get(("f:1", 1)) is None  # the least recently used went
    assert [cache.contains(("f:1", i)) for i in range(4)] == [True, False, True, True]
    assert cache.used_bytes == 3 * (PART + MEMORY_ENTRY_OVERHEAD_BYTES)
    snap = cache.counters.snapshot()
    assert snap["cache.evictions_mem"] == 1 and snap["cache.hits_mem"] == 1 and snap["cache.misses"] == 1
    assert cache.open_complete("f:1", 4 * PART) is None  # memory backs no file


def test_memory_blocks_are_charged_their_overhead_and_counted() -> None:
    """A block costs its key and slot besides its bytes: tiny blocks cannot hold many times the capacity
    in Python objects, and past ``max_entries`` the oldest go whatever their size."""
    cache = MemoryBlockCache(capacity_bytes=10 * (64 + MEMORY_ENTRY_OVERHEAD_BYTES))
    for i in range(20):
        cache.put((f"f{i}:64", 0), bytes(64))
    assert [cache.contains((f"f{i}:64", 0)) for i in (9, 10, 19)] == [False, True, True]
    assert cache.used_bytes == 10 * (64 + MEMORY_ENTRY_OVERHEAD_BYTES)
    counted = MemoryBlockCache(capacity_bytes=1 << 20, max_entries=3)
    for i in range(5):
        counted.put((f"f{i}:1", 0), b"x")
    assert [counted.contains((f"f{i}:1", 0)) for i in range(5)] == [False, False, True, True, True]
    assert counted.counters.get("cache.evictions_mem") == 2


def test_memory_block_larger_than_capacity_is_not_stored() -> None:
    cache = MemoryBlockCache(capacity_bytes=5 * KiB)
    cache.put(("f", 0), block(1))
    assert cache.get(("f", 0)) is None and cache.used_bytes == 0


def test_changed_content_is_a_different_key() -> None:
    cache = MemoryBlockCache(capacity_bytes=1 << 20)
    cache.put(("item:100:2024-01-01", 0), b"old")
    assert cache.get(("item:120:2024-02-01", 0)) is None


# ---------------------------------------------------------------------------------------------- disk: layout


def test_the_crc32_of_parts_is_zlibs_checksum_computed_by_isa_l() -> None:
    """Parts are checked with ISA-L's crc32 (a declared dependency: ~5x zlib's on this machine kind,
    ``benchmarks/disk_probe.py``), which must give zlib's values: an index written by an older version,
    or where isal is missing, stays valid."""
    import zlib

    assert blockcache.crc32.__module__ == "isal.isal_zlib"
    data = bytearray(os.urandom(3 * 8192 + 7))
    for chunk in (bytes(data), data, memoryview(data)[5:], b""):
        assert blockcache.crc32(chunk) == zlib.crc32(chunk)


def test_parts_land_at_their_own_offsets_of_one_sparse_file(tmp_path: Path) -> None:
    root = tmp_path / "c"
    data = content(1, 2 * PART + 100)  # three parts, the last one short
    layout = FileLayout(len(data), PART)
    with open_cache(root) as cache:
        cache.put(("doc:v1", 2), data[2 * PART :], layout)
        cache.put(("doc:v1", 0), data[:PART], layout)
        assert cache.flush(5)
        (path,) = item_files(root)
        assert path == item_path(root, "doc:v1")
        assert path.stat().st_size == len(data)  # the whole file's length from the first part
        on_disk = path.read_bytes()
        assert on_disk[:PART] == data[:PART] and on_disk[2 * PART :] == data[2 * PART :]
        assert on_disk[PART : 2 * PART] == bytes(PART)  # part 1 is a hole ...
        assert path.stat().st_blocks * 512 < len(data)  # ... that takes no space
        assert [cache.contains(("doc:v1", k)) for k in range(3)] == [True, False, True]
        assert cache.complete_path("doc:v1", len(data)) is None  # not complete: no backing file
        assert cache.stats() == {"used_bytes": PART + 4 * KiB, "items": 1, "complete_items": 0, "backlog_bytes": 0}
        assert cache.get(("doc:v1", 1)) is None
        cache.put(("doc:v1", 1), data[PART : 2 * PART], layout)
        assert cache.flush(5)
        assert cache.complete_path("doc:v1", len(data)) == str(path)
        assert path.read_bytes() == data
        assert [cache.get(("doc:v1", k)) for k in range(3)] == [data[:PART], data[PART : 2 * PART], data[2 * PART :]]
        assert cache.used_bytes == 2 * PART + 4 * KiB  # the 100-byte part is charged a 4 KiB block
        assert cache.stats()["complete_items"] == 1
        assert cache.counters.get("cache.bytes_written") == len(data)


def test_a_part_that_does_not_fit_its_layout_is_refused(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c") as cache:
        with pytest.raises(InvalidValue):
            cache.put(("f", 0), b"x" * 10, FileLayout(20, 8))  # part 0 of that layout is 8 bytes
        with pytest.raises(InvalidValue):
            cache.put(("f", 3), b"x" * 4, FileLayout(20, 8))  # there is no part 3


def test_another_part_size_for_the_same_content_starts_the_file_anew(tmp_path: Path) -> None:
    root = tmp_path / "c"
    data = content(2, 4 * PART)
    with open_cache(root) as cache:
        put_file(cache, "f:v", data, part_bytes=PART)
        assert cache.flush(5) and cache.complete_path("f:v", len(data)) is not None
        cache.put(("f:v", 0), data[: 2 * PART], FileLayout(len(data), 2 * PART))  # a reader with 16 KiB parts
        assert cache.flush(5)
        assert cache.complete_path("f:v", len(data)) is None and cache.used_bytes == 2 * PART
        assert cache.get(("f:v", 0)) == data[: 2 * PART] and not cache.contains(("f:v", 1))


def test_permissions(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root) as cache:
        cache.put(*whole("k", b"x"))
        assert cache.flush(5)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_dir()} == {0o700}
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"LOCK", "index.sqlite", item_path(root, "k").name}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}


# ---------------------------------------------------------------------------------------------- disk: the record


def test_parts_and_their_checksums_survive_reopen(tmp_path: Path) -> None:
    root = tmp_path / "c"
    data = content(3, 3 * PART)
    layout = FileLayout(len(data), PART)
    with open_cache(root) as cache:
        cache.put(("big:v", 0), data[:PART], layout)
        cache.put(("big:v", 2), data[2 * PART :], layout)
        cache.put(*whole("small:v", b"hello"))
    with sqlite3.connect(root / "index.sqlite") as db:
        rows = db.execute("SELECT part, length, crc32 FROM parts ORDER BY name, part").fetchall()
    db.close()
    assert sorted(rows) == sorted(
        [(0, PART, _crc(data[:PART])), (2, PART, _crc(data[2 * PART :])), (0, 5, _crc(b"hello"))]
    )
    with open_cache(root) as again:
        assert [again.contains(("big:v", k)) for k in range(3)] == [True, False, True]
        assert again.get(("big:v", 2)) == data[2 * PART :]
        assert again.get(("small:v", 0)) == b"hello"
        assert again.get(("other:v", 0)) is None
        assert again.counters.snapshot()["cache.hits_disk"] == 2
        assert again.used_bytes == 2 * PART + 4 * KiB
        assert again.stats()["complete_items"] == 1 and again.stats()["items"] == 2


def _crc(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


def test_reconciling_the_index_with_the_files_on_open(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root) as cache:
        for i in range(3):
            cache.put(*whole(f"f{i}", block(i)))
    orphan = root / "ab" / ("ab" + "0" * 62)
    orphan.write_bytes(b"not indexed")  # e.g. a crash between the rename and the index commit
    item_path(root, "f0").unlink()  # indexed, but gone
    os.truncate(item_path(root, "f1"), PART // 2)  # indexed, but not the indexed size
    with open_cache(root) as cache:
        assert not orphan.exists()
        assert [cache.contains(("f" + str(i), 0)) for i in range(3)] == [False, False, True]
        assert not item_path(root, "f1").exists()
        assert cache.used_bytes == PART and cache.counters.get("cache.corrupt_disk") == 0
    with sqlite3.connect(root / "index.sqlite") as db:
        assert db.execute("SELECT count(*) FROM items").fetchone()[0] == 1
    db.close()


def test_an_unreadable_index_starts_the_cache_empty(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root) as cache:
        cache.put(*whole("f", block(1)))
    for suffix in ("-wal", "-shm"):
        Path(f"{root}/index.sqlite{suffix}").unlink(missing_ok=True)
    (root / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with open_cache(root) as cache:
        assert not cache.contains(("f", 0)) and cache.used_bytes == 0 and item_files(root) == []
        cache.put(*whole("f", block(2)))
        assert cache.flush(5) and cache.get(("f", 0)) == block(2)


def test_hits_make_no_syscall_but_recency_is_persisted_at_close(tmp_path: Path) -> None:
    root = tmp_path / "c"

    def used_ns() -> int:
        with sqlite3.connect(root / "index.sqlite") as db:
            value = db.execute("SELECT used_ns FROM items").fetchone()[0]
        db.close()
        return int(value)

    with open_cache(root) as cache:
        cache.put(*whole("f", block(0)))
    before = used_ns()
    with open_cache(root) as cache:
        st = item_path(root, "f").stat()
        assert cache.get(("f", 0)) == block(0)
        assert used_ns() == before  # nothing written for a hit ...
        assert item_path(root, "f").stat().st_mtime_ns == st.st_mtime_ns  # ... not even a utime
    assert used_ns() > before


# ---------------------------------------------------------------------------------------------- disk: integrity


def test_damaged_truncated_or_missing_files_are_misses_never_wrong_bytes(tmp_path: Path) -> None:
    root = tmp_path / "c"
    big = content(4, 3 * PART)
    with open_cache(root) as cache:
        cache.put(*whole("f0", block(0)))
        cache.put(*whole("f1", block(1)))
        cache.put(*whole("f2", block(2)))
        put_file(cache, "big", big)
    # damaged between owners (crash, power loss, bit rot): each inherited part's crc32 is checked on its first hit
    with open_cache(root) as cache:
        _flip(item_path(root, "f0"), 100)
        os.truncate(item_path(root, "f1"), 100)  # truncated while mounted
        item_path(root, "f2").unlink()
        _flip(item_path(root, "big"), PART + 5)  # part 1 of three
        assert [cache.get((f"f{i}", 0)) for i in range(3)] == [None, None, None]
        assert cache.get(("big", 0)) == big[:PART]  # a sound part of a damaged file ...
        assert cache.get(("big", 1)) is None  # ... until its damaged part is found: the whole file goes
        assert not cache.contains(("big", 0)) and not item_path(root, "big").exists()
        assert cache.used_bytes == 0 and cache.counters.get("cache.corrupt_disk") == 4
        cache.put(*whole("f0", block(0)))  # and it can be written again
        assert cache.flush(5) and cache.get(("f0", 0)) == block(0)


def test_an_index_ahead_of_its_data_is_caught(tmp_path: Path) -> None:
    """Power loss can keep the index's commit and lose the data it describes (a hole reads as zeros)."""
    root = tmp_path / "c"
    data = content(5, 2 * PART)
    with open_cache(root) as cache:
        put_file(cache, "f", data)
    with open(item_path(root, "f"), "r+b") as f:
        f.seek(PART)
        f.write(bytes(PART))
    with open_cache(root) as cache:
        assert cache.complete_path("f", len(data)) is None  # verified before it could back a file
        assert cache.counters.get("cache.corrupt_disk") == 1 and not cache.contains(("f", 0))


def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_crash_mid_write_loses_at_most_unrecorded_parts(tmp_path: Path) -> None:
    root = tmp_path / "c"
    crasher = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from encordfs.core.blockcache import DiskFileCache, FileLayout, _pwrite_all

        def write_part(fd, data, offset):
            if data[0] == 2:  # die halfway through writing the third part
                os.pwrite(fd, data[: len(data) // 2], offset)
                os._exit(3)
            _pwrite_all(fd, data, offset)

        cache = DiskFileCache(Path({str(root)!r}), capacity_bytes=1 << 20, min_free_bytes=0, write_part=write_part)
        layout = FileLayout(4 * {PART}, {PART})
        for i in range(2):
            cache.put(("f", i), bytes([i]) * {PART}, layout)
        cache.put(("new", 0), bytes([7]) * 100, FileLayout(100, 100))
        cache.flush(10)
        time.sleep(0.5)  # the writer commits the index once its queue is empty
        cache.put(("f", 2), bytes([2]) * {PART}, layout)
        cache.put(("g", 0), bytes([2]) * 100, FileLayout(100, 100))
        cache.flush(10)
        """
    )
    assert subprocess.run([sys.executable, "-c", crasher], timeout=60, check=False).returncode == 3
    with open_cache(root) as cache:
        assert tmp_files(root) == []
        assert [cache.get(("f", i)) for i in range(4)] == [block(0), block(1), None, None]
        assert cache.get(("new", 0)) == bytes([7]) * 100 and cache.get(("g", 0)) is None
        assert cache.counters.get("cache.corrupt_disk") == 0
        assert cache.complete_path("f", 4 * PART) is None


# ---------------------------------------------------------------------------------------------- disk: space


def test_lru_eviction_under_cap_and_recency_survives_reopen(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cap = 3 * PART
    with open_cache(root, capacity_bytes=cap) as cache:
        for i in range(3):
            cache.put(*whole(f"f{i}", block(i)))
            assert cache.flush(5)
        assert cache.get(("f0", 0)) == block(0)  # touched: now the most recent, in the index from close
    with open_cache(root, capacity_bytes=cap) as cache:
        cache.put(*whole("f3", block(3)))
        assert cache.flush(5)
        assert not cache.contains(("f1", 0))
        assert all(cache.contains((f"f{i}", 0)) for i in (0, 2, 3))
        assert cache.used_bytes <= cap
        assert cache.counters.get("cache.evictions_disk") == 1
    assert sorted(p.name for p in item_files(root)) == sorted(item_path(root, f"f{i}").name for i in (0, 2, 3))


def test_a_file_being_filled_is_not_evicted_for_its_own_parts(tmp_path: Path) -> None:
    root = tmp_path / "c"
    data = content(6, 4 * PART)
    with open_cache(root, capacity_bytes=3 * PART) as cache:
        cache.put(*whole("old", block(9)))
        put_file(cache, "big", data)
        assert cache.flush(5)
        assert not cache.contains(("old", 0))  # the older file made room
        assert [cache.contains(("big", k)) for k in range(4)] == [True, True, True, False]  # then: no room
        assert cache.counters.get("cache.skipped_disk") == 1 and cache.used_bytes == 3 * PART
        assert [cache.get(("big", k)) for k in range(3)] == [data[k * PART : (k + 1) * PART] for k in range(3)]


def test_lowered_capacity_evicts_on_open(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root) as cache:
        for i in range(5):
            cache.put(*whole(f"f{i}", block(i)))
    with open_cache(root, capacity_bytes=2 * PART) as cache:
        assert cache.used_bytes <= 2 * PART and len(item_files(root)) == 2
        assert cache.contains(("f4", 0)) and cache.contains(("f3", 0))


def test_free_space_floor(tmp_path: Path) -> None:
    disk_bytes, others = 200 * KiB, [0]  # a fake filesystem: free = size - other files - our files

    def free_bytes(path: Path) -> int:
        ours = sum(p.stat().st_blocks * 512 for p in item_files(path))
        return disk_bytes - others[0] - ours

    # free_check_bytes=0: statvfs before every write, so the test sees others' usage at once
    cache = open_cache(
        tmp_path / "c", capacity_bytes=1 << 30, min_free_bytes=150 * KiB, free_bytes=free_bytes, free_check_bytes=0
    )
    with cache:
        for i in range(8):
            cache.put(*whole(f"f{i}", block(i)))
            assert cache.flush(5)
        assert free_bytes(tmp_path / "c") >= 150 * KiB
        assert cache.contains(("f7", 0)) and not cache.contains(("f0", 0))
        assert cache.counters.get("cache.evictions_disk") >= 2
        others[0] = 195 * KiB  # someone else filled the disk
        cache.put(*whole("f8", block(8)))
        assert cache.flush(5)
        assert not cache.contains(("f8", 0)) and cache.used_bytes == 0  # gives space back, never fills the disk
        assert cache.counters.get("cache.skipped_disk") == 1


def test_statvfs_only_every_n_bytes_or_seconds(tmp_path: Path) -> None:
    calls: list[Path] = []
    now = [0.0]

    def free_bytes(path: Path) -> int:
        calls.append(path)
        return 1 << 40

    cache = open_cache(
        tmp_path / "c",
        capacity_bytes=1 << 30,
        free_bytes=free_bytes,
        free_check_bytes=4 * PART + 1,
        free_check_interval_s=5.0,
        clock=lambda: now[0],
    )
    with cache:
        before = len(calls)  # open checks once
        for i in range(4):
            cache.put(*whole(f"f{i}", block(i)))
        assert cache.flush(5) and len(calls) == before  # 4 parts written: the estimate still holds
        cache.put(*whole("f4", block(4)))
        cache.put(*whole("f5", block(5)))
        assert cache.flush(5) and len(calls) == before + 1  # past 4 parts: measured again
        now[0] += 6.0
        cache.put(*whole("f6", block(6)))
        assert cache.flush(5) and len(calls) == before + 2  # and after 5 s


def test_a_failed_unlink_keeps_its_bytes_counted_until_a_retry_succeeds(tmp_path: Path) -> None:
    root = tmp_path / "c"
    now = [0.0]
    with open_cache(root, capacity_bytes=2 * PART, clock=lambda: now[0]) as cache:
        cache.put(*whole("a", block(1)))
        cache.put(*whole("b", block(2)))
        assert cache.flush(5)
        stuck = item_path(root, "a")
        stuck.unlink()
        (stuck / "x").mkdir(parents=True)  # a non-empty directory: unlink() fails (EISDIR)
        cache.put(*whole("c", block(3)))
        assert cache.flush(5)
        assert cache.counters.get("cache.unlink_errors") == 1
        # a's bytes are still counted, so b had to go as well for c to fit
        assert [cache.contains((k, 0)) for k in "abc"] == [False, False, True]
        assert cache.used_bytes == 2 * PART and cache.counters.get("cache.evictions_disk") == 2
        (stuck / "x").rmdir()
        stuck.rmdir()  # whatever blocked the unlink is gone: the retry finds nothing left to delete
        now[0] += 10.0
        cache.put(*whole("d", block(4)))
        assert cache.flush(5)
        assert cache.used_bytes == 2 * PART and cache.contains(("c", 0)) and cache.contains(("d", 0))
        assert cache.counters.get("cache.evictions_disk") == 2


def test_a_failed_write_is_counted_and_dropped(tmp_path: Path) -> None:
    root = tmp_path / "c"
    failing = [True]

    def disk(fd: int, data: Block, offset: int) -> None:
        if failing[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        _pwrite_all(fd, data, offset)

    with open_cache(root, write_part=disk) as cache:
        cache.put(*whole("f", block(1)))
        assert cache.flush(5)
        assert cache.counters.get("cache.write_errors") == 1 and cache.counters.get("cache.skipped_disk") == 0
        assert not cache.contains(("f", 0)) and cache.used_bytes == 0
        assert tmp_files(root) == [] and item_files(root) == []
        failing[0] = False
        cache.put(*whole("f", block(1)))
        assert cache.flush(5) and cache.get(("f", 0)) == block(1)


# ---------------------------------------------------------------------------------------------- disk: ownership


def test_second_owner_in_same_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root):
        with pytest.raises(Busy, match=rf"cache dir .* is in use by another encordfs mount \(pid {os.getpid()}\)"):
            open_cache(root)
    open_cache(root).close()  # released on close


def test_second_owner_in_another_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    holder = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from encordfs.core.blockcache import DiskFileCache
        cache = DiskFileCache(Path({str(root)!r}), capacity_bytes=1 << 20, min_free_bytes=0)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(Busy) as info:
            open_cache(root)
        assert f"(pid {proc.pid})" in str(info.value)
        assert info.value.errno == 16
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close() if proc.stdout else None
    open_cache(root).close()  # the dead owner's lock is gone


def test_the_block_cache_of_an_earlier_version_is_deleted_never_served(tmp_path: Path) -> None:
    old = tmp_path / "blocks"
    (old / "blocks" / "ab").mkdir(parents=True)
    (old / "blocks" / "ab" / "ab12").write_bytes(b"EFSBLK01" + bytes(20))
    (old / "LOCK").write_text("123\n")
    retire_block_cache(tmp_path)
    for _ in range(200):
        if not old.exists():
            break
        threading.Event().wait(0.01)
    assert not old.exists()
    retire_block_cache(tmp_path)  # nothing left to do


def test_an_earlier_version_still_mounted_keeps_its_block_cache(tmp_path: Path) -> None:
    import fcntl

    old = tmp_path / "blocks"
    old.mkdir()
    fd = os.open(old / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        retire_block_cache(tmp_path)
        assert (old / "LOCK").exists()
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- complete files


def test_complete_path_only_when_every_byte_is_present_and_verified(tmp_path: Path) -> None:
    root = tmp_path / "c"
    data = content(7, 3 * PART - 1)
    with open_cache(root) as cache:
        assert cache.complete_path("f", len(data)) is None  # nothing
        put_file(cache, "f", data)
        cache.put(("g", 0), data[:PART], FileLayout(len(data), PART))
        assert cache.flush(5)
        assert cache.complete_path("g", len(data)) is None  # one part of three
        assert cache.complete_path("f", len(data) + 1) is None  # another size: another content
        path = cache.complete_path("f", len(data))
        assert path is not None and Path(path).is_absolute() and Path(path).read_bytes() == data
        assert cache.counters.get("cache.backing_opens") == 1
    with open_cache(root) as cache:
        _flip(item_path(root, "f"), 2 * PART + 1)  # damage found by the verification of inherited parts
        assert cache.complete_path("f", len(data)) is None
        assert cache.counters.get("cache.corrupt_disk") == 1
        put_file(cache, "f", data)
        assert cache.flush(5)
        path = cache.complete_path("f", len(data))
        assert path is not None and hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(data).digest()
        assert cache.counters.get("cache.backing_opens") == 1


def test_complete_files_are_sealed_and_trusted_while_untouched(tmp_path: Path) -> None:
    root = tmp_path / "c"
    big, small = content(10, 3 * PART), content(11, PART)
    with open_cache(root, seal_min_bytes=2 * PART) as cache:
        put_file(cache, "big", big)
        cache.put(*whole("small", small))
    # by close at the latest: the big one alone (fdatasync), the small one in a batch (syncfs)
    assert cache.counters.get("cache.sealed_files") == 2
    with open_cache(root, seal_min_bytes=2 * PART) as cache:
        assert cache.complete_path("big", len(big)) is not None
        assert cache.get(("big", 1)) == big[PART : 2 * PART]
        assert cache.complete_path("small", PART) is not None
        assert cache.get(("small", 0)) == small
        assert cache.counters.get("cache.verified_bytes") == 0  # synced complete, same inode and ctime since
    time.sleep(0.05)  # past the kernel's coarse clock tick: the edits below get a later ctime
    _flip(item_path(root, "big"), PART + 3)  # same inode, new ctime
    _flip(item_path(root, "small"), 5)
    with open_cache(root, seal_min_bytes=2 * PART) as cache:
        assert cache.complete_path("big", len(big)) is None
        assert cache.complete_path("small", PART) is None
        assert cache.counters.get("cache.corrupt_disk") == 2


def test_small_files_are_sealed_in_batches_while_idle_and_unsealed_ones_are_checked(tmp_path: Path) -> None:
    """Small complete files are sealed together by one syncfs when the writer is idle; a file a crashed
    owner never sealed is read whole and checked at its first open, then sealed with the next batch."""
    root = tmp_path / "c"
    with open_cache(root, seal_batch_interval_s=0) as cache:
        for i in range(3):
            cache.put(*whole(f"s{i}", block(i)))
        deadline = time.monotonic() + 10
        while cache.counters.get("cache.sealed_files") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # without a close: the writer, idle, sealed them
        assert cache.counters.get("cache.sealed_files") == 3
    crasher = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from encordfs.core.blockcache import DiskFileCache, FileLayout

        cache = DiskFileCache(Path({str(root)!r}), capacity_bytes=1 << 20, min_free_bytes=0,
                              seal_batch_interval_s=3600)
        cache.put(("u", 0), bytes([9]) * {PART}, FileLayout({PART}, {PART}))
        cache.flush(10)
        time.sleep(0.5)  # the writer commits the index once its queue is empty
        os._exit(3)  # before any batch: the index has the file, no seal
        """
    )
    assert subprocess.run([sys.executable, "-c", crasher], timeout=60, check=False).returncode == 3
    with open_cache(root) as cache:
        assert all(cache.complete_path(f"s{i}", PART) is not None for i in range(3))
        assert cache.counters.get("cache.verified_bytes") == 0
        assert cache.complete_path("u", PART) is not None
        assert cache.counters.get("cache.verified_bytes") == PART  # unsealed: read whole and checked
    assert cache.counters.get("cache.sealed_files") == 1  # then sealed (at close, the latest)
    with open_cache(root) as cache:
        assert cache.complete_path("u", PART) is not None and cache.get(("u", 0)) == block(9)
        assert cache.counters.get("cache.verified_bytes") == 0


def test_a_batch_is_sealed_beside_the_writer_and_only_as_it_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealing a batch of small files (its syncfs) runs beside the writer: files queued meanwhile land
    without waiting for it. A file changed after its seal was read is not trusted by that seal: its
    next owner checks it, and finds the change."""
    syncing, gate = threading.Event(), threading.Event()
    real_syncfs = blockcache._syncfs

    def held_syncfs(path: str) -> None:
        syncing.set()
        assert gate.wait(10)
        real_syncfs(path)

    monkeypatch.setattr(blockcache, "_syncfs", held_syncfs)
    root = tmp_path / "c"
    with open_cache(root, seal_batch_interval_s=0) as cache:
        for i in range(3):
            cache.put(*whole(f"s{i}", block(i)))
        assert syncing.wait(10)  # a batch is being sealed; its syncfs waits
        with open(item_path(root, "s1"), "r+b") as f:  # changed after the seal read it
            f.write(b"\xee")
        for i in range(3, 6):
            cache.put(*whole(f"s{i}", block(i)))
        assert cache.flush(10)  # landed while the syncfs still waits
        gate.set()
    assert cache.counters.get("cache.sealed_files") == 6  # the first three, then the rest at close
    with open_cache(root) as cache:
        for i in (0, 2, 3, 4, 5):
            assert cache.complete_path(f"s{i}", PART) is not None
        assert cache.counters.get("cache.verified_bytes") == 0  # trusted as sealed, unread
        assert cache.complete_path("s1", PART) is None  # its seal does not match: read, found damaged
        assert cache.counters.get("cache.corrupt_disk") == 1


def test_an_evicted_file_keeps_reading_through_an_open_fd(tmp_path: Path) -> None:
    root = tmp_path / "c"
    data = content(8, 2 * PART)
    with open_cache(root, capacity_bytes=2 * PART) as cache:
        put_file(cache, "a", data)
        assert cache.flush(5)
        fd = cache.open_complete("a", len(data))
        assert fd is not None
        try:
            put_file(cache, "b", content(9, 2 * PART))  # evicts a
            assert cache.flush(5) and not cache.contains(("a", 0)) and not item_path(root, "a").exists()
            assert os.pread(fd, len(data), 0) == data  # a passthrough backing handle keeps working
            put_file(cache, "a", data)  # a comes back: a new file, renamed over the name ...
            assert cache.flush(5)
            assert os.fstat(fd).st_ino != item_path(root, "a").stat().st_ino  # ... not the one the fd has
            assert os.pread(fd, len(data), 0) == data
        finally:
            os.close(fd)


def test_every_dropped_file_is_told_by_its_item_name(tmp_path: Path) -> None:
    """``on_drop`` (a binding holding cache files registered with the kernel lets them go) hears of each
    file evicted, by ``item_name`` of its content key, and of nothing else."""
    root = tmp_path / "c"
    told: list[str] = []
    with open_cache(root, capacity_bytes=2 * PART) as cache:
        cache.on_drop = told.append
        for i in range(2):
            cache.put(*whole(f"f{i}", block(i)))
            assert cache.flush(5)
        assert told == []
        cache.put(*whole("f2", block(2)))  # evicts f0, the oldest
        assert cache.flush(5)
        assert told == [item_name("f0")] and not cache.contains(("f0", 0))
        assert not item_path(root, "f0").exists()


def test_a_backing_file_is_still_complete_until_it_goes(tmp_path: Path) -> None:
    """``still_complete`` lets a binding keep the file it registered instead of opening it again: True
    while the item is complete and checked in this session, and a use for the eviction order."""
    root = tmp_path / "c"
    with open_cache(root, capacity_bytes=3 * PART) as cache:
        assert not cache.still_complete("f0", PART)  # nothing yet
        for i in range(3):
            cache.put(*whole(f"f{i}", block(i)))
            assert cache.flush(5)
        assert cache.complete_path("f0", PART) is not None  # an open (it makes f0 hot with one hot item too)
        assert cache.still_complete("f0", PART) and not cache.still_complete("f0", PART + 1)
        cache.put(*whole("f3", block(3)))  # evicts the least recently used: f1, not f0
        assert cache.flush(5)
        assert not cache.contains(("f1", 0)) and not cache.still_complete("f1", PART)
        assert cache.contains(("f0", 0))
        assert cache.counters.get("cache.backing_reuses") == 1
    if HOT_ITEMS[0] is None:  # (with one hot item, only the last one opened is known complete without the index)
        with open_cache(tmp_path / "d", capacity_bytes=3 * PART) as cache:
            for i in range(3):
                cache.put(*whole(f"f{i}", block(i)))
                assert cache.flush(5)
            assert all(cache.complete_path(f"f{i}", PART) for i in range(3))  # used in this order
            assert cache.still_complete("f0", PART)  # a use: f1 is now the least recent
            cache.put(*whole("f3", block(3)))
            assert cache.flush(5)
            assert cache.contains(("f0", 0)) and not cache.contains(("f1", 0))
    with open_cache(root, capacity_bytes=3 * PART) as cache:  # inherited: once an open has checked it
        assert not cache.still_complete("f0", PART)
        assert cache.complete_path("f0", PART) is not None
        assert cache.still_complete("f0", PART)
    _flip(item_path(root, "f2"), 1)
    with open_cache(root, capacity_bytes=3 * PART) as cache:  # damage found by the check: dropped
        assert cache.complete_path("f2", PART) is None
        assert not cache.still_complete("f2", PART)


# ---------------------------------------------------------------------------------------------- tiered


def test_an_item_cooled_again_while_being_opened_is_looked_up_again(tmp_path: Path) -> None:
    """With a full hot set, an item read back from the index may be pushed out again by another before
    ``open_complete`` uses it (seen once in CI with a hot set of one): that is not a miss."""
    with open_cache(tmp_path / "c", max_hot_items=1) as cache:
        for name in ("f0", "f1"):
            cache.put(*whole(name, block(int(name[1]))), wait=True)
        assert cache.flush(10)
        deadline = time.monotonic() + 10
        while cache.hot_items() > 1 and time.monotonic() < deadline:  # committed, then cooled
            time.sleep(0.05)
        find = cache._find
        interfered: list[str] = []

        def find_then_another(name: str) -> object:
            found = find(name)
            if not interfered:  # another reader makes f1 hot right after: f0 goes cold again
                interfered.append(name)
                find(item_name("f1"))
            return found

        cache._find = find_then_another  # type: ignore[method-assign]
        fd = cache.open_complete("f0", PART)
        assert interfered == [item_name("f0")] and fd is not None
        try:
            assert os.pread(fd, PART, 0) == block(0)
        finally:
            os.close(fd)


def test_a_waiting_put_gives_up_on_a_stalled_disk(tmp_path: Path) -> None:
    """A put that waits for room (prefetch, a whole small file) waits at most ``wait_timeout_s``, then is
    skipped: a stalled disk never holds a reader."""
    disk = GatedDisk()
    with open_cache(tmp_path / "c", max_backlog_bytes=PART, write_part=disk, wait_timeout_s=0.2) as cache:
        cache.put(*whole("f0", block(0)))  # being written, held at the gate: the queue is full
        assert disk.started.acquire(timeout=5)
        t0 = time.monotonic()
        cache.put(*whole("f1", block(1)), wait=True)
        assert 0.15 < time.monotonic() - t0 < 5
        assert cache.counters.get("cache.skipped_disk_backlog") == 1 and not cache.contains(("f1", 0))
        disk.gate.set()
        assert cache.flush(5)


def test_complete_now_answers_from_memory_and_only_yes_when_sure(tmp_path: Path) -> None:
    """What lets the kernel binding serve a passthrough open inline: a complete, checked item is True; a
    missing, partial or differently sized one is False (the open may have to read the index or the file)."""
    memory = MemoryBlockCache(capacity_bytes=1 << 20)
    with open_cache(tmp_path / "c") as disk:
        cache = TieredBlockCache(memory, disk)
        assert not cache.complete_now("f0", PART)
        cache.put(*whole("f0", block(0)))
        assert disk.flush(5) and cache.complete_now("f0", PART)  # landed and in the hot set
        assert not cache.complete_now("f0", PART + 1)
        layout = FileLayout(2 * PART, PART)
        cache.put(("f1", 0), block(1), layout, wait=True)  # one part of two
        assert not cache.complete_now("f1", 2 * PART)
        assert not memory.complete_now("f0", PART)


def test_complete_now_trusts_a_seal_and_the_open_checks_it(tmp_path: Path) -> None:
    """An inherited sealed file is complete now without a syscall; its open checks the seal on the fd
    (one fstat). A changed small file is then read and checked there; a changed bigger one (more than
    ``complete_now`` lets an open read) is no backing file that time, and is checked at its next open."""
    small, big = tmp_path / "s", tmp_path / "b"
    data = content(12, 2 << 20)
    with open_cache(small) as cache:
        cache.put(*whole("s", block(3)))
    with open_cache(big, capacity_bytes=8 << 20) as cache:
        put_file(cache, "b", data)
    with open_cache(small) as cache:
        assert cache.complete_now("s", PART)
        assert cache.complete_path("s", PART) is not None
        assert cache.counters.get("cache.verified_bytes") == 0
    time.sleep(0.05)  # past the kernel's coarse clock tick: the edits get a later ctime
    _flip(item_path(small, "s"), 1)
    os.chmod(item_path(big, "b"), 0o600)  # a new ctime, the same bytes
    with open_cache(small) as cache:
        assert cache.complete_now("s", PART)  # (nothing was read or stat'ed to say so)
        assert cache.complete_path("s", PART) is None and cache.counters.get("cache.corrupt_disk") == 1
    with open_cache(big, capacity_bytes=8 << 20) as cache:
        assert cache.complete_now("b", len(data))
        assert cache.complete_path("b", len(data)) is None  # not read on the spot
        assert cache.counters.get("cache.verified_bytes") == 0 and cache.counters.get("cache.seals_broken") == 1
        assert not cache.complete_now("b", len(data))  # its next open may read: not inline
        assert cache.complete_path("b", len(data)) is not None  # read whole, checked, sound
        assert cache.counters.get("cache.verified_bytes") == len(data)


def test_tiered_promotes_disk_hits_and_counts_once(tmp_path: Path) -> None:
    counters = Counters()
    disk = open_cache(tmp_path / "c", counters=counters)
    memory = MemoryBlockCache(capacity_bytes=PART + PART // 2, counters=counters)
    with disk:
        cache = TieredBlockCache(memory, disk)
        cache.put(*whole("f0", block(0)))
        cache.put(*whole("f1", block(1)))  # pushes f0 out of memory; both on disk
        assert cache.get(("f1", 0)) == block(1)
        assert cache.get(("f0", 0)) == block(0)  # from disk, promoted
        assert cache.get(("f0", 0)) == block(0)  # from memory
        assert cache.get(("f9", 0)) is None
        assert cache.flush(5)
        snap = counters.snapshot()
        assert (snap["cache.hits_mem"], snap["cache.hits_disk"], snap["cache.misses"]) == (2, 1, 1)
        assert snap["cache.bytes_written"] == 2 * PART
        assert cache.complete_path("f0", PART) is not None


# ---------------------------------------------------------------------------------------------- memory use


def _traced_growth(first: Callable[[], object], then: Callable[[], object]) -> int:
    """Bytes of Python memory that ``then`` left allocated beyond what ``first`` did (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        first()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        then()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_the_disk_cache_holds_no_memory_per_file_beyond_its_hot_set(tmp_path: Path) -> None:
    """Issue 14.3: an epoch over a million files held ~850 MB of per-file records. The index lives in
    index.sqlite; memory holds at most ``max_hot_items`` items, whatever the number of files cached."""
    hot = 500
    # (files waiting for their seal are named in memory until the next batch: at most 65,536 of them, ~10 MB,
    # while the writer is busy; here it seals whenever its queue runs empty)
    with open_cache(
        tmp_path / "c", capacity_bytes=1 << 30, max_hot_items=hot, seal_batch_interval_s=0, seal_idle_s=0
    ) as cache:

        def fill(first: int, last: int) -> None:
            for i in range(first, last):
                cache.put((f"item-{i:08d}:16:1700000000.000000", 0), b"%016d" % i, FileLayout(16, 16), wait=True)
            assert cache.flush(60)
            deadline = time.monotonic() + 60
            while cache.counters.get("cache.sealed_files") < last and time.monotonic() < deadline:
                time.sleep(0.05)  # every batch sealed: the names it held are let go
            cache.lookup(("item-00000000:16:1700000000.000000", 0))  # a cold read (its writer commits meanwhile)
            time.sleep(0.3)  # the writer commits its last changes once idle: then they may go cold

        grown = _traced_growth(lambda: fill(0, 4 * hot), lambda: fill(4 * hot, 10_000 + 4 * hot))
        assert cache.stats()["items"] == 10_000 + 4 * hot and cache.hot_items() <= hot + 64
        assert grown < 10_000 * 8, f"{grown / 10_000:.0f} B per file cached"  # (was ~850 B per file)
        assert cache.get(("item-00000007:16:1700000000.000000", 0)) == b"%016d" % 7  # cold, read back


def test_a_memory_block_costs_what_it_is_charged() -> None:
    """``MEMORY_ENTRY_OVERHEAD_BYTES`` is what a small block really costs besides its bytes, so that the
    capacity bounds the memory used, tiny blocks included."""
    cache = MemoryBlockCache(capacity_bytes=1 << 30)
    keys = [(f"{uuid.UUID(int=i)}:64:1700000000.{i:06d}", 0) for i in range(10_000)]  # the core's content keys

    def fill() -> None:
        for key in keys:
            cache.put((f"{key[0]}", 0), bytearray(64))  # a fresh key string, as the reader makes one per open

    grown = _traced_growth(lambda: None, fill)
    assert grown <= cache.used_bytes, (
        f"{grown / 10_000:.0f} B per 64-byte block, charged {cache.used_bytes / 10_000:.0f}"
    )
    assert cache.used_bytes == 10_000 * (64 + MEMORY_ENTRY_OVERHEAD_BYTES)


# ---------------------------------------------------------------------------------------------- disk writer


class GatedDisk:
    """A ``write_part`` seam: writes for real, but each write first waits until the gate opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.written: list[bytes] = []

    def __call__(self, fd: int, data: Block, offset: int) -> None:
        self.started.release()
        assert self.gate.wait(10)
        _pwrite_all(fd, data, offset)
        self.written.append(bytes(data[:1]))


def test_put_returns_before_the_disk_write_and_serves_the_queued_part(tmp_path: Path) -> None:
    disk = GatedDisk()
    with open_cache(tmp_path / "c", write_part=disk) as cache:
        cache.put(*whole("f", block(0)))  # returns although the disk is stuck
        assert disk.started.acquire(timeout=5)
        assert cache.contains(("f", 0)) and cache.get(("f", 0)) == block(0)  # the queued buffer
        assert cache.used_bytes == 0 and cache.backlog_bytes == PART
        assert not cache.flush(0.05)
        disk.gate.set()
        assert cache.flush(5)
        assert cache.used_bytes == PART and cache.backlog_bytes == 0
        assert cache.get(("f", 0)) == block(0)  # now from the file
        assert cache.counters.get("cache.hits_disk") == 2


def test_full_backlog_skips_the_disk_instead_of_waiting(tmp_path: Path) -> None:
    disk = GatedDisk()
    with open_cache(tmp_path / "c", max_backlog_bytes=2 * PART + PART // 2, write_part=disk) as cache:
        for i in range(4):
            cache.put(*whole(f"f{i}", block(i)))  # f0 is being written, f1 queued, f2 and f3 do not fit
        assert cache.counters.get("cache.skipped_disk_backlog") == 2
        assert [cache.contains((f"f{i}", 0)) for i in range(4)] == [True, True, False, False]
        disk.gate.set()
        assert cache.flush(5)
        cache.put(*whole("f2", block(2)))  # room again
        assert cache.flush(5)
        assert [cache.contains((f"f{i}", 0)) for i in range(4)] == [True, True, True, False]
        assert cache.used_bytes == 3 * PART


def test_put_with_wait_waits_for_room_instead_of_skipping(tmp_path: Path) -> None:
    disk = GatedDisk()
    with open_cache(tmp_path / "c", max_backlog_bytes=PART + PART // 2, write_part=disk) as cache:
        cache.put(*whole("f0", block(0)))
        waiter = threading.Thread(target=cache.put, args=whole("f1", block(1)), kwargs={"wait": True})
        waiter.start()
        waiter.join(0.1)
        assert waiter.is_alive() and not cache.contains(("f1", 0))
        disk.gate.set()
        waiter.join(5)
        assert cache.flush(5) and cache.contains(("f1", 0))
        assert cache.counters.get("cache.skipped_disk_backlog") == 0


def test_close_drains_the_queue(tmp_path: Path) -> None:
    root = tmp_path / "c"
    disk = GatedDisk()
    cache = open_cache(root, write_part=disk)
    for i in range(3):
        cache.put(*whole(f"f{i}", block(i)))
    threading.Timer(0.2, disk.gate.set).start()
    cache.close()  # waits for the writer
    assert len(disk.written) == 3
    cache.put(*whole("f9", block(9)))  # after close: ignored
    with open_cache(root) as again:
        assert [again.get((f"f{i}", 0)) for i in range(3)] == [block(i) for i in range(3)]
        assert not again.contains(("f9", 0))


def test_close_drops_what_a_stuck_disk_did_not_write(tmp_path: Path) -> None:
    root = tmp_path / "c"
    disk = GatedDisk()
    cache = open_cache(root, write_part=disk, close_timeout_s=0.5)
    for i in range(3):
        cache.put(*whole(f"f{i}", block(i)))
    assert disk.started.acquire(timeout=5)
    threading.Timer(0.8, disk.gate.set).start()  # after the first wait of close: the queue is dropped
    cache.close()
    assert len(disk.written) == 1  # the write in progress finished, the queued ones were dropped
    with open_cache(root) as again:
        assert again.get(("f0", 0)) == block(0)
        assert not again.contains(("f1", 0)) and not again.contains(("f2", 0))
        assert again.used_bytes == PART  # nothing indexed without its file, nothing left over
    assert tmp_files(root) == []


# ---------------------------------------------------------------------------------------------- direct writes


def test_big_files_are_written_direct_and_read_back_exactly(tmp_path: Path) -> None:
    """Parts of big files go through O_DIRECT (a page-aligned copy; a last part that is not whole 4 KiB
    blocks is padded, then the file cut back to size), in any order; small files stay buffered."""
    root = tmp_path / "c"
    big = content(20, 5 * PART + 1234)  # a last part of 1,234 bytes
    small = content(21, PART + 7)
    with open_cache(root, direct_min_bytes=4 * PART) as cache:
        layout = FileLayout(len(big), PART)
        for k in (5, 0, 3, 1, 4, 2):  # the padded last part first, then the rest around it
            cache.put(("big", k), big[k * PART : (k + 1) * PART], layout)
        cache.put(*whole("small", small))
        assert cache.flush(10)
        assert cache.counters.get("cache.direct_bytes") == len(big)
        path = cache.complete_path("big", len(big))
        assert path is not None and Path(path).read_bytes() == big
        small_path = cache.complete_path("small", len(small))
        assert small_path is not None and Path(small_path).read_bytes() == small
    with open_cache(root, direct_min_bytes=4 * PART) as cache:  # inherited: the same bytes, checked
        path = cache.complete_path("big", len(big))
        assert path is not None and Path(path).read_bytes() == big
        assert cache.get(("big", 5)) == big[5 * PART :]


@pytest.mark.parametrize("zeroed", [True, False])
def test_aligned_buffers_start_on_a_block_boundary_zeroed_when_asked(zeroed: bool) -> None:
    for size in (1, 4096, 4097, 3 * 4096 + 5, 1 << 20, 8 << 20):
        buf = aligned_bytearray(size, zeroed=zeroed)
        assert type(buf) is bytearray and len(buf) == size
        if zeroed or size <= 4096:  # (at most one block: plain, cleared, never written direct)
            assert not any(buf[:64]) and not any(buf[-64:])
        buf[-1] = 7  # writable to its last byte, and its storage stays where it is
        assert buf[-1] == 7
        assert size <= 4096 or not _address(buf) % 4096


def test_aligned_parts_are_written_direct_without_a_copy(tmp_path: Path) -> None:
    """A part fetched into an ``aligned_bytearray`` (the reader does so for big files) goes to O_DIRECT
    as it is: the writer's aligned copy is never made. A last part that is not whole 4 KiB blocks, or a
    part in any other buffer, still goes through that copy."""
    big = content(23, 4 * PART + 100)
    sources: list[str] = []

    def spy(fd: int, data: Any, offset: int) -> None:
        sources.append(type(data).__name__)  # the part itself, or a view of the writer's copy
        _pwrite_all(fd, data, offset)

    with open_cache(tmp_path / "c", direct_min_bytes=PART, write_part=spy) as cache:
        layout = FileLayout(len(big), PART)
        for k in range(5):
            piece = big[k * PART : (k + 1) * PART]
            buf = aligned_bytearray(len(piece)) if k != 3 else bytearray(len(piece))
            buf[:] = piece
            cache.put(("big", k), buf, layout)
            assert cache.flush(10)
        assert sources == ["bytearray", "bytearray", "bytearray", "memoryview", "memoryview"]
        assert cache.counters.get("cache.direct_bytes") == len(big)
        path = cache.complete_path("big", len(big))
        assert path is not None and Path(path).read_bytes() == big
        assert cache.get(("big", 2)) == big[2 * PART : 3 * PART]


def test_a_filesystem_that_refuses_direct_writes_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """O_DIRECT refused at open (tmpfs) or at the write: the part is written through the page cache, and
    so is every later one; logged once."""
    real_open = os.open

    def no_direct_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    big = content(22, 4 * PART + 100)
    with caplog.at_level(logging.INFO, logger="encordfs.core.blockcache"):
        monkeypatch.setattr(os, "open", no_direct_open)
        with open_cache(tmp_path / "a", direct_min_bytes=PART) as cache:
            put_file(cache, "big", big)
            assert cache.flush(10)
            path = cache.complete_path("big", len(big))
            assert path is not None and Path(path).read_bytes() == big
            assert cache.counters.get("cache.direct_bytes") == 0
        monkeypatch.undo()

        refused: list[int] = []

        def no_direct_write(fd: int, data: Any, offset: int) -> None:
            if isinstance(data, memoryview) and not refused:
                refused.append(offset)
                raise OSError(errno.EINVAL, "Invalid argument")
            os.pwrite(fd, data, offset)

        with open_cache(tmp_path / "b", direct_min_bytes=PART, write_part=no_direct_write) as cache:
            put_file(cache, "big", big)
            assert cache.flush(10)
            path = cache.complete_path("big", len(big))
            assert path is not None and Path(path).read_bytes() == big
            assert refused == [0] and cache.counters.get("cache.direct_bytes") == 0
    assert sum("O_DIRECT refused" in r.getMessage() for r in caplog.records) == 2  # once per cache


def test_new_files_are_made_in_a_spread_directory_that_moves_when_creates_are_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache dir is marked a top of directory hierarchies (ext4: its subdirectories spread over the
    disk); each owner makes new files in a directory of its own, and moves to a new one when creates
    there are slow. Leftover directories of earlier owners (and the old ``tmp/``) are removed."""
    root = tmp_path / "c"
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "half-made").write_bytes(b"x")
    (root / "tmp.dead").mkdir()
    (root / "tmp.dead" / "half-made").write_bytes(b"y")
    monkeypatch.setattr(blockcache, "_CREATE_SAMPLE", 4)
    monkeypatch.setattr(blockcache, "_SLOW_CREATE_S", -1.0)  # every sample counts as slow
    with open_cache(root) as cache:
        made = sorted(p.name for p in root.glob("tmp*"))
        assert len(made) == 1 and made[0].startswith("tmp.") and made[0] != "tmp.dead"
        for i in range(10):
            cache.put(*whole(f"f{i}", block(i)))
        assert cache.flush(10)
        assert cache.counters.get("cache.tmp_dir_moves") == 2  # after the 4th and the 8th create
        assert len(list(root.glob("tmp*"))) == 1 and tmp_files(root) == []
        assert all(cache.get((f"f{i}", 0)) == block(i) for i in range(10))
    flags = subprocess.run(["lsattr", "-d", str(root)], capture_output=True, text=True)
    if flags.returncode == 0:  # (ext2/3/4 only; elsewhere the mark is skipped)
        assert "T" in flags.stdout.split()[0]


def test_only_real_tmp_directories_of_earlier_owners_are_emptied(tmp_path: Path) -> None:
    """A file or a symlink named like a tmp dir is left alone: opening the cache neither fails on it nor
    deletes what a link points to."""
    root, elsewhere = tmp_path / "c", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(b"k")
    (root / "tmp.file").write_bytes(b"f")
    (root / "tmp.link").symlink_to(elsewhere)
    with open_cache(root) as cache:
        cache.put(*whole("f", block(1)))
        assert cache.flush(10) and cache.get(("f", 0)) == block(1)
    assert (elsewhere / "keep").read_bytes() == b"k" and (root / "tmp.file").exists()
