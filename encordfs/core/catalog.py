"""The catalog: every dataset, row and group member the mount knows, in SQLite, keyed by inode.

Owns: inode numbers (stable for the life of a row: ``(parent, uid)`` keeps its inode across
refreshes; numbers are never reused, AUTOINCREMENT), names (assigned once by ``core.names`` rules and
then sticky), the fields that ``stat`` and the xattrs show, and when each folder was last loaded.

Listings and lookups are served from here, so memory does not grow with dataset size: a folder is
synced from a stream of ``Entry`` records in one transaction (``sync_children``); rows that did not
come back are deleted with their members.

Sync algorithm (per batch of ``SYNC_BATCH`` entries with distinct uids): one ``SELECT … uid IN
(batch)`` finds the rows that exist; an unchanged row (same title, kind, item, size, times, fields
and metadata text) is only noted as seen, in a temporary table of the writer (``temp.seen``, outside
the catalog file: a refresh that changes nothing writes nothing to it, where stamping each row rewrote
the whole table into the WAL, 46 MB for 100k rows), a changed one gets a full UPDATE with the new
generation stamp, by ``executemany``; new rows get their base name when neither the folder nor the
batch has it (one ``name_key IN (…)`` query per batch) and are bulk-inserted in stream order, and a colliding one
flushes the pending inserts and takes the per-row path (``_free_name_locked``), so names are exactly
what a row-by-row upsert gives. Children neither seen nor stamped are then deleted, and rows
whose title changed are renamed last. Nothing proportional to the folder is held in Python:
a first load of 100k rows (parse and sync) takes ~3.5 s, a million rows constant memory. ``version`` moves when a name may have changed
meaning (insert, delete, rename), which is what path caches above key on.

Listings (``child_stats``) stream in inode order from the ``(parent, ino)`` index, resumable from an
inode (the FUSE adapter's readdir offsets), so no listing is sorted or buffered whole.

Adopted images (cluster mode; ``core.images``): ``adopt_image`` makes a prebuilt image of a folder
serve that (empty) folder at once: it reserves an inode range ``[base, base + span)`` from the
AUTOINCREMENT sequence (row ``ord`` of the image is inode ``base + ord``, here and after the copy) and
records ``image:<folder>`` and ``loaded:<folder>`` in one transaction. Reads of the folder, or of an
inode in its range, go to the image until a background *fill* has copied it in (one ``INSERT … SELECT``
under the write lock, after ``FILL_DELAY_S`` or as soon as a write needs the rows: a rename of one of
them, a sync of the folder or of the root). Metadata that lands meanwhile (``set_rows_state``) is kept
as a patch that reads of the image apply and the fill writes. A mount that stops before the fill
forgets the folder's load (the next mount loads it again); a fill that fails does the same.

Threads: readers borrow a pooled connection per query (WAL lets them run beside the writer); the one
writer connection is used under ``_write_lock``. Lock order: ``_write_lock`` only; no other lock is
held while taking it. ``_adopted`` is read without a lock (dict operations are atomic under the GIL)
and changed under ``_write_lock``. ``get`` keeps the nodes it read until the next write (the lock's
generation moves at each acquire and release; see ``_GenerationLock``).
The catalog is a cache of the server: ``synchronous=NORMAL`` is enough, a lost tail is reloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import orjson

from encordfs.core import heap, images, names
from encordfs.core.readpool import ReadPool

log = logging.getLogger(__name__)

ROOT_INO = 1
# ``size`` of a file whose metadata has no size (a null ``file_size``): learnt from the object at first use.
UNKNOWN_SIZE = -1
# 2: name keys ignore Unicode normalization (names rule 5); 3: no name starts with "@" (names rule 2:
# those are views by metadata key)
SCHEMA_VERSION = 3
# Entries per ``sync_children`` batch: one SELECT of the batch's uids (SQLite's default limit of 999
# host parameters bounds it), then bulk UPDATE / INSERT. Bigger batches gain little past a few hundred.
SYNC_BATCH = 500
# Page cache of the writer connection, KiB (see ``Catalog._open_writer``).
WRITER_CACHE_KIB = 16 * 1024
# Pooled reader connections kept open (more are opened under load and closed when given back).
POOL_SIZE = 16
# How long an adopted image serves its folder before the fill copies it in (unless a write needs the rows
# sooner). The fill holds the writer for a while (~15 s per 1M rows on a busy 2-core VM), so it waits for
# the joining node's first listings: an ``ls`` of a million entries takes well under 30 s.
FILL_DELAY_S = 30.0
# After the fill, how long the image file stays for reads that started on it just before.
IMAGE_GRACE_S = 10.0


class Kind(IntEnum):
    ROOT = 0
    DATASET = 1  # directory
    ROW = 2  # single-file data row
    GROUP = 3  # composite row: directory of members
    CHILD = 4  # member file of a group

    @property
    def is_dir(self) -> bool:
        return self in (Kind.ROOT, Kind.DATASET, Kind.GROUP)

    @property
    def is_row(self) -> bool:
        """A data row (file or group folder): the kinds with client metadata and a changeable title."""
        return self in (Kind.ROW, Kind.GROUP)


@dataclass(frozen=True, slots=True)
class Entry:
    """One node as a loader hands it to ``sync_children``."""

    kind: Kind
    uid: str
    title: str
    mime_type: str | None
    handle: str | None  # what the backend signs (files) or lists (groups): ``encordfs.backend`` handles
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
    handle: str | None
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


@dataclass(slots=True)
class SyncChanges:
    """What one ``sync_children`` changed that a kernel may hold in its caches, for the caller to
    announce (``EncordFS.on_invalidate``): ``names`` whose meaning changed in the folder (a child
    deleted or inserted, and both the old and the new name of a renamed one) and ``inodes`` of
    children whose ``stat`` changed (size, times or kind). Collected only when asked for: a first
    load of a million rows has nothing to announce and builds nothing."""

    names: list[str] = field(default_factory=list)
    inodes: list[int] = field(default_factory=list)


NODE_CACHE_ENTRIES = 8192  # nodes kept between writes (``Catalog.get``): ~1.2 KiB each, ~10 MiB at most
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
    item_uuid TEXT,  -- the node's backend handle (a storage item uuid, or a legacy key)
    size INTEGER NOT NULL,
    ctime REAL NOT NULL,
    mtime REAL NOT NULL,
    fields TEXT NOT NULL,
    client_metadata TEXT,
    gen INTEGER NOT NULL DEFAULT 0,
    loaded_at REAL
);
-- Three indexes, each paid on every insert (a first load inserts 100k rows at once). (uid, parent)
-- serves both a sync's "which of these uids exist here" and a landed write's "rows with this uid";
-- (parent, name_key) both the unique-name rule and lookups by name (key, then the exact name).
DROP INDEX IF EXISTS nodes_parent_uid;
DROP INDEX IF EXISTS nodes_uid;
DROP INDEX IF EXISTS nodes_parent_name;
CREATE UNIQUE INDEX IF NOT EXISTS nodes_uid_parent ON nodes(uid, parent);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_parent_key ON nodes(parent, name_key);
-- Listings are in inode order: without this SQLite sorts the whole folder in memory per readdir
-- (a 1M-row folder cost ~200 MB of RSS).
CREATE INDEX IF NOT EXISTS nodes_parent_ino ON nodes(parent, ino);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value);
"""
# The unchanged children a sync has seen (``sync_children``): in the writer's temporary database
# (made with the writer connection), which SQLite (built with TEMP_STORE=1, as Python's is) keeps in
# memory up to its small cache and past it in an unlinked temporary file; empty between syncs.
_SEEN = "CREATE TEMP TABLE IF NOT EXISTS seen(ino INTEGER PRIMARY KEY)"


# Kind by value without the enum's lookup (0.9 µs a call; a listing converts every entry's kind).
KINDS = tuple(Kind)
KIND_IS_DIR = tuple(kind.is_dir for kind in KINDS)  # by kind number: a tuple index, not a property call
_DIR_KINDS = ", ".join(str(int(k)) for k in Kind if k.is_dir)  # for SQL: the kinds listed as folders
assert all(k.value == i for i, k in enumerate(KINDS))


def _node(row: tuple[Any, ...]) -> Node:
    return Node(row[0], row[1], KINDS[row[2]], *row[3:])


# One encoder for every row: ``json.dumps`` with options builds a new encoder per call (a third of
# the cost of a sync was that).
_json_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _compact(value: Any) -> str:
    """Compact JSON text of a field dict: orjson (8x the stdlib's speed; 100k rows encode two dicts
    each per sync), the stdlib for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _json_compact(value)


# Entries between two progress reports while a listing is staged (a waiter's sign of life); a slow
# listing reports at least every 0.25 s.
PROGRESS_EVERY = 256
# A staged listing stays in memory up to this size, then spills to a temporary file in the cache dir:
# the in-memory stage is a transient buffer of up to this size, plus its copy when it spills.
STAGE_IN_MEMORY_BYTES = 8 << 20
# A sync of at least this many entries gives back what it used (``Catalog._release_memory_locked``).
RELEASE_AFTER_ENTRIES = 20_000


def _dump_entry(e: Entry) -> bytes:
    row = [int(e.kind), e.uid, e.title, e.mime_type, e.handle, e.size, e.ctime, e.mtime, e.fields, e.client_metadata]
    try:
        return orjson.dumps(row)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, lone surrogates
        return json.dumps(row).encode()


def _load_entry(line: bytes) -> Entry:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:  # what ``_dump_entry`` wrote with the stdlib
        row = json.loads(line)
    kind, uid, title, mime, handle, size, ctime, mtime, fields, metadata = row
    return Entry(Kind(kind), uid, title, mime, handle, size, ctime, mtime, fields, metadata)


def _stage(entries: Iterable[Entry], spill_dir: Path, progress: Callable[[int], None] | None) -> Iterator[Entry]:
    """Drain ``entries`` (a listing streaming from the network) before any lock is taken, into memory
    or, past ``STAGE_IN_MEMORY_BYTES``, a temporary file; then hand them back in order. A slow or
    trickling listing thus never holds the catalog's write lock."""
    spool = tempfile.SpooledTemporaryFile(
        max_size=STAGE_IN_MEMORY_BYTES, mode="w+b", dir=str(spill_dir), prefix="listing-"
    )
    pending, reported = 0, time.monotonic()
    for e in entries:
        spool.write(_dump_entry(e) + b"\n")
        pending += 1
        if progress is not None and (pending >= PROGRESS_EVERY or time.monotonic() - reported >= 0.25):
            progress(pending)
            pending, reported = 0, time.monotonic()
    if progress is not None and pending:
        progress(pending)
    spool.seek(0)

    def replay() -> Iterator[Entry]:
        with spool:
            for line in spool:
                yield _load_entry(line)

    return replay()


def _batches(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    """Consecutive batches of at most ``size`` entries with distinct uids (a repeated uid starts a
    new batch, so it updates the row its first occurrence inserted, as a per-row upsert would)."""
    batch: list[Entry] = []
    uids: set[str] = set()
    for e in entries:
        if len(batch) >= size or e.uid in uids:
            yield batch
            batch, uids = [], set()
        batch.append(e)
        uids.add(e.uid)
    if batch:
        yield batch


def _move_aside(path: Path) -> Path:
    """Rename a damaged SQLite file (and its WAL and shared-memory files) out of the way."""
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


def _insert_row(
    parent: int, e: Entry, name: str, name_key: str, fields: str, metadata: str | None, gen: int
) -> tuple[Any, ...]:
    """The values of ``Catalog._insert_rows_locked`` for the entry ``e`` named ``name``."""
    return (parent, int(e.kind), e.uid, name, name_key, e.title, e.handle, e.size, e.ctime, e.mtime, fields,
            metadata, gen)  # fmt: skip


class _Adopted:
    """An image serving folder ``parent`` (inodes ``base + ord``) until the fill copies it in."""

    def __init__(self, parent: int, image: images.Image, base: int) -> None:
        self.parent = parent
        self.image = image
        self.base = base
        self.wanted = threading.Event()  # a write needs the rows: fill now
        self.filled = threading.Event()  # set when the fill ended (copied in, failed or cancelled)
        self.cancelled = False
        self.patches: dict[str, str | None] = {}  # uid -> metadata JSON landed since the adoption

    def holds(self, ino: int) -> bool:
        return self.base <= ino < self.base + self.image.span

    def node(self, row: Any) -> Node:
        ord_, kind, uid, name, title, handle, size, ctime, mtime, fields, metadata = row
        metadata = self.patches.get(uid, metadata)
        return Node(ord_ + self.base, self.parent, Kind(kind), uid, name, title, handle, size, ctime, mtime, fields,
                    metadata)  # fmt: skip


class _GenerationLock:
    """The write lock, counting: ``generation`` is odd while a writer holds it and moves on at each
    acquire and release, so a reader that saw the same even value before and after a query read rows
    no write touched meanwhile (a commit happens before the release)."""

    __slots__ = ("_lock", "generation", "on_begin")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generation = 0
        self.on_begin: Callable[[], None] | None = None  # called as a write begins (the lock held)

    def __enter__(self) -> None:
        self._lock.acquire()
        self.generation += 1
        if self.on_begin is not None:
            try:
                self.on_begin()
            except BaseException:
                self.__exit__()
                raise

    def __exit__(self, *exc: object) -> None:
        self.generation += 1
        self._lock.release()


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_lock = _GenerationLock()
        # ino -> (generation, Node): nodes read since the last write (``get``). An open asks for its
        # node twice (may it wait? then the open itself): ~10 us of SQLite each on this machine kind.
        self._nodes: dict[int, tuple[int, Node | tuple[Any, ...]]] = {}
        # Readers borrow a connection from the pool for one query (or one streamed listing); it keeps its
        # read transaction between queries until a write begins (see ``core.readpool``).
        self._reads = ReadPool(self._connect, POOL_SIZE, generation=lambda: self._write_lock.generation)
        self._write_lock.on_begin = self._reads.end_reads
        # Bumped (after commit, under the write lock) whenever a name can have changed meaning: a
        # child inserted, deleted or renamed. Path caches above compare it (``EncordFS.resolve``).
        self.version = 0
        # folder ino -> when it was loaded: a read-through copy of the ``loaded:<ino>`` state rows,
        # asked on every lookup. Plain dict operations are atomic under the GIL; writers hold the lock.
        self._loaded: dict[int, float] = {}
        self._adopted: dict[int, _Adopted] = {}  # folder ino -> the image serving it (module docstring)
        try:
            self._open_writer()
        except sqlite3.DatabaseError as exc:
            # The catalog is a cache of what Encord says: a damaged one is moved aside and rebuilt.
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self._writer.close()
            aside = _move_aside(path)
            log.warning("catalog %s is damaged (%s); moved it to %s and rebuilding it from Encord", path, exc, aside)
            self._open_writer()

    def _open_writer(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        self._writer = self._connect()
        # The writer's page cache: a first load inserts rows into three indexes keyed by random uids
        # and names; with SQLite's default 2 MB cache the transaction spills pages to the WAL as it
        # goes. Measured on 1M rows with random uids (load / refresh): 64 MiB 16.6 / 12.4 s and 73 MB
        # more at the peak, 16 MiB 18.3 / 13.3 s and 19 MB, 4 MiB 19.4 / 12.8 s and 7 MB; on 100k
        # rows 1.4, 1.5 and 1.6 s. Pages are allocated as they are used, so a small catalog costs
        # nothing, and a big sync gives them back (``_release_memory_locked``).
        self._writer.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        with self._write_lock:
            self._writer.executescript(_SCHEMA)
            self._writer.execute(_SEEN)
            self._migrate_locked()
            self._drop_unfilled_images_locked()
            # Inodes of a fresh catalog start above ROOT_INO.
            self._writer.execute(
                "INSERT OR IGNORE INTO sqlite_sequence(name, seq) SELECT 'nodes', ? WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name='nodes')",
                (ROOT_INO,),
            )
            self._writer.commit()

    def _migrate_locked(self) -> None:
        """Bring an older catalog's derived columns up to date (``SCHEMA_VERSION``)."""
        conn = self._writer
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        # 2: name keys ignore Unicode normalization too; 3: names starting with "@" get a "_" in front.
        # Two names of an old catalog may now collide: then the folder listings are dropped (it is a
        # cache) and rebuilt with the new rules.
        conn.create_function("name_key", 1, names.name_key, deterministic=True)
        try:
            if version < 2:
                conn.execute("UPDATE nodes SET name_key = name_key(name)")
            conn.execute(
                "UPDATE nodes SET name = '_' || name, name_key = name_key('_' || name) WHERE substr(name, 1, 1) = ?",
                (names.VIEW_MARK,),
            )
        except sqlite3.IntegrityError:
            conn.rollback()
            conn.execute("DELETE FROM nodes")
            conn.execute("DELETE FROM state WHERE key LIKE 'loaded:%'")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.commit()

    def _drop_unfilled_images_locked(self) -> None:
        """Folders adopted by an earlier mount that stopped before their fill: forget their load."""
        conn = self._writer
        for key, value in conn.execute("SELECT key, value FROM state WHERE key LIKE 'image:%'").fetchall():
            parent = key.split(":", 1)[1]
            conn.execute("DELETE FROM state WHERE key IN (?, ?)", (key, f"loaded:{parent}"))
            with contextlib.suppress(ValueError, TypeError, KeyError):
                images.remove(Path(json.loads(value)["path"]))
        conn.commit()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        adopted = list(self._adopted.values())
        for a in adopted:
            a.cancelled = True
            a.wanted.set()
        if adopted:
            self._writer.interrupt()  # a fill in progress rolls back; the next mount loads the folder again
        with self._write_lock:
            self._writer.close()
        for a in adopted:
            a.image.close()
        self._reads.close()

    # -- reads ------------------------------------------------------------------------------------
    def _adopted_holding(self, ino: int) -> _Adopted | None:
        """The image whose inode range holds ``ino`` (and which still serves it), if any."""
        if not self._adopted:
            return None
        for a in list(self._adopted.values()):
            if a.holds(ino):
                return a
        return None

    def get(self, ino: int) -> Node | None:
        if (a := self._adopted_holding(ino)) is not None:
            row = a.image.row(ino - a.base)
            return a.node(row) if row else None
        generation = self._write_lock.generation
        hit = self._nodes.get(ino)
        if hit is not None and hit[0] == generation:
            kept = hit[1]
            if isinstance(kept, Node):
                return kept
            node = _node(kept)  # a row kept by ``lookup_stat``: made a node once
            self._keep(generation, ino, node)
            return node
        row = self._reads.one(f"SELECT {_COLUMNS} FROM nodes WHERE ino=?", (ino,))
        if not row:
            return None
        node = _node(row)
        self._keep(generation, ino, node)
        return node

    def _keep(self, generation: int, ino: int, kept: Node | tuple[Any, ...]) -> None:
        """Keep a node (or its row) read from the nodes table as of ``generation`` for ``get``: only if
        no write began or ended around the query (an odd generation: one is under way)."""
        if not generation & 1 and self._write_lock.generation == generation:
            if len(self._nodes) >= NODE_CACHE_ENTRIES:
                self._nodes.clear()
            self._nodes[ino] = (generation, kept)

    def lookup(self, parent: int, name: str) -> Node | None:
        """The child named ``name``, or spelled like it in another Unicode normalization (rule 5)."""
        found = self.lookup_key(parent, name)
        return found if found is not None and names.same_spelling(found.name, name) else None

    def lookup_key(self, parent: int, name: str) -> Node | None:
        """The child whose name equals ``name`` ignoring case (what a new name would collide with)."""
        if (a := self._adopted.get(parent)) is not None:
            row = a.image.row_by_key(names.name_key(name))
            return a.node(row) if row else None
        row = self._reads.one(
            f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND name_key=?", (parent, names.name_key(name))
        )
        return _node(row) if row else None

    def children(self, parent: int) -> Iterator[Node]:
        if (a := self._adopted.get(parent)) is not None:
            return (a.node(row) for row in a.image.all_rows())
        return (
            _node(row)
            for row in self._reads.stream(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? ORDER BY ino", (parent,))
        )

    def file_items(self, parent: int, after_ino: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        """(ino, handle) of signable files in a folder, in inode order from ``after_ino``."""
        if (a := self._adopted.get(parent)) is not None:
            return [(o + a.base, h) for o, h in a.image.file_items(max(0, after_ino - a.base), limit)]
        rows = self._reads.all(
            "SELECT ino, item_uuid FROM nodes WHERE parent=? AND ino>=? AND kind IN (?, ?) AND item_uuid IS NOT NULL ORDER BY ino LIMIT ?",
            (parent, after_ino, Kind.ROW, Kind.CHILD, limit),
        )
        return [(int(i), str(u)) for i, u in rows]

    def first_ino(self, parent: int) -> int | None:
        """The smallest inode among a folder's children (where its listing starts)."""
        if (a := self._adopted.get(parent)) is not None:
            return a.base  # an image's ord 0 is its exporter's smallest inode
        row = self._reads.one("SELECT MIN(ino) FROM nodes WHERE parent=?", (parent,))
        return None if row is None or row[0] is None else int(row[0])

    def next_files(self, parent: int, after_ino: int, limit: int) -> list[Node]:
        """Readable files of a folder after ``after_ino``, in listing (inode) order (lookahead)."""
        if (a := self._adopted.get(parent)) is not None:
            return [a.node(r) for r in a.image.next_files(max(-1, after_ino - a.base), limit)]
        rows = self._reads.all(
            f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND ino>? AND kind IN (?, ?) AND item_uuid IS NOT NULL "
            "ORDER BY ino LIMIT ?",
            (parent, after_ino, Kind.ROW, Kind.CHILD, limit),
        )
        return [_node(r) for r in rows]

    def previous_file(self, parent: int, ino: int) -> int | None:
        """The inode of the readable file listed just before ``ino`` in its folder, if any."""
        if (a := self._adopted.get(parent)) is not None:
            found = a.image.previous_file(ino - a.base)
            return None if found is None else found + a.base
        row = self._reads.one(
            "SELECT ino FROM nodes WHERE parent=? AND ino<? AND kind IN (?, ?) AND item_uuid IS NOT NULL "
            "ORDER BY ino DESC LIMIT 1",
            (parent, ino, Kind.ROW, Kind.CHILD),
        )
        return None if row is None else int(row[0])

    def groups(self, parent: int) -> list[Node]:
        if (a := self._adopted.get(parent)) is not None:
            return [a.node(r) for r in a.image.groups()]
        return [
            _node(r)
            for r in self._reads.all(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND kind=?", (parent, Kind.GROUP))
        ]

    def lookup_ino(self, parent: int, name: str) -> int | None:
        """Just the inode of a child (what path resolution needs)."""
        if (a := self._adopted.get(parent)) is not None:
            found = a.image.name_of_key(names.name_key(name))
            return None if found is None or not names.same_spelling(found[1], name) else int(found[0]) + a.base
        row = self._reads.one(
            "SELECT ino, name FROM nodes WHERE parent=? AND name_key=?", (parent, names.name_key(name))
        )
        return None if row is None or not names.same_spelling(row[1], name) else int(row[0])

    def lookup_stat(self, parent: int, name: str) -> tuple[int, Kind, int, float] | None:
        """(ino, kind, size, mtime) of a child by name: ``lookup_ino`` and ``stat_fields`` in one query.
        The whole node is read and kept for ``get`` (a LOOKUP is most often followed by an OPEN)."""
        generation = self._write_lock.generation
        row = self._reads.one(
            f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND name_key=?", (parent, names.name_key(name))
        )
        if row is None or not names.same_spelling(row[4], name):
            return None
        self._keep(generation, row[0], row)
        return int(row[0]), KINDS[row[2]], int(row[7]), float(row[9])

    def set_size(self, ino: int, size: int) -> None:
        """Record a file's size learnt from the object itself (its metadata had none: ``UNKNOWN_SIZE``)."""
        with self._write_lock:
            self._writer.execute("UPDATE nodes SET size=? WHERE ino=?", (size, ino))
            self._writer.commit()

    def stat_fields(self, ino: int) -> tuple[Kind, int, float] | None:
        """(kind, size, mtime) of a node: what ``getattr`` needs, without the xattr columns."""
        if (a := self._adopted_holding(ino)) is not None:
            row = a.image.stat_fields(ino - a.base)
        else:
            row = self._reads.one("SELECT kind, size, mtime FROM nodes WHERE ino=?", (ino,))
        return None if row is None else (Kind(row[0]), int(row[1]), float(row[2]))

    def child_stats(self, parent: int, after_ino: int = 0) -> Iterator[tuple[int, str, Kind, int, float]]:
        """(ino, name, kind, size, mtime) of the children with inodes above ``after_ino``, in inode
        order, streamed; the result is the folder as of the call, whatever a refresh commits while it
        is iterated (see ``_stream``)."""
        if (a := self._adopted.get(parent)) is not None:
            base = a.base
            listed = a.image.listing(max(-1, after_ino - base))
            return ((o + base, name, KINDS[kind], size, mtime) for o, name, kind, size, mtime in listed)
        rows = self._reads.stream(
            "SELECT ino, name, kind, size, mtime FROM nodes WHERE parent=? AND ino>? ORDER BY ino", (parent, after_ino)
        )
        return ((r[0], r[1], KINDS[r[2]], r[3], r[4]) for r in rows)

    def child_names(self, parent: int, after_ino: int = 0) -> Iterator[tuple[str, int, int]]:
        """(name, ino, 1 for a folder else 0) of the children above ``after_ino``, in inode order,
        streamed as ``child_stats``: a plain listing's rows as SQLite gives them, with no Python step
        per row (``ls -f`` of a million rows)."""
        if (a := self._adopted.get(parent)) is not None:
            return a.image.names(max(-1, after_ino - a.base), a.base, _DIR_KINDS)
        return self._reads.stream(
            f"SELECT name, ino, kind IN ({_DIR_KINDS}) FROM nodes WHERE parent=? AND ino>? ORDER BY ino",
            (parent, after_ino),
        )

    def child_metadata(
        self, parent: int, after_ino: int = 0
    ) -> Iterator[tuple[int, str, str, Kind, int, float, str, str | None]]:
        """(ino, uid, name, kind, size, mtime, title, client metadata JSON) of the children above
        ``after_ino``, in inode order, streamed (as ``child_stats``): what a view by metadata key
        filters (``core.views``). An adopted folder is copied in first (an image holds no metadata index)."""
        self._await_fill(self._adopted.get(parent))
        rows = self._reads.stream(
            "SELECT ino, uid, name, kind, size, mtime, title, client_metadata FROM nodes WHERE parent=? AND ino>? ORDER BY ino",
            (parent, after_ino),
        )
        return ((r[0], r[1], r[2], KINDS[r[3]], r[4], r[5], r[6], r[7]) for r in rows)

    def child_members(
        self, parent: int, after_ino: int, key: str, text: str, also_uids: Iterable[str]
    ) -> Iterator[tuple[int, str, int, int, float, str | None]]:
        """The rows of ``parent`` above ``after_ino`` whose top-level ``key`` may hold the string
        ``text`` as a view sees it, streamed in inode order as (ino, name, kind number, size, mtime,
        what to check). SQLite settles a row whose value it reads as ``text`` and that ``also_uids``
        does not name (changes not landed here yet): nothing to check (None). The others carry a JSON
        array for the caller to check, ``[uid, title, client metadata as its stored JSON text]``: rows
        whose metadata has text beyond ASCII (Unicode normalization may make a value equal to
        ``text``) and the rows ``also_uids`` names. Settled rows carry no strings the caller does not
        need: the query over a 100k-row folder's 80k members took 132 ms instead of 175 (scratch
        ``vq.py``). ``key`` must not contain ``"`` or ``\\`` (it is quoted in a JSON path). An
        adopted folder is copied in first, as for ``child_metadata``."""
        self._await_fill(self._adopted.get(parent))
        path = '$."' + key + '"'
        uids = sorted(also_uids)
        settled = "json_extract(client_metadata, ?3) = ?4" + (
            " AND uid NOT IN (SELECT value FROM json_each(?5))" if uids else ""
        )
        return self._reads.stream(
            f"SELECT ino, name, kind, size, mtime, iif({settled}, NULL, json_array(uid, title, client_metadata))"
            " FROM nodes WHERE parent=?1 AND ino>?2 AND (json_extract(client_metadata, ?3) = ?4"
            " OR length(client_metadata) != length(CAST(client_metadata AS BLOB))"
            " OR instr(client_metadata, '\\u') > 0"
            + (" OR uid IN (SELECT value FROM json_each(?5))) ORDER BY ino" if uids else ") ORDER BY ino"),
            (parent, after_ino, path, text, json.dumps(uids)) if uids else (parent, after_ino, path, text),
        )

    def loaded_at(self, ino: int) -> float | None:
        cached = self._loaded.get(ino)
        if cached is not None:
            return cached
        row = self._reads.one("SELECT value FROM state WHERE key=?", (f"loaded:{ino}",))
        if row is None:
            return None
        self._loaded[ino] = float(row[0])
        return float(row[0])

    def load_error(self, ino: int) -> str | None:
        """Why the folder's members could not be listed at its last load, or None."""
        row = self._reads.one("SELECT value FROM state WHERE key=?", (f"error:{ino}",))
        return None if row is None else str(row[0])

    # -- writes -----------------------------------------------------------------------------------
    def mark_loaded(self, ino: int, when: float) -> None:
        with self._write_lock:
            conn = self._writer
            conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (f"loaded:{ino}", when))
            conn.commit()
            self._loaded[ino] = when

    def rename(self, ino: int, title: str, name: str) -> None:
        """Show a queued title change at once (the next sync keeps it: loaders apply queued titles)."""
        self._await_fill(self._adopted_holding(ino))
        with self._write_lock:
            conn = self._writer
            conn.execute(
                "UPDATE nodes SET title=?, name=?, name_key=? WHERE ino=?", (title, name, names.name_key(name), ino)
            )
            conn.commit()
            self.version += 1

    def set_rows_state(
        self,
        states: list[tuple[str, dict[str, Any] | None, str | None]],
        touched: list[tuple[int, int]] | None = None,
    ) -> None:
        """Record the server's state of rows after a push landed: (uid, metadata, title), one
        transaction. ``touched``, when given, receives (parent, inode) of every row updated."""
        metadata = [(_compact(m), uid, Kind.ROW, Kind.GROUP) for uid, m, _ in states if m is not None]
        titles = [(t, uid, Kind.ROW, Kind.GROUP) for uid, _, t in states if t is not None]
        with self._write_lock:
            conn = self._writer
            conn.executemany("UPDATE nodes SET client_metadata=? WHERE uid=? AND kind IN (?, ?)", metadata)
            conn.executemany("UPDATE nodes SET title=? WHERE uid=? AND kind IN (?, ?)", titles)
            if touched is not None:
                for uid, _, _ in states:
                    touched.extend(
                        conn.execute(
                            "SELECT parent, ino FROM nodes WHERE uid=? AND kind IN (?, ?)", (uid, Kind.ROW, Kind.GROUP)
                        ).fetchall()
                    )
            conn.commit()
            for a in self._adopted.values():  # rows still served by an image: patched there, written by the fill
                a.patches.update((uid, text) for text, uid, _, _ in metadata)

    def retitle(self, titles: list[tuple[str, str]]) -> None:
        """Rows renamed elsewhere (another node's landed write): new title, and the name the naming
        rules give it in its folder (unlike ``set_rows_state``, whose titles were shown by ``rename``)."""
        for a in list(self._adopted.values()):
            self._await_fill(a)
        changed = False
        with self._write_lock:
            conn = self._writer
            for uid, title in titles:
                found = conn.execute(
                    "SELECT ino, parent, kind, fields, title FROM nodes WHERE uid=? AND kind IN (?, ?)",
                    (uid, Kind.ROW, Kind.GROUP),
                ).fetchall()
                for ino, parent, kind, fields, old_title in found:
                    if old_title == title:
                        continue
                    mime = orjson.loads(fields).get("file_type") if kind == Kind.ROW else None
                    conn.execute("UPDATE nodes SET title=? WHERE ino=?", (title, ino))
                    entry = Entry(Kind(kind), uid, title, mime, None, 0, 0.0, 0.0, {})
                    self._assign_name_locked(conn, parent, ino, entry)
                    changed = True
            conn.commit()
            if changed:
                self.version += 1

    # -- adopted images (module docstring)
    def adopt_image(self, parent: int, image: images.Image, when: float) -> bool:
        """Serve the empty folder ``parent`` from ``image`` now (the catalog owns the image from here:
        it closes and deletes it after the fill). False, and nothing changed, if the folder has children."""
        self._await_fill(self._adopted.get(parent))
        with self._write_lock:
            conn = self._writer
            if conn.execute("SELECT 1 FROM nodes WHERE parent=? LIMIT 1", (parent,)).fetchone():
                return False
            seq = int(conn.execute("SELECT seq FROM sqlite_sequence WHERE name='nodes'").fetchone()[0])
            base = seq + 1
            conn.execute("UPDATE sqlite_sequence SET seq=? WHERE name='nodes'", (seq + max(1, image.span),))
            conn.execute(
                "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)",
                (f"image:{parent}", images.dumps_state(image.path, base, image.span)),
            )
            conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (f"loaded:{parent}", when))
            conn.execute("DELETE FROM state WHERE key=?", (f"error:{parent}",))
            conn.commit()
            adopted = _Adopted(parent, image, base)
            self._adopted[parent] = adopted
            self._loaded[parent] = when
            self.version += 1
        threading.Thread(target=self._fill, args=(adopted,), name=f"encordfs-fill-{parent}", daemon=True).start()
        return True

    def adopted(self) -> dict[int, int]:
        """Folders served from an image right now: folder ino -> rows (status, tests)."""
        return {parent: a.image.rows for parent, a in list(self._adopted.items())}

    def fill_now(self, parent: int | None = None) -> None:
        """Copy images in now and wait (tests; ``None``: all of them)."""
        for p, a in list(self._adopted.items()):
            if parent is None or p == parent:
                self._await_fill(a)

    def _await_fill(self, adopted: _Adopted | None) -> None:
        if adopted is not None:
            adopted.wanted.set()
            adopted.filled.wait()

    def _fill(self, a: _Adopted) -> None:
        """Copy an adopted image into the catalog (its own thread): after ``FILL_DELAY_S``, or at once
        when a write needs the rows. A failure forgets the folder's load, so it is loaded again."""
        a.wanted.wait(FILL_DELAY_S)
        try:
            with self._write_lock:
                if not a.cancelled:
                    self._fill_locked(a)
        finally:
            a.filled.set()
        if not a.cancelled:
            time.sleep(IMAGE_GRACE_S)  # listings that began on the image finish on it
        a.image.close()
        images.remove(a.image.path)

    def _fill_locked(self, a: _Adopted) -> None:
        conn = self._writer
        try:
            conn.execute("ATTACH DATABASE ? AS img", (str(a.image.path),))
            try:
                conn.execute(
                    "INSERT INTO nodes(ino, parent, kind, uid, name, name_key, title, item_uuid, size, ctime, mtime,"
                    " fields, client_metadata, gen) SELECT ord + ?, ?, kind, uid, name, name_key, title, handle, size,"
                    " ctime, mtime, fields, client_metadata, 0 FROM img.rows ORDER BY ord",
                    (a.base, a.parent),
                )
                conn.executemany(
                    "UPDATE nodes SET client_metadata=? WHERE parent=? AND uid=?",
                    [(text, a.parent, uid) for uid, text in a.patches.items()],
                )
                conn.execute("DELETE FROM state WHERE key=?", (f"image:{a.parent}",))
                conn.commit()
            finally:
                if conn.in_transaction:
                    conn.rollback()
                conn.execute("DETACH DATABASE img")
        except sqlite3.Error as exc:
            if not a.cancelled:
                log.warning("copying the image of folder %d into the catalog failed (%s); it will be loaded again",
                            a.parent, exc)  # fmt: skip
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("DELETE FROM state WHERE key IN (?, ?)", (f"image:{a.parent}", f"loaded:{a.parent}"))
                    conn.commit()
                self._loaded.pop(a.parent, None)
        finally:
            self._adopted.pop(a.parent, None)
            self.version += 1
            self._release_memory_locked()  # a fill copies a whole folder, as a big sync does

    def sync_children(
        self,
        parent: int,
        entries: Iterable[Entry],
        when: float,
        changes: SyncChanges | None = None,
        error: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Make ``parent``'s children exactly ``entries`` (streamed); returns how many there are.
        ``error``: why the folder's members could not be listed (kept until the next sync; ``load_error``).

        Existing children keep inode and name unless their title changed; new ones get a name by the
        rules of ``core.names``; children that did not come back are deleted with their members.
        Work is done per batch of ``SYNC_BATCH`` entries (see the module docstring), so memory stays
        flat whatever the folder's size. ``changes``, when given, receives what changed (valid once
        this returns; on failure nothing was changed). The entries are staged first, without the write
        lock (``_stage``): a slow listing never keeps a rename or another folder's load waiting.
        ``progress(n)`` is told of entries as they are staged and as they are stored.
        """
        if parent == ROOT_INO:  # a dataset that went away takes its rows with it: they must be copied in
            for a in list(self._adopted.values()):
                self._await_fill(a)
        else:
            self._await_fill(self._adopted.get(parent))
        entries = _stage(entries, self.path.parent, progress)
        with self._write_lock:
            conn = self._writer
            try:
                gen = self._next_gen_locked(conn)
                renamed: list[tuple[int, Entry, str]] = []
                count = changed = 0
                for batch in _batches(entries, SYNC_BATCH):
                    count += len(batch)
                    changed += self._sync_batch_locked(conn, parent, batch, gen, renamed, changes)
                    if progress is not None:
                        progress(len(batch))
                changed += self._delete_stale_locked(conn, parent, gen, changes)
                for ino, e, old_name in renamed:
                    new_name = self._assign_name_locked(conn, parent, ino, e)
                    if changes is not None:
                        # A placeholder (NUL-prefixed) was never visible; a kind change keeps the name
                        # but not what it is, so the name is announced either way.
                        changes.names.extend(n for n in (old_name, new_name) if not n.startswith("\x00"))
                conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (f"loaded:{parent}", when))
                if error is None:
                    conn.execute("DELETE FROM state WHERE key=?", (f"error:{parent}",))
                else:
                    conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (f"error:{parent}", error))
                conn.execute("DELETE FROM temp.seen")  # (a failed sync's rows go with its rollback)
                conn.commit()
            except BaseException:
                conn.rollback()
                self._loaded.clear()  # a rolled-back delete may have dropped entries; reread them
                raise
            self._loaded[parent] = when
            if changed or renamed:
                self.version += 1
            if count >= RELEASE_AFTER_ENTRIES:
                self._release_memory_locked()
            return count

    def _release_memory_locked(self) -> None:
        """After a big sync: the writer's page cache (up to ``WRITER_CACHE_KIB``, kept by SQLite
        until the connection closes) is emptied, and the heap pages the sync freed go back to the OS
        (``core.heap``). Without this a sync of 150k or 1M rows left ~18 MB more resident for the
        life of the mount (with the former 64 MiB cache, 300k rows: ~75 MB), which the next write, a
        few pages, does not need."""
        with contextlib.suppress(sqlite3.Error):
            self._writer.execute("PRAGMA shrink_memory")
        heap.trim()

    def _next_gen_locked(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM state WHERE key='gen'").fetchone()
        gen = (int(row[0]) if row else 0) + 1
        conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('gen', ?)", (gen,))
        return gen

    def _sync_batch_locked(
        self,
        conn: sqlite3.Connection,
        parent: int,
        batch: list[Entry],
        gen: int,
        renamed: list[tuple[int, Entry, str]],
        changes: SyncChanges | None,
    ) -> int:
        """Upsert one batch (distinct uids): one SELECT for the batch, bulk UPDATEs, bulk INSERTs.
        Returns how many children were inserted (the structural change)."""
        marks = ",".join("?" * len(batch))
        existing = {
            r[0]: r[1:]
            for r in conn.execute(
                f"SELECT uid, ino, title, kind, item_uuid, size, ctime, mtime, fields, client_metadata, name FROM nodes WHERE parent=? AND uid IN ({marks})",
                [parent, *(e.uid for e in batch)],
            )
        }
        seen: list[tuple[int]] = []
        updates: list[tuple[Any, ...]] = []
        fresh: list[tuple[Entry, str, str | None]] = []
        for e in batch:
            fields = _compact(e.fields)
            metadata = None if e.client_metadata is None else _compact(e.client_metadata)
            old = existing.get(e.uid)
            if old is None:
                fresh.append((e, fields, metadata))
                continue
            ino, old_title, old_kind = old[0], old[1], old[2]
            if e.size == UNKNOWN_SIZE and old[4] >= 0 and old[6] == e.mtime and old[3] == e.handle:
                e = dataclasses.replace(e, size=old[4])  # a size learnt from the object stays while it is unchanged
            if old[1:9] == (e.title, int(e.kind), e.handle, e.size, e.ctime, e.mtime, fields, metadata):
                seen.append((ino,))
                continue
            updates.append((int(e.kind), e.title, e.handle, e.size, e.ctime, e.mtime, fields, metadata, gen, ino))
            if old_title != e.title or old_kind != int(e.kind):
                renamed.append((ino, e, old[9]))
            if changes is not None and old[4:7] != (e.size, e.ctime, e.mtime):
                changes.inodes.append(ino)
        if seen:
            conn.executemany("INSERT INTO temp.seen(ino) VALUES (?)", seen)
        if updates:
            conn.executemany(
                "UPDATE nodes SET kind=?, title=?, item_uuid=?, size=?, ctime=?, mtime=?, fields=?, client_metadata=?, gen=? WHERE ino=?",
                updates,
            )
        if fresh:
            self._insert_locked(conn, parent, fresh, gen, renamed, changes)
        return len(fresh)

    def _insert_locked(
        self,
        conn: sqlite3.Connection,
        parent: int,
        fresh: list[tuple[Entry, str, str | None]],
        gen: int,
        deferred: list[tuple[int, Entry, str]],
        changes: SyncChanges | None,
    ) -> None:
        """Insert new children in stream order. Base names that are free (in the folder and in this
        batch) are bulk-inserted; a collision flushes what is pending and takes the slow path
        (``_free_name_locked``), so the first row to claim a name keeps it, as a row-by-row upsert would.

        A collision with a child that this sync has not confirmed yet (it may be about to be deleted:
        a row replaced by a new one with the same title) is not decided now: the new child gets a
        placeholder name (NUL cannot occur in real names) and is named after stale children are
        deleted, so a replacement takes the plain name instead of a ``~id`` one."""
        bases = [names.base_name(e.title, e.mime_type, is_dir=e.kind.is_dir) for e, _, _ in fresh]
        keys = [names.name_key(b) for b in bases]
        # ``fresh`` is part of one batch, so its keys fit in one query as the batch's uids did.
        marks = ",".join("?" * len(keys))
        taken = {
            r[0]
            for r in conn.execute(
                f"SELECT name_key FROM nodes WHERE parent=? AND name_key IN ({marks})", [parent, *keys]
            )
        }
        pending: list[tuple[Any, ...]] = []
        for (e, fields, metadata), base, key in zip(fresh, bases, keys):
            if key in taken:
                self._insert_rows_locked(conn, pending)
                pending = []
                holder = conn.execute(
                    "SELECT gen <> ? AND ino NOT IN temp.seen FROM nodes WHERE parent=? AND name_key=?",
                    (gen, parent, key),
                ).fetchone()
                if holder is not None and holder[0]:
                    placeholder = "\x00" + e.uid
                    row = _insert_row(parent, e, placeholder, placeholder, fields, metadata, gen)
                    self._insert_rows_locked(conn, [row])
                    deferred.append((int(conn.execute("SELECT last_insert_rowid()").fetchone()[0]), e, placeholder))
                    continue
                base = self._free_name_locked(conn, parent, e)
                key = names.name_key(base)
            taken.add(key)
            if changes is not None:
                changes.names.append(base)
            pending.append(_insert_row(parent, e, base, key, fields, metadata, gen))
        self._insert_rows_locked(conn, pending)

    @staticmethod
    def _insert_rows_locked(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows made by ``_insert_row``."""
        if rows:
            conn.executemany(
                "INSERT INTO nodes(parent, kind, uid, name, name_key, title, item_uuid, size, ctime, mtime, fields, client_metadata, gen)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

    def _free_name_locked(self, conn: sqlite3.Connection, parent: int, e: Entry, own_ino: int = -1) -> str:
        is_dir = e.kind.is_dir
        base = names.base_name(e.title, e.mime_type, is_dir=is_dir)
        candidates = itertools.chain(
            [base],
            (names.disambiguated(base, e.uid, is_dir=is_dir, width=w) for w in (8, 16, 64)),
            (names.numbered(base, e.uid, n, is_dir=is_dir) for n in itertools.count(2)),
        )
        for candidate in candidates:  # ends: a folder holds finitely many names
            hit = conn.execute(
                "SELECT ino FROM nodes WHERE parent=? AND name_key=?", (parent, names.name_key(candidate))
            ).fetchone()
            if hit is None or hit[0] == own_ino:
                return candidate
        raise AssertionError("unreachable")

    def _assign_name_locked(self, conn: sqlite3.Connection, parent: int, ino: int, e: Entry) -> str:
        name = self._free_name_locked(conn, parent, e, own_ino=ino)
        conn.execute("UPDATE nodes SET name=?, name_key=? WHERE ino=?", (name, names.name_key(name), ino))
        return name

    def _delete_stale_locked(
        self, conn: sqlite3.Connection, parent: int, gen: int, changes: SyncChanges | None = None
    ) -> int:
        """Delete ``parent``'s children not seen in this sync (not in ``temp.seen``, and ``gen`` differs:
        not written by it), with their members."""
        rows = conn.execute(
            "SELECT ino, name FROM nodes WHERE parent=? AND gen<>? AND ino NOT IN temp.seen", (parent, gen)
        ).fetchall()
        stale = [r[0] for r in rows]
        if changes is not None:
            changes.names.extend(r[1] for r in rows)  # a deleted group's members go with its name
        deleted = len(stale)
        while stale:
            batch, stale = stale[:500], stale[500:]
            marks = ",".join("?" * len(batch))
            grandchildren = [r[0] for r in conn.execute(f"SELECT ino FROM nodes WHERE parent IN ({marks})", batch)]
            conn.execute(f"DELETE FROM nodes WHERE ino IN ({marks})", batch)
            conn.execute(f"DELETE FROM state WHERE key IN ({marks})", [f"loaded:{i}" for i in batch])
            conn.execute(f"DELETE FROM state WHERE key IN ({marks})", [f"error:{i}" for i in batch])
            for ino in batch:
                self._loaded.pop(ino, None)
            stale.extend(grandchildren)
        return deleted
