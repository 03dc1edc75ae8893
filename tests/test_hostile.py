"""Hostile input: fuzzed xattr names and values, titles and paths answer a clear errno, never crash,
and queue nothing when they fail. The core is driven directly (hypothesis), then a real mount gets a
short random fuzz (the short form of ``scripts/soak``'s hostile suite).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from encordfs import errors
from encordfs.backend import DatasetRecord
from encordfs.backend.memory import MemoryBackend
from encordfs.core import names
from encordfs.core.blockcache import MemoryBlockCache
from encordfs.core.catalog import Catalog
from encordfs.core.fs import EncordFS, Options
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from encordfs.core.writes import WriteQueue
from harness import scenarios as suites
from harness.fakes import row_record

XATTR_ERRNOS = {errno.EINVAL, errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EEXIST, errno.E2BIG}
PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EINVAL}
RENAME_ERRNOS = {errno.EPERM, errno.EEXIST, errno.ENAMETOOLONG, errno.ENOENT}


class _Fetcher:
    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def fetch_into(self, url_source: Any, start: int, out: memoryview, total: int | None = None) -> None:
        out[:] = self.backend.fetch(url_source(False), start, start + len(out))


class World:
    """A core over an in-memory backend with a real journal whose worker never runs (nothing lands)."""

    def __init__(self, root: Path, titles: list[str]) -> None:
        self.backend = MemoryBackend()
        self.backend.add_dataset(DatasetRecord("ds1", "data", "d", 1e9, 1e9, 0, "folder1", "admin"))
        for n, title in enumerate(titles):
            self.backend.add_row(
                row_record(f"r{n}", "ds1", title, b"abcd", metadata={"split": "train", "n": n}), b"abcd"
            )
        self.catalog = Catalog(root / "catalog.sqlite")
        self.reader = ReadPipeline(
            _Fetcher(self.backend),
            MemoryBlockCache(1 << 20),
            small_file_bytes=1 << 20,  # type: ignore[arg-type]
            part_bytes=1 << 20,
            memory_budget_bytes=8 << 20,
        )
        self.writes = WriteQueue.open(root / "journal.sqlite", self.backend.push, start=False)
        self.fs = EncordFS(
            self.backend,
            self.catalog,
            self.reader,
            SignedUrlCache(self.backend.sign),
            Options(uid=0, gid=0, metadata_ttl_s=3600, max_metadata_bytes=4096),
            writes=self.writes,
        )

    def close(self) -> None:
        self.fs.close()
        self.writes.close(flush_timeout_s=0)
        self.reader.close()
        self.catalog.close()

    def pending_ops(self) -> int:
        return int(self.writes.status()["pending_ops"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("hostile"), ["cat.jpg", "dog.png", "Dog.PNG", "group"])
    try:
        yield w
    finally:
        w.close()


names_st = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda p, s: p + s,
        st.sampled_from(
            ["user.encord.meta.", "user.encord.", "user.", "user.encordfs.", "security.", "system.", "trusted."]
        ),
        st.text(max_size=80),
    ),
    st.sampled_from(["user.encord.client_metadata", "user.encord.meta.", "user.encord.title", "user.encordfs.refresh"]),
)
values_st = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 5000)),
    st.builds(lambda n: b'{"k": "' + b"x" * n + b'"}', st.integers(3000, 6000)),
    st.sampled_from([b"{}", b"null", b"1", b'"s"', b"[1]", b'{"a": 1}', b"\xff", b"", b"NaN", b'{"a": {"b": [1, 2]}}']),
)
flags_st = st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names_st, value=values_st, flags=flags_st, target=st.integers(0, 3))
def test_fuzzed_setxattr_is_a_clear_errno_and_queues_nothing_on_error(
    world: World, name: str, value: bytes, flags: int, target: int
) -> None:
    fs = world.fs
    ino = fs.resolve(["/data/cat.jpg", "/data/dog.png", "/data", "/"][target])
    before = world.pending_ops()
    try:
        fs.setxattr(ino, name, value, flags)
    except errors.FsError as exc:
        assert exc.errno in XATTR_ERRNOS, (name, value[:40], exc)
        assert world.pending_ops() == before, "a refused setxattr queued something"
        return
    queued = world.pending_ops() - before
    assert queued in (0, 1)  # one edit, or a control attribute (refresh) that queues nothing
    if queued:
        assert name == "user.encord.client_metadata" or name.startswith("user.encord.meta.")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names_st)
def test_fuzzed_getxattr_and_removexattr(world: World, name: str) -> None:
    fs = world.fs
    ino = fs.resolve("/data/dog.png")
    try:
        value = fs.getxattr(ino, name)
        assert isinstance(value, bytes)
    except errors.FsError as exc:
        assert exc.errno in (errno.ENODATA, errno.ENOTSUP), (name, exc)
    before = world.pending_ops()
    try:
        fs.removexattr(ino, name)
    except errors.FsError as exc:
        assert exc.errno in XATTR_ERRNOS, (name, exc)
        assert world.pending_ops() == before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.lists(
        st.one_of(
            st.text(max_size=300),
            st.sampled_from([".", "..", ".encordfs", "data", "cat.jpg", "CAT.JPG", "status.json"]),
        ),
        max_size=5,
    )
)
def test_fuzzed_paths_resolve_or_fail_clearly(world: World, path: list[str]) -> None:
    try:
        ino = world.fs.resolve("/" + "/".join(path))
    except errors.FsError as exc:
        assert exc.errno in PATH_ERRNOS, (path, exc)
        return
    world.fs.getattr(ino)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(new=st.text(max_size=300))
def test_fuzzed_renames_fail_clearly_and_queue_nothing(world: World, new: str) -> None:
    assume("/" not in new and "\x00" not in new)
    fs = world.fs
    parent = fs.resolve("/data")
    current = next(name for name, attr in fs.readdir(parent) if fs.getxattr(attr.ino, "user.encord.uid") == b"r0")
    before = world.pending_ops()
    try:
        fs.rename(parent, current, parent, new)
    except errors.FsError as exc:
        assert exc.errno in RENAME_ERRNOS, (new, exc)
        assert world.pending_ops() == before
        return
    assert names.base_name(new, None, is_dir=False) == new
    fs.rename(parent, new, parent, current)  # and back, for the next example


@settings(max_examples=60, deadline=None)
@given(titles=st.lists(st.text(max_size=300), min_size=1, max_size=12))
def test_fuzzed_titles_make_valid_unique_names(titles: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp), titles)
        try:
            parent = w.fs.resolve("/data")
            listed = list(w.fs.readdir(parent))
            seen: set[str] = set()
            for name, attr in listed:
                raw = name.encode("utf-8")
                assert name not in ("", ".", "..", ".encordfs") and "/" not in name and "\x00" not in name
                assert len(raw) <= 255, name
                assert name.casefold() not in seen and name.lower() not in seen, name
                seen.update({name.casefold(), name.lower()})
                assert w.fs.lookup(parent, name).ino == attr.ino
            assert len(listed) == len(titles)
        finally:
            w.close()


# ---------------------------------------------------------------------------------------------- a real mount


def _small_workspace(
    tmp_path: Path, small_rows: int, suite: Callable[[suites.Workspace], dict[str, Any]]
) -> dict[str, Any]:
    """The figures of ``suite`` over a small real workspace: one large row of 1,000 bytes, ``small_rows``
    small ones, one real file."""
    spec = suites.WorkspaceSpec(large_rows=1, large_bytes=1000, small_rows=small_rows, real_files=1)
    with suites.Workspace(tmp_path, spec) as ws:
        return suite(ws)


@pytest.mark.usefixtures("binding")
def test_real_mount_fuzz(tmp_path: Path) -> None:
    figures = _small_workspace(tmp_path, 6, lambda ws: suites.hostile_suite(ws, cases=150))
    assert figures["hostile_failures"] == 0 and figures["hangs"] == 0, figures


@pytest.mark.usefixtures("binding")
def test_real_mount_hostile_titles_always_load(tmp_path: Path) -> None:
    """NFC/NFD pairs and ~id exhaustion sets, added to a loaded folder and loaded again: no failed load."""
    figures = _small_workspace(tmp_path, 2, lambda ws: suites.names_suite(ws, rounds=2))
    assert figures["names_loads"] >= 6 and figures["names_failed_loads"] == 0, figures


@pytest.mark.usefixtures("binding")
def test_real_mount_deleted_siblings_never_fail_a_read(tmp_path: Path) -> None:
    figures = _small_workspace(tmp_path, 12, lambda ws: suites.siblings_suite(ws, every=4))
    assert figures["sibling_reads"] >= 8 and figures["sibling_sign_failures"] == 0, figures
