"""Block caches: LRU by bytes, disk persistence, integrity, the free-space floor, exclusive ownership."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from encordfs.core.blockcache import DiskBlockCache, MemoryBlockCache, TieredBlockCache
from encordfs.core.counters import Counters
from encordfs.errors import Busy

KiB = 1024


def block(tag: int, size: int = 10 * KiB) -> bytes:
    return bytes([tag % 256]) * size


# ---------------------------------------------------------------------------------------------- memory


def test_memory_lru_by_bytes() -> None:
    cache = MemoryBlockCache(capacity_bytes=30 * KiB)
    for i in range(3):
        cache.put(("f:1", i), block(i))
    assert cache.get(("f:1", 0)) == block(0)  # 0 is now the most recent
    cache.put(("f:1", 3), block(3))
    assert cache.get(("f:1", 1)) is None  # the least recently used went
    assert [cache.contains(("f:1", i)) for i in range(4)] == [True, False, True, True]
    assert cache.used_bytes <= 30 * KiB
    snap = cache.counters.snapshot()
    assert snap["cache.evictions_mem"] == 1 and snap["cache.hits_mem"] == 1 and snap["cache.misses"] == 1


def test_memory_block_larger_than_capacity_is_not_stored() -> None:
    cache = MemoryBlockCache(capacity_bytes=5 * KiB)
    cache.put(("f", 0), block(1))
    assert cache.get(("f", 0)) is None and cache.used_bytes == 0


def test_changed_content_is_a_different_key() -> None:
    cache = MemoryBlockCache(capacity_bytes=1 << 20)
    cache.put(("item:100:2024-01-01", 0), b"old")
    assert cache.get(("item:120:2024-02-01", 0)) is None


# ---------------------------------------------------------------------------------------------- disk


def test_disk_put_get_and_survives_reopen(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0) as cache:
        cache.put(("item:5:t", 0), b"hello")
        cache.put(("item:5:t", 1), b"world")
        assert cache.get(("item:5:t", 1)) == b"world"
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0) as again:
        assert again.get(("item:5:t", 0)) == b"hello"
        assert again.get(("item:6:t", 0)) is None  # another content key
        assert again.counters.snapshot()["cache.hits_disk"] == 1


def test_disk_permissions(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0) as cache:
        cache.put(("k", 0), b"x")
        files = [p for p in (root / "blocks").rglob("*") if p.is_file()]
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_disk_lru_eviction_under_cap_and_recency_survives_reopen(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cap = 3 * (10 * KiB + 20)  # three blocks with their headers
    with DiskBlockCache(root, capacity_bytes=cap, min_free_bytes=0) as cache:
        for i in range(3):
            cache.put(("f", i), block(i))
            _bump_mtimes(root, i)
        assert cache.get(("f", 0)) == block(0)  # touched: now the most recent, also on disk
    with DiskBlockCache(root, capacity_bytes=cap, min_free_bytes=0) as cache:
        cache.put(("f", 3), block(3))
        assert not cache.contains(("f", 1))
        assert all(cache.contains(("f", i)) for i in (0, 2, 3))
        assert cache.used_bytes <= cap
        assert cache.counters.get("cache.evictions_disk") == 1
    assert sum(p.stat().st_size for p in (root / "blocks").rglob("*") if p.is_file()) <= cap


def _bump_mtimes(root: Path, step: int) -> None:
    """Age every file already written, so ordering by mtime does not depend on timer resolution."""
    for path in (root / "blocks").rglob("*"):
        if path.is_file():
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9 * (10 - step)))


def test_disk_lowered_capacity_evicts_on_open(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0) as cache:
        for i in range(5):
            cache.put(("f", i), block(i))
    with DiskBlockCache(root, capacity_bytes=2 * (10 * KiB + 20), min_free_bytes=0) as cache:
        assert cache.used_bytes <= 2 * (10 * KiB + 20)


def test_disk_free_space_floor(tmp_path: Path) -> None:
    disk_bytes, others = 200 * KiB, [0]  # a fake filesystem: free = size - other files - our blocks

    def free_bytes(path: Path) -> int:
        ours = sum(p.stat().st_size for p in (path / "blocks").rglob("*") if p.is_file())
        return disk_bytes - others[0] - ours

    cache = DiskBlockCache(tmp_path / "c", capacity_bytes=1 << 30, min_free_bytes=150 * KiB, free_bytes=free_bytes)
    with cache:
        for i in range(6):
            cache.put(("f", i), block(i))
        assert free_bytes(tmp_path) >= 150 * KiB
        assert cache.contains(("f", 5)) and not cache.contains(("f", 0))
        assert cache.counters.get("cache.evictions_disk") >= 2
        others[0] = 195 * KiB  # someone else filled the disk
        cache.put(("f", 6), block(6))
        assert not cache.contains(("f", 6)) and cache.used_bytes == 0  # gives space back, never fills the disk
        assert cache.counters.get("cache.skipped_disk") == 1


def test_disk_corrupted_or_missing_file_is_a_miss(tmp_path: Path) -> None:
    with DiskBlockCache(tmp_path / "c", capacity_bytes=1 << 20, min_free_bytes=0) as cache:
        cache.put(("f", 0), block(0))
        cache.put(("f", 1), block(1))
        cache.put(("f", 2), block(2))
        paths = [p for p in (tmp_path / "c" / "blocks").rglob("*") if p.is_file()]
        by_content = {p.read_bytes()[-1]: p for p in paths}
        flipped = bytearray(by_content[0].read_bytes())
        flipped[100] ^= 0xFF
        by_content[0].write_bytes(bytes(flipped))
        by_content[1].write_bytes(by_content[1].read_bytes()[:50])
        by_content[2].unlink()
        assert cache.get(("f", 0)) is None
        assert cache.get(("f", 1)) is None
        assert cache.get(("f", 2)) is None
        assert not cache.contains(("f", 0)) and cache.used_bytes == 0
        assert cache.counters.get("cache.corrupt_disk") == 3
        cache.put(("f", 0), block(0))  # and it can be written again
        assert cache.get(("f", 0)) == block(0)


def test_disk_clears_leftover_tmp_files(tmp_path: Path) -> None:
    root = tmp_path / "c"
    DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0).close()
    (root / "tmp" / "half-written").write_bytes(b"x")
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0):
        assert list((root / "tmp").iterdir()) == []


def test_second_owner_in_same_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0):
        with pytest.raises(Busy, match=rf"cache dir .* is in use by another encordfs mount \(pid {os.getpid()}\)"):
            DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0)
    DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0).close()  # released on close


def test_second_owner_in_another_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    holder = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from encordfs.core.blockcache import DiskBlockCache
        cache = DiskBlockCache(Path({str(root)!r}), capacity_bytes=1 << 20, min_free_bytes=0)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(Busy) as info:
            DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0)
        assert f"(pid {proc.pid})" in str(info.value)
        assert info.value.errno == 16
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close() if proc.stdout else None
    DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0).close()  # the dead owner's lock is gone


# ---------------------------------------------------------------------------------------------- tiered


def test_tiered_promotes_disk_hits_and_counts_once(tmp_path: Path) -> None:
    counters = Counters()
    disk = DiskBlockCache(tmp_path / "c", capacity_bytes=1 << 20, min_free_bytes=0, counters=counters)
    memory = MemoryBlockCache(capacity_bytes=15 * KiB, counters=counters)
    with disk:
        cache = TieredBlockCache(memory, disk)
        cache.put(("f", 0), block(0))
        cache.put(("f", 1), block(1))  # pushes block 0 out of memory; both on disk
        assert cache.get(("f", 1)) == block(1)
        assert cache.get(("f", 0)) == block(0)  # from disk, promoted
        assert cache.get(("f", 0)) == block(0)  # from memory
        assert cache.get(("f", 9)) is None
        snap = counters.snapshot()
        assert (snap["cache.hits_mem"], snap["cache.hits_disk"], snap["cache.misses"]) == (2, 1, 1)
        assert snap["cache.bytes_written"] == 2 * (10 * KiB + 20)
