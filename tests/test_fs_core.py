"""The filesystem core without a kernel or a server: MemoryBackend + the real catalog and reader."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import threading
import time
from pathlib import Path

import pytest

from encordfs import errors
from encordfs.backend import ChildRecord, DatasetRecord
from encordfs.backend.memory import MemoryBackend
from encordfs.core.blockcache import DiskFileCache, MemoryBlockCache, TieredBlockCache
from encordfs.core.catalog import ROOT_INO, Catalog
from encordfs.core.fs import EncordFS, Options
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from encordfs.core.writes import WriteQueue
from harness.fakes import Clock
from harness.fakes import row_record as _row


class MemoryFetcher:
    """RangeFetcher over MemoryBackend's mem:// URLs; counts requests."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.requests = 0

    def fetch_into(self, url_source, start: int, out: memoryview, total: int | None = None) -> None:  # type: ignore[no-untyped-def]
        self.requests += 1
        blob = self.backend.blobs[url_source(False).removeprefix("mem://")]
        if total is not None and len(blob) != total:  # as the HTTP fetcher does with Content-Range
            raise errors.Stale(f"the object is now {len(blob)} bytes, not {total}")
        data = self.backend.fetch(url_source(False), start, start + len(out))
        if len(data) != len(out):
            raise errors.RemoteIOError("short read")
        out[:] = data

    def probe_size(self, url_source) -> int:  # type: ignore[no-untyped-def]
        self.requests += 1
        return len(self.backend.blobs[url_source(False).removeprefix("mem://")])


def _memory_reader(fetcher: MemoryFetcher, budget: int) -> ReadPipeline:
    """A read pipeline over ``fetcher`` with a memory cache and memory budget of ``budget`` bytes, 1 MiB parts."""
    return ReadPipeline(
        fetcher, MemoryBlockCache(budget), small_file_bytes=1 << 20, part_bytes=1 << 20, memory_budget_bytes=budget
    )


@pytest.fixture()
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds1", "street", "d", 1e9, 1e9, 0, "folder1", "admin"))
    backend.add_row(_row("r1", "ds1", "cat.jpg", b"meow" * 100, metadata={"split": "train", "n": 3}), b"meow" * 100)
    backend.add_row(_row("r2", "ds1", "cat.jpg", b"purr" * 50), b"purr" * 50)
    backend.add_row(_row("g1", "ds1", "burst", None, data_type="IMG_GROUP"))
    for i in range(3):
        backend.add_child(
            "item-g1",
            ChildRecord(f"c{i}", f"f{i}.png", i, "image", None, "image/png", 10, 1, 1, 1e9, 1e9, "encord"),
            bytes([i]) * 10,
        )
    clock = Clock()
    catalog = Catalog(tmp_path / "catalog.sqlite")
    fetcher = MemoryFetcher(backend)
    urls = SignedUrlCache(backend.sign, clock=clock)
    reader = _memory_reader(fetcher, 64 << 20)
    fs = EncordFS(backend, catalog, reader, urls, Options(uid=0, gid=0, metadata_ttl_s=60), clock=clock)
    yield fs, backend, clock, fetcher
    fs.close()
    reader.close()
    catalog.close()


def _read_all(fs: EncordFS, path: str) -> bytes:
    fh = fs.open(fs.resolve(path), writable=False).fh
    try:
        return fs.read(fh, 0, 1 << 20)
    finally:
        fs.release(fh)


def test_big_cold_opens_are_marked_until_a_direct_reader_reads_small_pieces(world) -> None:  # type: ignore[no-untyped-def]
    """``open`` marks a file of at least ``direct_io_min`` not on disk (``bypass_page_cache``); once a
    handle the binding opened direct-io (``opened_direct``) made ``SMALL_DIRECT_READS`` small reads, the
    file's later opens are not marked. Small reads of a handle not opened direct-io count for nothing."""
    from dataclasses import replace

    from encordfs.core.fs import SMALL_DIRECT_READS

    fs, _, _, _ = world
    fs.options = replace(fs.options, direct_io_min=300)  # cat.jpg: 400 bytes; cat~r2.jpg: 200
    big, small = fs.resolve("/street/cat.jpg"), fs.resolve("/street/cat~r2.jpg")
    assert not fs.open(small, writable=False).bypass_page_cache

    def read_in_pieces(direct: bool) -> None:
        opened = fs.open(big, writable=False)
        assert opened.bypass_page_cache
        if direct:
            fs.opened_direct(opened.fh)
        try:
            for i in range(SMALL_DIRECT_READS):
                assert bytes(fs.read_held(opened.fh, i * 4, 4) or fs.read(opened.fh, i * 4, 4)) == b"meow"
        finally:
            fs.release(opened.fh)

    read_in_pieces(direct=False)
    assert fs.status()["direct_io"] == {"opens": 0, "small_readers": 0}
    read_in_pieces(direct=True)
    assert fs.status()["direct_io"] == {"opens": 1, "small_readers": 1}
    assert not fs.open(big, writable=False).bypass_page_cache


def test_a_reader_of_big_pieces_split_by_the_kernel_is_not_a_small_reader(world) -> None:  # type: ignore[no-untyped-def]
    """The kernel splits a 1 MiB read into a buffer that does not start on a page boundary into a READ of
    1 MiB less the offset and one of the rest (16 bytes for a Python ``bytearray`` of 1 MiB): half the reads of
    such a reader are tiny, but their average is not, and its file's later opens stay direct-io."""
    from dataclasses import replace

    from encordfs.core.fs import SMALL_DIRECT_READS

    fs, _, _, _ = world
    fs.options = replace(fs.options, direct_io_min=300)
    big = fs.resolve("/street/cat.jpg")
    opened = fs.open(big, writable=False)
    fs.opened_direct(opened.fh)
    try:
        for i in range(4 * SMALL_DIRECT_READS):  # a file of 128 MiB and more
            length = (1 << 20) - 16 if i % 2 == 0 else 16
            assert bytes(fs.read_held(opened.fh, 0, length) or fs.read(opened.fh, 0, length))[:4] == b"meow"
    finally:
        fs.release(opened.fh)
    assert fs.status()["direct_io"] == {"opens": 1, "small_readers": 0}
    assert fs.open(big, writable=False).bypass_page_cache


def test_a_direct_reader_that_turns_to_small_pieces_is_a_small_reader(world) -> None:  # type: ignore[no-untyped-def]
    """The rule looks at every window of reads, not only the first: a handle that reads big pieces first
    and then small ones (a header read whole, then random 4 KiB reads) sends its file's later opens
    through the page cache once a window of its reads averages small."""
    from dataclasses import replace

    from encordfs.core.fs import SMALL_DIRECT_READS

    fs, _, _, _ = world
    fs.options = replace(fs.options, direct_io_min=300)
    big = fs.resolve("/street/cat.jpg")
    opened = fs.open(big, writable=False)
    fs.opened_direct(opened.fh)
    try:
        for length in [1 << 20] * SMALL_DIRECT_READS + [4096] * (SMALL_DIRECT_READS - 1):
            assert bytes(fs.read_held(opened.fh, 0, length) or fs.read(opened.fh, 0, length))[:4] == b"meow"
        assert fs.status()["direct_io"]["small_readers"] == 0
        assert bytes(fs.read(opened.fh, 0, 4096))[:4] == b"meow"
    finally:
        fs.release(opened.fh)
    assert fs.status()["direct_io"] == {"opens": 1, "small_readers": 1}
    assert not fs.open(big, writable=False).bypass_page_cache


def test_tree_names_and_bytes(world) -> None:  # type: ignore[no-untyped-def]
    fs, backend, _, _ = world
    assert [n for n, _ in fs.readdir(ROOT_INO)] == ["street"]
    names = [n for n, _ in fs.readdir(fs.resolve("/street"))]
    assert names == ["cat.jpg", "cat~r2.jpg", "burst"]
    assert _read_all(fs, "/street/cat.jpg") == b"meow" * 100
    assert _read_all(fs, "/street/cat~r2.jpg") == b"purr" * 50
    assert [n for n, _ in fs.readdir(fs.resolve("/street/burst"))] == ["f0.png", "f1.png", "f2.png"]
    assert _read_all(fs, "/street/burst/f2.png") == bytes([2]) * 10
    attr = fs.getattr(fs.resolve("/street/cat.jpg"))
    assert attr.size == 400 and attr.mtime == 1.5e9 and attr.mode & 0o777 == 0o444
    root = fs.getattr(ROOT_INO)
    assert root.mtime == root.ctime == 1_700_000_000.0  # when the mount started, not the epoch


def test_a_plain_listing_gives_what_readdir_gives_without_attributes(world) -> None:  # type: ignore[no-untyped-def]
    fs, _, _, _ = world
    for path in ("/", "/street", "/street/burst", "/.encordfs"):
        ino = fs.resolve(path)
        full = [(name, a.ino, stat.S_ISDIR(a.mode)) for name, a in fs.readdir(ino)]
        assert list(fs.readdir_names(ino)) == full and full
        assert list(fs.readdir_names(ino, full[0][1])) == full[1:]  # resumed after an inode
    with pytest.raises(errors.NotADirectory):
        fs.readdir_names(fs.resolve("/street/cat.jpg"))


def test_xattrs(world) -> None:  # type: ignore[no-untyped-def]
    fs, *_ = world
    ino = fs.resolve("/street/cat.jpg")
    assert fs.getxattr(ino, "user.encord.uid") == b"r1"
    assert fs.getxattr(ino, "user.encord.data_type") == b"IMAGE"
    assert fs.getxattr(ino, "user.encord.width") == b"4"
    assert fs.getxattr(ino, "user.encord.frames_per_second") == b"null"
    assert fs.getxattr(ino, "user.encord.client_metadata") == b'{"split":"train","n":3}'
    assert fs.getxattr(ino, "user.encord.meta.split") == b'"train"'
    assert "user.encord.meta.n" in fs.listxattr(ino)
    with pytest.raises(errors.FsError) as e:
        fs.getxattr(ino, "user.encord.nope")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(errors.FsError) as e:
        fs.getxattr(ino, "security.selinux")
    assert e.value.errno == errno.ENOTSUP
    assert fs.getxattr(fs.resolve("/street"), "user.encord.dataset_hash") == b"ds1"


def test_missing_and_wrong_kind(world) -> None:  # type: ignore[no-untyped-def]
    fs, *_ = world
    with pytest.raises(errors.FsError) as e:
        fs.resolve("/street/nope.jpg")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(errors.FsError) as e:
        fs.open(fs.resolve("/street/cat.jpg"), writable=True)
    assert e.value.errno == errno.EROFS
    with pytest.raises(errors.FsError) as e:
        fs.open(fs.resolve("/street/burst"), writable=False)
    assert e.value.errno == errno.EISDIR


def test_ttl_refresh_adds_and_removes_rows_keeping_names(world) -> None:  # type: ignore[no-untyped-def]
    fs, backend, clock, _ = world
    ino_before = fs.resolve("/street/cat~r2.jpg")
    backend.remove_row("ds1", "r1")
    backend.add_row(_row("r3", "ds1", "new.jpg", b"x"), b"x")
    assert "new.jpg" not in [n for n, _ in fs.readdir(fs.resolve("/street"))]  # within the TTL
    clock.now += 61
    calls = backend.calls["get_dataset"]
    list(fs.readdir(fs.resolve("/street")))  # served at once from the catalog; refresh runs in background
    fs.wait_refreshes()
    names = [n for n, _ in fs.readdir(fs.resolve("/street"))]
    assert "new.jpg" in names and "cat.jpg" not in names
    assert backend.calls["get_dataset"] == calls + 1
    assert fs.resolve("/street/cat~r2.jpg") == ino_before  # survivor keeps name and inode


def test_a_slow_folder_is_refreshed_less_often_than_the_ttl(world) -> None:  # type: ignore[no-untyped-def]
    fs, backend, clock, _ = world
    loads = backend.iter_rows

    def slow_load(dataset_uid: str):  # type: ignore[no-untyped-def]
        clock.now += 100  # this load "takes" 100 s: refreshes come at most every 1,000 s
        return loads(dataset_uid)

    backend.iter_rows = slow_load
    street = fs.resolve("/street")
    fs.refresh(street)
    calls = backend.calls["get_dataset"]
    clock.now += 61  # past the 60 s TTL, not past 10 x the load
    list(fs.readdir(street))
    fs.wait_refreshes()
    assert backend.calls["get_dataset"] == calls
    clock.now += 1000
    list(fs.readdir(street))
    fs.wait_refreshes()
    assert backend.calls["get_dataset"] == calls + 1
    fs.refresh(street)  # explicit: at once, whatever the age
    assert backend.calls["get_dataset"] == calls + 2


def test_one_signing_call_for_a_folder(tmp_path: Path) -> None:
    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds", "many", "", 0, 0, 0, None, None))
    for i in range(1500):
        backend.add_row(_row(f"r{i:05d}", "ds", f"{i}.jpg", b"z"), b"z")
    catalog = Catalog(tmp_path / "c.sqlite")
    urls = SignedUrlCache(backend.sign)
    reader = _memory_reader(MemoryFetcher(backend), 1 << 26)
    fs = EncordFS(backend, catalog, reader, urls, Options(uid=0, gid=0))
    try:
        for i in range(1500):
            assert _read_all(fs, f"/many/{i}.jpg") == b"z"
        assert backend.calls["sign"] == 2  # 1000 + 500
    finally:
        fs.close()
        reader.close()
        catalog.close()


def test_a_shuffled_reader_signs_a_folder_in_full_batches(tmp_path: Path) -> None:
    """Files opened in a shuffled order: each signing call fills its batch from the folder's start when
    fewer than 999 unsigned files follow the one opened, so 2,000 files cost 2 calls, not one per file
    opened before everything signed so far (9-11 in the WAN epoch before the batch wrapped around)."""
    import random

    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds", "many", "", 0, 0, 0, None, None))
    for i in range(2000):
        backend.add_row(_row(f"r{i:05d}", "ds", f"{i}.jpg", b"z"), b"z")
    catalog = Catalog(tmp_path / "c.sqlite")
    reader = _memory_reader(MemoryFetcher(backend), 1 << 26)
    fs = EncordFS(backend, catalog, reader, SignedUrlCache(backend.sign), Options(uid=0, gid=0))
    try:
        names = [n for n, _ in fs.readdir(fs.resolve("/many"))]
        order = [n for n in names if n.endswith(".jpg")]
        assert len(order) == 2000
        random.Random(7).shuffle(order)
        for name in order:
            assert _read_all(fs, f"/many/{name}") == b"z"
        assert backend.calls["sign"] == 2
    finally:
        fs.close()
        reader.close()
        catalog.close()


def test_metadata_size_limit_and_validation(tmp_path: Path) -> None:
    from encordfs.core.writes import WriteQueue

    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds", "d", "", 0, 0, 0, None, None))
    backend.add_row(_row("r1", "ds", "a.jpg", b"z", metadata={"k": 1}), b"z")
    catalog = Catalog(tmp_path / "c.sqlite")
    writes = WriteQueue.open(tmp_path / "journal.sqlite", backend.push, start=False)
    reader = _memory_reader(MemoryFetcher(backend), 1 << 24)
    fs = EncordFS(
        backend,
        catalog,
        reader,
        SignedUrlCache(backend.sign),
        Options(uid=0, gid=0, max_metadata_bytes=100),
        writes=writes,
    )
    try:
        ino = fs.resolve("/d/a.jpg")
        with pytest.raises(errors.FsError) as e:
            fs.setxattr(ino, "user.encord.meta.big", b'"' + b"x" * 200 + b'"', 0)
        assert e.value.errno == errno.E2BIG
        with pytest.raises(errors.FsError) as e:
            fs.setxattr(ino, "user.encord.client_metadata", b"[]", 0)
        assert e.value.errno == errno.EINVAL
        assert writes.status()["pending_ops"] == 0
        fs.setxattr(ino, "user.encord.meta.small", b'"ok"', 0)
        assert fs.getxattr(ino, "user.encord.meta.small") == b'"ok"'
        assert writes.status()["pending_ops"] == 1
        writes.push_round()
        assert backend.row("r1").client_metadata == {"k": 1, "small": "ok"}
    finally:
        writes.close(0)
        fs.close()
        reader.close()
        catalog.close()


def test_concurrent_readers_of_a_folder_sign_in_full_batches(tmp_path: Path) -> None:
    """8 readers over 4,000 files of one folder, with a signing call slow enough to overlap: about one
    call per 1,000 files. (Guards the batching as a whole; the benchmark's P4 is the end-to-end check
    of the in-flight joining, which this in-memory setup does not reproduce on its own.)"""
    import threading
    import time as _time

    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds", "many", "", 0, 0, 0, None, None))
    for i in range(4000):
        backend.add_row(_row(f"r{i:05d}", "ds", f"{i}.jpg", b"z"), b"z")
    plain_sign = backend.sign

    def slow_sign(ids: list[str]) -> dict[str, str | None]:
        _time.sleep(0.02)  # a real signing call takes a round trip: readers overlap with it
        return plain_sign(ids)

    catalog = Catalog(tmp_path / "c.sqlite")
    reader = _memory_reader(MemoryFetcher(backend), 1 << 26)
    fs = EncordFS(backend, catalog, reader, SignedUrlCache(slow_sign), Options(uid=0, gid=0))
    try:
        names = [n for n, _ in fs.readdir(fs.resolve("/many"))]
        assert len(names) == 4000  # else the readers below have (some) nothing to read
        errors_seen: list[BaseException] = []

        def work(part: list[str]) -> None:
            try:
                for name in part:
                    assert _read_all(fs, f"/many/{name}") == b"z"
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors_seen.append(exc)

        threads = [threading.Thread(target=work, args=(names[i * 500 : (i + 1) * 500],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors_seen
        # 4 full batches, and at most one more per reader: its first read may start a batch before it sees
        # another's (5-7 here, 7 once in CI, with or without ``is_pending``: the cache's ``prime`` leaves
        # in-flight items out too); signing a reader's files one by one, or in small batches, is far more
        assert backend.calls["sign"] <= 8, backend.calls["sign"]
    finally:
        fs.close()
        reader.close()
        catalog.close()


def test_non_standard_json_is_refused() -> None:
    from encordfs.core.fs import _parse_json

    for bad in (b"NaN", b"Infinity", b'{"a": -Infinity}', b"1e400", b"[" * 5000):
        with pytest.raises(errors.FsError) as e:
            _parse_json(bad, "user.encord.meta.x")
        assert e.value.errno == errno.EINVAL
    assert _parse_json(b'{"a": 1.5e3}', "x") == {"a": 1500.0}


# ---------------------------------------------------------------------------------- rows without a storage item


@pytest.fixture()
def legacy_world(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A dataset the way recorded payloads look: rows without a storage item, a group without one, an
    image sequence with a video and frames, a DICOM series whose slices have no extension, and an image
    sequence with neither video nor frames."""
    from dataclasses import replace

    from encordfs.backend import legacy_key

    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds", "old", "", 1e9, 1e9, 0, None, "admin"))
    for i in range(6):
        row = replace(_row(f"L{i}", "ds", f"scan_{i}", b"x" * (i + 1)), backing_item_uuid=None, file_type="image/jpg")
        backend.add_row(row, bytes([65 + i]) * (i + 1))
    backend.add_row(_row("new", "ds", "new.jpg", b"n" * 5), b"n" * 5)
    group = replace(_row("G", "ds", "burst", None, data_type="IMG_GROUP"), backing_item_uuid=None)
    backend.add_row(group)
    for i in range(2):
        image = ChildRecord(f"img{i}", f"f{i}", i, "image", None, "image/jpg", 3, 1, 1, 1e9, 1e9, "encord")
        backend.add_child(
            legacy_key("ds", "G"), replace(image, sign_key=legacy_key("ds", "G", f"img{i}")), b"ab" + bytes([i])
        )
    backend.add_row(_row("S", "ds", "timelapse", None, data_type="IMG_GROUP"))
    for i in range(2):
        frame = ChildRecord(f"fr{i}", f"{i:03d}.png", i, "image", None, "image/png", 2, 4, 3, 1e9, 1e9, "encord")
        backend.add_child("item-S", replace(frame, sign_key=legacy_key("ds", "S", f"fr{i}")), b"F" + bytes([i]))
    video = ChildRecord("item-S", "timelapse", 0, "imageSequence", "v", "video/mp4", 8, 4, 3, 1e9, 1e9, "encord")
    backend.add_video("item-S", replace(video, frames_per_second=25.0, duration=0.08), b"\0\0\0\x1cftyp")
    backend.add_row(_row("D", "ds", "ct", None, data_type="DICOM"))
    dicom = ChildRecord("sl0", "slice_0", 0, "dicomFile", None, "application/octet-stream", 4, 2, 2, 1e9, 1e9, "encord")
    backend.add_child("item-D", dicom, b"DICM")
    backend.add_row(_row("E", "ds", "empty-seq", None, data_type="IMG_GROUP"))
    backend.member_errors["item-E"] = "listing the members of E: not authorised; data row E: not authorised"
    catalog = Catalog(tmp_path / "catalog.sqlite")
    urls = SignedUrlCache(backend.sign)
    reader = _memory_reader(MemoryFetcher(backend), 1 << 24)
    fs = EncordFS(backend, catalog, reader, urls, Options(uid=0, gid=0))
    yield fs, backend, urls
    fs.close()
    reader.close()
    catalog.close()


def test_legacy_rows_are_read_one_call_each_and_never_with_siblings(legacy_world) -> None:  # type: ignore[no-untyped-def]
    fs, backend, urls = legacy_world
    names = [n for n, _ in fs.readdir(fs.resolve("/old"))]
    assert names[:7] == [f"scan_{i}.jpg" for i in range(6)] + ["new.jpg"]  # image/jpg → .jpg
    assert fs.getxattr(fs.resolve("/old/scan_0.jpg"), "user.encord.backing_item_uuid") == b"null"
    for i in range(6):
        assert _read_all(fs, f"/old/scan_{i}.jpg") == bytes([65 + i]) * (i + 1)
    assert backend.calls["sign_legacy"] == 6  # one per legacy row: none signed along with a sibling
    assert urls.counters.get("urls.legacy_signs") == 6
    assert _read_all(fs, "/old/scan_3.jpg") == b"DDDD"  # cached like any URL
    assert backend.calls["sign_legacy"] == 6
    assert _read_all(fs, "/old/new.jpg") == b"nnnnn"  # a backed sibling: no legacy row signed with it
    assert backend.calls["sign_legacy"] == 6


def test_a_refused_legacy_row_is_eio_for_that_file_only(legacy_world) -> None:  # type: ignore[no-untyped-def]
    from encordfs.backend import legacy_key

    fs, backend, urls = legacy_world
    fs.readdir(fs.resolve("/old"))
    backend.refused[legacy_key("ds", "L2")] = errors.BackendError("signing data row L2: not authorised")
    with pytest.raises(errors.FsError) as e:
        _read_all(fs, "/old/scan_2.jpg")
    assert e.value.errno == errno.EIO
    assert _read_all(fs, "/old/scan_1.jpg") == b"BB"
    assert urls.failures() == {legacy_key("ds", "L2"): "signing data row L2: not authorised"}
    assert urls.counters.get("urls.sign_refusals") == 1
    del backend.refused[legacy_key("ds", "L2")]
    assert _read_all(fs, "/old/scan_2.jpg") == b"CCC"  # a refusal is not cached
    assert urls.failures() == {}


def test_groups_without_item_sequences_with_video_and_unlistable_groups(legacy_world) -> None:  # type: ignore[no-untyped-def]
    fs, backend, _ = legacy_world
    assert [n for n, _ in fs.readdir(fs.resolve("/old/burst"))] == ["f0.jpg", "f1.jpg"]
    assert _read_all(fs, "/old/burst/f1.jpg") == b"ab\x01"
    seq = [n for n, _ in fs.readdir(fs.resolve("/old/timelapse"))]
    assert seq == ["000.png", "001.png", "timelapse.mp4"]
    video = fs.resolve("/old/timelapse/timelapse.mp4")
    assert _read_all(fs, "/old/timelapse/timelapse.mp4") == b"\0\0\0\x1cftyp"
    assert fs.getxattr(video, "user.encord.item_type") == b"imageSequence"
    assert fs.getxattr(video, "user.encord.frames_per_second") == b"25.0"
    assert fs.getxattr(video, "user.encord.backing_item_uuid") == b"item-S"
    assert "user.encord.index" not in fs.listxattr(video)
    assert [n for n, _ in fs.readdir(fs.resolve("/old/ct"))] == ["slice_0.dcm"]  # a DICOM slice is .dcm
    empty = fs.resolve("/old/empty-seq")
    assert list(fs.readdir(empty)) == []
    assert b"not authorised" in fs.getxattr(empty, "user.encord.error")
    assert "user.encord.error" in fs.listxattr(empty)
    burst = fs.resolve("/old/burst")
    assert "user.encord.error" not in fs.listxattr(burst)
    with pytest.raises(errors.FsError) as e:
        fs.getxattr(burst, "user.encord.error")
    assert e.value.errno == errno.ENODATA
    del backend.member_errors["item-E"]
    fs.refresh(empty)
    assert "user.encord.error" in fs.listxattr(empty)  # still nothing there: "no members"
    assert fs.getxattr(empty, "user.encord.error") == b"Encord lists no members for this row"


def test_sizes_dates_and_errors_in_the_sdk_backend_forms() -> None:
    from encordfs.backend.sdk import _int, _stream_ts, _ts

    for raw in (3560366, 3560366.0, "3560366.0", "3560366"):
        assert _int(raw) == 3560366 and isinstance(_int(raw), int)
    for raw in (None, "None", True, float("nan"), -1, "x"):
        assert _int(raw) is None
    instant = 1675951923.0  # 2023-02-09 14:12:03 UTC
    for text in ("2023-02-09 14:12:03", "Thu, 09 Feb 2023 14:12:03 UTC", "2023-02-09T14:12:03", "2023-02-09T14:12:03Z"):
        assert _ts(text) == instant, text
    assert _ts("2023-02-09T14:12:03.472959") == instant + 0.472959
    assert _stream_ts("2023-02-09T14:12:03.472959") == instant  # a DataRow keeps whole seconds, as the SDK's
    assert _ts("2023-02-09T15:12:03+01:00") == instant


# ---------------------------------------------------------------------------------------------- backing files

MiB = 1 << 20


@pytest.fixture()
def backed(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A core whose reader has a disk tier, with backing files on: (fs, disk, fetcher, sources by path)."""
    rng = random.Random(5)
    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds1", "data", "d", 1e9, 1e9, 0, "folder1", "admin"))
    sources = {}
    for uid, title, size in [("s1", "a.bin", 300_000), ("s2", "b.bin", 500_000), ("b1", "big.bin", 3 * MiB + 5)]:
        data = rng.randbytes(size)
        backend.add_row(_row(uid, "ds1", title, data), data)
        sources[f"/data/{title}"] = data
    # Room for big.bin and one small file beside it: a third file evicts the oldest.
    disk = DiskFileCache(tmp_path / "files", capacity_bytes=3 * MiB + MiB // 2, min_free_bytes=0)
    fetcher = MemoryFetcher(backend)
    reader = ReadPipeline(
        fetcher,
        TieredBlockCache(MemoryBlockCache(8 * MiB), disk),
        small_file_bytes=MiB,
        part_bytes=MiB,
        memory_budget_bytes=16 * MiB,
    )
    catalog = Catalog(tmp_path / "catalog.sqlite")
    fs = EncordFS(backend, catalog, reader, SignedUrlCache(backend.sign), Options(uid=0, gid=0, backing_files=True))
    yield fs, disk, fetcher, sources
    fs.close()
    reader.close()
    disk.close()
    catalog.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_fd(fd: int) -> bytes:
    """A backing fd's whole file, as the kernel reads it (at its own offsets; the fd's position untouched)."""
    out, offset = bytearray(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        out += chunk
        offset += len(chunk)
    return bytes(out)


def test_a_small_file_is_handed_out_as_a_backing_file_once_its_read_landed(backed) -> None:  # type: ignore[no-untyped-def]
    fs, disk, fetcher, sources = backed
    first = fs.open(fs.resolve("/data/a.bin"), writable=False)
    assert first.backing_fd is None and fetcher.requests == 0  # nothing fetched for the open itself
    assert bytes(fs.read(first.fh, 0, MiB)) == sources["/data/a.bin"]  # its reads come here and store it
    fs.release(first.fh)
    assert disk.flush(5)
    opened = fs.open(fs.resolve("/data/a.bin"), writable=False)
    assert opened.backing_fd is not None and fetcher.requests == 1
    assert _sha(_read_fd(opened.backing_fd)) == _sha(sources["/data/a.bin"])  # what the binding would register
    assert bytes(fs.read(opened.fh, 0, MiB)) == sources["/data/a.bin"]  # the fallback: reads still work
    again = fs.open(fs.resolve("/data/a.bin"), writable=False)
    assert again.backing_fd is not None and _sha(_read_fd(again.backing_fd)) == _sha(sources["/data/a.bin"])
    assert again.backing_key == opened.backing_key == fs._content_key(fs.node(fs.resolve("/data/a.bin")))
    assert fetcher.requests == 1
    held = {fd: os.fstat(fd).st_ino for fd in (opened.backing_fd, again.backing_fd)}
    fs.release(opened.fh)
    fs.release(again.fh)
    for fd, ino in held.items():  # release closed the backing fds
        with pytest.raises(OSError):
            if os.fstat(fd).st_ino != ino:  # the fd number was reused by someone else
                raise OSError(fd)


def test_a_backing_fd_stays_valid_when_the_cache_evicts_the_file(backed) -> None:  # type: ignore[no-untyped-def]
    fs, disk, _, sources = backed
    assert bytes(_read_all(fs, "/data/a.bin")) == sources["/data/a.bin"] and disk.flush(5)
    first = fs.open(fs.resolve("/data/a.bin"), writable=False)
    assert first.backing_fd is not None
    assert disk.complete_path(fs._content_key(fs.node(fs.resolve("/data/a.bin"))), 300_000) is not None
    # Fill the cache past its cap: a.bin's file is evicted while "the binding" holds its fd.
    whole = b"".join(bytes(fs.read(fs.open(fs.resolve("/data/big.bin"), False).fh, k * MiB, MiB)) for k in range(4))
    assert whole == sources["/data/big.bin"]
    assert bytes(_read_all(fs, "/data/b.bin")) == sources["/data/b.bin"] and disk.flush(5)
    second = fs.open(fs.resolve("/data/b.bin"), writable=False)
    assert second.backing_fd is not None
    assert disk.counters.get("cache.evictions_disk") >= 1
    assert disk.complete_path(fs._content_key(fs.node(fs.resolve("/data/a.bin"))), 300_000) is None
    assert _sha(_read_fd(first.backing_fd)) == _sha(sources["/data/a.bin"])
    assert _sha(_read_fd(second.backing_fd)) == _sha(sources["/data/b.bin"])


def test_an_open_may_wait_unless_its_file_is_complete_and_checked_on_disk(backed) -> None:  # type: ignore[no-untyped-def]
    """What the kernel binding asks before serving an OPEN on the thread that read it."""
    fs, disk, _, _ = backed
    small, big = fs.resolve("/data/a.bin"), fs.resolve("/data/big.bin")
    assert fs.open_may_wait(small) and fs.open_may_wait(big)  # not known complete: the index is asked
    assert not fs.open_may_wait(fs.resolve("/data")) and not fs.open_may_wait(ROOT_INO)  # errors at once
    assert bytes(_read_all(fs, "/data/a.bin"))
    assert disk.flush(5) and not fs.open_may_wait(small)
    fs.backing_files = False
    assert not fs.open_may_wait(big)  # nothing is fetched or checked during an open then


def test_a_big_file_is_backed_once_every_part_is_cached(backed) -> None:  # type: ignore[no-untyped-def]
    fs, disk, fetcher, sources = backed
    ino = fs.resolve("/data/big.bin")
    opened = fs.open(ino, writable=False)
    assert opened.backing_fd is None and fetcher.requests == 0  # a big file is not fetched at open
    size = len(sources["/data/big.bin"])
    data = b"".join(bytes(fs.read(opened.fh, offset, 128 * 1024)) for offset in range(0, size, 128 * 1024))
    assert data == sources["/data/big.bin"]
    fs.release(opened.fh)
    # A part fetched ahead reaches the caches after its readers went on (``segment.finish`` comes first):
    # the last one may not be queued yet when the reader is done, so the first flush can find nothing.
    deadline = time.monotonic() + 10
    while True:
        assert disk.flush(5)
        opened = fs.open(ino, writable=False)
        if opened.backing_fd is not None or time.monotonic() > deadline:
            break
        fs.release(opened.fh)
        time.sleep(0.01)
    assert opened.backing_fd is not None, disk.counters.snapshot()
    assert _sha(_read_fd(opened.backing_fd)) == _sha(sources["/data/big.bin"])
    fs.release(opened.fh)


def test_without_backing_files_open_fetches_nothing(world) -> None:  # type: ignore[no-untyped-def]
    fs, _, _, fetcher = world
    opened = fs.open(fs.resolve("/street/cat.jpg"), writable=False)
    assert opened.backing_fd is None and fetcher.requests == 0
    fs.release(opened.fh)


# ---------------------------------------------------------------------------------- bounded waits


class _SlowBackend(MemoryBackend):
    """A MemoryBackend whose listing of ``slow`` datasets yields one row per ``step_s`` (or stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: dict[str, float | None] = {}  # dataset uid -> seconds per row (None: stalls)
        self.release = threading.Event()

    def iter_rows(self, dataset_uid: str):  # type: ignore[no-untyped-def]
        rows = list(super().iter_rows(dataset_uid))
        step = self.slow.get(dataset_uid, 0.0)
        for row in rows:
            if step is None:
                self.release.wait(30)
            elif step:
                time.sleep(step)
            yield row


def _slow_world(tmp_path: Path, stall_s: float):  # type: ignore[no-untyped-def]
    backend = _SlowBackend()
    for ds in ("a", "b"):
        backend.add_dataset(DatasetRecord(ds, ds, "", 1e9, 1e9, 0, None, "admin"))
        for i in range(6):
            backend.add_row(_row(f"{ds}{i}", ds, f"{ds}{i}.jpg", b"x"), b"x")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    writes = WriteQueue.open(tmp_path / "journal.sqlite", backend.push, start=False)
    fs = EncordFS(
        backend, catalog, None, SignedUrlCache(backend.sign), Options(uid=0, gid=0, load_stall_s=stall_s), writes=writes
    )  # type: ignore[arg-type]
    return fs, backend, catalog, writes


def test_a_stalled_first_load_is_eio_within_the_stall_limit_and_goes_on(tmp_path: Path) -> None:
    fs, backend, catalog, writes = _slow_world(tmp_path, stall_s=0.5)
    backend.slow["a"] = None
    started = time.monotonic()
    with pytest.raises(errors.RemoteIOError, match="no progress"):
        fs.lookup_ino(fs.resolve("/a"), "a0.jpg")
    assert time.monotonic() - started < 3
    backend.release.set()  # the service answers: the load that went on lands, and the folder serves
    deadline = time.monotonic() + 10
    while catalog.loaded_at(fs.resolve("/a")) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(n for n, _ in fs.readdir(fs.resolve("/a"))) == [f"a{i}.jpg" for i in range(6)]
    assert fs.status()["folders"]["refresh_failures"] >= 1
    writes.close(flush_timeout_s=0)
    catalog.close()


def test_a_slow_but_steady_load_is_waited_for(tmp_path: Path) -> None:
    fs, backend, catalog, writes = _slow_world(tmp_path, stall_s=0.5)
    backend.slow["a"] = 0.2  # 6 rows: 1.2 s in all, never 0.5 s without one
    assert len(list(fs.readdir(fs.resolve("/a")))) == 6
    writes.close(flush_timeout_s=0)
    catalog.close()


def test_a_rename_completes_while_a_slow_refresh_of_another_folder_streams(tmp_path: Path) -> None:
    """The listing is staged before the catalog's write lock is taken (issue 14.2)."""
    fs, backend, catalog, writes = _slow_world(tmp_path, stall_s=30)
    a, b = fs.resolve("/a"), fs.resolve("/b")
    list(fs.readdir(a)), list(fs.readdir(b))
    backend.slow["a"] = 0.5  # a 3 s listing
    refresher = threading.Thread(target=fs.refresh, args=(a,))
    refresher.start()
    time.sleep(0.3)  # the slow listing is streaming
    started = time.monotonic()
    fs.rename(b, "b1.jpg", b, "renamed.jpg")
    took = time.monotonic() - started
    assert refresher.is_alive() and took < 1.0, took
    refresher.join(10)
    assert "renamed.jpg" in [n for n, _ in fs.readdir(b)]
    writes.close(flush_timeout_s=0)
    catalog.close()


# ---------------------------------------------------------------------------------- sizes (issue 14.8)


def test_a_row_without_a_size_gets_its_size_from_the_object(world) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    fs, backend, clock, fetcher = world
    data = b"no size in the metadata" * 50
    backend.add_row(replace(_row("r9", "ds1", "unsized.txt", data), file_size=None), data)
    fs.refresh(fs.resolve("/street"))
    ino = fs.resolve("/street/unsized.txt")
    assert fs.getattr(ino).size == len(data)  # asked once, then recorded
    requests = fetcher.requests
    listed = dict(fs.readdir(fs.resolve("/street")))
    assert listed["unsized.txt"].size == len(data) and fetcher.requests == requests
    assert _read_all(fs, "/street/unsized.txt") == data
    fs.refresh(fs.resolve("/street"))  # a reload that still has no size keeps what was learnt
    assert fs.getattr(ino).size == len(data) and fetcher.requests == requests + 1  # + the read


def test_an_object_that_grew_on_the_server_is_estale_and_its_folder_reloads(world) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    fs, backend, clock, fetcher = world
    ino = fs.resolve("/street/cat.jpg")
    old_size = fs.getattr(ino).size
    bigger = b"meow" * 100 + b"more bytes since the listing"
    handle = next(r for r in backend.rows["ds1"] if r.uid == "r1").backing_item_uuid
    backend.blobs[handle] = bigger  # the object grew; the catalog still says the old size
    backend.rows["ds1"] = [replace(r, file_size=len(bigger)) if r.uid == "r1" else r for r in backend.rows["ds1"]]
    fh = fs.open(ino, writable=False).fh
    with pytest.raises(errors.Stale):
        fs.read(fh, 0, old_size)  # never the old size's worth of the new object
    fs.release(fh)
    fs.wait_refreshes()
    assert fs.getattr(fs.resolve("/street/cat.jpg")).size == len(bigger)
    assert _read_all(fs, "/street/cat.jpg") == bigger
