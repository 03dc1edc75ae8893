"""The core's seams for an inode-based binding, without a kernel: what ``on_invalidate`` is told when
the catalog changes, ``lookup_attr``, ``would_wait`` and ``binding_status``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encordfs import errors
from encordfs.app import _landed
from encordfs.backend import DatasetRecord, PushOutcome
from encordfs.backend.memory import MemoryBackend
from encordfs.core.blockcache import MemoryBlockCache
from encordfs.core.catalog import ROOT_INO, Catalog
from encordfs.core.fs import CONTROL_INO, CONTROL_NAME, EncordFS, Options
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from encordfs.core.writes import WriteQueue
from harness.fakes import row_record


class _NoFetch:
    def fetch_into(self, url_source: Any, start: int, out: memoryview, total: int | None = None) -> None:
        raise errors.RemoteIOError("no bytes in these tests")


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[tuple[EncordFS, MemoryBackend, list[tuple[str, int, Any]]]]:
    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds1", "street", "d", 1e9, 1e9, 0, "folder1", "admin"))
    for uid, title, size in (("r1", "a.jpg", 10), ("r2", "b.jpg", 20), ("r3", "c.jpg", 30)):
        backend.add_row(row_record(uid, "ds1", title, None, size=size))
    catalog = Catalog(tmp_path / "catalog.sqlite")
    reader = ReadPipeline(_NoFetch(), MemoryBlockCache(1 << 20))
    writes = WriteQueue.open(tmp_path / "journal.sqlite", backend.push, start=False)
    fs = EncordFS(backend, catalog, reader, SignedUrlCache(backend.sign), Options(uid=0, gid=0), writes=writes)
    heard: list[tuple[str, int, Any]] = []
    fs.on_invalidate = lambda kind, parent, what: heard.append((kind, parent, what))
    fs.refresh(ROOT_INO)
    yield fs, backend, heard
    fs.close()
    writes.close(flush_timeout_s=0)
    reader.close()
    catalog.close()


def test_first_loads_announce_nothing(world: Any) -> None:
    fs, _, heard = world
    ds = fs.lookup_ino(ROOT_INO, "street")  # loads the dataset for the first time
    assert [n for n, _ in fs.readdir(ds)] == ["a.jpg", "b.jpg", "c.jpg"]
    assert heard == []


def test_a_refresh_announces_exactly_what_changed(world: Any) -> None:
    fs, backend, heard = world
    ds = fs.lookup_ino(ROOT_INO, "street")
    ino = {n: a.ino for n, a in fs.readdir(ds)}
    rows = {r.uid: r for r in backend.rows["ds1"]}
    backend.rows["ds1"] = [
        dataclasses.replace(rows["r1"], title="renamed.jpg"),  # renamed on the server
        dataclasses.replace(rows["r2"], file_size=99, last_edited_at=1.6e9),  # content changed
        row_record("r4", "ds1", "new.jpg", None, size=5),  # added; r3 deleted
    ]
    fs.refresh(ds)
    assert sorted(h for h in heard if h[0] == "entry") == sorted(
        [("entry", ds, "a.jpg"), ("entry", ds, "renamed.jpg"), ("entry", ds, "c.jpg"), ("entry", ds, "new.jpg")]
    )
    # the folder's list of names changed (a kept kernel listing goes), and b.jpg's bytes
    assert [h for h in heard if h[0] != "entry"] == [("listing", ds, ds), ("content", ds, ino["b.jpg"])]
    heard.clear()
    fs.refresh(ds)  # nothing changed: nothing to say
    assert heard == []
    backend.rows["ds1"][1] = dataclasses.replace(backend.rows["ds1"][1], file_size=7, last_edited_at=1.7e9)
    fs.refresh(ds)  # the same names: the listing stays
    assert heard == [("content", ds, ino["b.jpg"])]


def test_a_rename_through_the_mount_announces_both_names(world: Any) -> None:
    fs, _, heard = world
    ds = fs.lookup_ino(ROOT_INO, "street")
    fs.rename(ds, "a.jpg", ds, "z.jpg")
    assert heard == [("entry", ds, "a.jpg"), ("entry", ds, "z.jpg")]


def test_landed_writes_announce_the_rows_attributes(world: Any) -> None:
    fs, _, heard = world
    ds = fs.lookup_ino(ROOT_INO, "street")
    b = fs.lookup_ino(ds, "b.jpg")
    _landed(fs.catalog, [PushOutcome("r2", metadata={"split": "val"}), PushOutcome("r9", error=None)], fs)
    assert heard == [("inode", ds, b)]
    assert fs.getxattr(b, "user.encord.client_metadata") == b'{"split":"val"}'


def test_a_failing_listener_fails_no_change(world: Any) -> None:
    fs, _, _ = world
    ds = fs.lookup_ino(ROOT_INO, "street")

    def broken(*_: Any) -> None:
        raise RuntimeError("listener bug")

    fs.on_invalidate = broken
    fs.rename(ds, "a.jpg", ds, "y.jpg")
    assert fs.lookup_ino(ds, "y.jpg")


def test_lookup_attr_would_wait_and_binding_status(world: Any) -> None:
    fs, _, _ = world
    assert fs.would_wait(ROOT_INO) is False  # loaded at mount
    ds = fs.lookup_attr(ROOT_INO, "street").ino
    assert fs.would_wait(ds) is True  # never loaded: a lookup in it would call Encord
    attr = fs.lookup_attr(ds, "b.jpg")
    assert attr == fs.getattr(fs.lookup_ino(ds, "b.jpg")) and attr.size == 20
    assert fs.would_wait(ds) is False
    assert fs.lookup_attr(ROOT_INO, CONTROL_NAME).ino == CONTROL_INO
    assert fs.would_wait(CONTROL_INO) is False
    with pytest.raises(errors.NotFound):
        fs.lookup_attr(ds, "missing.jpg")
    with pytest.raises(errors.NotADirectory):
        fs.lookup_attr(attr.ino, "x")
    assert "passthrough" not in fs.status()
    fs.binding_status = lambda: {"passthrough": {"enabled": True, "opens": 2, "backing_ids": 1}}
    assert fs.status()["passthrough"]["opens"] == 2


def test_nodes_kept_between_writes_show_every_write_at_once(world: Any) -> None:
    """``Catalog.get`` keeps the nodes it read until the next write (the write lock's generation): a
    refresh, a rename, a size learnt and landed metadata each show in the very next ``get``."""
    fs, backend, _ = world
    catalog = fs.catalog
    ds = fs.lookup_ino(ROOT_INO, "street")
    a, b = fs.lookup_ino(ds, "a.jpg"), fs.lookup_ino(ds, "b.jpg")
    first = catalog.get(b)
    assert first is not None and catalog.get(b) is first  # kept: no query the second time
    backend.rows["ds1"][1] = dataclasses.replace(backend.rows["ds1"][1], file_size=77, last_edited_at=1.8e9)
    fs.refresh(ds)
    node = catalog.get(b)
    assert node is not None and node.size == 77
    catalog.set_size(b, 78)
    node = catalog.get(b)
    assert node is not None and node.size == 78
    assert catalog.get(a) is not None
    fs.rename(ds, "a.jpg", ds, "x.jpg")
    node = catalog.get(a)
    assert node is not None and node.name == "x.jpg"
    _landed(catalog, [PushOutcome("r2", metadata={"split": "test"})], fs)
    node = catalog.get(b)
    assert node is not None and node.client_metadata == {"split": "test"}
