"""Block caches: LRU by bytes, disk persistence, integrity, the free-space floor, exclusive ownership."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from encordfs.core.blockcache import (
    Block,
    DiskBlockCache,
    MemoryBlockCache,
    TieredBlockCache,
    _write_block_file,
)
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
        assert cache.flush(5)
        files = [p for p in (root / "blocks").rglob("*") if p.is_file()]
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_dir()} == {0o700}
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_disk_lru_eviction_under_cap_and_recency_survives_reopen(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cap = 3 * (10 * KiB + 20)  # three blocks with their headers
    with DiskBlockCache(root, capacity_bytes=cap, min_free_bytes=0) as cache:
        for i in range(3):
            cache.put(("f", i), block(i))
            assert cache.flush(5)
            _bump_mtimes(root, i)
        assert cache.get(("f", 0)) == block(0)  # touched: now the most recent, on disk from close
    with DiskBlockCache(root, capacity_bytes=cap, min_free_bytes=0) as cache:
        cache.put(("f", 3), block(3))
        assert cache.flush(5)
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
        assert len(list((root / "blocks").rglob("*.*"))) == 0  # close drained the queue, no tmp names
        assert cache.used_bytes <= 2 * (10 * KiB + 20)


def test_disk_free_space_floor(tmp_path: Path) -> None:
    disk_bytes, others = 200 * KiB, [0]  # a fake filesystem: free = size - other files - our blocks

    def free_bytes(path: Path) -> int:
        ours = sum(p.stat().st_size for p in (path / "blocks").rglob("*") if p.is_file())
        return disk_bytes - others[0] - ours

    cache = DiskBlockCache(
        tmp_path / "c", capacity_bytes=1 << 30, min_free_bytes=150 * KiB, free_bytes=free_bytes, free_check_bytes=0
    )  # free_check_bytes=0: statvfs before every write, so the test sees others' usage at once
    with cache:
        for i in range(6):
            cache.put(("f", i), block(i))
            assert cache.flush(5)
        assert free_bytes(tmp_path) >= 150 * KiB
        assert cache.contains(("f", 5)) and not cache.contains(("f", 0))
        assert cache.counters.get("cache.evictions_disk") >= 2
        others[0] = 195 * KiB  # someone else filled the disk
        cache.put(("f", 6), block(6))
        assert cache.flush(5)
        assert not cache.contains(("f", 6)) and cache.used_bytes == 0  # gives space back, never fills the disk
        assert cache.counters.get("cache.skipped_disk") == 1


def test_disk_corrupted_or_missing_file_is_a_miss(tmp_path: Path) -> None:
    with DiskBlockCache(tmp_path / "c", capacity_bytes=1 << 20, min_free_bytes=0) as cache:
        cache.put(("f", 0), block(0))
        cache.put(("f", 1), block(1))
        cache.put(("f", 2), block(2))
    # damaged between owners (crash, power loss, bit rot): the crc32 is checked on a block's first hit
    with DiskBlockCache(tmp_path / "c", capacity_bytes=1 << 20, min_free_bytes=0) as cache:
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
        assert cache.flush(5)
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
        assert cache.flush(5)
        snap = counters.snapshot()
        assert (snap["cache.hits_mem"], snap["cache.hits_disk"], snap["cache.misses"]) == (2, 1, 1)
        assert snap["cache.bytes_written"] == 2 * (10 * KiB + 20)


# ---------------------------------------------------------------------------------------------- disk writer


class GatedDisk:
    """A ``write_file`` seam: writes for real, but each write first waits until the gate opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.written: list[str] = []

    def __call__(self, path: str, data: Block) -> None:
        self.started.release()
        assert self.gate.wait(10)
        _write_block_file(path, data)
        self.written.append(path)


def test_put_returns_before_the_disk_write_and_serves_the_queued_block(tmp_path: Path) -> None:
    disk = GatedDisk()
    with DiskBlockCache(tmp_path / "c", capacity_bytes=1 << 20, min_free_bytes=0, write_file=disk) as cache:
        cache.put(("f", 0), block(0))  # returns although the disk is stuck
        assert disk.started.acquire(timeout=5)
        assert cache.contains(("f", 0)) and cache.get(("f", 0)) == block(0)  # the queued buffer
        assert cache.used_bytes == 0 and cache.backlog_bytes == 10 * KiB
        assert not cache.flush(0.05)
        disk.gate.set()
        assert cache.flush(5)
        assert cache.used_bytes == 10 * KiB + 20 and cache.backlog_bytes == 0
        assert cache.get(("f", 0)) == block(0)  # now from the file
        assert cache.counters.get("cache.hits_disk") == 2


def test_full_backlog_skips_the_disk_instead_of_waiting(tmp_path: Path) -> None:
    disk = GatedDisk()
    cache = DiskBlockCache(
        tmp_path / "c", capacity_bytes=1 << 20, min_free_bytes=0, max_backlog_bytes=25 * KiB, write_file=disk
    )
    with cache:
        for i in range(4):
            cache.put(("f", i), block(i))  # 0 is being written, 1 queued, 2 and 3 do not fit
        assert cache.counters.get("cache.skipped_disk_backlog") == 2
        assert [cache.contains(("f", i)) for i in range(4)] == [True, True, False, False]
        disk.gate.set()
        assert cache.flush(5)
        cache.put(("f", 2), block(2))  # room again
        assert cache.flush(5)
        assert [cache.contains(("f", i)) for i in range(4)] == [True, True, True, False]
        assert cache.used_bytes == 3 * (10 * KiB + 20)


def test_put_with_wait_waits_for_room_instead_of_skipping(tmp_path: Path) -> None:
    disk = GatedDisk()
    cache = DiskBlockCache(
        tmp_path / "c", capacity_bytes=1 << 20, min_free_bytes=0, max_backlog_bytes=15 * KiB, write_file=disk
    )
    with cache:
        cache.put(("f", 0), block(0))
        waiter = threading.Thread(target=cache.put, args=(("f", 1), block(1)), kwargs={"wait": True})
        waiter.start()
        waiter.join(0.1)
        assert waiter.is_alive() and not cache.contains(("f", 1))
        disk.gate.set()
        waiter.join(5)
        assert cache.flush(5) and cache.contains(("f", 1))
        assert cache.counters.get("cache.skipped_disk_backlog") == 0


def test_close_drains_the_queue(tmp_path: Path) -> None:
    root = tmp_path / "c"
    disk = GatedDisk()
    cache = DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0, write_file=disk)
    for i in range(3):
        cache.put(("f", i), block(i))
    threading.Timer(0.2, disk.gate.set).start()
    cache.close()  # waits for the writer
    assert len(disk.written) == 3
    cache.put(("f", 9), block(9))  # after close: ignored
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0) as again:
        assert [again.get(("f", i)) for i in range(3)] == [block(i) for i in range(3)]
        assert not again.contains(("f", 9))


def test_close_drops_what_a_stuck_disk_did_not_write(tmp_path: Path) -> None:
    root = tmp_path / "c"
    disk = GatedDisk()
    cache = DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0, write_file=disk, close_timeout_s=0.5)
    for i in range(3):
        cache.put(("f", i), block(i))
    assert disk.started.acquire(timeout=5)
    threading.Timer(0.8, disk.gate.set).start()  # after the first wait of close: the queue is dropped
    cache.close()
    assert len(disk.written) == 1  # the write in progress finished, the queued ones were dropped
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0) as again:
        assert again.get(("f", 0)) == block(0)
        assert not again.contains(("f", 1)) and not again.contains(("f", 2))
        assert again.used_bytes == 10 * KiB + 20  # nothing indexed without its file, nothing left over
    assert list((root / "tmp").iterdir()) == []


def test_crash_mid_write_leaves_only_tmp_files(tmp_path: Path) -> None:
    root = tmp_path / "c"
    crasher = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from encordfs.core.blockcache import DiskBlockCache, _write_block_file

        def write_file(path, data):
            if data[0] == 2:  # the third block: die halfway through writing it
                with open(path, "wb") as f:
                    f.write(b"EFSBLK01" + bytes(100))
                os._exit(3)
            _write_block_file(path, data)

        cache = DiskBlockCache(Path({str(root)!r}), capacity_bytes=1 << 20, min_free_bytes=0, write_file=write_file)
        for i in range(4):
            cache.put(("f", i), bytes([i]) * 10240)
        cache.flush(10)
        """
    )
    assert subprocess.run([sys.executable, "-c", crasher], timeout=60, check=False).returncode == 3
    assert len(list((root / "tmp").iterdir())) == 1
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0) as cache:
        assert list((root / "tmp").iterdir()) == []
        assert [cache.get(("f", i)) for i in range(4)] == [block(0), block(1), None, None]
        assert cache.counters.get("cache.corrupt_disk") == 0 and cache.used_bytes == 2 * (10 * KiB + 20)


def test_statvfs_only_every_n_bytes_or_seconds(tmp_path: Path) -> None:
    calls: list[Path] = []
    now = [0.0]

    def free_bytes(path: Path) -> int:
        calls.append(path)
        return 1 << 40

    cache = DiskBlockCache(
        tmp_path / "c",
        capacity_bytes=1 << 30,
        min_free_bytes=0,
        free_bytes=free_bytes,
        free_check_bytes=35 * KiB,
        free_check_interval_s=5.0,
        clock=lambda: now[0],
    )
    with cache:
        before = len(calls)  # open checks once
        for i in range(3):
            cache.put(("f", i), block(i))
        assert cache.flush(5) and len(calls) == before  # 30 KiB written: the estimate still holds
        cache.put(("f", 3), block(3))
        cache.put(("f", 4), block(4))
        assert cache.flush(5) and len(calls) == before + 1  # past 35 KiB: measured again
        now[0] += 6.0
        cache.put(("f", 5), block(5))
        assert cache.flush(5) and len(calls) == before + 2  # and after 5 s


def test_hits_do_not_touch_files_but_recency_is_persisted_at_close(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with DiskBlockCache(root, capacity_bytes=1 << 20, min_free_bytes=0) as cache:
        cache.put(("f", 0), block(0))
        assert cache.flush(5)
        (path,) = [p for p in (root / "blocks").rglob("*") if p.is_file()]
        os.utime(path, ns=(10**18, 10**18))  # an old file
        assert cache.get(("f", 0)) == block(0)
        assert path.stat().st_mtime_ns == 10**18  # no utime on the read path
    assert path.stat().st_mtime_ns > 10**18
