"""``encord://`` (fsspec) against a real mount of the same sample: same tree, same bytes, same xattrs.

One suite, two targets: the read operations fsspec users call (``ls``, ``info``, ``find``, ``walk``,
``glob``, ``du``, ``cat_file`` with ranges, ``open``/``seek``/``read``, ``get``) run on
``EncordFileSystem`` and on fsspec's ``LocalFileSystem`` over the mount, and must agree.

fsspec's own abstract suite (``fsspec.tests.abstract``: copy, get, put, pipe, mv, open) is not
subclassed: every one of its scenarios first creates files on the filesystem under test
(``fs.touch``, ``fs.makedirs``, ``fs.pipe``) and then checks names like ``source/subdir/nesteddir/nestedfile``
without extensions, which a read-only view of Encord can neither create nor show (rows live in
datasets or one level of groups, and names without an extension get one from their MIME type).
The comparison with ``LocalFileSystem`` below covers the read side those tests exercise.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from encordfs.core import xattrs
from encordfs.fsspec_impl import PRIVATE_CACHE_PREFIX, EncordFile, EncordFileSystem
from harness.emulator import RunningEmulator, storage_options
from harness.mount import MountedFS


@pytest.fixture(scope="module")
def options(sample_emulator: RunningEmulator) -> Iterator[dict[str, Any]]:
    with storage_options(sample_emulator, "fsspec-test-cache-") as found:
        yield found


@pytest.fixture(scope="module")
def mnt(sample_mount: MountedFS) -> Path:
    return sample_mount.path


def _rel(paths: list[str], base: Path) -> list[str]:
    return sorted(os.path.relpath(p, base) for p in paths)


def test_registered_as_encord_protocol(options: dict[str, Any], mnt: Path) -> None:
    assert fsspec.get_filesystem_class("encord") is EncordFileSystem
    assert fsspec.filesystem("encord", **options) is EncordFileSystem(**options)  # cached per storage options
    path = next(p for p in sorted((mnt / "street-scenes").iterdir()) if p.is_file())
    with fsspec.open(f"encord://street-scenes/{path.name}", "rb", **options) as f:
        assert isinstance(f, EncordFile)
        assert f.read() == path.read_bytes()


def test_tree_matches_mount(efs: EncordFileSystem, mnt: Path) -> None:
    local = LocalFileSystem()
    assert efs.ls("", detail=False) == sorted(os.listdir(mnt))
    assert _rel(efs.find("", withdirs=True), Path("")) == [
        p for p in _rel(local.find(str(mnt), withdirs=True), mnt) if p != "."
    ]
    for name in os.listdir(mnt):
        ours = {e["name"]: e for e in efs.ls(name)}
        theirs = {os.path.relpath(e["name"], mnt): e for e in local.ls(str(mnt / name), detail=True)}
        assert sorted(ours) == sorted(theirs)
        for key, entry in ours.items():
            assert (entry["type"], entry["size"]) == (theirs[key]["type"], theirs[key]["size"]), key
            assert entry["mtime"] == pytest.approx(theirs[key]["mtime"], abs=1e-3)
    assert [(_rel([d], Path("")), sorted(fs)) for d, _, fs in efs.walk("street-scenes")] == [
        (_rel([d], mnt), sorted(fs)) for d, _, fs in local.walk(str(mnt / "street-scenes"))
    ]
    assert _rel(efs.glob("*/*.png"), Path("")) == _rel(local.glob(str(mnt) + "/*/*.png"), mnt)
    assert efs.du("street-scenes") == local.du(str(mnt / "street-scenes"))
    assert efs.isdir("medical") and not efs.isfile("medical") and efs.exists("") and not efs.exists("nope/nope")


def test_every_file_matches_mount_byte_for_byte(efs: EncordFileSystem, mnt: Path) -> None:
    files = efs.find("")
    assert len(files) >= 150
    for name in files:
        expected = hashlib.sha256((mnt / name).read_bytes()).hexdigest()
        assert hashlib.sha256(efs.cat_file(name)).hexdigest() == expected, name
    for name in files[::10]:
        with efs.open(name, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256((mnt / name).read_bytes()).hexdigest(), name


def _xattr_from_info(info: dict[str, Any], name: str) -> bytes:
    short = name.removeprefix(xattrs.PREFIX)
    if short == "client_metadata":
        return xattrs.compact_json(info["client_metadata"]).encode()
    if short.startswith("meta."):
        return xattrs.compact_json(info["client_metadata"][short.removeprefix("meta.")]).encode()
    return xattrs.encode(info["encord"][short])


def test_info_carries_every_xattr(efs: EncordFileSystem, mnt: Path) -> None:
    checked = 0
    for name in efs.find("", withdirs=True):
        info, path = efs.info(name), mnt / name
        assert info["name"] == name and info["size"] == path.stat().st_size
        names = os.listxattr(path)
        assert sorted(names) == sorted(efs.listxattr(name))
        for xname in names:
            assert _xattr_from_info(info, xname) == os.getxattr(path, xname), (name, xname)
            checked += 1
        if "user.encord.uid" in names:
            assert info["encord"]["uid"] == os.getxattr(path, "user.encord.uid").decode()
            assert "client_metadata" in info
    assert checked > 1000
    with_meta = [e for e in efs.ls("street-scenes") if e.get("client_metadata")]
    assert with_meta and all(
        efs.getxattr(e["name"], "meta.split") == xattrs.compact_json(e["client_metadata"]["split"]).encode()
        for e in with_meta
        if "split" in e["client_metadata"]
    )


def test_ranges_match_mount(efs: EncordFileSystem, mnt: Path) -> None:
    name = max(efs.find("street-scenes"), key=lambda n: efs.info(n)["size"])
    data = (mnt / name).read_bytes()
    size = len(data)
    assert size > 100_000
    for start, end in [
        (0, 10),
        (5, 5),
        (size - 7, None),
        (-100, None),
        (-100, -50),
        (None, 1000),
        (1000, size + 999),
        (size, None),
        (size + 5, size + 10),
        (123_457, 654_321),
    ]:
        assert efs.cat_file(name, start, end) == data[slice(start, end)], (start, end)
    assert efs.cat_file(name, 100, 50) == b""
    with efs.open(name) as f:
        assert f.size == size
        f.seek(size // 2)
        assert f.read(4096) == data[size // 2 : size // 2 + 4096]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(0)
        assert f.read(3) == data[:3]
    assert efs.read_block(name, 1000, 500) == data[1000:1500]


def test_reads_go_through_the_core_block_cache(efs: EncordFileSystem) -> None:
    name = efs.find("medical")[0]
    efs.cat_file(name)
    before = efs.status()["counters"]
    for _ in range(3):
        with efs.open(name) as f:
            f.read()
        efs.cat_file(name, 0, 100)
    after = efs.status()["counters"]
    assert after.get("fetch.requests", 0) == before.get("fetch.requests", 0)  # no new HTTP range request
    assert after.get("cache.hits_mem", 0) + after.get("cache.hits_disk", 0) > before.get(
        "cache.hits_mem", 0
    ) + before.get("cache.hits_disk", 0)
    assert efs.status()["open_handles"] == 0  # every handle released


def test_read_only_and_errors(efs: EncordFileSystem) -> None:
    name = efs.find("street-scenes")[0]
    for attempt in (
        lambda: efs.open(name, "wb"),
        lambda: efs.pipe_file(name, b"x"),
        lambda: efs.rm(name),
        lambda: efs.mkdir("street-scenes/new"),
        lambda: efs.touch("street-scenes/new.txt"),
        lambda: efs.mv(name, name + ".2"),
        lambda: efs.put_file(__file__, "street-scenes/x.py"),
    ):
        with pytest.raises(PermissionError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        efs.info("street-scenes/no-such-row.jpg")
    with pytest.raises(FileNotFoundError):
        efs.cat_file("no-such-dataset/x")
    with pytest.raises(FileNotFoundError):
        efs.info(".encordfs/status.json")  # the mount's control folder is not part of encord://
    with pytest.raises(IsADirectoryError):
        efs.cat_file("street-scenes")
    with pytest.raises(NotADirectoryError):
        efs.ls(name + "/inside")
    with pytest.raises(OSError) as missing:
        efs.getxattr(name, "meta.no_such_key")
    assert missing.value.errno == errno.ENODATA


def test_get_copies_a_folder_like_the_mount(efs: EncordFileSystem, mnt: Path, tmp_path: Path) -> None:
    group = next(e["name"] for e in efs.ls("street-scenes") if e["type"] == "directory")
    efs.get(group, str(tmp_path / "copy"), recursive=True)
    copied = sorted(p.name for p in (tmp_path / "copy").iterdir())
    assert copied == sorted(os.listdir(mnt / group))
    for name in copied:
        assert (tmp_path / "copy" / name).read_bytes() == (mnt / group / name).read_bytes()


def _pid(_: int) -> int:
    return os.getpid()


def _child_read(fs: EncordFileSystem, name: str) -> str:
    return hashlib.sha256(fs.cat_file(name)).hexdigest()


def test_usable_in_a_forked_worker(efs: EncordFileSystem, mnt: Path) -> None:
    """A DataLoader worker is a fork: the child builds its own core (the parent's threads are not there)."""
    name = efs.find("street-scenes")[3]
    efs.cat_file(name)  # the parent's core exists and holds the cache dir
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        digests = pool.starmap(_child_read, [(efs, name), (efs, name)])
        pids = set(pool.map(_pid, range(4)))
    finally:
        pool.close()
        pool.join()
    leftovers = [
        p for p in Path(tempfile.gettempdir()).glob(PRIVATE_CACHE_PREFIX + "*") if int(p.name.split("-")[2]) in pids
    ]
    assert not leftovers  # each worker removed its private cache dir on its way out
    assert set(digests) == {hashlib.sha256((mnt / name).read_bytes()).hexdigest()}
