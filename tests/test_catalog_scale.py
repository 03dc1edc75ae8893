"""Catalog at scale: batched sync gives the names a row-by-row upsert would, path caching never
serves a path the catalog no longer has, and listings resume after an inode."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from encordfs import errors
from encordfs.core.catalog import SYNC_BATCH, Catalog, Entry, Kind
from encordfs.core.fs import EncordFS, Options
from harness.fakes import Clock
from harness.fakes import row_record as _row


def _entry(uid: str, title: str) -> Entry:
    return Entry(Kind.ROW, uid, title, "image/jpeg", f"item-{uid}", 1, 0.0, 0.0, {"uid": uid})


def test_batched_sync_names_across_batches(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite")
    n = 3 * SYNC_BATCH + 7
    # every title twice (differing in case), the twins in different batches, plus a repeated uid
    entries = [_entry(f"a{i:06d}", f"img{i}.jpg") for i in range(n)] + [
        _entry(f"b{i:06d}", f"IMG{i}.jpg") for i in range(n)
    ]
    entries.append(_entry("a000001", "img1.jpg"))
    assert catalog.sync_children(1, entries, 0) == len(entries)
    first = {node.uid: (node.ino, node.name) for node in catalog.children(1)}
    assert len(first) == 2 * n
    assert first["a000001"][1] == "img1.jpg" and first["b000001"][1] == "IMG1~b000001.jpg"
    assert len({name.casefold() for _, name in first.values()}) == 2 * n
    # a resync that drops the first claimants keeps everyone else's name and inode
    survivors = [e for e in entries if e.uid.startswith("b")]
    version = catalog.version
    catalog.sync_children(1, survivors, 1)
    second = {node.uid: (node.ino, node.name) for node in catalog.children(1)}
    assert second == {uid: first[uid] for uid in second} and len(second) == n
    assert catalog.version > version
    unchanged = catalog.version
    catalog.sync_children(1, survivors, 2)  # nothing changed: no name changed meaning
    assert catalog.version == unchanged
    inos = sorted(ino for ino, _ in second.values())
    assert [ino for ino, *_ in catalog.child_stats(1, after_ino=inos[9])] == inos[10:]
    catalog.close()


def test_a_refresh_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    """An unchanged row is only noted as seen (in a temporary table), not stamped: a refresh of a big
    folder used to rewrite every row into the WAL (66 MB for 100k rows). Deletions and the
    replacement of a row by a new one with its title still come out as before."""
    path = tmp_path / "c.sqlite"
    catalog = Catalog(path)
    entries = [_entry(f"u{i:06d}", f"img{i}.jpg") for i in range(2 * SYNC_BATCH + 5)]
    catalog.sync_children(1, entries, 0)
    before = {node.uid: (node.ino, node.name) for node in catalog.children(1)}
    wal = path.with_name(path.name + "-wal")
    catalog._writer.execute("PRAGMA wal_autocheckpoint=0")  # noqa: SLF001 (the WAL only grows: its growth is what a sync wrote)

    def wal_bytes_after(sync_entries: list[Entry], when: float) -> int:
        size = wal.stat().st_size
        catalog.sync_children(1, sync_entries, when)
        return wal.stat().st_size - size

    table_bytes = len(entries) * 100  # the rows' text alone: what stamping them all rewrote
    assert wal_bytes_after(entries, 1) < table_bytes // 10
    assert wal_bytes_after(entries, 1.5) < table_bytes // 10
    assert {node.uid: (node.ino, node.name) for node in catalog.children(1)} == before
    # one row gone, one replaced by a new row with its title: the new one takes the plain name
    replaced = entries[3]
    changed = [e for e in entries if e not in (entries[1], replaced)] + [_entry("new", replaced.title)]
    wal_bytes_after(changed, 2)
    after = {node.uid: (node.ino, node.name) for node in catalog.children(1)}
    assert set(after) == {e.uid for e in changed}
    assert after["new"][1] == before[replaced.uid][1]
    assert all(after[uid] == before[uid] for uid in after if uid != "new")
    catalog.close()


@pytest.fixture()
def fs_and_backend(tmp_path: Path):  # type: ignore[no-untyped-def]
    from encordfs.backend import DatasetRecord
    from encordfs.backend.memory import MemoryBackend

    backend = MemoryBackend()
    backend.add_dataset(DatasetRecord("ds1", "street", "d", 1e9, 1e9, 0, "folder1", "admin"))
    for uid, title in (("r1", "a.jpg"), ("r2", "b.jpg")):
        backend.add_row(_row(uid, "ds1", title, b"x"), b"x")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    clock = Clock()
    fs = EncordFS(
        backend, catalog, reader=None, urls=None, options=Options(uid=0, gid=0, metadata_ttl_s=60), clock=clock
    )  # type: ignore[arg-type]
    yield fs, backend, clock
    catalog.close()


def test_path_cache_follows_refresh_and_rename(fs_and_backend) -> None:  # type: ignore[no-untyped-def]
    fs, backend, _ = fs_and_backend
    ino = fs.resolve("/street/a.jpg")
    fs.resolve("/street/a.jpg")  # the first walk loaded folders (version moved): stored now
    assert fs.resolve("/street/a.jpg") == ino and fs.paths.hits >= 1
    backend.remove_row("ds1", "r1")
    fs.refresh(fs.resolve("/street"))
    with pytest.raises(errors.FsError) as gone:
        fs.resolve("/street/a.jpg")
    assert gone.value.errno == errno.ENOENT
    b = fs.resolve("/street/b.jpg")
    fs.catalog.rename(b, "c.jpg", "c.jpg")
    with pytest.raises(errors.FsError):
        fs.resolve("/street/b.jpg")
    assert fs.resolve("/street/c.jpg") == b


def test_a_path_next_to_a_resolved_one_walks_one_step(fs_and_backend, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A walk stores the folders it passes through; a path whose folder is stored walks only its last
    name (an order hint, a first open through the path-based binding: one catalog lookup, not one per
    folder on the way)."""
    fs, _, _ = fs_and_backend
    fs.resolve("/street/a.jpg")  # loads the folders (the catalog changes, so nothing is stored yet)
    walked: list[tuple[int, str]] = []
    lookup = fs.lookup_ino
    monkeypatch.setattr(fs, "lookup_ino", lambda parent, name: walked.append((parent, name)) or lookup(parent, name))
    a = fs.resolve("/street/a.jpg")
    assert [name for _, name in walked] == ["street", "a.jpg"]
    walked.clear()
    b = fs.resolve("/street/b.jpg")
    assert [name for _, name in walked] == ["b.jpg"] and b != a
    assert walked[0][0] == fs.resolve("/street")
    walked.clear()
    assert fs.resolve("/street/b.jpg") == b and fs.resolve("/street/a.jpg") == a and not walked
    with pytest.raises(errors.FsError) as missing:
        fs.resolve("/street/nothing.jpg")
    assert missing.value.errno == errno.ENOENT and [name for _, name in walked] == ["nothing.jpg"]


def test_path_cache_hit_still_starts_the_ttl_refresh(fs_and_backend) -> None:  # type: ignore[no-untyped-def]
    fs, backend, clock = fs_and_backend
    fs.resolve("/street/a.jpg")  # loads the folders (the catalog changes, so nothing is cached yet)
    fs.resolve("/street/a.jpg")  # a walk over unchanged folders: now cached
    assert fs.paths.get("/street/a.jpg") is not None
    backend.remove_row("ds1", "r1")
    clock.now += 61
    fs.resolve("/street/a.jpg")  # a cached hit, served stale while the folder reloads
    fs.wait_refreshes()
    with pytest.raises(errors.FsError):
        fs.resolve("/street/a.jpg")


_SYNC_RSS = """
import sys
from pathlib import Path
from encordfs.core import catalog as c
if sys.argv[2] == "keep":
    c.RELEASE_AFTER_ENTRIES = 1 << 60
cat = c.Catalog(Path(sys.argv[1]) / "c.sqlite")
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
entries = (
    c.Entry(c.Kind.ROW, f"uid-{i:09d}", f"title {i}.jpg", "image/jpeg", f"item-{i:032d}", 64, 1.0, 2.0, {"i": i})
    for i in range(int(sys.argv[3]))
)
before = rss()
cat.sync_children(1, entries, 0)
print(rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS")
def test_a_big_sync_gives_its_memory_back(tmp_path: Path) -> None:
    """A folder of 150k rows synced: the writer's page cache and the freed heap go back to the OS
    (``Catalog._release_memory_locked``), so the mount does not keep them to its end. Measured in
    fresh processes, with the release and without it."""
    import subprocess
    import sys

    def grown_kib(mode: str) -> int:
        work = tmp_path / mode
        work.mkdir()
        out = subprocess.run(
            [sys.executable, "-c", _SYNC_RSS, str(work), mode, "150000"], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    kept, released = grown_kib("keep"), grown_kib("release")
    assert kept > 12_000, kept  # the writer's page cache alone is 16 MiB once full
    assert released < kept // 3, (released, kept)
