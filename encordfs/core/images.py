"""Folder images: one catalog folder as a self-contained SQLite file that another mount can serve at once.

Why: a mount that joins a cluster (``encordfs.cluster``) finds a 1M-row dataset already loaded by another
node. Feeding those rows through ``Catalog.sync_children`` costs tens of seconds even without the network
(a bulk ``INSERT … SELECT`` of 1M catalog rows alone took 15 s here: ~900 bytes a row into four B-trees),
so the joining node instead *serves the image*: the file is the folder, names and order included, with
the indexes a listing and a lookup need already built. ``Catalog.adopt_image`` registers it for an empty
folder in one small transaction and copies it into the catalog later, in the background (the *fill*).

Format (``FORMAT``; a mount reads only images of its own format, and the cluster's key namespace
carries it too)::

    meta(key, value)   format, rows, span (max ord + 1)
    rows(ord INTEGER PRIMARY KEY, kind, uid, name, name_key, title, handle, size, ctime, mtime,
         fields, client_metadata)
    rows_name_key  UNIQUE (name_key)                       lookups; the folder's unique-name rule
    rows_listing   (ord, name, kind, size, mtime)          readdir scans this covering index only
    rows_files     (ord, handle) WHERE file kinds           bulk signing of siblings
    rows_groups    (kind) WHERE kind = GROUP                 the folder's group rows

``ord`` is the row's inode in the exporting catalog minus the folder's smallest one: the listing order
(inode order) travels with the image, and a node that adopts it gives row ``ord`` the inode
``base + ord`` from a range it reserves, so names and order are the exporter's on every node. Names
are taken as the exporter assigned them (sticky names, ``~id`` forms and all): every node that adopts
the same image shows the same names for the same rows.

Trust: ``open_image`` checks the format, the row count the caller expects and the schema (table and
index SQL exactly as written here) before anything is served; the cluster layer checks the bytes'
checksum before that. Images are read with ``immutable=1``: nothing writes them once built.

Threads: an ``Image`` keeps a small pool of read-only connections (``core.readpool``), each
used by one query or one streamed listing at a time, like the catalog's own pool.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from encordfs.core.readpool import ReadPool

FORMAT = 1
ROW, GROUP, CHILD = 2, 3, 4  # ``catalog.Kind`` values (catalog imports this module, not the other way)
POOL_SIZE = 8

_TABLES = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value);
CREATE TABLE rows(ord INTEGER PRIMARY KEY, kind INTEGER NOT NULL, uid TEXT NOT NULL, name TEXT NOT NULL,
    name_key TEXT NOT NULL, title TEXT NOT NULL, handle TEXT, size INTEGER NOT NULL, ctime REAL NOT NULL,
    mtime REAL NOT NULL, fields TEXT NOT NULL, client_metadata TEXT);
"""
_INDEXES = (
    "CREATE UNIQUE INDEX rows_name_key ON rows(name_key)",
    "CREATE INDEX rows_listing ON rows(ord, name, kind, size, mtime)",
    f"CREATE INDEX rows_files ON rows(ord, handle) WHERE kind IN ({ROW}, {CHILD}) AND handle IS NOT NULL",
    f"CREATE INDEX rows_groups ON rows(kind) WHERE kind = {GROUP}",
)
_NODE_COLUMNS = "kind, uid, name, title, handle, size, ctime, mtime, fields, client_metadata"


class ImageError(Exception):
    """The file is not a usable image of this format (damaged, another version, not what was expected)."""


def export(catalog_path: Path, parent: int, out: Path) -> int:
    """Write folder ``parent`` of the catalog at ``catalog_path`` as an image at ``out`` (replaced);
    returns its row count. Reads the catalog through its own read-only connection (a WAL reader: the
    mount keeps writing meanwhile), so the image is the folder as of one moment."""
    out.unlink(missing_ok=True)
    conn = sqlite3.connect(out, uri=True)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_TABLES)
        conn.execute("ATTACH DATABASE ? AS cat", (f"file:{catalog_path}?mode=ro",))
        low = conn.execute("SELECT MIN(ino) FROM cat.nodes WHERE parent=?", (parent,)).fetchone()[0] or 0
        conn.execute(
            "INSERT INTO rows SELECT ino - ?, kind, uid, name, name_key, title, item_uuid, size, ctime, mtime, "
            "fields, client_metadata FROM cat.nodes WHERE parent=? ORDER BY ino",
            (low, parent),
        )
        count, span = conn.execute("SELECT COUNT(*), COALESCE(MAX(ord) + 1, 0) FROM rows").fetchone()
        for sql in _INDEXES:
            conn.execute(sql)
        conn.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?)", [("format", FORMAT), ("rows", count), ("span", span)]
        )
        conn.commit()
        conn.execute("DETACH DATABASE cat")
    finally:
        conn.close()
    return int(count)


class Image:
    """A read-only image, checked (``open_image``), answering the catalog's reads for its folder."""

    def __init__(self, path: Path, rows: int, span: int) -> None:
        self.path = path
        self.rows = rows
        self.span = span
        self._reads = ReadPool(self._connect, POOL_SIZE)

    # -- connections

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)

    def close(self) -> None:
        self._reads.close()

    # -- reads: rows come back as (ord, kind, uid, name, title, handle, size, ctime, mtime, fields, metadata)

    def row(self, ord_: int) -> Any:
        return self._reads.one(f"SELECT ord, {_NODE_COLUMNS} FROM rows WHERE ord=?", (ord_,))

    def row_by_key(self, name_key: str) -> Any:
        return self._reads.one(f"SELECT ord, {_NODE_COLUMNS} FROM rows WHERE name_key=?", (name_key,))

    def stat_fields(self, ord_: int) -> Any:
        return self._reads.one("SELECT kind, size, mtime FROM rows WHERE ord=?", (ord_,))

    def name_of_key(self, name_key: str) -> Any:
        return self._reads.one("SELECT ord, name FROM rows WHERE name_key=?", (name_key,))

    def all_rows(self) -> Iterator[Any]:
        return self._reads.stream(f"SELECT ord, {_NODE_COLUMNS} FROM rows ORDER BY ord", ())

    def listing(self, after_ord: int) -> Iterator[Any]:
        """(ord, name, kind, size, mtime) above ``after_ord``, from the covering index alone."""
        return self._reads.stream(
            "SELECT ord, name, kind, size, mtime FROM rows INDEXED BY rows_listing WHERE ord > ? ORDER BY ord",
            (after_ord,),
        )

    def names(self, after_ord: int, base: int, dir_kinds: str) -> Iterator[Any]:
        """(name, ``base`` + ord, 1 for a folder else 0) above ``after_ord``, where ``dir_kinds`` lists the
        kind numbers that are folders, in SQL (``Catalog.child_names``: the catalog owns that rule)."""
        return self._reads.stream(
            f"SELECT name, ord + ?, kind IN ({dir_kinds}) FROM rows INDEXED BY rows_listing WHERE ord > ? ORDER BY ord",
            (base, after_ord),
        )

    def file_items(self, from_ord: int, limit: int) -> list[tuple[int, str]]:
        rows = self._reads.all(
            f"SELECT ord, handle FROM rows INDEXED BY rows_files WHERE ord >= ? AND kind IN ({ROW}, {CHILD}) "
            "AND handle IS NOT NULL ORDER BY ord LIMIT ?",
            (from_ord, limit),
        )
        return [(int(o), str(h)) for o, h in rows]

    def next_files(self, after_ord: int, limit: int) -> list[Any]:
        """Readable rows above ``after_ord``, in order (lookahead over an adopted folder)."""
        return self._reads.all(
            f"SELECT ord, {_NODE_COLUMNS} FROM rows INDEXED BY rows_files WHERE ord > ? AND kind IN ({ROW}, {CHILD}) "
            "AND handle IS NOT NULL ORDER BY ord LIMIT ?",
            (after_ord, limit),
        )

    def previous_file(self, ord_: int) -> int | None:
        row = self._reads.one(
            f"SELECT ord FROM rows INDEXED BY rows_files WHERE ord < ? AND kind IN ({ROW}, {CHILD}) "
            "AND handle IS NOT NULL ORDER BY ord DESC LIMIT 1",
            (ord_,),
        )
        return None if row is None else int(row[0])

    def groups(self) -> list[Any]:
        return self._reads.all(f"SELECT ord, {_NODE_COLUMNS} FROM rows INDEXED BY rows_groups WHERE kind = {GROUP}", ())


def open_image(path: Path, expect_rows: int | None = None) -> Image:
    """Check and open an image; ``ImageError`` (one line) when it is not one this mount can serve."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise ImageError(f"cannot open image: {exc}") from None
    try:
        schema = {name: sql for name, sql in conn.execute("SELECT name, sql FROM sqlite_master")}
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    except sqlite3.Error as exc:
        raise ImageError(f"not an image: {exc}") from None
    finally:
        conn.close()
    if meta.get("format") != FORMAT:
        raise ImageError(f"image format {meta.get('format')!r}, not {FORMAT}")
    wanted = {sql.split(" ON ")[0].split()[-1]: sql for sql in _INDEXES}
    if any(schema.get(name) != sql for name, sql in wanted.items()) or "rows" not in schema:
        raise ImageError("image schema differs from this version's")
    rows, span = meta.get("rows"), meta.get("span")
    if not isinstance(rows, int) or not isinstance(span, int) or rows < 0 or span < rows:
        raise ImageError("image has no row count")
    if expect_rows is not None and rows != expect_rows:
        raise ImageError(f"image has {rows} rows, its manifest says {expect_rows}")
    return Image(path, rows, span)


def entries_of(image: Image) -> Iterator[tuple[int, str, str, str | None, str | None, int, float, float, Any, Any]]:
    """Every row as (kind, uid, title, mime type, handle, size, ctime, mtime, fields, metadata), in order:
    what a catalog sync of the folder from this image needs. The MIME type a name takes its extension
    from is a row's ``file_type`` field (how ``fs._row_entry`` builds it); folders have none."""
    for _, kind, uid, _name, title, handle, size, ctime, mtime, fields, metadata in image.all_rows():
        parsed = orjson.loads(fields)
        mime = parsed.get("file_type") if kind == ROW else None
        yield (kind, uid, title, mime, handle, size, ctime, mtime, parsed,
               None if metadata is None else orjson.loads(metadata))  # fmt: skip


def remove(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass


def dumps_state(path: Path, base: int, span: int) -> str:
    return json.dumps({"path": str(path), "base": base, "span": span})
