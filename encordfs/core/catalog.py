"""The catalog: every dataset, row and group member the mount knows, in SQLite, keyed by inode.

Owns: inode numbers (stable for the life of a row: ``(parent, uid)`` keeps its inode across
refreshes; numbers are never reused, AUTOINCREMENT), names (assigned once by ``core.names`` rules and
then sticky), the fields that ``stat`` and the xattrs show, and when each folder was last loaded.

Listings and lookups are served from here, so memory does not grow with dataset size: a folder is
synced from a stream of ``Entry`` records in one transaction (``sync_children``); rows that did not
come back are deleted with their members.

Threads: each thread gets its own connection (WAL lets readers run beside the writer); writers are
serialised by ``_write_lock``. Lock order: ``_write_lock`` only; no other lock is held while taking it.
The catalog is a cache of the server: ``synchronous=NORMAL`` is enough, a lost tail is reloaded.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from encordfs.core import names

ROOT_INO = 1


class Kind(IntEnum):
    ROOT = 0
    DATASET = 1  # directory
    ROW = 2  # single-file data row
    GROUP = 3  # composite row: directory of members
    CHILD = 4  # member file of a group

    @property
    def is_dir(self) -> bool:
        return self in (Kind.ROOT, Kind.DATASET, Kind.GROUP)


@dataclass(frozen=True, slots=True)
class Entry:
    """One node as a loader hands it to ``sync_children``."""

    kind: Kind
    uid: str
    title: str
    mime_type: str | None
    item_uuid: str | None  # storage item: signed for files, listed for groups
    size: int
    ctime: float
    mtime: float
    fields: dict[str, Any]  # what the read-only xattrs show
    client_metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Node:
    ino: int
    parent: int
    kind: Kind
    uid: str
    name: str
    title: str
    item_uuid: str | None
    size: int
    ctime: float
    mtime: float
    fields_json: str
    client_metadata_json: str | None

    @property
    def fields(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.fields_json)
        return value

    @property
    def client_metadata(self) -> dict[str, Any] | None:
        return None if self.client_metadata_json is None else json.loads(self.client_metadata_json)


_COLUMNS = "ino, parent, kind, uid, name, title, item_uuid, size, ctime, mtime, fields, client_metadata"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes(
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    uid TEXT NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    title TEXT NOT NULL,
    item_uuid TEXT,
    size INTEGER NOT NULL,
    ctime REAL NOT NULL,
    mtime REAL NOT NULL,
    fields TEXT NOT NULL,
    client_metadata TEXT,
    gen INTEGER NOT NULL DEFAULT 0,
    loaded_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_parent_uid ON nodes(parent, uid);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_parent_key ON nodes(parent, name_key);
CREATE INDEX IF NOT EXISTS nodes_parent_name ON nodes(parent, name);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value);
"""


def _node(row: tuple[Any, ...]) -> Node:
    return Node(row[0], row[1], Kind(row[2]), *row[3:])


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        with self._write_lock:
            self._conn().executescript(_SCHEMA)
            # Inodes of a fresh catalog start above ROOT_INO.
            self._conn().execute("INSERT OR IGNORE INTO sqlite_sequence(name, seq) SELECT 'nodes', ? WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name='nodes')", (ROOT_INO,))
            self._conn().commit()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- reads ------------------------------------------------------------------------------------
    def get(self, ino: int) -> Node | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM nodes WHERE ino=?", (ino,)).fetchone()
        return _node(row) if row else None

    def lookup(self, parent: int, name: str) -> Node | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND name=?", (parent, name)).fetchone()
        return _node(row) if row else None

    def lookup_key(self, parent: int, name: str) -> Node | None:
        """The child whose name equals ``name`` ignoring case (what a new name would collide with)."""
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND name_key=?", (parent, names.name_key(name))).fetchone()
        return _node(row) if row else None

    def children(self, parent: int) -> Iterator[Node]:
        cur = self._conn().execute(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? ORDER BY ino", (parent,))
        for row in cur:
            yield _node(row)

    def count_children(self, parent: int) -> int:
        return int(self._conn().execute("SELECT count(*) FROM nodes WHERE parent=?", (parent,)).fetchone()[0])

    def file_items(self, parent: int, after_ino: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        """(ino, item uuid) of signable files in a folder, in inode order from ``after_ino``."""
        cur = self._conn().execute(
            "SELECT ino, item_uuid FROM nodes WHERE parent=? AND ino>=? AND kind IN (?, ?) AND item_uuid IS NOT NULL ORDER BY ino LIMIT ?",
            (parent, after_ino, Kind.ROW, Kind.CHILD, limit),
        )
        return [(int(i), str(u)) for i, u in cur]

    def groups(self, parent: int) -> list[Node]:
        cur = self._conn().execute(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND kind=?", (parent, Kind.GROUP))
        return [_node(r) for r in cur]

    def loaded_at(self, ino: int) -> float | None:
        key = f"loaded:{ino}"
        row = self._conn().execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return None if row is None else float(row[0])

    # -- writes -----------------------------------------------------------------------------------
    def mark_loaded(self, ino: int, when: float) -> None:
        with self._write_lock:
            conn = self._conn()
            conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (f"loaded:{ino}", when))
            conn.commit()

    def rename(self, ino: int, title: str, name: str) -> None:
        """Show a queued title change at once (the next sync keeps it: loaders apply queued titles)."""
        with self._write_lock:
            conn = self._conn()
            conn.execute("UPDATE nodes SET title=?, name=?, name_key=? WHERE ino=?", (title, name, names.name_key(name), ino))
            conn.commit()

    def set_row_state(self, uid: str, metadata: dict[str, Any] | None, title: str | None) -> None:
        """Record the server's state of a row after a push landed (metadata and/or title)."""
        with self._write_lock:
            conn = self._conn()
            if metadata is not None:
                encoded = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
                conn.execute("UPDATE nodes SET client_metadata=? WHERE uid=? AND kind IN (?, ?)", (encoded, uid, Kind.ROW, Kind.GROUP))
            if title is not None:
                conn.execute("UPDATE nodes SET title=? WHERE uid=? AND kind IN (?, ?)", (title, uid, Kind.ROW, Kind.GROUP))
            conn.commit()

    def sync_children(self, parent: int, entries: Iterable[Entry], when: float) -> int:
        """Make ``parent``'s children exactly ``entries`` (streamed); returns how many there are.

        Existing children keep inode and name unless their title changed; new ones get a name by the
        rules of ``core.names``; children that did not come back are deleted with their members.
        """
        with self._write_lock:
            conn = self._conn()
            try:
                gen = self._next_gen_locked(conn)
                renamed: list[tuple[int, Entry]] = []
                count = 0
                for e in entries:
                    count += 1
                    self._upsert_locked(conn, parent, e, gen, renamed)
                self._delete_stale_locked(conn, parent, gen)
                for ino, e in renamed:
                    self._assign_name_locked(conn, parent, ino, e)
                conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (f"loaded:{parent}", when))
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return count

    def _next_gen_locked(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM state WHERE key='gen'").fetchone()
        gen = (int(row[0]) if row else 0) + 1
        conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('gen', ?)", (gen,))
        return gen

    def _upsert_locked(self, conn: sqlite3.Connection, parent: int, e: Entry, gen: int, renamed: list[tuple[int, Entry]]) -> None:
        fields = json.dumps(e.fields, separators=(",", ":"), ensure_ascii=False)
        metadata = None if e.client_metadata is None else json.dumps(e.client_metadata, separators=(",", ":"), ensure_ascii=False)
        row = conn.execute("SELECT ino, title, kind FROM nodes WHERE parent=? AND uid=?", (parent, e.uid)).fetchone()
        if row is not None:
            ino, old_title, old_kind = row
            conn.execute(
                "UPDATE nodes SET kind=?, title=?, item_uuid=?, size=?, ctime=?, mtime=?, fields=?, client_metadata=?, gen=? WHERE ino=?",
                (int(e.kind), e.title, e.item_uuid, e.size, e.ctime, e.mtime, fields, metadata, gen, ino),
            )
            if old_title != e.title or old_kind != int(e.kind):
                renamed.append((ino, e))
            return
        name = self._free_name_locked(conn, parent, e)
        conn.execute(
            "INSERT INTO nodes(parent, kind, uid, name, name_key, title, item_uuid, size, ctime, mtime, fields, client_metadata, gen)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (parent, int(e.kind), e.uid, name, names.name_key(name), e.title, e.item_uuid, e.size, e.ctime, e.mtime, fields, metadata, gen),
        )

    def _free_name_locked(self, conn: sqlite3.Connection, parent: int, e: Entry, own_ino: int = -1) -> str:
        is_dir = e.kind.is_dir
        base = names.base_name(e.title, e.mime_type, is_dir=is_dir)
        candidates = [base] + [names.disambiguated(base, e.uid, is_dir=is_dir, width=w) for w in (8, 16, 64)]
        for candidate in candidates:
            hit = conn.execute("SELECT ino FROM nodes WHERE parent=? AND name_key=?", (parent, names.name_key(candidate))).fetchone()
            if hit is None or hit[0] == own_ino:
                return candidate
        raise RuntimeError(f"no free name for {e.uid!r}")  # unreachable: uids are unique per folder

    def _assign_name_locked(self, conn: sqlite3.Connection, parent: int, ino: int, e: Entry) -> None:
        name = self._free_name_locked(conn, parent, e, own_ino=ino)
        conn.execute("UPDATE nodes SET name=?, name_key=? WHERE ino=?", (name, names.name_key(name), ino))

    def _delete_stale_locked(self, conn: sqlite3.Connection, parent: int, gen: int) -> None:
        stale = [r[0] for r in conn.execute("SELECT ino FROM nodes WHERE parent=? AND gen<>?", (parent, gen))]
        while stale:
            batch, stale = stale[:500], stale[500:]
            marks = ",".join("?" * len(batch))
            grandchildren = [r[0] for r in conn.execute(f"SELECT ino FROM nodes WHERE parent IN ({marks})", batch)]
            conn.execute(f"DELETE FROM nodes WHERE ino IN ({marks})", batch)
            conn.execute(f"DELETE FROM state WHERE key IN ({marks})", [f"loaded:{i}" for i in batch])
            stale.extend(grandchildren)
