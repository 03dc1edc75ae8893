"""The filesystem core: every operation the kernel can ask, keyed by inode, without FUSE.

Owns the tree's shape (root → datasets → rows, groups → members), loading folders into the catalog
when they are first used or their metadata TTL has passed, open file handles, and the xattr view.
The FUSE adapter (``encordfs.fuse``) only translates to and from this class; tests drive it
directly with ``backend.memory.MemoryBackend``.

Loading: the root lists datasets (one ``list_datasets``); a dataset folder loads its rows (one
``get_dataset``); the first use of any group folder in a dataset loads the members of all that
dataset's groups at once (one bulk item fetch plus one child listing per group), and keeps the
signed URLs that come with them. Opening a file whose URL is not cached signs it together with up to
999 of its unsigned siblings (one ``get-bulk``), so reading a folder costs one signing call per
1,000 files.

Errors: every failure is an ``errors.FsError``; nothing here knows errno values.
"""

from __future__ import annotations

import itertools
import logging
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from encordfs import errors
from encordfs.backend import COMPOSITE_TYPES, Backend, ChildRecord, DatasetRecord, RowRecord
from encordfs.core import xattrs
from encordfs.core.catalog import ROOT_INO, Catalog, Entry, Kind, Node

log = logging.getLogger(__name__)

STORAGE_LOCATIONS = {0: "CORD_STORAGE", 1: "AWS", 2: "GCP", 3: "AZURE", 4: "S3_COMPATIBLE"}
SIGN_BATCH = 1000  # items per bulk signing call (the API's documented maximum)


class Handle(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...
    def close(self) -> None: ...


class Reader(Protocol):
    def open(self, content_key: str, size: int, url_source: Callable[[bool], str]) -> Handle: ...


class UrlCache(Protocol):
    def get(self, item_id: str) -> str: ...
    def put(self, item_id: str, url: str) -> None: ...
    def prime(self, item_ids: list[str]) -> None: ...
    def invalidate(self, item_id: str) -> None: ...
    def is_fresh(self, item_id: str) -> bool: ...
    def source(self, item_id: str) -> Callable[[bool], str]: ...


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    size: int
    mtime: float
    ctime: float
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Options:
    uid: int
    gid: int
    # Metadata TTL: how long a loaded listing is served before it is loaded again. 60 s, like
    # mountpoint-s3's default metadata TTL for mutable buckets: fresh enough for interactive use,
    # while a training epoch over a folder costs one listing call per minute, not one per file.
    metadata_ttl_s: float = 60.0
    file_mode: int = 0o444
    dir_mode: int = 0o555


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _dataset_entry(d: DatasetRecord) -> Entry:
    fields = {
        "dataset_hash": d.uid,
        "description": d.description,
        "created_at": iso(d.created_at),
        "last_edited_at": iso(d.last_edited_at),
        "storage_location": STORAGE_LOCATIONS.get(d.storage_location, str(d.storage_location)),
        "backing_folder_uuid": d.backing_folder_uuid,
        "user_role": d.user_role,
    }
    return Entry(Kind.DATASET, d.uid, d.title, None, d.backing_folder_uuid, 0, d.created_at, d.last_edited_at, fields)


def _row_entry(r: RowRecord) -> Entry:
    composite = r.data_type in COMPOSITE_TYPES
    fields = {
        "uid": r.uid,
        "data_type": r.data_type,
        "created_at": iso(r.created_at),
        "last_edited_at": iso(r.last_edited_at),
        "width": r.width,
        "height": r.height,
        "frames_per_second": r.frames_per_second,
        # The SDK's DataRow.duration is defined for videos only; the xattr shows what the SDK shows.
        "duration": r.duration if r.data_type == "VIDEO" else None,
        "file_link": r.file_link,
        "file_size": r.file_size,
        "file_type": r.file_type,
        "storage_location": STORAGE_LOCATIONS.get(r.storage_location, str(r.storage_location)),
        "backing_item_uuid": r.backing_item_uuid,
        "is_image_sequence": r.is_image_sequence,
        "dataset_hash": r.dataset_uid,
    }
    return Entry(
        Kind.GROUP if composite else Kind.ROW,
        r.uid,
        r.title,
        r.file_type,
        r.backing_item_uuid,
        0 if composite else (r.file_size or 0),
        r.created_at,
        r.last_edited_at,
        fields,
        dict(r.client_metadata) if r.client_metadata is not None else None,
    )


def _child_entry(c: ChildRecord) -> Entry:
    fields: dict[str, Any] = {
        "image_hash": c.item_uuid,
        "file_link": c.file_link,
        "file_type": c.file_type,
        "file_size": c.file_size,
        "storage_location": c.storage_location,
        "created_at": iso(c.created_at),
        "last_edited_at": iso(c.last_edited_at),
        "width": c.width,
        "height": c.height,
        "item_type": c.item_type,
        "index": c.index,
    }
    if c.dicom_instance_uid or c.dicom_series_uid or c.dicom_study_uid:
        fields.update(dicom_instance_uid=c.dicom_instance_uid, dicom_series_uid=c.dicom_series_uid, dicom_study_uid=c.dicom_study_uid)
    return Entry(Kind.CHILD, c.item_uuid, c.title, c.file_type, c.item_uuid, c.file_size or 0, c.created_at, c.last_edited_at, fields)


class EncordFS:
    def __init__(self, backend: Backend, catalog: Catalog, reader: Reader, urls: UrlCache, options: Options, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.catalog = catalog
        self.reader = reader
        self.urls = urls
        self.options = options
        self.clock = clock
        self._handles: dict[int, tuple[Node, Handle]] = {}
        self._next_fh = itertools.count(1)
        self._handles_lock = threading.Lock()
        self._load_locks: dict[int, threading.Lock] = {}
        self._load_locks_lock = threading.Lock()

    # -- attributes -------------------------------------------------------------------------------
    def attr_of(self, node: Node) -> Attr:
        o = self.options
        if node.kind.is_dir:
            return Attr(node.ino, stat.S_IFDIR | o.dir_mode, 2, 0, node.mtime, node.mtime, o.uid, o.gid)
        return Attr(node.ino, stat.S_IFREG | o.file_mode, 1, node.size, node.mtime, node.mtime, o.uid, o.gid)

    def root_attr(self) -> Attr:
        o = self.options
        return Attr(ROOT_INO, stat.S_IFDIR | o.dir_mode, 2, 0, 0.0, 0.0, o.uid, o.gid)

    def getattr(self, ino: int) -> Attr:
        if ino == ROOT_INO:
            return self.root_attr()
        return self.attr_of(self.node(ino))

    def node(self, ino: int) -> Node:
        node = self.catalog.get(ino)
        if node is None:
            raise errors.NotFound(f"inode {ino} is gone")
        return node

    # -- names ------------------------------------------------------------------------------------
    def lookup(self, parent: int, name: str) -> Node:
        self._ensure_loaded(parent)
        node = self.catalog.lookup(parent, name)
        if node is None:
            raise errors.NotFound(name)
        return node

    def resolve(self, path: str) -> int:
        """Inode of an absolute path (the path-based adapter's entry point)."""
        ino = ROOT_INO
        for part in path.split("/"):
            if part:
                node = self.lookup(ino, part)
                ino = node.ino
        return ino

    def readdir(self, ino: int) -> Iterator[tuple[str, Attr]]:
        if ino != ROOT_INO and not self.node(ino).kind.is_dir:
            raise errors.NotADirectory(str(ino))
        self._ensure_loaded(ino)
        for child in self.catalog.children(ino):
            yield child.name, self.attr_of(child)

    # -- loading ----------------------------------------------------------------------------------
    def _load_lock(self, ino: int) -> threading.Lock:
        with self._load_locks_lock:
            return self._load_locks.setdefault(ino, threading.Lock())

    def _ensure_loaded(self, ino: int) -> None:
        loaded = self.catalog.loaded_at(ino)
        if loaded is not None and self.clock() - loaded < self.options.metadata_ttl_s:
            return
        with self._load_lock(ino):
            loaded = self.catalog.loaded_at(ino)  # another thread may have loaded it meanwhile
            if loaded is not None and self.clock() - loaded < self.options.metadata_ttl_s:
                return
            self.refresh(ino)

    def refresh(self, ino: int) -> None:
        """Load a folder from Encord now, whatever its age."""
        now = self.clock()
        if ino == ROOT_INO:
            self.catalog.sync_children(ROOT_INO, (_dataset_entry(d) for d in self.backend.list_datasets()), now)
            return
        node = self.node(ino)
        if node.kind == Kind.DATASET:
            self.catalog.sync_children(ino, (_row_entry(r) for r in self.backend.iter_rows(node.uid)), now)
        elif node.kind == Kind.GROUP:
            self._load_groups(node.parent, first=node)
        else:
            raise errors.NotADirectory(node.name)

    def _load_groups(self, dataset_ino: int, first: Node) -> None:
        """Members of every not-yet-loaded group of a dataset (and ``first``), in one batch."""
        now = self.clock()
        wanted = [first] + [
            g for g in self.catalog.groups(dataset_ino)
            if g.ino != first.ino and (self.catalog.loaded_at(g.ino) is None or now - (self.catalog.loaded_at(g.ino) or 0) >= self.options.metadata_ttl_s)
        ]
        wanted = [g for g in wanted if g.item_uuid]
        by_item = self.backend.list_children([g.item_uuid for g in wanted if g.item_uuid])
        for group in wanted:
            kids = by_item.get(group.item_uuid or "", [])
            for kid in kids:
                if kid.signed_url:
                    self.urls.put(kid.item_uuid, kid.signed_url)
            self.catalog.sync_children(group.ino, (_child_entry(k) for k in kids), now)
        if not first.item_uuid:
            self.catalog.mark_loaded(first.ino, now)

    # -- reading ----------------------------------------------------------------------------------
    def open(self, ino: int, writable: bool) -> int:
        node = self.node(ino)
        if node.kind.is_dir:
            raise errors.IsADirectory(node.name)
        if writable:
            raise errors.ReadOnly(f"{node.name}: file contents are read-only")
        if not node.item_uuid:
            raise errors.RemoteIOError(f"{node.name}: no storage item to read from")
        handle = self.reader.open(self._content_key(node), node.size, self._url_source(node))
        with self._handles_lock:
            fh = next(self._next_fh)
            self._handles[fh] = (node, handle)
        return fh

    def read(self, fh: int, offset: int, length: int) -> bytes:
        try:
            _, handle = self._handles[fh]
        except KeyError:
            raise errors.Stale(f"file handle {fh} is not open") from None
        return handle.read(offset, length)

    def release(self, fh: int) -> None:
        with self._handles_lock:
            entry = self._handles.pop(fh, None)
        if entry is not None:
            entry[1].close()

    def open_handles(self) -> int:
        return len(self._handles)

    @staticmethod
    def _content_key(node: Node) -> str:
        # Content identity: item id, size and last edit. A re-uploaded item changes one of these,
        # so blocks of the old content are never served for the new one.
        return f"{node.item_uuid}:{node.size}:{node.mtime:.6f}"

    def _url_source(self, node: Node) -> Callable[[bool], str]:
        """The reader's ``url_source`` for a file: bulk-signs its folder before the first use."""
        item = node.item_uuid
        assert item is not None
        source = self.urls.source(item)

        def url(force_resign: bool = False) -> str:
            if not force_resign and not self.urls.is_fresh(item):
                self._sign_siblings(node)
            return source(force_resign)

        return url

    def _sign_siblings(self, node: Node) -> None:
        """Sign ``node`` and up to 999 unsigned files after it in its folder, in one call."""
        item = node.item_uuid
        assert item is not None
        siblings = self.catalog.file_items(node.parent, after_ino=node.ino, limit=SIGN_BATCH * 4)
        unsigned = [u for _, u in siblings if u != item and not self.urls.is_fresh(u)]
        self.urls.prime([item] + unsigned[: SIGN_BATCH - 1])

    # -- xattrs -----------------------------------------------------------------------------------
    def _xattrs(self, ino: int) -> dict[str, bytes]:
        if ino == ROOT_INO:
            return {}
        node = self.node(ino)
        has_metadata = node.kind in (Kind.ROW, Kind.GROUP)
        title = node.title
        return xattrs.attributes(node.fields, title, node.client_metadata, has_metadata=has_metadata)

    def getxattr(self, ino: int, name: str) -> bytes:
        if xattrs.is_foreign(name):
            raise errors.NotSupported(name)
        try:
            return self._xattrs(ino)[name]
        except KeyError:
            raise errors.NoData(name) from None

    def listxattr(self, ino: int) -> list[str]:
        return list(self._xattrs(ino))

    def setxattr(self, ino: int, name: str, value: bytes, flags: int) -> None:
        raise errors.ReadOnly("extended attributes are read-only in this version")

    def removexattr(self, ino: int, name: str) -> None:
        raise errors.ReadOnly("extended attributes are read-only in this version")

    def statfs(self) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0, "f_files": 0, "f_ffree": 0, "f_namemax": 255}

    def close(self) -> None:
        with self._handles_lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for _, handle in handles:
            handle.close()
