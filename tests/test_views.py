"""Views by metadata key (``core.views``) in the core, without a kernel: ``DATASET/@KEY/VALUE``.

MemoryBackend + the real catalog, reader and write queue. The same scenarios run through a real
mount in ``tests/test_mount_views.py``.
"""

from __future__ import annotations

import errno
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from encordfs import errors
from encordfs.backend import ChildRecord, DatasetRecord
from encordfs.backend.memory import MemoryBackend
from encordfs.core import names
from encordfs.core import views as views_mod
from encordfs.core.blockcache import MemoryBlockCache
from encordfs.core.catalog import Catalog, Entry, Kind
from encordfs.core.fs import CONTROL_INO, EncordFS, Options
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from encordfs.core.views import VIEW_INO_BASE, is_view_ino, parse_value, value_name
from encordfs.core.writes import WriteQueue
from harness.fakes import Clock, older_catalog
from harness.fakes import row_record as _row


class _Fetcher:
    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def fetch_into(self, url_source, start: int, out: memoryview, total: int | None = None) -> None:  # type: ignore[no-untyped-def]
        out[:] = self.backend.fetch(url_source(False), start, start + len(out))


ROWS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("r1", "a.jpg", {"split": "train", "camera": {"id": "cam-1", "model": "x"}}),
    ("r2", "b.jpg", {"split": "val", "camera": {"id": "cam-2"}}),
    ("r3", "c.jpg", None),
    ("r4", "d.jpg", {"split": 3}),
    ("r5", "e.jpg", {"split": "3"}),
    ("r6", "f.jpg", {"split": "a/b", "camera.id": "literal"}),
    ("r7", "@x.jpg", {"split": "train"}),
    ("r8", "h.jpg", {"split": None, "labels": ["car", "dog"]}),
    ("r9", "i.jpg", {"other": 1}),
]


@dataclass
class World:
    fs: EncordFS
    backend: MemoryBackend
    writes: WriteQueue | None
    clock: Clock

    def ls(self, path: str) -> list[str]:
        return [n for n, _ in self.fs.readdir(self.fs.resolve(path))]

    def err(self, func: Any, *args: Any) -> int:
        with pytest.raises(errors.FsError) as e:
            func(*args)
        return e.value.errno


def _world(
    tmp_path: Path, read_only: bool = False, rows: list[tuple[str, str, dict[str, Any] | None]] = ROWS
) -> Iterator[World]:
    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds1", "street", "d", 1e9, 1e9, 0, "folder1", "admin"))
    for uid, title, meta in rows:
        backend.add_row(_row(uid, "ds1", title, uid.encode() * 10, metadata=meta), uid.encode() * 10)
    backend.add_row(_row("g1", "ds1", "burst", None, data_type="IMG_GROUP", metadata={"split": "train"}))
    backend.add_child(
        "item-g1", ChildRecord("c0", "f0.png", 0, "image", None, "image/png", 10, 1, 1, 1e9, 1e9, "encord"), b"0" * 10
    )
    clock = Clock()
    catalog = Catalog(tmp_path / "catalog.sqlite")
    reader = ReadPipeline(
        _Fetcher(backend), MemoryBlockCache(1 << 24), small_file_bytes=1 << 20, part_bytes=1 << 20,
        memory_budget_bytes=1 << 24,
    )  # fmt: skip
    writes = None if read_only else WriteQueue.open(tmp_path / "journal.sqlite", backend.push, start=False)
    fs = EncordFS(
        backend, catalog, reader, SignedUrlCache(backend.sign, clock=clock), Options(uid=0, gid=0),
        clock=clock, writes=writes,
    )  # fmt: skip
    try:
        yield World(fs, backend, writes, clock)
    finally:
        if writes is not None:
            writes.close(0)
        fs.close()
        reader.close()
        catalog.close()


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path)


def test_views_are_found_by_name_but_never_listed(world: World) -> None:
    fs = world.fs
    listed = world.ls("/street")
    assert not any(n.startswith("@") for n in listed)
    assert "_@x.jpg" in listed  # a row titled "@x.jpg" cannot take a view's name
    ino = fs.resolve("/street/@split")
    assert is_view_ino(ino) and VIEW_INO_BASE <= ino < CONTROL_INO
    assert fs.getattr(ino).mode & 0o040000 and fs.getattr(ino).mtime == 1e9
    assert fs.resolve("/street/@split") == ino  # the same inode every time
    assert sorted(world.ls("/street/@split")) == ['"3"', '"a\\u002fb"', "3", "null", "train", "val"]


def test_value_folders_hold_the_rows_themselves(world: World) -> None:
    fs = world.fs
    assert sorted(world.ls("/street/@split/train")) == ["_@x.jpg", "a.jpg", "burst"]
    assert world.ls("/street/@split/val") == ["b.jpg"]
    assert world.ls("/street/@split/3") == ["d.jpg"]
    assert world.ls('/street/@split/"3"') == ["e.jpg"]
    assert world.ls("/street/@split/null") == ["h.jpg"]
    assert world.ls('/street/@split/"a\\u002fb"') == ["f.jpg"]
    for name in ("a.jpg", "burst"):
        assert fs.resolve(f"/street/@split/train/{name}") == fs.resolve(f"/street/{name}")
    via_view, direct = fs.resolve("/street/@split/train/a.jpg"), fs.resolve("/street/a.jpg")
    assert fs.listxattr(via_view) == fs.listxattr(direct)
    assert fs.getxattr(via_view, "user.encord.meta.split") == b'"train"'
    fh = fs.open(via_view, writable=False).fh
    assert fs.read(fh, 0, 100) == b"r1" * 10
    fs.release(fh)
    assert world.ls("/street/@split/train/burst") == ["f0.png"]  # a group folder is browsable in a view
    assert fs.getattr(fs.resolve("/street/@split/train/a.jpg")) == fs.getattr(direct)
    # ls -l of a value folder: the same attributes as the dataset's listing
    attrs = dict(fs.readdir(fs.resolve("/street")))
    assert all(attrs[n] == a for n, a in fs.readdir(fs.resolve("/street/@split/train")))


def test_missing_keys_values_and_rows(world: World) -> None:
    fs = world.fs
    assert world.ls("/street/@nobody-has-this") == []  # a key no row has: an empty folder
    assert world.ls("/street/@split/nobody-has-this") == []  # likewise a value
    assert world.err(fs.resolve, "/street/@") == errno.ENOENT
    assert world.err(fs.resolve, "/street/@split/val/a.jpg") == errno.ENOENT  # a.jpg is in train
    assert world.err(fs.resolve, "/street/@split/train/c.jpg") == errno.ENOENT  # no metadata at all
    assert world.err(fs.resolve, "/street/burst/@split") == errno.ENOENT  # views only in dataset folders
    assert world.err(fs.resolve, "/@split") == errno.ENOENT
    assert world.err(fs.open, fs.resolve("/street/@split"), False) == errno.EISDIR
    assert world.err(fs.getxattr, fs.resolve("/street/@split"), "user.encord.uid") == errno.ENODATA
    assert fs.listxattr(fs.resolve("/street/@split/train")) == []
    assert world.err(fs.setxattr, fs.resolve("/street/@split"), "user.encord.meta.k", b"1", 0) == errno.EPERM


def test_nested_keys_and_other_json_values(world: World) -> None:
    assert sorted(world.ls("/street/@camera.id")) == ["cam-1", "cam-2", "literal"]  # a literal key wins
    assert world.ls("/street/@camera.id/cam-1") == ["a.jpg"]
    assert world.ls("/street/@labels") == ['["car","dog"]']
    assert world.ls('/street/@labels/["car","dog"]') == ["h.jpg"]


def test_a_metadata_write_moves_the_row_at_once(world: World) -> None:
    fs = world.fs
    a = fs.resolve("/street/a.jpg")
    fs.setxattr(a, "user.encord.meta.split", b'"test"', 0)
    assert "a.jpg" not in world.ls("/street/@split/train")
    assert world.ls("/street/@split/test") == ["a.jpg"]
    assert "test" in world.ls("/street/@split")
    assert fs.resolve("/street/@split/test/a.jpg") == a
    assert world.err(fs.resolve, "/street/@split/train/a.jpg") == errno.ENOENT
    fs.removexattr(a, "user.encord.meta.split")
    assert "test" not in world.ls("/street/@split")
    assert world.writes is not None
    world.writes.push_round()  # landed: the overlay keeps showing it until the catalog has it
    assert all("a.jpg" not in world.ls(f"/street/@split/{v}") for v in world.ls("/street/@split"))


# Values SQLite compares as text and Python after Unicode normalization: "\u212a" (KELVIN SIGN) is "K"
# in NFC, "e\u0301" is "é"; "3" the string and 3 the number are different folders; an object or
# array whose text could look like a string; keys that need quoting in a JSON path.
TRICKY = ["train", "Train", "Krain", "\u212arain", "café", "cafe\u0301", "3", 3, None, True, "true", ["train"],
          {"train": 1}, "", " train", "tr/ain", "a" * 300, "a" * 255 + "b" * 45, "\u00e9t\u00e9"]  # fmt: skip
KEYS = ["split", "a b", "x[0]", "$", "é", "camera.id", 'q"uote']


def _tricky_rows() -> list[tuple[str, str, dict[str, Any] | None]]:
    rows: list[tuple[str, str, dict[str, Any] | None]] = []
    for i, value in enumerate(TRICKY * 2):
        meta: dict[str, Any] = {}
        if i % 3 == 0:  # the others: only "split", so that a row is in ASCII when its value is
            meta = {key: TRICKY[(i + k) % len(TRICKY)] for k, key in enumerate(KEYS) if (i + k) % 5}
        meta["split"] = value
        rows.append((f"t{i:03d}", f"t{i:03d}.jpg", meta))
    rows.append(("plain", "plain.jpg", {"other": "train"}))
    rows.append(("nothing", "nothing.jpg", None))
    return rows


def test_value_folders_list_exactly_the_rows_whose_value_they_name(tmp_path: Path) -> None:
    """Every value folder of every key lists the rows an independent reading of the rule picks, before
    and after changes are queued, whichever way the listing is made (SQLite picking the rows where it
    can: ``Catalog.child_members``; Python parsing every row otherwise)."""
    world = next(gen := _world(tmp_path, rows=_tricky_rows()))
    try:
        fs = world.fs
        asked: list[str] = []
        members = fs.catalog.child_members

        def counted(parent: int, after: int, key: str, text: str, also: Any) -> Any:
            asked.append(text)
            return members(parent, after, key, text, also)

        fs.catalog.child_members = counted  # type: ignore[method-assign]

        def expected(key: str, folder: str) -> list[str]:
            out = []
            for node in fs.catalog.children(fs.resolve("/street")):
                meta = world.writes.view(node.uid, node.client_metadata, node.title)[0] if world.writes else None
                value = views_mod.key_value(meta, key)
                if value is not views_mod._MISSING and unicodedata.normalize("NFC", value_name(value)) == (
                    unicodedata.normalize("NFC", folder)
                ):
                    out.append(node.name)
            return sorted(out)

        def check_all() -> None:
            for key in KEYS:
                folders = world.ls(f"/street/@{key}") + ["Krain", "train", "café", "nobody"]
                for folder in folders:
                    listed = sorted(world.ls(f"/street/@{key}/{folder}"))
                    assert listed == expected(key, folder), (key, folder)
                    # the kernel binding's listing (entries packed without an Attr each) says the same, and
                    # each entry is its row as the dataset has it (same inode, kind, size)
                    ino = fs.resolve(f"/street/@{key}/{folder}")
                    entries = fs.readdir_stats(ino)
                    assert entries is not None
                    found = [(n, c, d, s) for n, c, d, s, _ in entries]
                    attrs = [(n, a.ino, a.mode & 0o170000 == 0o040000, a.size) for n, a in fs.readdir(ino)]
                    assert found == attrs, (key, folder)
                    own = [(n, fs.getattr(fs.resolve(f"/street/{n}"))) for n, *_ in found]
                    assert found == [(n, a.ino, a.mode & 0o170000 == 0o040000, a.size) for n, a in own]

        check_all()
        assert "train" in asked and "Krain" in asked  # picked by SQLite where it could
        assert sorted(world.ls("/street/@split/Krain")) == ["t002.jpg", "t003.jpg", "t021.jpg", "t022.jpg"]
        # queued changes: the listing must see them before they land
        t019, t005 = fs.resolve("/street/t019.jpg"), fs.resolve("/street/t005.jpg")  # "train", 3; ASCII
        fs.setxattr(t019, "user.encord.meta.split", b'"val"', 0)  # out of train
        fs.setxattr(t005, "user.encord.meta.split", b'"train"', 0)  # into train
        assert "t019.jpg" not in world.ls("/street/@split/train") and "t005.jpg" in world.ls("/street/@split/train")
        check_all()
    finally:
        gen.close()


def test_mv_between_value_folders_sets_the_key(world: World) -> None:
    fs, writes = world.fs, world.writes
    assert writes is not None
    train, val = fs.resolve("/street/@split/train"), fs.resolve("/street/@split/val")
    fs.rename(train, "a.jpg", val, "a.jpg")
    assert world.ls("/street/@split/val") == ["a.jpg", "b.jpg"]
    assert fs.getxattr(fs.resolve("/street/a.jpg"), "user.encord.meta.split") == b'"val"'
    # a value folder nobody has yet, a non-string value, and a new name in the same move
    fs.rename(val, "b.jpg", fs.resolve("/street/@split/7"), "b2.jpg")
    assert world.ls("/street/@split/7") == ["b2.jpg"]
    assert fs.getxattr(fs.resolve("/street/b2.jpg"), "user.encord.meta.split") == b"7"
    # a rename inside one value folder is a title change, as in the dataset folder
    fs.rename(train, "burst", train, "burst2")
    assert "burst2" in world.ls("/street") and "burst2" in world.ls("/street/@split/train")
    # a dotted key: the top-level object with one field changed
    fs.rename(fs.resolve("/street/@camera.id/cam-1"), "a.jpg", fs.resolve("/street/@camera.id/cam-9"), "a.jpg")
    assert json.loads(fs.getxattr(fs.resolve("/street/a.jpg"), "user.encord.meta.camera")) == {
        "id": "cam-9",
        "model": "x",
    }
    while writes.push_round():
        pass
    meta = {r.title: r.client_metadata for r in world.backend.rows["ds1"]}
    assert meta["a.jpg"] == {"split": "val", "camera": {"id": "cam-9", "model": "x"}}
    assert meta["b2.jpg"] == {"split": 7, "camera": {"id": "cam-2"}}
    assert "burst2" in meta


def test_refused_moves_queue_nothing(world: World) -> None:
    fs, writes = world.fs, world.writes
    assert writes is not None
    train, val = fs.resolve("/street/@split/train"), fs.resolve("/street/@split/val")
    before = writes.status()["pending_ops"]
    for bad in ('{"broken', "[1,", '"unterminated'):
        assert world.err(fs.rename, train, "a.jpg", fs.resolve(f"/street/@split/{bad}"), "a.jpg") == errno.EINVAL
    other_key = fs.resolve("/street/@camera.id/cam-1")
    assert world.err(fs.rename, train, "a.jpg", other_key, "a.jpg") == errno.EXDEV
    assert world.err(fs.rename, fs.resolve("/street"), "a.jpg", val, "a.jpg") == errno.EXDEV
    assert world.err(fs.rename, train, "a.jpg", fs.resolve("/street"), "a.jpg") == errno.EXDEV
    assert world.err(fs.rename, train, "a.jpg", fs.resolve("/street/@split"), "a.jpg") == errno.EXDEV
    assert world.err(fs.rename, val, "a.jpg", train, "a.jpg") == errno.ENOENT  # not in val
    assert world.err(fs.rename, train, "a.jpg", val, "b.jpg") == errno.EEXIST  # b.jpg is another row
    assert world.err(fs.rename, train, "a.jpg", val, "@a.jpg") == errno.EPERM  # not a name rows can have
    assert writes.status()["pending_ops"] == before
    assert world.ls("/street/@split/val") == ["b.jpg"]


def test_read_only_mount_refuses_moves(tmp_path: Path) -> None:
    for w in _world(tmp_path, read_only=True):
        fs = w.fs
        assert sorted(w.ls("/street/@split/train")) == ["_@x.jpg", "a.jpg", "burst"]
        errno_ = w.err(
            fs.rename, fs.resolve("/street/@split/train"), "a.jpg", fs.resolve("/street/@split/val"), "a.jpg"
        )
        assert errno_ == errno.EROFS


def test_listings_resume_after_an_inode(world: World) -> None:
    fs = world.fs
    for path in ("/street/@split", "/street/@split/train"):
        ino = fs.resolve(path)
        whole = list(fs.readdir(ino))
        assert len(whole) >= 3
        first = list(fs.readdir(ino))[:2]
        rest = list(fs.readdir(ino, first[-1][1].ino))
        assert first + rest == whole
        assert [a.ino for _, a in whole] == sorted(a.ino for _, a in whole)


def test_invalidation_hook_gets_view_entries(world: World) -> None:
    fs = world.fs
    seen: list[tuple[int, str]] = []
    fs.invalidate_entry = lambda folder, name: seen.append((folder, name))
    train, val = fs.resolve("/street/@split/train"), fs.resolve("/street/@split/val")
    fs.setxattr(fs.resolve("/street/a.jpg"), "user.encord.meta.split", b'"val"', 0)
    assert (train, "a.jpg") in seen and (val, "a.jpg") in seen


# --- values as folder names -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(json_values)
def test_a_value_folder_reads_back_as_its_value(value: Any) -> None:
    name = value_name(value)
    assert name and "/" not in name and "\x00" not in name and name not in (".", "..")
    assert len(name.encode()) <= names.MAX_NAME_BYTES
    assert names.base_name(name, is_dir=True) == name  # safe: the title rules leave it alone
    # Whether the name was cut is not its length: a cut ends on a character boundary (up to 3 bytes
    # short: hypothesis found a 253-byte cut name) and drops trailing spaces. It is the whole text's.
    whole = views_mod._value_text(value)
    if len(whole.encode()) <= names.MAX_NAME_BYTES:  # not cut: the whole text, and it reads back
        assert name == whole
        assert parse_value(name) == value and type(parse_value(name)) is type(value)


@given(json_values, json_values)
def test_different_values_get_different_folders(a: Any, b: Any) -> None:
    canonical = json.dumps(a, sort_keys=False), json.dumps(b, sort_keys=False)
    if canonical[0] != canonical[1] and max(len(value_name(a).encode()), len(value_name(b).encode())) < 255:
        assert value_name(a) != value_name(b)


def test_value_names_spelled_out() -> None:
    assert [value_name(v) for v in ("train", 3, "3", True, "true", None, "", " x", "a/b", ".", "@x")] == [
        "train", "3", '"3"', "true", '"true"', "null", '""', '" x"', '"a\\u002fb"', '"."', '"@x"',
    ]  # fmt: skip
    assert value_name(["car", "dog"]) == '["car","dog"]' and value_name({"a": "x/y"}) == '{"a":"x\\u002fy"}'
    assert value_name("2024-01-01") == "2024-01-01" and value_name("NaN") == "NaN" and value_name("a\nb") == '"a\\nb"'
    assert len(value_name("x" * 400).encode()) == 255  # cut like a title, never dropped
    assert parse_value("NaN") == "NaN" and parse_value("1e999") == "1e999"
    for bad in ('{"a":', "[", '"x'):
        with pytest.raises(errors.InvalidValue):
            parse_value(bad)


# --- the naming rule and an older catalog ------------------------------------------------------------


def test_rows_never_take_a_view_name(tmp_path: Path) -> None:
    assert names.base_name("@split") == "_@split" and names.base_name("  @a.jpg") == "_@a.jpg"
    path = tmp_path / "c.sqlite"
    catalog = Catalog(path)
    entry = Entry(Kind.ROW, "u1", "@a.jpg", "image/jpeg", "item-u1", 1, 0.0, 0.0, {})
    catalog.sync_children(1, [entry], 1)
    assert [n.name for n in catalog.children(1)] == ["_@a.jpg"]
    catalog.close()
    older_catalog(path, 2, "UPDATE nodes SET name='@a.jpg', name_key='@a.jpg'")  # what version 2 stored
    catalog = Catalog(path)
    assert [n.name for n in catalog.children(1)] == ["_@a.jpg"]
    assert catalog.lookup(1, "_@a.jpg") is not None
    catalog.close()
