"""The emulator's state: one SQLite database plus a blob directory, under the data dir.

Layout of ``<data-dir>``::

    emulator.sqlite3            the database (WAL mode)
    startup-snapshot.sqlite3    copy taken after startup imports, for ``/_emulator/reset {"data": true}``
    blobs/<blob_key>            file bytes (hard links to the import source when possible, else copies)

Synthetic rows (``ingest_synthetic``, ``--generate``) have ``synthetic:<seed>:<size>`` blob keys and
no file: the blob server generates their bytes (``emulator.synthetic``).

Model (one copy of every fact):

* ``datasets`` — each has a backing storage ``folders`` row (``folder_uuid``; the folder's
  ``synced_dataset_hash`` points back) and ``dataset_members`` rows saying who sees it and in which role.
* ``items`` — storage items. A top-level item backs exactly one data row; composite items
  (imageGroup, imageSequence, dicomSeries) own child items (``group_id`` = parent item id,
  ``position`` = frame/slice order). **A child item's uuid is also the legacy
  ``images_data[].image_hash``**: the two APIs name the same file with one id, so encordfs can map
  between them without a lookup table.
* ``rows`` — legacy data rows: ``data_hash``, ``data_type``, ``is_optimised`` and ``item_id``. A row
  has no title, metadata or timestamps of its own: those are its backing item's, so a write through
  ``DataRow.save()`` is visible through the storage API and vice versa.
* Under the recorded shape (``shapes.RECORDED``) the same tables are *served* differently: rows the
  shape makes legacy, their members and an image sequence's frames do not exist for the storage API
  (``_hidden_sql``: 403 on lookups, left out of listings), and an image sequence item carries the MP4
  of its frames (``ensure_sequence_videos``: ``blob_key``, ``file_size``, ``mime_type``, ``duration``,
  ``fps`` of the item, which the default shape never shows).
* ``imports`` — (source, dataset title) pairs already ingested: importing the same source twice, or
  restarting with the same data dir, never duplicates a dataset.
* ``users``, ``user_keys`` (keyid → user), ``bearer_tokens`` (sha256 of the token → user; tokens
  survive restarts).

Scale: rows are streamed from an index on ``rows(dataset_id, id)`` (``stream_dataset_rows``) and
group members from ``items(group_id, position)``, merged in one pass — no per-row query, nothing
O(n²). Folder listings page by keyset (``(sort key, id) > token``), never by OFFSET.

Concurrency: one writer connection behind ``_write_lock`` (``BEGIN IMMEDIATE``); readers take
connections from a pool; WAL lets them run while a write is in progress.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import secrets
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encordfs.emulator import shapes, synthetic
from encordfs.emulator.errors import ApiError
from encordfs.emulator.spec import DatasetSpec, FileSpec, GroupSpec, MediaInfo

DB_NAME = "emulator.sqlite3"
SNAPSHOT_NAME = "startup-snapshot.sqlite3"
DEFAULT_OWNER = "admin@emulator.local"
# Tables restored by reset(data=True); users, keys and tokens survive it.
_DATA_TABLES = ("datasets", "dataset_members", "folders", "items", "rows", "imports")
_ITEM_TYPES = {
    "IMAGE": "image",
    "VIDEO": "video",
    "AUDIO": "audio",
    "PDF": "pdf",
    "PLAIN_TEXT": "plainText",
    "NIFTI": "nifti",
    "DICOM": "dicomFile",
}
_GROUP_KINDS = {  # kind -> (item type, legacy data_type, is_optimised_image_group)
    "image_group": ("imageGroup", "IMG_GROUP", 0),
    "image_sequence": ("imageSequence", "IMG_GROUP", 1),
    "dicom_series": ("dicomSeries", "DICOM", None),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users(
    id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, org_admin INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS user_keys(keyid TEXT PRIMARY KEY, user_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bearer_tokens(
    token_sha256 TEXT PRIMARY KEY, user_id INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS folders(
    id INTEGER PRIMARY KEY, uuid TEXT UNIQUE NOT NULL, parent_uuid TEXT, name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '', client_metadata TEXT, owner TEXT NOT NULL,
    owner_id INTEGER NOT NULL, synced_dataset_hash TEXT,
    created_at REAL NOT NULL, last_edited_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS folders_name ON folders(name, id);
CREATE TABLE IF NOT EXISTS datasets(
    id INTEGER PRIMARY KEY, hash TEXT UNIQUE NOT NULL, title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '', folder_uuid TEXT NOT NULL,
    created_at REAL NOT NULL, last_edited_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dataset_members(
    dataset_id INTEGER NOT NULL, user_id INTEGER NOT NULL, role TEXT NOT NULL,
    PRIMARY KEY(dataset_id, user_id));
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY, uuid TEXT UNIQUE NOT NULL, folder_uuid TEXT NOT NULL,
    group_id INTEGER, position INTEGER, item_type TEXT NOT NULL, name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '', client_metadata TEXT NOT NULL DEFAULT '{}',
    owner TEXT NOT NULL, created_at REAL NOT NULL, last_edited_at REAL NOT NULL,
    blob_key TEXT UNIQUE, file_link TEXT, file_size INTEGER, mime_type TEXT,
    width INTEGER, height INTEGER, duration REAL, fps REAL, frame_count INTEGER,
    audio_sample_rate INTEGER, audio_bit_depth INTEGER, audio_codec TEXT, audio_num_channels INTEGER,
    dicom_study_uid TEXT, dicom_series_uid TEXT, dicom_instance_uid TEXT);
CREATE INDEX IF NOT EXISTS items_folder_name ON items(folder_uuid, name, id) WHERE group_id IS NULL;
CREATE INDEX IF NOT EXISTS items_folder_created ON items(folder_uuid, created_at, id) WHERE group_id IS NULL;
CREATE INDEX IF NOT EXISTS items_group ON items(group_id, position);
CREATE TABLE IF NOT EXISTS rows(
    id INTEGER PRIMARY KEY, data_hash TEXT UNIQUE NOT NULL, dataset_id INTEGER NOT NULL,
    item_id INTEGER UNIQUE NOT NULL, data_type TEXT NOT NULL, is_optimised INTEGER);
CREATE INDEX IF NOT EXISTS rows_dataset ON rows(dataset_id, id);
CREATE TABLE IF NOT EXISTS imports(
    source TEXT NOT NULL, dataset_title TEXT NOT NULL, dataset_id INTEGER NOT NULL,
    PRIMARY KEY(source, dataset_title));
"""

_ROW_SELECT = (
    "SELECT r.id AS row_id, r.data_hash, r.data_type, r.is_optimised, r.dataset_id, i.* "
    "FROM rows r JOIN items i ON i.id = r.item_id"
)


@dataclass(frozen=True)
class DatasetFilter:
    """``get_datasets`` filters; times are unix seconds."""

    title_eq: str | None = None
    title_like: str | None = None
    desc_eq: str | None = None
    desc_like: str | None = None
    created_before: float | None = None
    created_after: float | None = None
    edited_before: float | None = None
    edited_after: float | None = None


@dataclass(frozen=True)
class RowFilter:
    """``list_data_rows`` filters (all ANDed); times are unix seconds."""

    title_eq: str | None = None
    title_like: str | None = None
    created_before: float | None = None
    created_after: float | None = None
    data_types: Sequence[str] | None = None
    data_hashes: Sequence[str] | None = None


@dataclass(frozen=True)
class PageParams:
    order: str = "name"  # "name" | "createdAt"
    desc: bool = False
    page_size: int = 100
    page_token: str | None = None
    search: str | None = None
    item_types: Sequence[str] = ()
    is_in_dataset: bool | None = None
    dataset_synced: bool | None = None


@dataclass(frozen=True)
class ItemPatch:
    name: str | None = None
    description: str | None = None
    client_metadata_json: str | None = None  # compact JSON text of the new (whole) object


@dataclass(frozen=True)
class BlobInfo:
    path: Path | None  # None: a synthetic blob, generated from ``synthetic_seed`` (never on disk)
    size: int
    mime_type: str
    synthetic_seed: str | None = None


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Store:
    """All emulator state. Open with :meth:`open`; thread-safe."""

    def __init__(self, data_dir: Path, shape: shapes.Shape = shapes.DEFAULT) -> None:
        self.data_dir = data_dir
        self.shape = shape
        self.blob_dir = data_dir / "blobs"
        self._db_path = data_dir / DB_NAME
        self._write_lock = threading.RLock()
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue(maxsize=32)
        self._writer: sqlite3.Connection | None = None
        self._default_user: int | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, data_dir: Path, shape: shapes.Shape = shapes.DEFAULT) -> Store:
        store = cls(data_dir, shape)
        store._init()
        return store

    def _init(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.executescript(_SCHEMA)
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO users(id, email, org_admin) VALUES (1, ?, 1)", (DEFAULT_OWNER,))
        self._default_user = 1

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False, timeout=60)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            try:
                self._pool.put_nowait(conn)
            except queue.Full:
                conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._writer
            if conn is None:
                raise RuntimeError("store is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ users, keys, tokens

    @property
    def default_user_id(self) -> int:
        assert self._default_user is not None, "store not opened"
        return self._default_user

    def set_keys(self, keyids: Sequence[str], user_id: int | None = None) -> None:
        """Make ``keyids`` the registered keys (of one user): keys of earlier runs are dropped."""
        with self._write() as conn:
            conn.execute("DELETE FROM user_keys")
            conn.executemany(
                "INSERT OR REPLACE INTO user_keys(keyid, user_id) VALUES (?, ?)",
                [(k.lower(), user_id or self.default_user_id) for k in keyids],
            )

    def user_for_keyid(self, keyid: str) -> int | None:
        with self._read() as conn:
            row = conn.execute("SELECT user_id FROM user_keys WHERE keyid = ?", (keyid,)).fetchone()
        return None if row is None else int(row[0])

    def mint_token(self, user_id: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO bearer_tokens(token_sha256, user_id, created_at) VALUES (?, ?, ?)",
                (_sha256(token), user_id, time.time()),
            )
        return token

    def user_for_token(self, token: str) -> int | None:
        with self._read() as conn:
            row = conn.execute("SELECT user_id FROM bearer_tokens WHERE token_sha256 = ?", (_sha256(token),)).fetchone()
        return None if row is None else int(row[0])

    def user_email(self, user_id: int) -> str:
        with self._read() as conn:
            row = conn.execute("SELECT email FROM users WHERE id = ?", (user_id,)).fetchone()
        return DEFAULT_OWNER if row is None else str(row[0])

    # ------------------------------------------------------------------ import

    def is_source_imported(self, source: str) -> bool:
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM imports WHERE source = ? LIMIT 1", (source,)).fetchone() is not None

    def ingest(self, spec: DatasetSpec, source: str = "") -> str:
        """Create ``spec`` as a dataset (idempotent per (source, title)); return its dataset hash."""
        with self._write() as conn:
            found = self._imported_locked(conn, source, spec.title)
            if found is not None:
                return found
            ds_id, ds_hash, folder_uuid = self._create_dataset_locked(conn, spec.title, spec.description)
            for row in spec.rows:
                self._insert_row_locked(conn, ds_id, ds_hash, folder_uuid, row, time.time())
            conn.execute(
                "INSERT INTO imports(source, dataset_title, dataset_id) VALUES (?, ?, ?)", (source, spec.title, ds_id)
            )
        return ds_hash

    def ingest_synthetic(self, title: str, rows: int, size_bytes: int = synthetic.DEFAULT_SIZE_BYTES) -> str:
        """Create a dataset of ``rows`` synthetic IMAGE rows (``emulator.synthetic``); idempotent per title.

        Two ``executemany`` statements in one transaction with explicit ids (items, then rows):
        no per-row query and no blob files, so a million rows take tens of seconds, not hours.
        """
        with self._write() as conn:
            found = self._imported_locked(conn, synthetic.SOURCE, title)
            if found is not None:
                return found
            ds_id, ds_hash, folder_uuid = self._create_dataset_locked(conn, title, f"{rows} synthetic rows")
            first_id = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()[0]) + 1
            tag, now = ds_hash.replace("-", "")[:12], time.time()

            def items() -> Iterator[tuple[Any, ...]]:
                for n in range(1, rows + 1):
                    key = synthetic.blob_key(f"{tag}.{n}", size_bytes)
                    width, height = synthetic.dimensions(n)
                    yield (
                        first_id + n - 1, str(uuid.uuid4()), folder_uuid, synthetic.title(n),
                        synthetic.metadata_json(n), DEFAULT_OWNER, now, now, key, f"cord-data/{ds_hash}/{key}",
                        size_bytes, synthetic.MIME_TYPE, width, height,
                    )  # fmt: skip

            conn.execute("PRAGMA cache_size=-262144")  # 256 MiB while the uuid indexes grow
            conn.executemany(
                "INSERT INTO items(id, uuid, folder_uuid, item_type, name, client_metadata, owner, created_at, "
                "last_edited_at, blob_key, file_link, file_size, mime_type, width, height) "
                "VALUES (?, ?, ?, 'image', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                items(),
            )
            conn.executemany(
                "INSERT INTO rows(data_hash, dataset_id, item_id, data_type, is_optimised) VALUES (?, ?, ?, 'IMAGE', NULL)",
                ((str(uuid.uuid4()), ds_id, first_id + i) for i in range(rows)),
            )
            conn.execute("PRAGMA cache_size=-2000")
            conn.execute(
                "INSERT INTO imports(source, dataset_title, dataset_id) VALUES (?, ?, ?)",
                (synthetic.SOURCE, title, ds_id),
            )
        return ds_hash

    @staticmethod
    def _imported_locked(conn: sqlite3.Connection, source: str, title: str) -> str | None:
        """Hash of the dataset already imported as (source, title), if any."""
        found = conn.execute(
            "SELECT d.hash FROM imports im JOIN datasets d ON d.id = im.dataset_id "
            "WHERE im.source = ? AND im.dataset_title = ?",
            (source, title),
        ).fetchone()
        return None if found is None else str(found[0])

    def _create_dataset_locked(self, conn: sqlite3.Connection, title: str, description: str) -> tuple[int, str, str]:
        now = time.time()
        ds_hash, folder_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        owner = self.user_email(self.default_user_id)
        conn.execute(
            "INSERT INTO folders(uuid, parent_uuid, name, description, client_metadata, owner, owner_id, "
            "synced_dataset_hash, created_at, last_edited_at) VALUES (?, NULL, ?, ?, NULL, ?, ?, ?, ?, ?)",
            (folder_uuid, title, description, owner, self.default_user_id, ds_hash, now, now),
        )
        cur = conn.execute(
            "INSERT INTO datasets(hash, title, description, folder_uuid, created_at, last_edited_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ds_hash, title, description, folder_uuid, now, now),
        )
        ds_id = int(cur.lastrowid or 0)
        conn.execute(
            "INSERT INTO dataset_members(dataset_id, user_id, role) VALUES (?, ?, 'admin')",
            (ds_id, self.default_user_id),
        )
        return ds_id, ds_hash, folder_uuid

    def _insert_row_locked(
        self,
        conn: sqlite3.Connection,
        ds_id: int,
        ds_hash: str,
        folder_uuid: str,
        row: FileSpec | GroupSpec,
        now: float,
    ) -> tuple[str, str]:
        if isinstance(row, FileSpec) and row.media.data_type == "DICOM":
            # A lone DICOM file is a one-slice series: DICOM rows are always series (file_link null).
            row = GroupSpec(row.title, "dicom_series", [row], row.client_metadata)
        data_type: str
        if isinstance(row, FileSpec):
            item_id, item_uuid = self._insert_file_item_locked(conn, ds_hash, folder_uuid, row, None, None, now)
            data_type, is_optimised = row.media.data_type, None
        else:
            item_type, data_type, is_optimised = _GROUP_KINDS[row.kind]
            first = row.children[0].media if row.children else None
            sized = row.kind != "image_group" and first is not None
            item_uuid = str(uuid.uuid4())
            cur = conn.execute(
                "INSERT INTO items(uuid, folder_uuid, item_type, name, client_metadata, owner, created_at, "
                "last_edited_at, width, height, frame_count, dicom_study_uid, dicom_series_uid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item_uuid, folder_uuid, item_type, row.title, compact_json(row.client_metadata or {}),
                    DEFAULT_OWNER, now, now,
                    first.width if sized and first else None, first.height if sized and first else None,
                    len(row.children) if row.kind == "image_sequence" else None,
                    first.dicom_study_uid if first else None, first.dicom_series_uid if first else None,
                ),
            )  # fmt: skip
            item_id = int(cur.lastrowid or 0)
            for position, child in enumerate(row.children):
                self._insert_file_item_locked(conn, ds_hash, folder_uuid, child, item_id, position, now)
        data_hash = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO rows(data_hash, dataset_id, item_id, data_type, is_optimised) VALUES (?, ?, ?, ?, ?)",
            (data_hash, ds_id, item_id, data_type, is_optimised),
        )
        return data_hash, item_uuid

    def _insert_file_item_locked(
        self,
        conn: sqlite3.Connection,
        ds_hash: str,
        folder_uuid: str,
        spec: FileSpec,
        group_id: int | None,
        position: int | None,
        now: float,
    ) -> tuple[int, str]:
        blob_key, size = self._store_blob(spec.path)
        return self._insert_blob_item_locked(
            conn, ds_hash, folder_uuid, spec.title, spec.media, spec.client_metadata, blob_key, size,
            group_id, position, now,
        )  # fmt: skip

    def _insert_blob_item_locked(
        self,
        conn: sqlite3.Connection,
        ds_hash: str,
        folder_uuid: str,
        title: str,
        media: MediaInfo,
        client_metadata: dict[str, Any] | None,
        blob_key: str,
        size: int,
        group_id: int | None,
        position: int | None,
        now: float,
    ) -> tuple[int, str]:
        item_uuid = str(uuid.uuid4())
        cur = conn.execute(
            "INSERT INTO items(uuid, folder_uuid, group_id, position, item_type, name, client_metadata, owner, "
            "created_at, last_edited_at, blob_key, file_link, file_size, mime_type, width, height, duration, fps, "
            "frame_count, audio_sample_rate, audio_bit_depth, audio_codec, audio_num_channels, dicom_study_uid, "
            "dicom_series_uid, dicom_instance_uid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                item_uuid, folder_uuid, group_id, position, _ITEM_TYPES[media.data_type], title,
                compact_json(client_metadata or {}), DEFAULT_OWNER, now, now, blob_key,
                f"cord-data/{ds_hash}/{blob_key}", size, media.mime_type or "application/octet-stream",
                media.width, media.height, media.duration_s, media.fps, media.frame_count,
                media.audio_sample_rate, media.audio_bit_depth, media.audio_codec, media.audio_num_channels,
                media.dicom_study_uid, media.dicom_series_uid, media.dicom_instance_uid,
            ),
        )  # fmt: skip
        return int(cur.lastrowid or 0), item_uuid

    def _store_blob(self, src: Path) -> tuple[str, int]:
        key = secrets.token_hex(16)
        dst = self.blob_dir / key
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        return key, dst.stat().st_size

    def _store_blob_bytes(self, data: bytes) -> tuple[str, int]:
        key = secrets.token_hex(16)
        (self.blob_dir / key).write_bytes(data)
        return key, len(data)

    # ------------------------------------------------------------------ datasets (legacy + v2 list)

    def list_datasets(self, user_id: int, include_org_access: bool, flt: DatasetFilter) -> list[dict[str, Any]]:
        where, args = ["1=1"], []
        for clause, value in (
            ("d.title = ?", flt.title_eq),
            ("d.title LIKE ?", flt.title_like),
            ("d.description = ?", flt.desc_eq),
            ("d.description LIKE ?", flt.desc_like),
            ("d.created_at < ?", flt.created_before),
            ("d.created_at > ?", flt.created_after),
            ("d.last_edited_at < ?", flt.edited_before),
            ("d.last_edited_at > ?", flt.edited_after),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        org = include_org_access and self._is_org_admin(user_id)
        sql = (
            "SELECT d.*, m.role FROM datasets d LEFT JOIN dataset_members m ON m.dataset_id = d.id AND m.user_id = ? "
            f"WHERE (m.user_id IS NOT NULL OR ?) AND {' AND '.join(where)} ORDER BY d.id"
        )
        with self._read() as conn:
            rows = conn.execute(sql, [user_id, 1 if org else 0, *args]).fetchall()
        return [shapes.dataset_info(r, r["role"], self.shape) for r in rows]

    def _is_org_admin(self, user_id: int) -> bool:
        with self._read() as conn:
            row = conn.execute("SELECT org_admin FROM users WHERE id = ?", (user_id,)).fetchone()
        return bool(row and row[0])

    def dataset_for_user(self, user_id: int, dataset_hash: str) -> sqlite3.Row:
        """The dataset, if ``user_id`` may see it; 404 / 403 otherwise."""
        with self._read() as conn:
            ds = conn.execute("SELECT * FROM datasets WHERE hash = ?", (dataset_hash,)).fetchone()
            if ds is None:
                raise ApiError(404, f"dataset {dataset_hash} not found")
            member = conn.execute(
                "SELECT 1 FROM dataset_members WHERE dataset_id = ? AND user_id = ?", (ds["id"], user_id)
            ).fetchone()
        if member is None and not self._is_org_admin(user_id):
            raise ApiError(403, f"no access to dataset {dataset_hash}")
        return ds

    def stream_dataset_rows(self, dataset_id: int, flt: RowFilter | None, with_metadata: bool) -> Iterator[str]:
        """Yield each row of the dataset as DataRow JSON text, in insertion order.

        One read transaction, two cursors walked in step: rows by ``rows(dataset_id, id)`` and the
        members of the dataset's image groups by ``(row id, position)``.
        """
        where, args = self._row_filter_sql(flt)
        with self._read() as conn:
            conn.execute("BEGIN")
            rows = conn.execute(f"{_ROW_SELECT} WHERE r.dataset_id = ? {where} ORDER BY r.id", [dataset_id, *args])
            children = conn.execute(
                "SELECT r.id AS row_id, c.* FROM rows r JOIN items c ON c.group_id = r.item_id "
                "WHERE r.dataset_id = ? AND r.data_type = 'IMG_GROUP' ORDER BY r.id, c.position",
                (dataset_id,),
            )
            pending = children.fetchone()
            for row in rows:
                group: list[sqlite3.Row] | None = None
                if row["data_type"] == "IMG_GROUP":
                    group = []
                    while pending is not None and pending["row_id"] <= row["row_id"]:
                        if pending["row_id"] == row["row_id"]:
                            group.append(pending)
                        pending = children.fetchone()
                yield shapes.row_json(row, with_metadata=with_metadata, children=group, shape=self.shape)

    @staticmethod
    def _row_filter_sql(flt: RowFilter | None) -> tuple[str, list[Any]]:
        if flt is None:
            return "", []
        clauses, args = [], []
        for clause, value in (
            ("i.name = ?", flt.title_eq),
            ("i.name LIKE ?", flt.title_like),
            ("i.created_at < ?", flt.created_before),
            ("i.created_at > ?", flt.created_after),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        for column, values in (("r.data_type", flt.data_types), ("r.data_hash", flt.data_hashes)):
            if values is not None:
                clauses.append(f"{column} IN ({','.join('?' * len(values))})" if values else "0")
                args.extend(values)
        return "".join(f" AND {c}" for c in clauses), args

    # ------------------------------------------------------------------ single rows (legacy datarow)

    def _row_locked(self, conn: sqlite3.Connection, data_hash: str) -> sqlite3.Row:
        row = conn.execute(f"{_ROW_SELECT} WHERE r.data_hash = ?", (data_hash,)).fetchone()
        if row is None:
            raise ApiError(404, f"data row {data_hash} not found")
        return row

    def check_row_access(self, user_id: int, data_hash: str, dataset_hash: str | None) -> None:
        with self._read() as conn:
            row = self._row_locked(conn, data_hash)
            ds = conn.execute("SELECT hash FROM datasets WHERE id = ?", (row["dataset_id"],)).fetchone()
        if dataset_hash and ds is not None and ds["hash"] != dataset_hash:
            raise ApiError(404, f"data row {data_hash} not found in dataset {dataset_hash}")
        self.dataset_for_user(user_id, ds["hash"])

    def row_json(
        self, data_hash: str, *, with_metadata: bool, sign: shapes.Signer | None, sign_images: shapes.Signer | None
    ) -> str:
        with self._read() as conn:
            row = self._row_locked(conn, data_hash)
            children = self._children_locked(conn, row["id"]) if row["data_type"] == "IMG_GROUP" else None
        return shapes.row_json(
            row, with_metadata=with_metadata, sign=sign, children=children, sign_children=sign_images, shape=self.shape
        )

    def update_row(self, data_hash: str, title: str | None, metadata_json: str | None) -> None:
        with self._write() as conn:
            row = self._row_locked(conn, data_hash)
            self._patch_item_locked(conn, row["id"], ItemPatch(name=title, client_metadata_json=metadata_json))

    # ------------------------------------------------------------------ storage items (v2)

    def _hidden_sql(self, items: str) -> str:
        """SQL condition on the ``items`` table (or alias) ``items``: the item does not exist for the
        storage API under the shape -- it backs a row served without a storage item, is a member of
        such a row, or is a frame of an image sequence whose frames only ``images_data`` lists."""
        legacy = self.shape.legacy_sql("r")
        if legacy == "0" and not self.shape.sequence_video:
            return "0"
        return (
            f"(EXISTS (SELECT 1 FROM rows r WHERE r.item_id = COALESCE({items}.group_id, {items}.id) AND {legacy})"
            f" OR ({items}.group_id IS NOT NULL AND {int(self.shape.sequence_video)} AND EXISTS ("
            f"SELECT 1 FROM items g WHERE g.id = {items}.group_id AND g.item_type = 'imageSequence')))"
        )

    def items_by_uuid(self, uuids: Sequence[str]) -> list[sqlite3.Row]:
        """Items in request order; 403 naming the first unknown uuid (SDK: "no access")."""
        found: dict[str, sqlite3.Row] = {}
        hidden = self._hidden_sql("items")
        with self._read() as conn:
            for start in range(0, len(uuids), 500):
                chunk = list(uuids[start : start + 500])
                q = f"SELECT * FROM items WHERE uuid IN ({','.join('?' * len(chunk))}) AND NOT {hidden}"
                found.update((r["uuid"], r) for r in conn.execute(q, chunk))
        missing = [u for u in uuids if u not in found]
        if missing:
            raise ApiError(403, f"storage item {missing[0]} does not exist or you have no access to it")
        return [found[u] for u in uuids]

    def item(self, item_uuid: str, folder_uuid: str | None = None) -> sqlite3.Row:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT * FROM items WHERE uuid = ? AND NOT {self._hidden_sql('items')}", (item_uuid,)
            ).fetchone()
        if row is None or (folder_uuid is not None and row["folder_uuid"] != folder_uuid):
            raise ApiError(403, f"storage item {item_uuid} does not exist or you have no access to it")
        return row

    def child_items(self, item_id: int) -> list[sqlite3.Row]:
        """Members the storage API lists (none for an image sequence under the recorded shape)."""
        with self._read() as conn:
            return conn.execute(
                f"SELECT * FROM items WHERE group_id = ? AND NOT {self._hidden_sql('items')} ORDER BY position",
                (item_id,),
            ).fetchall()

    @staticmethod
    def _children_locked(conn: sqlite3.Connection, item_id: int) -> list[sqlite3.Row]:
        return conn.execute("SELECT * FROM items WHERE group_id = ? ORDER BY position", (item_id,)).fetchall()

    def patch_items(
        self, patches: Sequence[tuple[str, ItemPatch]], folder_uuid: str | None = None
    ) -> list[sqlite3.Row]:
        """Apply all patches in one transaction (all or nothing); return the updated items."""
        with self._write() as conn:
            ids = []
            hidden = self._hidden_sql("items")
            for item_uuid, patch in patches:
                row = conn.execute(
                    f"SELECT id, folder_uuid FROM items WHERE uuid = ? AND NOT {hidden}", (item_uuid,)
                ).fetchone()
                if row is None or (folder_uuid is not None and row["folder_uuid"] != folder_uuid):
                    raise ApiError(403, f"storage item {item_uuid} does not exist or you have no access to it")
                self._patch_item_locked(conn, row["id"], patch)
                ids.append(row["id"])
            return [conn.execute("SELECT * FROM items WHERE id = ?", (i,)).fetchone() for i in ids]

    @staticmethod
    def _patch_item_locked(conn: sqlite3.Connection, item_id: int, patch: ItemPatch) -> None:
        sets: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("name", patch.name),
            ("description", patch.description),
            ("client_metadata", patch.client_metadata_json),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        sets.append("last_edited_at = ?")
        args.append(time.time())
        conn.execute(f"UPDATE items SET {', '.join(sets)} WHERE id = ?", [*args, item_id])

    # ------------------------------------------------------------------ folders (v2)

    def folder(self, folder_uuid: str) -> sqlite3.Row:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM folders WHERE uuid = ?", (folder_uuid,)).fetchone()
        if row is None:
            raise ApiError(403, f"storage folder {folder_uuid} does not exist or you have no access to it")
        return row

    def list_folder_items(self, folder_uuid: str, params: PageParams) -> tuple[list[sqlite3.Row], str | None]:
        self.folder(folder_uuid)
        if params.is_in_dataset is False:  # every item of a backing folder is in its dataset
            return [], None
        where, args = ["folder_uuid = ?", "group_id IS NULL", f"NOT {self._hidden_sql('items')}"], [folder_uuid]
        if params.search:
            where.append("name LIKE ?")
            args.append(f"%{params.search}%")
        if params.item_types:
            where.append(f"item_type IN ({','.join('?' * len(params.item_types))})")
            args.extend(params.item_types)
        return self._keyset_page("items", where, args, params)

    def list_root_folders(self, params: PageParams) -> tuple[list[sqlite3.Row], str | None]:
        where, args = ["parent_uuid IS NULL"], []
        if params.search:
            where.append("name LIKE ?")
            args.append(f"%{params.search}%")
        if params.dataset_synced is not None:
            where.append("synced_dataset_hash IS NOT NULL" if params.dataset_synced else "synced_dataset_hash IS NULL")
        return self._keyset_page("folders", where, args, params)

    def _keyset_page(
        self, table: str, where: list[str], args: list[Any], params: PageParams
    ) -> tuple[list[sqlite3.Row], str | None]:
        column = "created_at" if params.order == "createdAt" else "name"
        direction = "DESC" if params.desc else "ASC"
        if params.page_token:
            last_key, last_id = _decode_token(params.page_token)
            where = [*where, f"({column}, id) {'<' if params.desc else '>'} (?, ?)"]
            args = [*args, last_key, last_id]
        sql = f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY {column} {direction}, id {direction} LIMIT ?"
        with self._read() as conn:
            rows = conn.execute(sql, [*args, params.page_size + 1]).fetchall()
        if len(rows) <= params.page_size:
            return rows, None
        rows = rows[: params.page_size]
        return rows, _encode_token(rows[-1][column], rows[-1]["id"])

    # ------------------------------------------------------------------ image sequence videos

    def ensure_sequence_videos(self, encode: Callable[[list[Path]], tuple[bytes, MediaInfo]]) -> int:
        """Give every image sequence that has frames but no video one: ``encode(frame paths)`` → MP4
        bytes and their media info, stored as the sequence item's blob (idempotent; returns how many
        were made). Only the recorded shape shows these (``shapes``); the default shape hides them."""
        with self._read() as conn:
            sequences = conn.execute(
                "SELECT i.id, d.hash FROM items i JOIN rows r ON r.item_id = i.id JOIN datasets d ON d.id = r.dataset_id "
                "WHERE i.item_type = 'imageSequence' AND i.blob_key IS NULL ORDER BY i.id"
            ).fetchall()
            frames = {
                seq_id: [
                    self.blob_dir / c["blob_key"]
                    for c in self._children_locked(conn, seq_id)
                    if c["blob_key"] and synthetic.parse_key(c["blob_key"]) is None
                ]
                for seq_id, _ in sequences
            }
        made = 0
        for seq_id, ds_hash in sequences:
            if not frames[seq_id]:
                continue  # nothing to encode: the sequence stays without a video
            data, info = encode(frames[seq_id])
            blob_key, size = self._store_blob_bytes(data)
            with self._write() as conn:
                conn.execute(
                    "UPDATE items SET blob_key = ?, file_link = ?, file_size = ?, mime_type = ?, duration = ?, fps = ?"
                    " WHERE id = ? AND blob_key IS NULL",
                    (
                        blob_key,
                        f"cord-data/{ds_hash}/{blob_key}",
                        size,
                        info.mime_type,
                        info.duration_s,
                        info.fps,
                        seq_id,
                    ),
                )
            made += 1
        return made

    # ------------------------------------------------------------------ blobs

    def blob_info(self, blob_key: str) -> BlobInfo | None:
        with self._read() as conn:
            row = conn.execute("SELECT file_size, mime_type FROM items WHERE blob_key = ?", (blob_key,)).fetchone()
        if row is None:
            return None
        seed_size = synthetic.parse_key(blob_key)
        if seed_size is not None:
            return BlobInfo(None, seed_size[1], row["mime_type"] or synthetic.MIME_TYPE, seed_size[0])
        path = self.blob_dir / blob_key
        try:
            size = path.stat().st_size
        except OSError:
            return None
        return BlobInfo(path, size, row["mime_type"] or "application/octet-stream")

    # ------------------------------------------------------------------ admin

    def add_row(
        self, dataset: str, title: str, data: bytes, media: MediaInfo, client_metadata: dict[str, Any] | None
    ) -> tuple[str, str]:
        """Add a single-file row to the dataset named by hash or title; return (data_hash, item uuid)."""
        if media.data_type == "DICOM":
            raise ApiError(400, "single DICOM rows are not supported on the fly")
        with self._write() as conn:
            ds = conn.execute(
                "SELECT * FROM datasets WHERE hash = ? OR title = ? ORDER BY hash = ? DESC, id LIMIT 1",
                (dataset, dataset, dataset),
            ).fetchone()
            if ds is None:
                raise ApiError(404, f"dataset {dataset!r} not found")
            blob_key, size = self._store_blob_bytes(data)  # only once the row is sure to be added
            now = time.time()
            item_id, item_uuid = self._insert_blob_item_locked(
                conn, ds["hash"], ds["folder_uuid"], title, media, client_metadata, blob_key, size, None, None, now
            )
            data_hash = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO rows(data_hash, dataset_id, item_id, data_type, is_optimised) VALUES (?, ?, ?, ?, NULL)",
                (data_hash, ds["id"], item_id, media.data_type),
            )
            conn.execute("UPDATE datasets SET last_edited_at = ? WHERE id = ?", (now, ds["id"]))
        return data_hash, item_uuid

    def delete_row(self, data_hash: str) -> None:
        """Delete a row, its item and children.

        Blob files stay on disk so that ``restore_startup_state`` can bring the row back.
        """
        with self._write() as conn:
            row = self._row_locked(conn, data_hash)
            doomed = [row["id"], *(c["id"] for c in self._children_locked(conn, row["id"]))]
            conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(doomed))})", doomed)
            conn.execute("DELETE FROM rows WHERE data_hash = ?", (data_hash,))
            conn.execute("UPDATE datasets SET last_edited_at = ? WHERE id = ?", (time.time(), row["dataset_id"]))

    def snapshot_startup_state(self) -> None:
        """Remember the current data tables for :meth:`restore_startup_state`."""
        path = self.data_dir / SNAPSHOT_NAME
        with self._write_lock:
            assert self._writer is not None
            path.unlink(missing_ok=True)
            self._writer.execute("VACUUM INTO ?", (str(path),))

    def restore_startup_state(self) -> None:
        path = self.data_dir / SNAPSHOT_NAME
        if not path.exists():
            raise ApiError(409, "no startup snapshot to restore")
        with self._write_lock:
            conn = self._writer
            assert conn is not None
            conn.execute("ATTACH DATABASE ? AS snap", (str(path),))
            try:
                with self._write() as tx:
                    for table in _DATA_TABLES:
                        tx.execute(f"DELETE FROM main.{table}")
                        tx.execute(f"INSERT INTO main.{table} SELECT * FROM snap.{table}")
            finally:
                conn.execute("DETACH DATABASE snap")

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in ("datasets", "rows", "items")
            }


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _encode_token(key: Any, row_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([key, row_id]).encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[Any, int]:
    try:
        key, row_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return key, int(row_id)
    except (ValueError, TypeError):
        raise ApiError(400, "invalid pageToken") from None


__all__ = [
    "BlobInfo",
    "DatasetFilter",
    "ItemPatch",
    "PageParams",
    "RowFilter",
    "Store",
    "compact_json",
]
