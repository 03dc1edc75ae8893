"""The SQLite reader pool: read transactions held across queries, and what bounds them."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from encordfs.core.catalog import Catalog
from encordfs.core.readpool import ReadPool


class Db:
    """A WAL database, its writer, and a write generation as ``Catalog`` keeps it (odd during a write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.generation = 0
        self.writer = self.connect()
        self.writer.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        self.writer.execute("INSERT INTO t VALUES (1, 'old')")
        self.writer.commit()
        self.pool = ReadPool(self.connect, 4, generation=lambda: self.generation)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def write(self, sql: str, args: tuple[object, ...], *, tell_pool: bool = True) -> None:
        self.generation += 1
        if tell_pool:
            self.pool.end_reads()
        self.writer.execute(sql, args)
        self.writer.commit()
        self.generation += 1

    def value(self) -> object:
        return self.pool.one("SELECT v FROM t WHERE k=1", ())[0]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    d = Db(tmp_path / "db.sqlite")
    yield d
    d.pool.close()
    d.writer.close()


def test_a_query_after_a_write_sees_it(db: Db) -> None:
    assert db.value() == "old"
    db.write("UPDATE t SET v=? WHERE k=1", ("new",))
    assert db.value() == "new"
    # a write under way (odd generation): queries run in autocommit and see each commit at once
    db.generation += 1
    db.writer.execute("UPDATE t SET v='during'")
    db.writer.commit()
    assert db.value() == "during"
    db.generation += 1
    assert db.value() == "during"


def test_the_snapshot_is_held_between_queries_while_nothing_is_written(db: Db) -> None:
    """What the pool saves: no read transaction per query. A commit the generation does not announce
    (no ``Catalog`` write does that) is not seen until the next announced write."""
    assert db.value() == "old"
    db.writer.execute("UPDATE t SET v='unannounced'")
    db.writer.commit()
    assert db.value() == "old"  # the same read transaction
    db.write("UPDATE t SET k=k WHERE k=1", ())
    assert db.value() == "unannounced"


def test_a_listing_started_before_a_write_keeps_its_snapshot(db: Db) -> None:
    db.writer.executemany("INSERT INTO t VALUES (?, 'x')", [(k,) for k in range(2, 50)])
    db.write("UPDATE t SET v='x' WHERE k=1", ())
    rows = db.pool.stream("SELECT k FROM t ORDER BY k", ())
    assert next(rows) == (1,)
    db.write("DELETE FROM t WHERE k > 1", ())
    assert len(list(rows)) == 48  # the rest of the listing as of its start
    assert db.pool.all("SELECT count(*) FROM t", ()) == [(1,)]


def test_held_reads_do_not_let_the_wal_grow_past_writes(db: Db) -> None:
    """Idle connections end their read transactions when a write begins, so checkpoints can reset
    the WAL: 300 writes of 64 KiB, each followed by reads from two threads, leave it small. Without
    ``end_reads`` the held snapshots pin the WAL, which grew to 42 MB (4.2 MB with it)."""
    blob = os.urandom(64 << 10)
    for i in range(300):
        db.write("INSERT OR REPLACE INTO t VALUES (?, ?)", (2 + i % 3, blob))
        threads = [threading.Thread(target=db.value) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert db.value() == "old"
    wal = Path(f"{db.path}-wal").stat().st_size
    assert wal < 8 << 20, f"WAL {wal / 1e6:.1f} MB"


def test_without_end_reads_the_wal_does_grow(db: Db) -> None:
    """The control for the test above: the same writes with the idle snapshots kept."""
    blob = os.urandom(64 << 10)
    for i in range(300):
        db.write("INSERT OR REPLACE INTO t VALUES (?, ?)", (2 + i % 3, blob), tell_pool=False)
        db.value()
    assert Path(f"{db.path}-wal").stat().st_size > 8 << 20


def test_the_catalog_ends_idle_reads_when_a_write_begins(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    try:
        catalog.get(1)  # a read: the idle connection it used holds its read transaction
        held = [began for _, began in catalog._reads._idle]
        assert held and all(b >= 0 for b in held)
        catalog.set_size(1, 5)  # a write (no such row: nothing changes but the generation)
        assert all(began == -1 for _, began in catalog._reads._idle)
    finally:
        catalog.close()
