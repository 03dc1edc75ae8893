"""What only the kernel binding does: invalidations that keep long kernel TTLs truthful, kernel
passthrough, the fusermount3 mount, and answers to requests it cannot serve.

The refresh test runs a real mount process against the emulator. The passthrough tests serve an
in-memory core from a thread of this process (``kernel.run`` on a real ``/dev/fuse`` mount), with a
tiny wrapper whose ``open`` names a local backing file, so they can count the READs that reach Python.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from encordfs import errors
from encordfs.backend import DatasetRecord
from encordfs.backend.memory import MemoryBackend
from encordfs.control import mounted_at, wait_mounted
from encordfs.core.blockcache import MemoryBlockCache
from encordfs.core.catalog import ROOT_INO, Catalog
from encordfs.core.fs import CONTROL_INO, INVALIDATE_LISTING, EncordFS, OpenFile, Options
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from encordfs.fuse import MountFlags, Timeouts, kernel
from encordfs.fuse import _abi as abi
from encordfs.fuse._abi import Op
from harness.emulator import RunningEmulator
from harness.fakes import row_record
from harness.mount import temporary_mount

if not os.path.exists("/dev/fuse"):  # pragma: no cover
    pytest.skip("no /dev/fuse", allow_module_level=True)


# -- invalidations through a real mount ------------------------------------------------------------


EMULATOR_ARGS = ["--generate", "warm:6:1000"]  # for conftest's ``emulator``


def _refresh(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "encordfs", "refresh", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_refresh_reaches_a_warm_kernel_cache_at_once(emulator: RunningEmulator) -> None:
    """With hour-long kernel TTLs, ``encordfs refresh`` still shows a row renamed on the server (new
    name, old name gone) and a row replaced by one of another size, at once: the binding told the
    kernel which names and attributes went stale."""
    with temporary_mount(
        emulator.domain, emulator.key_file, "--binding", "kernel", "--metadata-ttl", "3600", prefix="encordfs-inval-"
    ) as m:
        folder = m.path / "warm"
        names = sorted(os.listdir(folder))
        renamed, replaced = folder / names[0], folder / names[1]
        new_name = "renamed-on-the-server.jpg"
        before = {p: p.stat() for p in (renamed, replaced)}
        old_bytes = replaced.read_bytes()  # in the page cache too
        assert not (folder / new_name).exists()  # a negative entry, cached
        item = os.getxattr(renamed, "user.encord.backing_item_uuid").decode()
        title = os.getxattr(replaced, "user.encord.title").decode()
        new_bytes = b"\xff\xd8 replaced " * 300

        emulator.client().get_storage_item(item).update(name=new_name)
        emulator.delete_row(os.getxattr(replaced, "user.encord.uid").decode())
        emulator.add_row("warm", title, new_bytes)
        # Within the TTL the kernel answers from its caches: nothing changed yet.
        assert renamed.exists() and not (folder / new_name).exists()
        assert replaced.stat().st_size == before[replaced].st_size == len(old_bytes)

        _refresh(folder)
        assert not renamed.exists()
        assert (folder / new_name).stat().st_ino == before[renamed].st_ino
        assert replaced.stat().st_size == len(new_bytes)
        assert replaced.read_bytes() == new_bytes
        assert sorted(os.listdir(folder)) == sorted([new_name] + names[1:])


# -- passthrough, in this process --------------------------------------------------------------------


CONTENT = {"a.jpg": b"\xff\xd8 alpha " * 5000, "b.jpg": b"\xff\xd8 bravo " * 3000, "c.jpg": b"\xff\xd8 charlie " * 7}


class MemoryFetcher:
    """The reader's range fetcher over MemoryBackend's mem:// URLs."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def fetch_into(
        self, url_source: Callable[[bool], str], start: int, out: memoryview, total: int | None = None
    ) -> None:
        data = self.backend.fetch(url_source(False), start, start + len(out))
        if len(data) != len(out):
            raise errors.RemoteIOError("short read")
        out[:] = data


MANY = 3000


def _memory_fs(tmp_path: Path, **options: Any) -> tuple[EncordFS, list[Callable[[], None]]]:
    """The core over a MemoryBackend holding ``CONTENT`` in dataset "street"; and its closers."""
    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds1", "street", "d", 1e9, 1e9, 0, "folder1", "admin"))
    for i, (name, data) in enumerate(CONTENT.items()):
        backend.add_row(row_record(f"r{i}", "ds1", name, data), data)
    backend.add_dataset(DatasetRecord("ds2", "many", "d", 1e9, 1e9, 0, "folder2", "admin"))
    for i in range(MANY):  # more than one page of a listing
        backend.add_row(row_record(f"m{i}", "ds2", f"frame-{i:05d}.jpg", b"x"), b"x")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    reader = ReadPipeline(MemoryFetcher(backend), MemoryBlockCache(64 << 20))
    fs = EncordFS(backend, catalog, reader, SignedUrlCache(backend.sign), Options(uid=0, gid=0, **options))
    fs.refresh(ROOT_INO)
    return fs, [fs.close, reader.close, catalog.close]


class Served:
    """An in-memory core mounted by ``kernel.run`` on a thread of this process. ``backing`` maps a
    file name to the local file its opens name (the stand-in for the block cache's copy)."""

    def __init__(self, fs: EncordFS, path: Path, backing: dict[str, Path]) -> None:
        self.fs = fs
        self.path = path
        self.backing = backing
        self.reads = 0
        self.held_reads = 0  # answered from memory where the request was read (``read_held``)
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def status(self) -> dict[str, Any]:
        return self.fs.status()["passthrough"]  # type: ignore[no-any-return]


def _wrap(fs: EncordFS, served: Served) -> None:
    open_, read, read_held, release = fs.open, fs.read, fs.read_held, fs.release
    held: dict[int, int] = {}  # fh -> the backing fd handed with it, closed at its release (as the core does)

    def opened(ino: int, writable: bool, held_key: str | None = None) -> OpenFile:
        result = open_(ino, writable, held_key)  # (the core's memory cache holds no backing file)
        local = served.backing.get(fs.node(ino).name) if ino < CONTROL_INO else None
        if local is None:
            return result
        fd = held[result.fh] = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        return dataclasses.replace(result, backing_fd=fd, backing_key=f"{local}:{os.stat(local).st_mtime_ns}")

    def counted(fh: int, offset: int, length: int) -> Any:
        served.reads += 1
        return read(fh, offset, length)

    def counted_held(fh: int, offset: int, length: int) -> Any:
        data = read_held(fh, offset, length)
        served.held_reads += data is not None
        return data

    def released(fh: int) -> None:
        release(fh)
        fd = held.pop(fh, None)
        if fd is not None:
            os.close(fd)

    fs.open, fs.read, fs.read_held, fs.release = opened, counted, counted_held, released  # type: ignore[method-assign]


@pytest.fixture()
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Served]]:
    started: list[tuple[Served, Any]] = []

    def start(
        *, passthrough: bool = True, backing: bool = True, fusermount: bool = False, direct_io_min: int = 0
    ) -> Served:
        if fusermount:  # the unprivileged path, taken by root here
            monkeypatch.setattr(
                kernel,
                "_mount",
                lambda path, *, read_only, allow_other: kernel._mount_with_fusermount(
                    path, read_only=read_only, extra=[]
                ),
            )
        fs, closers = _memory_fs(tmp_path, direct_io_min=direct_io_min)
        local: dict[str, Path] = {}
        for name, data in CONTENT.items():
            if backing and name != "c.jpg":  # c.jpg: the core has no local copy to offer
                local[name] = tmp_path / f"backing-{name}"
                local[name].write_bytes(data)
        path = tmp_path / "mnt"
        path.mkdir()
        served = Served(fs, path, local)
        _wrap(fs, served)

        def run() -> None:
            try:
                kernel.run(
                    fs, str(path), timeouts=Timeouts(60, 60), flags=MountFlags(read_only=True, passthrough=passthrough)
                )
            except BaseException as exc:  # surfaced by the test
                served.error = exc

        served.thread = threading.Thread(target=run, daemon=True)
        served.thread.start()
        assert wait_mounted(path, 10, served.thread.is_alive), served.error
        started.append((served, closers))
        return served

    yield start
    for served, closers in started:
        if mounted_at(served.path):
            subprocess.run(["fusermount3", "-u", "-z", str(served.path)], capture_output=True)
        assert served.thread is not None
        served.thread.join(15)
        assert not served.thread.is_alive()
        for close in closers:
            close()


def _read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def test_passthrough_reads_never_reach_python(serve: Callable[..., Served]) -> None:
    served = serve()
    folder = served.path / "street"
    assert _read(folder / "a.jpg") == CONTENT["a.jpg"]
    assert served.reads == 0
    assert served.status() == {"enabled": True, "opens": 1, "backing_ids": 1, "inodes": 1}
    # every opener of an inode with a passthrough handle open is passthrough too (one backing id)
    with open(folder / "a.jpg", "rb", buffering=0) as first, open(folder / "a.jpg", "rb", buffering=0) as second:
        assert first.read(100) == CONTENT["a.jpg"][:100]
        second.seek(40_000)
        assert second.read(10) == CONTENT["a.jpg"][40_000:40_010]
    assert _read(folder / "b.jpg") == CONTENT["b.jpg"]
    assert served.reads == 0
    assert served.status() == {"enabled": True, "opens": 4, "backing_ids": 2, "inodes": 2}
    # no backing file from the core: served by this process, as without passthrough
    assert _read(folder / "c.jpg") == CONTENT["c.jpg"]
    assert served.reads > 0
    assert served.status()["opens"] == 4


def _count_listings(fs: EncordFS) -> list[int]:
    """The folder inode of every listing call the binding makes from now on (any of the three kinds)."""
    listings: list[int] = []

    def counting(method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(folder_ino: int, after_ino: int = 0) -> Any:
            listings.append(folder_ino)
            return method(folder_ino, after_ino)

        return counted

    for name in ("readdir", "readdir_names", "readdir_stats"):
        setattr(fs, name, counting(getattr(fs, name)))
    return listings


def test_a_fresh_folder_listing_is_kept_by_the_kernel(serve: Callable[..., Served]) -> None:
    """A warm ``ls``/``find`` lists from the kernel's page cache (FOPEN_CACHE_DIR + KEEP_CACHE) while the
    folder is within its TTL; a changed listing (``"listing"``) or a stale folder is listed here again."""
    served = serve()
    fs = served.fs
    folder = served.path / "street"
    ino = os.stat(folder).st_ino
    listings = _count_listings(fs)
    names = sorted(os.listdir(folder))
    assert names == sorted(CONTENT) and listings
    listings.clear()
    for _ in range(3):
        assert sorted(os.listdir(folder)) == names
    assert listings == []  # served by the kernel
    fs.invalidate(INVALIDATE_LISTING, ino, ino)  # what a refresh that changed names says
    deadline = time.monotonic() + 5
    while not listings and time.monotonic() < deadline:
        assert sorted(os.listdir(folder)) == names
        time.sleep(0.05)
    assert listings, "the kept listing was not dropped"
    listings.clear()
    fs._is_stale = lambda ino, loaded: True  # type: ignore[method-assign]  # past the TTL
    for _ in range(2):
        assert sorted(os.listdir(folder)) == names
    assert listings.count(ino) >= 2  # each open lists again (and would refresh the folder)


def test_a_listing_without_attributes_is_not_kept(serve: Callable[..., Served]) -> None:
    """After ``ls -f`` or ``find`` (plain READDIR past the first page) the kernel holds no entry for most
    children: a kept names-only copy would cost an ``ls -l`` one LOOKUP per entry, so the next listing
    comes here instead (and carries attributes if its reader stats). After a listing whose reader stats
    what it reads (``ls -l``), the copy is kept."""
    served = serve()
    fs = served.fs
    folder = served.path / "many"
    listings = _count_listings(fs)

    def plain() -> int:
        return len(os.listdir(folder))

    def stat_each() -> int:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if e.stat(follow_symlinks=False).st_size == 1)

    assert plain() == MANY  # loads the folder: a page with attributes, then plain pages
    for lister in (plain, plain):
        listings.clear()
        assert lister() == MANY
        assert listings, "a names-only copy was kept"
    listings.clear()
    assert stat_each() == MANY  # listed here, with attributes as the reader stats
    for lister in (plain, stat_each, plain):
        listings.clear()
        assert lister() == MANY
        assert listings == [], "the listing after an ls -l was not kept"


def test_a_long_listing_is_made_ahead_and_is_what_the_core_lists(serve: Callable[..., Served]) -> None:
    """``ls -l`` of a folder of several pages: the same names, inodes and sizes as the core's listing,
    pages after the first made ahead (``_ListAhead``) while the lister read the one before."""
    served = serve()
    fs = served.fs
    expected = {name: (a.ino, a.size) for name, a in fs.readdir(fs.resolve("/many"))}
    with os.scandir(served.path / "many") as entries:
        listed = {e.name: (e.inode(), e.stat(follow_symlinks=False).st_size) for e in entries}
    assert listed == expected and len(listed) == MANY
    assert fs.status()["listing_ahead"]["used"] >= 1
    assert sorted(os.listdir(served.path / "many")) == sorted(expected)  # plain READDIR pages too


def test_pages_made_ahead_are_used_once_while_fresh_and_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "AHEAD_FRESH_S", 60.0)  # a loaded machine must not make a page stale here
    made: list[int] = []
    version = [1]

    def make(nodeid: int, offset: int, size: int, plus: bool, buf: bytearray) -> tuple[int, list[int], int]:
        made.append(offset)
        if offset == 666:
            raise RuntimeError("a broken page")
        body = f"{nodeid}:{offset}".encode()
        buf[: len(body)] = body
        return len(body), [offset], offset + 100 if offset < 400 else 0

    ahead = kernel._ListAhead(make, lambda: version[0])
    ahead.want(1, 100, 4096, True)  # not started (a session that never served): nothing is made
    assert ahead.take(1, 100, 4096, True) is None and made == []
    ahead.start()
    try:
        ahead.want(1, 100, 4096, True)
        page = ahead.take(1, 100, 4096, True)
        assert page is not None and (page.body, page.linked, page.next_offset) == (b"1:100", [100], 200)
        assert ahead.take(1, 100, 4096, True) is None  # used once
        deadline = time.monotonic() + 5
        while made != [100, 200, 300, 400] and time.monotonic() < deadline:  # the pages after it, ahead
            time.sleep(0.01)
        assert made == [100, 200, 300, 400]  # up to AHEAD_DEPTH of one folder, to the end of the listing
        assert ahead.take(1, 200, 4096, False) is None  # not the page of another kind of listing
        assert ahead.take(1, 200, 8192, True) is None  # nor of another size
        assert getattr(ahead.take(1, 200, 4096, True), "body", None) == b"1:200"
        ahead.clear()  # an invalidation: nothing made before it is used
        assert ahead.take(1, 300, 4096, True) is None
        before = len(made)
        ahead.want(2, 100, 4096, True)
        while len(made) == before and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        time.sleep(0.05)
        version[0] += 1  # the catalog changed after it was made
        assert ahead.take(2, 100, 4096, True) is None
        ahead.want(3, 666, 4096, True)
        assert ahead.take(3, 666, 4096, True) is None  # a failure: the request makes it and answers
        ahead.want(4, 100, 4096, True)
        monkeypatch.setattr(kernel, "AHEAD_FRESH_S", 0.0)
        assert ahead.take(4, 100, 4096, True) is None  # made, but no longer fresh when asked for
        assert ahead.used == 2 and ahead.unused >= 4
    finally:
        ahead.stop()
    ahead.want(1, 100, 4096, True)
    assert ahead.take(1, 100, 4096, True) is None  # stopped


def test_passthrough_id_lives_until_the_kernel_forgets_the_inode(serve: Callable[..., Served]) -> None:
    served = serve()
    target = served.path / "street" / "a.jpg"
    for _ in range(3):
        assert _read(target) == CONTENT["a.jpg"]
    assert served.status() == {"enabled": True, "opens": 3, "backing_ids": 1, "inodes": 1}  # reused, not re-registered
    # drop the kernel's dentries and inodes: FORGET brings the lookup count to 0, the id is closed
    deadline = time.monotonic() + 10
    while served.status()["backing_ids"] and time.monotonic() < deadline:
        Path("/proc/sys/vm/drop_caches").write_text("2")
        time.sleep(0.1)
    assert served.status()["backing_ids"] == 0
    assert _read(target) == CONTENT["a.jpg"] and served.reads == 0


def test_idle_backing_ids_are_bounded(serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel forgets inodes only under memory pressure: past the bound, the least recently released
    inode with no open handle loses its backing id, and its next open registers one again."""
    monkeypatch.setattr(kernel, "MAX_IDLE_BACKING_IDS", 1)
    served = serve()
    folder = served.path / "street"

    def settles_at(ids: int) -> bool:  # RELEASE reaches us after close() has returned
        deadline = time.monotonic() + 5
        while served.status()["backing_ids"] != ids and time.monotonic() < deadline:
            time.sleep(0.01)
        return served.status()["backing_ids"] == ids and served.status()["inodes"] == ids

    assert _read(folder / "a.jpg") == CONTENT["a.jpg"]
    assert settles_at(1)
    with open(folder / "a.jpg", "rb", buffering=0) as held:  # an open handle's id is never closed
        assert _read(folder / "b.jpg") == CONTENT["b.jpg"]
        assert held.read(10) == CONTENT["a.jpg"][:10]
        assert served.status()["backing_ids"] == 2
    assert settles_at(1)  # b's went when a became idle: a is the most recently released
    for _ in range(3):
        assert _read(folder / "b.jpg") == CONTENT["b.jpg"] and _read(folder / "a.jpg") == CONTENT["a.jpg"]
    assert settles_at(1) and served.reads == 0 and served.status()["opens"] == 9


def test_no_passthrough_option_serves_every_read(serve: Callable[..., Served]) -> None:
    served = serve(passthrough=False)
    assert _read(served.path / "street" / "a.jpg") == CONTENT["a.jpg"]
    assert served.reads > 0
    assert served.status() == {
        "enabled": False,
        "off": "turned off (--no-passthrough)",
        "opens": 0,
        "backing_ids": 0,
        "inodes": 0,
    }
    assert served.fs.status()["binding"] == "kernel"


def test_a_kernel_without_passthrough_is_served_without_it(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An older kernel that does not offer FUSE_PASSTHROUGH at INIT (simulated: the bit cleared from the
    INIT request before it is answered): every read served here, status says why, one INFO line."""
    answer = kernel._Session._answer_init

    def without_passthrough(self: Any, unique: int, arg: memoryview) -> bool:
        at = abi.INIT_IN.size
        flags2 = abi.U32.unpack_from(arg, at)[0]
        abi.U32.pack_into(arg, at, flags2 & ~(abi.PASSTHROUGH >> 32))
        return answer(self, unique, arg)

    monkeypatch.setattr(kernel._Session, "_answer_init", without_passthrough)
    with caplog.at_level(logging.INFO, logger="encordfs"):
        served = serve()
        assert _read(served.path / "street" / "a.jpg") == CONTENT["a.jpg"]
    assert served.reads > 0
    status = served.status()
    assert status["enabled"] is False and status["opens"] == 0
    assert status["off"].startswith("not offered by the kernel (FUSE 7.")
    assert [r.message for r in caplog.records if "passthrough off" in r.message][0].startswith("kernel binding")


def test_no_file_to_probe_passthrough_with_still_mounts_with_it(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The INIT probe needs a temporary file; an unwritable temporary dir skips it (the first cached
    open finds out instead) and never fails the mount."""

    def unwritable(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(kernel.tempfile, "TemporaryFile", unwritable)
    served = serve()
    assert _read(served.path / "street" / "a.jpg") == CONTENT["a.jpg"]
    assert served.reads == 0 and served.status()["opens"] == 1


def test_a_kernel_refusing_backing_files_is_served_without_them(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel offered passthrough but refuses this process's backing files (FUSE_DEV_IOC_BACKING_OPEN
    fails with EPERM: no CAP_SYS_ADMIN, a container): the read is served here, the mount keeps serving,
    one INFO line, and status says passthrough is off and why."""
    ioctl = kernel.fcntl.ioctl

    def refusing(fd: int, request: int, *args: Any) -> Any:
        if request == abi.FUSE_DEV_IOC_BACKING_OPEN:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        return ioctl(fd, request, *args)

    monkeypatch.setattr(kernel.fcntl, "ioctl", refusing)
    with caplog.at_level(logging.INFO, logger="encordfs"):
        served = serve()
        assert os.listdir(served.path)  # served: INIT answered, the workers (and status) started
        assert served.status()["enabled"] is False  # known at INIT (a probe), before any open
        for name in ("a.jpg", "b.jpg", "a.jpg"):
            assert _read(served.path / "street" / name) == CONTENT[name]
    assert served.reads > 0
    status = served.status()
    assert status["enabled"] is False and status["opens"] == 0 and status["backing_ids"] == 0
    assert status["off"] == "refused by the kernel (Operation not permitted)"
    assert len([r for r in caplog.records if "passthrough refused" in r.message]) == 1


_MMAP_READ = """
import mmap, sys
with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:  # MAP_SHARED
    sys.stdout.buffer.write(mapped[:])
"""


def test_a_big_file_not_on_disk_is_read_past_the_page_cache(serve: Callable[..., Served]) -> None:
    """A file of at least ``direct_io_min`` with no complete copy on disk is opened in direct-io mode:
    every read reaches the core (the kernel keeps no page cache of it), reads of any size and offset
    are right, and a shared mmap still works (``DIRECT_IO_ALLOW_MMAP``). Smaller files and files with
    a backing copy are opened as before."""
    served = serve(direct_io_min=len(CONTENT["b.jpg"]) + 1)  # a.jpg (50 KB) is big; b.jpg (30 KB) is not
    served.backing.pop("a.jpg")  # a.jpg has no copy on disk: cold
    folder = served.path / "street"
    big = CONTENT["a.jpg"]

    def reads() -> int:
        return served.reads + served.held_reads

    def direct_opens() -> int:
        return served.fs.status()["direct_io"]["opens"]  # type: ignore[no-any-return]

    for _ in range(2):  # both times through the core: nothing kept in the page cache
        before = reads()
        assert _read(folder / "a.jpg") == big
        assert reads() > before
    assert direct_opens() == 2
    with open(folder / "a.jpg", "rb", buffering=0) as f:
        assert [os.pread(f.fileno(), 4096, off) for off in (0, 4096, 45_000)] == [
            big[0:4096],
            big[4096:8192],
            big[45_000:49_096],
        ]
        assert os.pread(f.fileno(), 1 << 20, len(big) - 10) == big[-10:]
    # a shared mmap, from another process: its page faults must not wait for this one's GIL
    mapped = subprocess.run(
        [sys.executable, "-c", _MMAP_READ, str(folder / "a.jpg")], capture_output=True, timeout=30, check=True
    )
    assert mapped.stdout == big
    assert direct_opens() == 4
    assert _read(folder / "b.jpg") == CONTENT["b.jpg"]  # below the size: cached as before
    before = reads()
    assert _read(folder / "b.jpg") == CONTENT["b.jpg"] and reads() == before  # from the page cache
    assert direct_opens() == 4
    served.backing["a.jpg"] = folder.parent.parent / "backing-a.jpg"  # now complete on disk: passthrough
    served.backing["a.jpg"].write_bytes(big)
    before = reads()
    assert _read(folder / "a.jpg") == big and reads() == before
    assert direct_opens() == 4 and served.status()["opens"] >= 1


def test_a_file_read_in_small_pieces_past_the_page_cache_is_opened_cached_next_time(
    serve: Callable[..., Served],
) -> None:
    """A direct-io handle read in pieces under 32 KiB (many of them) sends its file's next opens through
    the page cache, whose readahead serves such a reader better."""
    served = serve(direct_io_min=1)
    served.backing.pop("a.jpg")
    path = served.path / "street" / "a.jpg"
    big = CONTENT["a.jpg"]

    def direct() -> dict[str, int]:
        return served.fs.status()["direct_io"]  # type: ignore[no-any-return]

    with open(path, "rb", buffering=0) as f:  # 32 reads of 1 KiB: not enough to change anything
        assert b"".join(os.pread(f.fileno(), 1024, i * 1024) for i in range(32)) == big[: 32 * 1024]
    assert _read(path) == big
    assert direct() == {"opens": 2, "small_readers": 0}
    with open(path, "rb", buffering=0) as f:  # 49 reads of 1 KiB, then 48 of 512 B: 97 small reads
        pieces = [os.pread(f.fileno(), 1024, i * 1024) for i in range(49)]
        pieces += [os.pread(f.fileno(), 512, 49 * 1024 + i * 512) for i in range(48)]
        assert b"".join(pieces) == big[: 49 * 1024 + 48 * 512]
    assert direct() == {"opens": 3, "small_readers": 1}
    assert _read(path) == big  # cached: the page cache keeps it
    before = served.reads + served.held_reads
    assert _read(path) == big and served.reads + served.held_reads == before
    assert direct()["opens"] == 3


_READ_UNTIL_SIGNALLED = """
import os, signal, sys
def stop(*_):
    raise SystemExit(3)
signal.signal(signal.SIGUSR1, stop)
fd = os.open(sys.argv[1], os.O_RDONLY)
print("opened", flush=True)
os.read(fd, 1 << 16)
"""


def test_an_interrupted_read_returns_at_once_and_the_mount_keeps_serving(serve: Callable[..., Served]) -> None:
    """A reader signalled while its READ waits here (a slow fetch) gets EINTR at once, not when the fetch
    ends: the kernel waits for an answer to a request it handed over, so the binding answers the
    INTERRUPT's request itself. (A direct-io open: its reads are the reader's own requests; page-cache
    readahead is asynchronous and never interrupted.) The late answer is refused quietly and the mount
    keeps serving."""
    served = serve(passthrough=False, direct_io_min=1)
    fs = served.fs
    read = fs.read
    entered, release = threading.Event(), threading.Event()

    def slow(fh: int, offset: int, length: int) -> Any:
        entered.set()
        release.wait(60)
        return read(fh, offset, length)

    fs.read, fs.read_held = slow, lambda fh, offset, length: None  # type: ignore[method-assign,assignment]
    proc = subprocess.Popen(
        [sys.executable, "-c", _READ_UNTIL_SIGNALLED, str(served.path / "street" / "b.jpg")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "opened\n"
        assert entered.wait(10)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(10) == 3  # returned while its READ still waits here
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    fs.read = read  # type: ignore[method-assign]
    assert _read(served.path / "street" / "b.jpg") == CONTENT["b.jpg"]
    assert _read(served.path / "street" / "a.jpg") == CONTENT["a.jpg"]


def test_a_read_answered_from_memory_is_answered_once(serve: Callable[..., Served]) -> None:
    """A READ whose bytes the core holds in memory is answered on the thread that read it (``read_held``)
    and only there: it used to be served a second time through ``read``, its second reply refused by
    the kernel, for twice the work."""
    served = serve(passthrough=False)
    path = served.path / "street" / "a.jpg"
    held: list[int] = []
    read_held = served.fs.read_held

    def counted_held(fh: int, offset: int, length: int) -> Any:
        data = read_held(fh, offset, length)
        if data is not None:
            held.append(len(data))
        return data

    served.fs.read_held = counted_held  # type: ignore[method-assign]
    assert _read(path) == CONTENT["a.jpg"]  # (fetched: now in the core's memory cache)
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel asks again
    held.clear()
    reads = served.reads
    assert _read(path) == CONTENT["a.jpg"]
    assert sum(held) == len(CONTENT["a.jpg"])
    assert served.reads == reads


def _xattr_call(func: str, path: Path, size: int, name: str | None = None) -> tuple[int, int]:
    """(result, errno) of libc getxattr/listxattr with a ``size``-byte buffer (0: the size probe)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(max(size, 1))
    args: list[Any] = [os.fsencode(path)] + ([name.encode()] if name is not None else []) + [buf, ctypes.c_size_t(size)]
    result = getattr(libc, func)(*args)
    return result, ctypes.get_errno() if result < 0 else 0


def test_xattr_size_protocol_and_refusals(serve: Callable[..., Served]) -> None:
    served = serve(backing=False)
    folder = served.path / "street"
    target = folder / "a.jpg"
    assert _read(target) == CONTENT["a.jpg"]
    assert _xattr_call("getxattr", target, 0, "user.encord.title") == (len(b"a.jpg"), 0)
    assert _xattr_call("getxattr", target, 2, "user.encord.title") == (-1, errno.ERANGE)
    needed, _ = _xattr_call("listxattr", target, 0)
    assert needed == len(b"".join(n.encode() + b"\0" for n in os.listxattr(target)))
    assert _xattr_call("listxattr", target, 3) == (-1, errno.ERANGE)
    with pytest.raises(OSError) as info:
        os.getxattr(target, "user.encord.no_such_field")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.getxattr(target, "security.selinux")
    assert info.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as info:
        os.mkdir(folder / "new")
    assert info.value.errno == errno.EROFS
    assert os.statvfs(served.path).f_namemax == 255
    assert served.error is None


def _in_proc_mounts(path: Path) -> str | None:
    """The type mounted at ``path`` from /proc/mounts, without touching the mount (it may not serve)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(path):
            return fields[2]
    return None


def test_fusermount3_mount_serves(serve: Callable[..., Served]) -> None:
    served = serve(fusermount=True)
    assert _in_proc_mounts(served.path) == "fuse.encordfs"
    assert _read(served.path / "street" / "b.jpg") == CONTENT["b.jpg"]
    subprocess.run(["fusermount3", "-u", str(served.path)], check=True)
    assert served.thread is not None
    served.thread.join(15)
    assert not served.thread.is_alive() and served.error is None


def test_fusermount3_mount_goes_when_its_process_dies(tmp_path: Path) -> None:
    """auto_unmount: when the mount process's fds close (it was killed), fusermount3 unmounts."""
    path = tmp_path / "mnt"
    path.mkdir()
    mounted = kernel._mount_with_fusermount(str(path), read_only=True, extra=[])
    try:
        assert _in_proc_mounts(path) == "fuse.encordfs"
    finally:
        os.close(mounted.fd)  # what the kernel does for a killed process
        assert mounted.watch is not None and mounted.fusermount is not None
        assert mounted.watchdog is not None and mounted.watchdog.fd is not None
        mounted.watch.close()
        os.close(mounted.watchdog.fd)
    deadline = time.monotonic() + 10
    while _in_proc_mounts(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_proc_mounts(path) is None
    assert mounted.fusermount.wait(10) == 0
    assert mounted.watchdog.proc.wait(10) == 0


_MOUNT_AND_WAIT = """
import sys, time
sys.path.insert(0, sys.argv[2])
from encordfs.fuse import kernel
mounted = kernel._mount_with_fusermount(sys.argv[1], read_only=True, extra=[], auto_unmount=False)
print(mounted.watchdog.proc.pid, flush=True)
time.sleep(120)
"""


def test_a_killed_mount_process_leaves_no_dead_mount_where_fusermount3_cannot_tell(tmp_path: Path) -> None:
    """fusermount3 3.14 (Debian 12) leaves a non-root user's mount dead after kill -9: its auto_unmount
    check opens the mountpoint as root, which the kernel refuses (EACCES) without allow_other. Here
    fusermount3 is asked for no auto_unmount at all, so only the binding's watchdog can take the dead
    mount away: a kill -9 of the mount process leaves no 'Transport endpoint is not connected'."""
    path = tmp_path / "mnt"
    path.mkdir()
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", _MOUNT_AND_WAIT, str(path), repo], stdout=subprocess.PIPE, text=True)
    watchdog = 0
    try:
        assert proc.stdout is not None
        watchdog = int(proc.stdout.readline())
        assert _in_proc_mounts(path) == "fuse.encordfs"
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _in_proc_mounts(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _in_proc_mounts(path) is None
        os.listdir(path)  # an empty directory again, not ENOTCONN
        while Path(f"/proc/{watchdog}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # (reparented: reaped by init, not by us)
        assert not Path(f"/proc/{watchdog}").exists() or "Z" in Path(f"/proc/{watchdog}/stat").read_text().split()[2]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if _in_proc_mounts(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_fusermount3_failure_says_why(tmp_path: Path) -> None:
    with pytest.raises(errors.FsError, match="fusermount3 could not mount .*No such file"):
        kernel._mount_with_fusermount(str(tmp_path / "missing"), read_only=True, extra=[])


# -- answers, without a kernel -----------------------------------------------------------------------


class Asker:
    """Feeds requests to a session's ``_serve_safely`` and reads its answers from a SEQPACKET socket
    standing in for /dev/fuse (one message per answer, as the device keeps them)."""

    def __init__(self, fs: EncordFS) -> None:
        self.ours, self.device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.session = kernel._Session(fs, self.device.fileno(), Timeouts(60, 60), passthrough=False, debug=True)
        self.session._handlers = self.session._handler_table()
        self.worker = kernel._Worker(self.device.fileno())
        self.unique = 100

    def ask(self, opcode: int, nodeid: int, arg: bytes = b"") -> tuple[int, bytes] | None:
        """(errno as the kernel sees it, body) of the answer; None when there is none."""
        self.unique += 1
        msg = abi.IN_HEADER.pack(abi.IN_HEADER.size + len(arg), opcode, self.unique, nodeid, 0, 0, 0, 0, 0) + arg
        self.worker.buf[: len(msg)] = msg
        self.session._serve_safely(self.worker, len(msg))
        self.ours.settimeout(0.2)
        try:
            reply = self.ours.recv(1 << 21)
        except TimeoutError:
            return None
        length, error, unique = abi.OUT_HEADER.unpack_from(reply)
        assert (length, unique) == (len(reply), self.unique)
        return -error, reply[abi.OUT_HEADER.size :]


def _direntplus(body: bytes) -> list[tuple[bytes, tuple[int, ...]]]:
    """(name, entry_out + attr fields) of each record of a READDIRPLUS reply."""
    out, pos = [], 0
    while pos < len(body):
        fields = abi.DIRENTPLUS.unpack_from(body, pos)
        namelen = fields[-2]
        start = pos + abi.DIRENTPLUS.size
        out.append((body[start : start + namelen], fields))
        pos += abi.align8(abi.DIRENTPLUS.size + namelen)
    return out


def test_readdirplus_entries_carry_what_getattr_says(tmp_path: Path) -> None:
    """Entries packed from ``readdir_stats`` (no Attr per entry) have the fields ``getattr``'s Attr
    gives, page after page, for files and folders, and resume where the kernel's offset says."""
    fs, closers = _memory_fs(tmp_path)
    asker = Asker(fs)
    try:
        seen: list[bytes] = []
        for folder in (b"street", b"many"):
            ok, body = asker.ask(Op.LOOKUP, ROOT_INO, folder + b"\0") or (None, b"")
            assert ok == 0
            ino = abi.ENTRY_OUT.unpack_from(body)[0]
            offset, names = 0, []
            while True:
                ok, body = asker.ask(Op.READDIRPLUS, ino, abi.READ_IN.pack(0, offset, 8192, 0)) or (None, b"")
                assert ok == 0
                records = _direntplus(body)
                if not records:
                    break
                for name, fields in records:
                    offset = fields[-3]
                    if name in (b".", b".."):
                        continue
                    child = fields[0]
                    assert fields[6:22] == kernel._attr_fields(fs.getattr(child)), name
                    assert fields[22] == child and fields[-1] == (fields[15] & 0o170000) >> 12  # d_ino, type
                    names.append(name)
            assert names == [os.fsencode(n) for n, _ in fs.readdir(ino)]
            seen += names
        ok, body = asker.ask(Op.READDIRPLUS, ROOT_INO, abi.READ_IN.pack(0, 0, 8192, 0)) or (None, b"")
        folders = [fields for name, fields in _direntplus(body or b"") if name in (b"street", b"many")]
        assert len(folders) == 2 and all(f[6:22] == kernel._attr_fields(fs.getattr(f[0])) for f in folders)
        assert len(seen) == len(CONTENT) + MANY
    finally:
        asker.ours.close()
        asker.device.close()
        for close in closers:
            close()


def test_every_request_is_answered_with_the_right_errno(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fs, closers = _memory_fs(tmp_path)
    asker = Asker(fs)
    try:
        ok, body = asker.ask(Op.LOOKUP, ROOT_INO, b"street\0") or (None, b"")
        assert ok == 0
        street = abi.ENTRY_OUT.unpack_from(body)[0]
        ok, body = asker.ask(Op.LOOKUP, street, b"nope.jpg\0") or (None, b"")
        assert ok == 0 and abi.ENTRY_OUT.unpack_from(body)[:3] == (0, 0, 5)  # negative entry, 5 s
        ok, body = asker.ask(Op.LOOKUP, street, b"a.jpg\0") or (None, b"")
        assert ok == 0
        a_jpg = abi.ENTRY_OUT.unpack_from(body)[0]
        assert asker.ask(Op.LOOKUP, street, b"no NUL") == (errno.EIO, b"")  # cannot be parsed
        assert asker.ask(Op.READ, street, b"short") == (errno.EIO, b"")
        assert asker.ask(Op.GETATTR, 999_999, abi.GETATTR_IN.pack(0, 0, 0)) == (errno.ENOENT, b"")
        assert asker.ask(Op.LOOKUP, a_jpg, b"x\0") == (errno.ENOTDIR, b"")  # a file's "child"
        for op in (Op.MKDIR, Op.UNLINK, Op.CREATE, Op.SYMLINK, Op.LINK, Op.RMDIR, Op.MKNOD):
            assert asker.ask(op, street, b"x\0\0") == (errno.EROFS, b"")
        assert asker.ask(Op.SETATTR, street, abi.SETATTR_IN.pack(abi.FATTR_MODE, 0, 0, 0)) == (errno.EROFS, b"")
        assert asker.ask(Op.SETATTR, a_jpg, abi.SETATTR_IN.pack(abi.FATTR_SIZE, 0, 0, 0)) == (errno.EROFS, b"")
        ok, body = asker.ask(Op.OPEN, a_jpg, abi.OPEN_IN.pack(os.O_RDONLY, 0)) or (None, b"")
        assert ok == 0
        fh = abi.OPEN_REPLY.unpack_from(abi.OUT_HEADER.pack(0, 0, 0) + body)[3]
        assert asker.ask(Op.WRITE, a_jpg, abi.WRITE_IN.pack(fh, 0, 1, 0, 0, 0, 0) + b"x") == (errno.EROFS, b"")
        assert asker.ask(Op.WRITE, a_jpg, abi.WRITE_IN.pack(fh, 0, 9, 0, 0, 0, 0) + b"x") == (errno.EIO, b"")
        for op in (Op.ACCESS, Op.READLINK, Op.IOCTL, Op.LSEEK, Op.STATX, 4096):
            assert asker.ask(op, street, b"\0" * 16) == (errno.ENOSYS, b"")
        xattr_in = abi.GETXATTR_IN.pack(100, 0)
        assert asker.ask(Op.GETXATTR, a_jpg, xattr_in + b"security.selinux\0") == (errno.ENOTSUP, b"")
        assert asker.ask(Op.GETXATTR, a_jpg, xattr_in + b"user.encord.nope\0") == (errno.ENODATA, b"")
        rename2 = abi.RENAME2_IN.pack(street, abi.RENAME_EXCHANGE, 0) + b"a.jpg\0b.jpg\0"
        assert asker.ask(Op.RENAME2, street, rename2) == (errno.EINVAL, b"")
        for op, arg in ((Op.FORGET, abi.FORGET_IN.pack(1)), (Op.INTERRUPT, abi.INTERRUPT_IN.pack(1))):
            assert asker.ask(op, street, arg) is None  # no answer expected, none sent

        def broken(ino: int) -> None:
            raise RuntimeError("a bug")

        fs.getattr = broken  # type: ignore[method-assign,assignment]
        assert asker.ask(Op.GETATTR, street, abi.GETATTR_IN.pack(0, 0, 0)) == (errno.EIO, b"")
        assert "internal error in GETATTR" in caplog.text and "a bug" in caplog.text
        assert "cannot parse a LOOKUP request" in caplog.text
    finally:
        asker.ours.close()
        asker.device.close()
        for close in closers:
            close()


def test_binding_and_passthrough_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from encordfs.cli import _given, build_parser
    from encordfs.settings import mount_argv, resolve

    monkeypatch.delenv("ENCORDFS_CONFIG", raising=False)
    monkeypatch.setenv("ENCORDFS_BINDING", "kernel")
    monkeypatch.setenv("ENCORDFS_PASSTHROUGH", "0")
    args = build_parser().parse_args(["mount", "/mnt/x", "--domain", "http://d"])
    s = resolve(_given(args))
    assert (s.binding, s.passthrough) == ("kernel", False)
    argv = mount_argv(s, Path("/mnt/x"))
    assert argv[argv.index("--binding") + 1] == "kernel" and "--no-passthrough" in argv
    monkeypatch.delenv("ENCORDFS_PASSTHROUGH")
    args = build_parser().parse_args(["mount", "/mnt/x", "--domain", "http://d", "--binding", "mfusepy"])
    s = resolve(_given(args))
    assert (s.binding, s.passthrough) == ("mfusepy", True)  # the command line wins
    assert "--no-passthrough" not in mount_argv(s, Path("/mnt/x"))
    assert build_parser().parse_args(["mount", "/mnt/x", "--no-passthrough"]).passthrough is False
    monkeypatch.setenv("ENCORDFS_BINDING", "pyfuse3")
    with pytest.raises(errors.InvalidValue, match="binding"):
        resolve(_given(build_parser().parse_args(["mount", "/mnt/x"])))
