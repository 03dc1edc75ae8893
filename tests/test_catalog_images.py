"""Folder images (``core.images``): a catalog folder exported by one mount and adopted by another serves
the same names, order and fields at once, keeps its inodes through the background copy, and a damaged
or foreign image is refused."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from encordfs.core import catalog as catalog_mod
from encordfs.core import images
from encordfs.core.catalog import ROOT_INO, Catalog, Entry, Kind


def _row(uid: str, title: str, kind: Kind = Kind.ROW, meta: dict[str, object] | None = None) -> Entry:
    fields = {"uid": uid, "file_type": "image/jpeg", "dataset_hash": "ds"}
    return Entry(kind, uid, title, "image/jpeg", f"item-{uid}", 7, 1.0, 2.0, fields, meta)


def _entries() -> list[Entry]:
    rows = [_row(f"r{i:04d}", f"img{i}.jpg", meta={"i": i}) for i in range(50)]
    rows += [_row("twin", "IMG1.jpg"), _row("g1", "group", Kind.GROUP), _row("notitle", "")]
    return rows


def _listing(cat: Catalog, parent: int) -> list[tuple[int, str, Kind, int, float]]:
    """``child_stats``, checked against ``child_names`` (a plain listing), whole and resumed."""
    stats = list(cat.child_stats(parent))
    names = [(name, ino, int(kind.is_dir)) for ino, name, kind, _, _ in stats]
    assert list(cat.child_names(parent)) == names
    if stats:
        assert list(cat.child_names(parent, stats[0][0])) == names[1:]
    return stats


@pytest.fixture()
def exported(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    """A folder synced in one catalog, exported; (image path, [(uid, name)] in listing order)."""
    source = Catalog(tmp_path / "a.sqlite")
    source.sync_children(ROOT_INO, [Entry(Kind.DATASET, "ds", "ds", None, None, 0, 0, 0, {})], 0)
    ds = source.lookup(ROOT_INO, "ds")
    assert ds is not None
    source.sync_children(ds.ino, _entries(), 0)
    names = [(n.uid, n.name) for n in source.children(ds.ino)]
    path = tmp_path / "ds.image"
    assert images.export(source.path, ds.ino, path) == len(_entries())
    source.close()
    return path, names


def _adopting(tmp_path: Path) -> tuple[Catalog, int]:
    cat = Catalog(tmp_path / "b.sqlite")
    # inodes on this node differ from the exporter's: a few other rows first
    cat.sync_children(ROOT_INO, [Entry(Kind.DATASET, u, u, None, None, 0, 0, 0, {}) for u in ("x", "y", "ds")], 0)
    ds = cat.lookup(ROOT_INO, "ds")
    assert ds is not None
    return cat, ds.ino


@pytest.mark.parametrize("views_first", [False, True])
def test_adopted_image_serves_the_exporters_names_at_once_and_keeps_inodes_through_the_fill(
    tmp_path: Path, exported: tuple[Path, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch, views_first: bool
) -> None:
    monkeypatch.setattr(catalog_mod, "IMAGE_GRACE_S", 0.0)
    path, names = exported
    cat, ds = _adopting(tmp_path)
    image = images.open_image(path, expect_rows=len(names))
    version = cat.version
    assert cat.adopt_image(ds, image, when=123.0)
    assert cat.version > version and cat.loaded_at(ds) == 123.0 and cat.adopted() == {ds: len(names)}
    listed = _listing(cat, ds)
    assert [name for _, name, *_ in listed] == [name for _, name in names]
    assert {name for _, name in names} >= {"IMG1~twin.jpg", "untitled.jpg", "group"}
    # every read the core makes, answered from the image
    ino = listed[3][0]
    node = cat.get(ino)
    assert node is not None and node.name == "img3.jpg" and node.parent == ds and node.client_metadata == {"i": 3}
    assert cat.stat_fields(ino) == (Kind.ROW, 7, 2.0)
    assert cat.lookup(ds, "IMG3.JPG") is None and cat.lookup_key(ds, "IMG3.JPG") == node
    assert cat.lookup_ino(ds, "img3.jpg") == ino
    assert [n.name for n in cat.groups(ds)] == ["group"]
    assert cat.file_items(ds, after_ino=ino, limit=2) == [(ino, "item-r0003"), (ino + 1, "item-r0004")]
    assert [i for i, *_ in cat.child_stats(ds, after_ino=ino)] == [i for i, *_ in listed[4:]]
    # lookahead's view of the folder (readable files in listing order), from the image
    ahead = [n.ino for n in cat.next_files(ds, ino, 3)]
    assert ahead == [ino + 1, ino + 2, ino + 3] and cat.previous_file(ds, ino) == ino - 1
    assert cat.previous_file(ds, listed[0][0]) is None
    # metadata that lands before the fill shows at once and survives it
    cat.set_rows_state([("r0003", {"i": "landed"}, None)])
    assert cat.get(ino).client_metadata == {"i": "landed"}  # type: ignore[union-attr]
    if views_first:  # a view's scan of the metadata (an image has no index of it) copies the image in first
        assert [r[0] for r in cat.child_metadata(ds)] == [i for i, *_ in listed] and cat.adopted() == {}
        assert [r[7] for r in cat.child_metadata(ds) if r[0] == ino] == ['{"i":"landed"}']
        assert [r[0] for r in cat.child_members(ds, 0, "i", "landed", ())] == [ino]
    cat.fill_now(ds)
    assert cat.adopted() == {}
    assert _listing(cat, ds) == listed
    assert [n.ino for n in cat.next_files(ds, ino, 3)] == ahead and cat.previous_file(ds, ino) == ino - 1
    assert cat.get(ino).client_metadata == {"i": "landed"}  # type: ignore[union-attr]
    assert cat.lookup_ino(ds, "img3.jpg") == ino
    # a later sync of the folder keeps names and inodes (sticky), as for any folder
    cat.sync_children(ds, _entries(), 200.0)
    assert _listing(cat, ds) == listed
    cat.close()


def test_a_rename_waits_for_the_copy_and_a_stop_before_it_forgets_the_load(
    tmp_path: Path, exported: tuple[Path, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_mod, "IMAGE_GRACE_S", 0.0)
    path, names = exported
    copy = tmp_path / "second" / "again.image"
    _export_again(path, copy)  # the catalog deletes an image once it is copied in
    cat, ds = _adopting(tmp_path)
    assert cat.adopt_image(ds, images.open_image(path), when=1.0)
    ino = cat.lookup_ino(ds, "img5.jpg")
    assert ino is not None
    cat.rename(ino, "five.jpg", "five.jpg")  # needs the row in the catalog: the fill runs first
    assert cat.adopted() == {} and cat.lookup_ino(ds, "five.jpg") == ino
    cat.close()
    deadline = time.monotonic() + 5
    while path.exists() and time.monotonic() < deadline:  # the fill's thread deletes it after the copy
        time.sleep(0.01)
    assert not path.exists()

    cat, ds = _adopting(tmp_path / "second")
    assert cat.adopt_image(ds, images.open_image(copy), when=1.0)
    cat.close()  # before the fill: the next mount must load the folder again, not trust a half copy
    reopened = Catalog(tmp_path / "second" / "b.sqlite")
    assert reopened.loaded_at(ds) is None and list(reopened.child_stats(ds)) == []
    assert not copy.exists()
    reopened.close()


def _export_again(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())


def test_adopting_a_folder_that_has_rows_is_refused(tmp_path: Path, exported: tuple[Path, object]) -> None:
    path, _ = exported
    cat, ds = _adopting(tmp_path)
    cat.sync_children(ds, [_row("z", "z.jpg")], 0)
    assert not cat.adopt_image(ds, images.open_image(path), when=1.0)
    assert [n for _, n, *_ in cat.child_stats(ds)] == ["z.jpg"]
    cat.close()


def test_foreign_or_damaged_images_are_refused(tmp_path: Path, exported: tuple[Path, object]) -> None:
    path, _ = exported
    with pytest.raises(images.ImageError, match="rows"):
        images.open_image(path, expect_rows=3)
    for name, change, words in (
        ("other", "UPDATE meta SET value=99 WHERE key='format'", "format"),
        ("noindex", "DROP INDEX rows_name_key", "schema"),
    ):
        changed = tmp_path / f"{name}.image"
        changed.write_bytes(path.read_bytes())
        with sqlite3.connect(changed) as conn:
            conn.execute(change)
        with pytest.raises(images.ImageError, match=words):
            images.open_image(changed)
    garbage = tmp_path / "garbage.image"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(images.ImageError):
        images.open_image(garbage)


def test_remote_retitle_renames_by_the_naming_rules(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    cat.sync_children(5, [_row("a", "a.jpg"), _row("b", "b.jpg")], 0)
    version = cat.version
    cat.retitle([("a", "B.jpg"), ("missing", "x.jpg")])
    names = {n.uid: (n.name, n.title) for n in cat.children(5)}
    assert names == {"a": ("B~a.jpg", "B.jpg"), "b": ("b.jpg", "b.jpg")} and cat.version > version
    cat.close()
