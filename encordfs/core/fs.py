"""The filesystem core: every operation the kernel can ask, keyed by inode, without FUSE.

Owns the tree's shape (root → datasets → rows, groups → members), loading folders into the catalog
when they are first used or their metadata TTL has passed, open file handles, and the xattr view.
The FUSE adapter (``encordfs.fuse``) only translates to and from this class; tests drive it
directly with ``backend.memory.MemoryBackend``.

Loading: the root lists datasets (one ``list_datasets``); a dataset folder loads its rows (one
``get_dataset``); the first use of any group folder in a dataset loads the members of all that
dataset's groups at once (one bulk item fetch plus one child listing per group; image groups and
sequences whose storage item lists no children, and groups without a storage item, list their images
through the legacy ``images_data``: one call per group), and keeps the signed URLs that come with
them. An image sequence's video, when the service has one, is a file ``<sequence name>.mp4`` inside
its folder beside the frames. A group whose members cannot be listed is an empty folder whose
``user.encord.error`` says why. Opening a file whose URL is not cached signs it together with up to
999 of its unsigned siblings (one ``get-bulk``: those listed after it, then from the folder's start),
so reading a folder in any order costs about one signing call per 1,000 files -- except a row
without a storage item (a legacy row), which costs one data-row call of its own and is signed alone
(never with siblings: each would be a call). Nodes carry the backend's *handle*
(``encordfs.backend``): a storage item uuid, or a legacy key.

Shared loads (cluster mode): with a ``FolderLoader`` (``encordfs.cluster``), the root's and dataset
folders' loads go through it: it may fill the catalog folder from what another mount published
instead of calling Encord (``FolderLoad.from_encord`` is the plain load, called at most once), and
``Options.aligned_signing`` makes sibling signing ask for fixed windows of a folder, the same on every
node. Group members are always listed here.

Paths: the adapter is path-based, so every call resolves a path; ``PathCache`` keeps path → inode
for 64k paths and is dropped whenever the catalog's ``version`` moves (a child inserted, deleted or
renamed by a refresh or a rename). A hit still runs the parent folder's TTL check, so caching never
delays a refresh. Readdir streams from the catalog and resumes after an inode.

Backing files: with ``backing_files`` on (a binding that opens files in FUSE passthrough mode), ``open``
asks the reader for a local file holding the whole content (the disk cache's file, complete and
checked; nothing is fetched for it: a file not there yet is read through ``read``, which stores it) and
hands it out as ``OpenFile.backing_fd``, an fd the handle holds until ``release`` (an eviction meanwhile
cannot take the file away), with ``backing_key``, the content it holds. Off (the default), ``open`` does
exactly what it did without it.

Errors: every failure is an ``errors.FsError``; nothing here knows errno values.

Seams for a binding (both optional, ``None`` by default; the mfusepy binding uses neither):

- ``on_invalidate(kind, parent_ino, name_or_ino)`` is called after the catalog changed something a
  kernel may hold in its entry, attribute or page caches, so that their timeouts can be long:
  ``"entry"`` (parent, name): the name's meaning changed (a row added, deleted or renamed by a
  refresh, a rename through the mount); ``"inode"`` (parent, ino): attributes (a landed write);
  ``"content"`` (parent, ino): attributes and bytes (size or times changed on the server);
  ``"listing"`` (folder, folder): the folder's list of names changed (a kernel that keeps listings,
  ``listing_cache``, drops its copy). It is
  called on whatever thread changed the catalog, often while a FUSE request is being served: a
  listener must not block on the kernel (queue the notification, write it from another thread).
  First loads announce nothing (no kernel can have cached what was never listed).
- ``binding_status()`` returns a dict merged into ``status()`` (e.g. passthrough counters).
- ``watch_backing_drops(callback)`` has ``callback`` told the name (``core.blockcache.item_name`` of
  the ``backing_key``) of every file the disk cache drops, with a lock held: a binding that keeps cache
  files registered with the kernel notes it and lets the registration go on another thread.
- ``would_wait(folder)`` tells a binding which lookups and listings may wait for Encord.

Prefetch seam: ``prefetcher`` (``core.prefetch.Prefetcher`` or None, the default) is told of every
file open (``opened``: sequential lookahead across a folder's files) and receives what is written to
the ``/.encordfs/hints`` control file (order hints: one path per line; the contract is in
docs/SEMANTICS.md). ``EncordFS`` is its ``Source``: ``next_files`` and ``previous_file`` (listing
order) and ``file_at`` (a hinted path). The control file ``hints`` is the one writable file of a mount:
each open for writing starts a hint list, ``write`` feeds it, ``release`` ends it; ``truncate`` of it
is a no-op (``echo ... > hints`` truncates first). Without a prefetcher, writing it is ``EROFS``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypeVar

from encordfs import errors
from encordfs.backend import (
    BULK_LIMIT,
    COMPOSITE_TYPES,
    Backend,
    ChildRecord,
    DatasetRecord,
    GroupRef,
    RowRecord,
    costs_a_call,
)
from encordfs.core import names, views, xattrs
from encordfs.core.catalog import KIND_IS_DIR, ROOT_INO, UNKNOWN_SIZE, Catalog, Entry, Kind, Node, SyncChanges
from encordfs.core.journal import RowRef
from encordfs.core.link import LinkEstimate
from encordfs.core.prefetch import Item, Prefetcher
from encordfs.core.urls import UrlSource
from encordfs.core.views import Views, is_view_ino
from encordfs.core.writes import WriteQueue
from encordfs.settings import Settings, default

_T = TypeVar("_T")
log = logging.getLogger(__name__)

STORAGE_LOCATIONS = {0: "CORD_STORAGE", 1: "AWS", 2: "GCP", 3: "AZURE", 4: "S3_COMPATIBLE"}
# A folder's background refresh waits at least this many times what its last load took, whatever the
# TTL: stale-while-revalidate then costs at most a tenth of a core per folder in use. A 1M-row dataset
# loads in ~45 s here: refreshed every ~8 minutes instead of back to back under the 60 s TTL (a
# refresh of it started while ``ls -l`` ran tripled that listing's time). Folders that load in
# under 6 s keep the plain TTL; ``encordfs refresh`` always loads at once.
REFRESH_COST_FACTOR = 10
XATTR_CREATE = 1
XATTR_REPLACE = 2

# The hidden control folder: looked up by name at the root, never listed. Inode numbers far above
# what the catalog's AUTOINCREMENT will ever reach.
CONTROL_NAME = ".encordfs"
# A direct-io open (``OpenFile.bypass_page_cache``) gets every read at the reader's own size: a reader of
# small pieces pays a request per piece where the page cache would have read ahead (4 KiB reads of a
# cold 1 GiB file: 48 MB/s direct against 274 MB/s through the page cache; 32 KiB reads were still
# faster direct). Once ``SMALL_DIRECT_READS`` reads in a row on a direct-io handle average under
# ``SMALL_DIRECT_READ_BYTES``, the file's later opens are not marked (the last ``MAX_SMALL_READERS`` such
# files). The average, not a count of small reads: the kernel splits a 1 MiB read into a buffer that
# does not start on a page (Python's ``bytearray``: 16 bytes in, from ``malloc``) into a READ of 1 MiB
# less the offset and one of the bytes left, so a reader of big pieces also makes a small READ for
# every big one.
SMALL_DIRECT_READ_BYTES = 32 * 1024
SMALL_DIRECT_READS = 64
MAX_SMALL_READERS = 4096

CONTROL_INO = 1 << 62
HINTS_INO = CONTROL_INO + 2
CONTROL_FILES = {"status.json": CONTROL_INO + 1, "hints": HINTS_INO}
CONTROL_XATTR_PREFIX = "user.encordfs."
CONTROL_XATTR_REFRESH = CONTROL_XATTR_PREFIX + "refresh"
CONTROL_XATTR_FLUSH = CONTROL_XATTR_PREFIX + "flush"
assert views.VIEW_INO_END == CONTROL_INO  # view folders' inodes lie just below the control folder's
# The read-only xattr field of a group folder whose members could not be listed at its last load.
ERROR_FIELD = "error"

# ``on_invalidate`` kinds (see the module docstring)
INVALIDATE_ENTRY = "entry"
INVALIDATE_INODE = "inode"
INVALIDATE_CONTENT = "content"
INVALIDATE_LISTING = "listing"
Invalidate = Callable[[str, int, "str | int"], None]


@dataclass(frozen=True, slots=True)
class FolderLoad:
    """One load of the root (``key`` ``"root"``) or of a dataset folder (``key``: its uid), as a
    ``FolderLoader`` gets it."""

    ino: int
    key: str
    # The plain load, Encord → catalog; returns the seconds it took. Called at most once per load.
    from_encord: Callable[[], float]
    # The user asked for Encord's state now (``encordfs refresh``), not a TTL refresh.
    force: bool
    # What a load applies to each entry before the catalog syncs it (a queued rename's title).
    adjust: Callable[[Entry], Entry]


class FolderLoader(Protocol):
    """Where the root's and dataset folders' listings come from when a mount shares them with other
    mounts (cluster mode, ``encordfs.cluster``); without one, every load asks Encord."""

    def load(self, job: FolderLoad) -> float | None:
        """Bring the catalog folder up to date: with ``job.from_encord()``, or another way (then the
        loader stamps the folder's load time itself). Returns what a load from Encord of this folder
        costs, seconds (the background-refresh floor, ``REFRESH_COST_FACTOR``), or None if unknown."""
        ...


class Handle(Protocol):
    def read(self, offset: int, length: int) -> bytes | memoryview: ...
    def read_held(self, offset: int, length: int) -> bytes | memoryview | None: ...
    def close(self) -> None: ...


class Reader(Protocol):
    link: LinkEstimate | None  # the byte server's link, as the reader's GETs measure it

    def open(self, content_key: str, size: int, url_source: Callable[[bool], str]) -> Handle: ...
    def open_backing(self, content_key: str, size: int) -> int | None: ...
    def backing_may_wait(self, content_key: str, size: int) -> bool: ...
    def backing_still_complete(self, content_key: str, size: int) -> bool: ...
    def watch_backing_drops(self, callback: Callable[[str], None]) -> None: ...
    def probe_size(self, url_source: Callable[[bool], str]) -> int: ...


class UrlCache(Protocol):
    def put(self, item_id: str, url: str) -> None: ...
    def prime(self, item_ids: list[str], wait: bool = True) -> None: ...
    def is_fresh(self, item_id: str) -> bool: ...
    def is_pending(self, item_id: str) -> bool: ...
    def source(self, item_id: str) -> Callable[[bool], str]: ...


class Attr(NamedTuple):
    """What ``stat`` shows. A NamedTuple: a listing builds one per entry, and a frozen dataclass cost
    three times as much to build (2.1 µs against 0.65 µs here: 1.5 s of a 1M-entry ``ls``)."""

    ino: int
    mode: int
    nlink: int
    size: int
    mtime: float
    ctime: float
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class OpenFile:
    fh: int
    direct_io: bool  # control files: generated content whose size stat cannot know
    # A local file holding the whole file at its own offsets, for a passthrough open (``EncordFS.backing_files``):
    # a read-only fd this handle holds until ``release(fh)`` (it keeps the file even if the cache evicts it
    # meanwhile). None: serve reads through ``read``.
    backing_fd: int | None = None
    # What the backing file holds (the content key): a binding may keep a file it registered for the
    # inode while this is unchanged. Set with no ``backing_fd``: the file the binding holds for this
    # content (``held_key`` of ``EncordFS.open``) is still complete in the cache; keep using it.
    backing_key: str | None = None
    # A big file not complete in the disk cache (``Options.direct_io_min``): a binding that can keep
    # shared mmaps working may answer its open in direct-io mode, so its reads skip the kernel's page
    # cache (one copy less, no new page cache to fill). Its later opens, once the file is complete on
    # disk, are passthrough or cached as usual.
    bypass_page_cache: bool = False


@dataclass(frozen=True, slots=True)
class Options:
    """What the core takes from ``encordfs.settings.Settings`` (defaults, and their reasons, are there)."""

    uid: int
    gid: int
    metadata_ttl_s: float = default("metadata_ttl")  # a loaded listing is served this long, then reloaded
    file_mode: int = default("file_mode")
    dir_mode: int = default("dir_mode")
    max_metadata_bytes: int = default("max_metadata_bytes")  # larger metadata is refused with E2BIG
    # How long fsync on a file waits for its row's queued changes to land before failing with EIO.
    fsync_timeout_s: float = 30.0
    # A caller waiting for a folder's first load fails with EIO once the load made no progress for this
    # long (no entry arrived, none was stored): under the read path's 30 s retry budget, so no FUSE
    # operation waits longer on a stalled service; a load that keeps making progress is waited for.
    load_stall_s: float = 30.0
    # Hand out backing files at open (``OpenFile.backing_fd``) for a binding that can open in passthrough
    # mode. Off by default: an fd per open only pays when the kernel then reads the file without us. A
    # binding may also switch ``EncordFS.backing_files`` on once the kernel agreed.
    backing_files: bool = False
    # A file of at least this size whose content is not complete in the disk cache is opened with
    # ``OpenFile.bypass_page_cache`` (0: never; see ``encordfs.options``).
    direct_io_min: int = default("direct_io_min")
    # Sign fixed windows of a folder rather than "this file and the next 999" (``_sign_siblings``): on in
    # cluster mode, where nodes reading in different orders must ask for the same batches.
    aligned_signing: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> Options:
        uid, gid = s.owner
        return cls(uid=uid, gid=gid, metadata_ttl_s=s.metadata_ttl, file_mode=s.file_mode, dir_mode=s.dir_mode,
                   max_metadata_bytes=s.max_metadata_bytes, direct_io_min=s.direct_io_min,
                   aligned_signing=bool(s.shared))  # fmt: skip


def iso(ts: float | None) -> str | None:
    return None if ts is None else _iso(ts)


@functools.lru_cache(
    maxsize=4096
)  # rows of one dataset share a few timestamps: a listing of 1M rows asks twice per row
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


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
        r.handle,
        0 if composite else (UNKNOWN_SIZE if r.file_size is None else r.file_size),
        r.created_at,
        r.last_edited_at,
        fields,
        dict(r.client_metadata) if r.client_metadata is not None else None,
    )


def _child_entry(c: ChildRecord) -> Entry:
    fields: dict[str, Any] = {
        "image_hash": c.item_uuid,
        **_member_fields(c),
        "item_type": c.item_type,
        "index": c.index,
    }
    if c.dicom_instance_uid or c.dicom_series_uid or c.dicom_study_uid:
        fields.update(
            dicom_instance_uid=c.dicom_instance_uid,
            dicom_series_uid=c.dicom_series_uid,
            dicom_study_uid=c.dicom_study_uid,
        )
    return _member_entry(c, _naming_mime(c), fields)


def _naming_mime(c: ChildRecord) -> str | None:
    """The MIME type a member's name takes its extension from: a DICOM slice is ``.dcm`` whatever
    type it was given (Encord titles slices without an extension)."""
    return "application/dicom" if c.item_type == "dicomFile" else c.file_type


def _video_entry(v: ChildRecord) -> Entry:
    """An image sequence's video, a file in the sequence's folder beside the frames."""
    fields: dict[str, Any] = {
        "backing_item_uuid": v.item_uuid,
        "item_type": v.item_type,
        **_member_fields(v),
        "frames_per_second": v.frames_per_second,
        "duration": v.duration,
    }
    mime = v.file_type if v.file_type and v.file_type.startswith("video/") else "video/mp4"
    return _member_entry(v, mime, fields)


def _member_fields(c: ChildRecord) -> dict[str, Any]:
    """The fields a group member and a sequence's video both show, in this order."""
    return {
        "file_link": c.file_link,
        "file_type": c.file_type,
        "file_size": c.file_size,
        "storage_location": c.storage_location,
        "created_at": iso(c.created_at),
        "last_edited_at": iso(c.last_edited_at),
        "width": c.width,
        "height": c.height,
    }


def _member_entry(c: ChildRecord, mime: str | None, fields: dict[str, Any]) -> Entry:
    size = UNKNOWN_SIZE if c.file_size is None else c.file_size
    return Entry(Kind.CHILD, c.item_uuid, c.title, mime, c.handle, size, c.created_at, c.last_edited_at, fields)


def _group_ref(node: Node) -> GroupRef:
    fields = node.fields
    return GroupRef(
        dataset_uid=str(fields.get("dataset_hash") or ""),
        row_uid=node.uid,
        data_type=str(fields.get("data_type") or ""),
        item_uuid=fields.get("backing_item_uuid"),
    )


class PathCache:
    """Bounded path → (inode, parent inode) cache for the path-based adapter, invalidated by version.

    Policy: FIFO eviction at ``max_entries`` (a listing of a huge folder visits each path once, so
    recency buys nothing over insertion order), and a wholesale clear whenever the catalog's
    ``version`` moves (a child inserted, deleted or renamed anywhere). A resolver reads the version
    *before* walking the catalog and may only store what it found under that version
    (``put``), so a walk that raced with a refresh never plants a stale path.

    Threads: ``get`` is one dict lookup (atomic under the GIL); ``put`` and the clear hold ``_lock``.
    Lock order: ``_lock`` is a leaf (nothing else is taken while it is held).
    """

    def __init__(self, version: Callable[[], int], max_entries: int = 65536) -> None:
        self._version = version
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._seen_version = version()
        self._entries: dict[str, tuple[int, int]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, path: str) -> tuple[int, int] | None:
        if self._version() != self._seen_version:
            self._clear()
            self.misses += 1
            return None
        hit = self._entries.get(path)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    def _clear(self) -> None:
        with self._lock:
            self._entries = {}
            self._seen_version = self._version()

    def put(self, path: str, ino: int, parent: int, version: int) -> None:
        with self._lock:
            if version != self._seen_version or version != self._version():
                return
            if len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[path] = (ino, parent)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses}


class EncordFS:
    def __init__(
        self,
        backend: Backend,
        catalog: Catalog,
        reader: Reader,
        urls: UrlCache,
        options: Options,
        clock: Callable[[], float] = time.time,
        writes: WriteQueue | None = None,
        status_extra: Callable[[], dict[str, Any]] | None = None,
        loader: FolderLoader | None = None,
    ) -> None:
        self.backend = backend
        self.loader = loader
        self.writes = writes
        self.status_extra = status_extra
        self.catalog = catalog
        self.reader = reader
        self.urls = urls
        self.options = options
        # (folder mode, file mode, uid, gid) of every catalog entry: ``_attr``, ``readdir_stats``
        self.entry_modes = (stat.S_IFDIR | options.dir_mode, stat.S_IFREG | options.file_mode, options.uid, options.gid)
        self.clock = clock
        # dataset folder ino -> seconds its last load took (see ``REFRESH_COST_FACTOR``)
        self._load_seconds: dict[int, float] = {}
        # The root's mtime and ctime: when the mount started (the root's listing is the datasets the
        # key sees, which have no time of their own), rather than the epoch.
        self._started = clock()
        self._handles: dict[int, tuple[Node | None, Handle]] = {}
        self._backing_fds: dict[int, int] = {}  # fh -> fd of its backing file, closed at release
        self._direct: dict[int, list[int]] = {}  # direct-io handles (``opened_direct``): fh -> [inode, reads, bytes]
        self._direct_opens = 0
        self._small_readers: OrderedDict[int, None] = OrderedDict()  # inodes whose opens are not marked
        self.backing_files = options.backing_files
        self._refreshing: set[int] = set()
        self._next_fh = itertools.count(1)
        self._handles_lock = threading.Lock()
        self._load_locks: dict[int, threading.Lock] = {}
        self._load_locks_lock = threading.Lock()
        self._loads: dict[int, _Load] = {}  # first loads in progress (under ``_load_locks_lock``)
        # Why each folder's last background refresh failed (served as it was meanwhile), for the status.
        self._refresh_errors: dict[int, str] = {}
        self._refresh_failures = 0
        self.paths = PathCache(lambda: catalog.version)
        self.on_invalidate: Invalidate | None = None
        self.binding_status: Callable[[], dict[str, Any]] | None = None
        # ``DATASET/@KEY/VALUE`` folders (``core.views``): synthetic inodes, answered by ``views``.
        self.views = Views(self, catalog)
        # Set by a binding that can drop kernel entries: called with (folder inode, name) of view
        # entries that a metadata write or rename may have made wrong (``Views.entries``).
        self.invalidate_entry: Callable[[int, str], None] | None = None
        self.prefetcher: Prefetcher | None = None

    # -- attributes -------------------------------------------------------------------------------
    def getattr(self, ino: int) -> Attr:
        if ino == ROOT_INO:
            return self._attr(ROOT_INO, Kind.ROOT, 0, self._started)
        if ino >= CONTROL_INO:
            return self._control_attr(ino)
        if is_view_ino(ino):
            return self.views.getattr(ino)
        found = self.catalog.stat_fields(ino)
        if found is None:
            raise errors.NotFound(f"inode {ino} is gone")
        return self._attr(ino, *found)

    def _attr(self, ino: int, kind: Kind, size: int, mtime: float) -> Attr:
        """A catalog entry's attributes (``readdir_stats`` gives the same without building them)."""
        is_dir = KIND_IS_DIR[kind]
        if not is_dir and size == UNKNOWN_SIZE:
            size = self._learn_size(ino)
        return self._entry_attr(ino, is_dir, size, mtime)

    def _entry_attr(self, ino: int, is_dir: bool, size: int, mtime: float) -> Attr:
        """The attributes of a ``readdir_stats`` entry (its size known; a folder's is ignored)."""
        dir_mode, file_mode, uid, gid = self.entry_modes
        if is_dir:
            return Attr(ino, dir_mode, 2, 0, mtime, mtime, uid, gid)
        return Attr(ino, file_mode, 1, size, mtime, mtime, uid, gid)

    def _learn_size(self, ino: int) -> int:
        """The size of a file whose metadata has none, from the object itself (a one-byte range request,
        after signing like a read), recorded in the catalog while the row is unchanged. If the object
        cannot be asked, 0 for now (it is asked again next time)."""
        node = self.catalog.get(ino)
        if node is None or not node.handle or node.size != UNKNOWN_SIZE:
            return max(0, node.size) if node is not None else 0
        try:
            size = self.reader.probe_size(self._url_source(node))
        except errors.FsError as exc:
            log.warning("%s: its metadata has no size and the object could not be asked: %s", node.name, exc)
            return 0
        self.catalog.set_size(ino, size)
        return size

    def _control_attr(self, ino: int) -> Attr:
        o = self.options
        if ino == CONTROL_INO:
            return Attr(ino, stat.S_IFDIR | 0o555, 2, 0, self.clock(), self.clock(), o.uid, o.gid)
        if ino in CONTROL_FILES.values():
            mode = 0o644 if ino == HINTS_INO else 0o444
            return Attr(ino, stat.S_IFREG | mode, 1, 0, self.clock(), self.clock(), o.uid, o.gid)
        raise errors.NotFound(f"inode {ino}")

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

    def lookup_ino(self, parent: int, name: str) -> int:
        """Like ``lookup`` but also finds the hidden control folder and its files."""
        if parent == ROOT_INO and name == CONTROL_NAME:
            return CONTROL_INO
        if parent == CONTROL_INO:
            if name in CONTROL_FILES:
                return CONTROL_FILES[name]
            raise errors.NotFound(name)
        if parent > CONTROL_INO:
            raise errors.NotADirectory(name)
        if is_view_ino(parent):
            return self.views.lookup(parent, name)
        self._ensure_loaded(parent)
        if views.is_view_name(name) and parent != ROOT_INO and self._is_dataset(parent):
            return self.views.key_folder(parent, name)
        ino = self.catalog.lookup_ino(parent, name)
        if ino is None:
            raise errors.NotFound(name)
        return ino

    def lookup_attr(self, parent: int, name: str) -> Attr:
        """``getattr(lookup_ino(parent, name))`` with one catalog query (an inode-based LOOKUP)."""
        if (
            parent >= CONTROL_INO
            or (parent == ROOT_INO and name == CONTROL_NAME)
            or is_view_ino(parent)
            or views.is_view_name(name)
        ):
            return self.getattr(self.lookup_ino(parent, name))
        self._ensure_loaded(parent)
        found = self.catalog.lookup_stat(parent, name)
        if found is None:
            raise errors.NotFound(name)
        return self._attr(*found)

    def resolve(self, path: str) -> int:
        """Inode of an absolute path (the path-based adapter's entry point).

        Cached (``PathCache``); a hit still gives the parent folder its TTL check, so a stale folder
        is refreshed in the background exactly as a walk would have done it.
        """
        hit = self.paths.get(path)
        if hit is not None:
            ino, parent = hit
            if parent < CONTROL_INO:
                self._ensure_loaded(parent)
            return ino
        version = self.catalog.version
        ino = parent = ROOT_INO
        parts = [part for part in path.split("/") if part]
        walked = ""
        if len(parts) > 1:  # the folder is most often known: a file next to the last one looked up
            folder = "/" + "/".join(parts[:-1])
            hit = self.paths.get(folder)
            if hit is not None:
                ino, walked, parts = hit[0], folder, parts[-1:]
        via_view = False  # membership of a view changes with metadata, which ``version`` does not track
        for part in parts:
            parent, ino = ino, self.lookup_ino(ino, part)
            via_view = via_view or is_view_ino(ino)
            walked = f"{walked}/{part}"
            if ino != ROOT_INO and not via_view:  # the folders on the way too: the next path there walks one step
                self.paths.put(walked, ino, parent, version)
        return ino

    def would_wait(self, folder: int) -> bool:
        """Whether a lookup or listing in ``folder`` may wait for Encord now (it was never loaded; a
        stale folder is served as it is while it refreshes in the background). Bindings serve such
        requests where a slow answer holds up no other."""
        if folder >= CONTROL_INO:
            return False
        return self.catalog.loaded_at(folder) is None

    def listing_cache(self, ino: int) -> str | None:
        """How a kernel may cache ``ino``'s listing, asked at opendir (the kernel binding's
        ``FOPEN_CACHE_DIR`` and ``FOPEN_KEEP_CACHE``): ``"keep"``, a catalog folder loaded and within its
        TTL: list it once and serve the next opens from the page cache; ``"fill"``, a folder never loaded
        (this listing loads it): cache what it lists; None: list it here each time, dropping a kept copy.
        A stale folder is None: its next opendir after the TTL drops the kernel's copy and the listing
        comes here (served stale, refreshed in the background), and a refresh that changes names says so
        (``"listing"``). View folders (membership follows metadata writes) and the control folder are
        never cached."""
        if ino >= CONTROL_INO or is_view_ino(ino):
            return None
        loaded = self.catalog.loaded_at(ino)
        if loaded is None:
            return "fill"
        return None if self._is_stale(ino, loaded) else "keep"

    def watch_backing_drops(self, callback: Callable[[str], None]) -> None:
        """See the module docstring (a core without a reader has no cache files)."""
        if self.reader is not None:
            self.reader.watch_backing_drops(callback)

    def open_may_wait(self, ino: int) -> bool:
        """Whether ``open(ino)`` may wait for the network or the disk: with ``backing_files`` on, a file
        not known complete and checked on disk may have its disk cache record read, or be read whole to
        check it, during its open; a file of unknown size asks the object. Bindings serve other opens
        where they read requests (no thread switch); any doubt is True."""
        if not self.backing_files:
            return False
        if ino >= CONTROL_INO or is_view_ino(ino):
            return False
        node = self.catalog.get(ino)
        if node is None or node.kind.is_dir or not node.handle:
            return False  # answered with an error at once
        if node.size == UNKNOWN_SIZE:
            return True
        return self.reader.backing_may_wait(self._content_key(node), node.size)

    def _is_dataset(self, ino: int) -> bool:
        found = self.catalog.stat_fields(ino)
        return found is not None and found[0] == Kind.DATASET

    def readdir(self, ino: int, after_ino: int = 0) -> Iterator[tuple[str, Attr]]:
        """Children with their attributes, in inode order, from the first inode above ``after_ino``
        (the adapter resumes a listing there). Checks and loading happen before this returns; the
        result is the folder as of the call (a background refresh starts only after its read
        snapshot is taken, so a stale folder is served as it was, then replaced)."""
        if ino == CONTROL_INO:
            return iter([(name, self._control_attr(i)) for name, i in CONTROL_FILES.items() if i > after_ino])
        if is_view_ino(ino):
            return self.views.readdir(ino, after_ino)
        rows = self._child_rows(ino, after_ino)
        return ((name, self._attr(child, kind, size, mtime)) for child, name, kind, size, mtime in rows)

    def readdir_stats(self, ino: int, after_ino: int = 0) -> Iterator[tuple[str, int, bool, int, float]] | None:
        """``readdir`` as (name, inode, is a folder, size, mtime), for a binding that packs attributes
        itself without an ``Attr`` per entry: the attributes ``_attr`` builds are a folder's mode of
        ``entry_modes``, 2 links, size 0; a file's mode, 1 link and the size; both with ``entry_modes``'s
        uid and gid, and the mtime for every time. None for folders whose entries are made
        otherwise (the control folder, a key folder of a view): ask ``readdir``."""
        if ino == CONTROL_INO:
            return None
        if is_view_ino(ino):
            return self.views.member_entries(ino, after_ino)
        return self._entries(self._child_rows(ino, after_ino))

    def _entries(
        self, rows: Iterator[tuple[int, str, Kind, int, float]]
    ) -> Iterator[tuple[str, int, bool, int, float]]:
        """Rows as ``Catalog.child_stats`` gives them, as ``readdir_stats`` gives entries (the same rule as
        ``_attr``; ``Views._picked`` applies it too, in its own loop)."""
        is_dir, learn = KIND_IS_DIR, self._learn_size
        return (
            (name, child, True, 0, mtime)
            if is_dir[kind]
            else (name, child, False, size if size != UNKNOWN_SIZE else learn(child), mtime)
            for child, name, kind, size, mtime in rows
        )

    @property
    def listing_version(self) -> int:
        """Changes whenever the catalog changes what a listing shows (names, sizes, times); changes the
        write queue's overlay makes (a row moving between view folders) are announced through
        ``on_invalidate`` instead. A binding that keeps listing pages checks both."""
        return self.catalog.version

    def readdir_names(self, ino: int, after_ino: int = 0) -> Iterator[tuple[str, int, int]]:
        """``readdir`` without attributes: (name, inode, true for a folder: a bool, or 1 and 0), for a
        plain listing (``ls -f``, ``find``): no attribute is built and no object is asked its size."""
        if ino == CONTROL_INO or is_view_ino(ino):
            return ((name, a.ino, stat.S_ISDIR(a.mode)) for name, a in self.readdir(ino, after_ino))
        return self._listed(self.catalog.child_names, ino, after_ino)  # rows as SQLite gives them

    def _child_rows(self, ino: int, after_ino: int) -> Iterator[tuple[int, str, Kind, int, float]]:
        """A catalog folder's children above ``after_ino`` (checked and loaded first; see ``readdir``)."""
        return self._listed(self.catalog.child_stats, ino, after_ino)

    def _listed(self, rows: Callable[[int, int], _T], ino: int, after_ino: int) -> _T:
        """``rows(ino, after_ino)`` of a catalog folder, checked and loaded first (see ``readdir``)."""
        if ino != ROOT_INO and (ino > CONTROL_INO or not self.node(ino).kind.is_dir):
            raise errors.NotADirectory(str(ino))
        stale = self._ensure_loaded(ino, background=False)
        listed = rows(ino, after_ino)
        if stale:
            self._refresh_in_background(ino)
        return listed

    # -- loading ----------------------------------------------------------------------------------
    def _load_lock(self, ino: int) -> threading.Lock:
        with self._load_locks_lock:
            return self._load_locks.setdefault(ino, threading.Lock())

    def _is_stale(self, ino: int, loaded: float) -> bool:
        """Whether a folder loaded at ``loaded`` is due for a background refresh: older than the
        metadata TTL and than ``REFRESH_COST_FACTOR`` times what its last load took."""
        due = max(self.options.metadata_ttl_s, REFRESH_COST_FACTOR * self._load_seconds.get(ino, 0.0))
        return self.clock() - loaded >= due

    def _ensure_loaded(self, ino: int, background: bool = True) -> bool:
        """Never-loaded folders load now; stale ones are served as they are while a background
        refresh runs (stale-while-revalidate), so an expired TTL never stalls a listing.
        Returns whether the folder is stale; ``background=False`` leaves starting its refresh to the caller."""
        loaded = self.catalog.loaded_at(ino)
        if loaded is not None:
            stale = self._is_stale(ino, loaded)
            if stale and background:
                self._refresh_in_background(ino)
            return stale
        self._wait_for_load(ino, self._first_load(ino))
        return False

    def _first_load(self, ino: int) -> _Load:
        """The load of a never-loaded folder, started on a thread of its own if none runs yet."""
        with self._load_locks_lock:
            load = self._loads.get(ino)
            if load is None:
                load = self._loads[ino] = _Load()
                threading.Thread(
                    target=self._run_first_load, args=(ino, load), name=f"encordfs-load-{ino}", daemon=True
                ).start()
        return load

    def _run_first_load(self, ino: int, load: _Load) -> None:
        try:
            with self._load_lock(ino):
                if self.catalog.loaded_at(ino) is None:  # another thread may have loaded it meanwhile
                    self.refresh(ino, force=False, progress=load.step)
        except BaseException as exc:  # handed to every waiter
            load.error = exc
        finally:
            with self._load_locks_lock:
                self._loads.pop(ino, None)
            load.done.set()

    def _wait_for_load(self, ino: int, load: _Load) -> None:
        """Wait while the load progresses (rows arrive, batches land); a load that makes no progress for
        ``load_stall_s`` (30 s) fails this caller with EIO and goes on in the background."""
        stall_s = self.options.load_stall_s
        while not load.done.wait(min(1.0, stall_s)):
            if time.monotonic() - load.progress_at > stall_s:
                self._refresh_failures += 1
                raise errors.RemoteIOError(
                    f"loading folder {ino} made no progress for {stall_s:g} s ({load.rows} entries so far): "
                    "Encord is slow or unreachable; it goes on in the background"
                )
        if load.error is not None:
            if isinstance(load.error, errors.FsError):
                raise load.error
            raise errors.RemoteIOError(f"loading folder {ino} failed: {type(load.error).__name__}") from None

    def _refresh_in_background(self, ino: int, force: bool = False) -> None:
        with self._load_locks_lock:
            if ino in self._refreshing:
                return
            self._refreshing.add(ino)

        def run() -> None:
            try:
                with self._load_lock(ino):
                    loaded = self.catalog.loaded_at(ino)
                    if force or loaded is None or self._is_stale(ino, loaded):
                        self.refresh(ino, force=False)
                self._refresh_errors.pop(ino, None)
            except Exception as exc:
                if isinstance(exc, errors.FsError):
                    log.warning("background refresh failed, serving the old listing: %s", exc)
                else:
                    log.exception("background refresh failed")
                self._refresh_failures += 1
                self._refresh_errors[ino] = getattr(exc, "message", "") or type(exc).__name__
                while len(self._refresh_errors) > 100:
                    del self._refresh_errors[next(iter(self._refresh_errors))]
            finally:
                with self._load_locks_lock:
                    self._refreshing.discard(ino)

        threading.Thread(target=run, name=f"encordfs-refresh-{ino}", daemon=True).start()

    def wait_refreshes(self, timeout_s: float = 10.0) -> None:
        """Tests: wait until no background refresh is running."""
        deadline = time.monotonic() + timeout_s
        while self._refreshing and time.monotonic() < deadline:
            time.sleep(0.01)

    def _folder_label(self, ino: int) -> str:
        if ino == ROOT_INO:
            return "/"
        node = self.catalog.get(ino)
        return node.name if node is not None else str(ino)

    def refresh_path(self, path: str) -> None:
        """``encordfs refresh PATH``: reload the folder at ``path`` (relative to the mount) now."""
        ino = self.resolve(path)
        if is_view_ino(ino):
            ino = self.views.dataset_of(ino)
        if ino != ROOT_INO and (ino >= CONTROL_INO or not self.node(ino).kind.is_dir):
            raise errors.InvalidValue(f"{path}: refresh a folder, not a file")
        self.refresh(ino)

    def refresh(self, ino: int, *, force: bool = True, progress: Callable[[int], None] | None = None) -> None:
        """Load a folder now, whatever its age: from Encord, or (with a ``FolderLoader``) from what
        another mount loaded, unless ``force`` (the user asked for Encord's current state).
        ``progress(n)`` is called as entries arrive and as they are stored (a waiter's sign of life)."""
        if ino == ROOT_INO:
            self._load(ROOT_INO, "root", functools.partial(self._load_root, progress), force)
            return
        node = self.node(ino)
        if node.kind == Kind.DATASET:
            seconds = self._load(ino, node.uid, functools.partial(self._load_rows, node, progress), force)
            if seconds is not None:
                self._load_seconds[ino] = seconds
        elif node.kind == Kind.GROUP:
            self._load_groups(node.parent, first=node)
        else:
            raise errors.NotADirectory(node.name)

    # -- telling a binding what changed -------------------------------------------------------------
    def _changes(self, folder: int) -> SyncChanges | None:
        """A collector for a sync of ``folder`` when someone listens and the folder was listed before."""
        if self.on_invalidate is None or self.catalog.loaded_at(folder) is None:
            return None
        return SyncChanges()

    def _announce(self, folder: int, changes: SyncChanges | None) -> None:
        if changes is None:
            return
        if changes.names:
            self.invalidate(INVALIDATE_LISTING, folder, folder)
        for name in changes.names:
            self.invalidate(INVALIDATE_ENTRY, folder, name)
        for ino in changes.inodes:
            self.invalidate(INVALIDATE_CONTENT, folder, ino)

    def invalidate(self, kind: str, parent: int, what: str | int) -> None:
        """Tell the binding's listener (if any) that a kernel may hold something stale; never raises."""
        listener = self.on_invalidate
        if listener is None:
            return
        try:
            listener(kind, parent, what)
        except Exception:  # a listener's failure must not fail the change that was made
            log.exception("invalidation listener failed")

    def _load(self, ino: int, key: str, from_encord: Callable[[], float], force: bool) -> float | None:
        if self.loader is None:
            return from_encord()
        return self.loader.load(FolderLoad(ino, key, from_encord, force, self._with_queued_title))

    def _load_root(self, progress: Callable[[int], None] | None = None) -> float:
        now = self.clock()
        changes = self._changes(ROOT_INO)
        entries = (_dataset_entry(d) for d in self.backend.list_datasets())
        self.catalog.sync_children(ROOT_INO, entries, now, changes, progress=progress)
        self._announce(ROOT_INO, changes)
        return max(0.0, self.clock() - now)

    def _load_rows(self, node: Node, progress: Callable[[int], None] | None = None) -> float:
        now = self.clock()
        changes = self._changes(node.ino)
        entries = (self._with_queued_title(_row_entry(r)) for r in self.backend.iter_rows(node.uid))
        self.catalog.sync_children(node.ino, entries, now, changes, progress=progress)
        self._announce(node.ino, changes)
        return max(0.0, self.clock() - now)

    def _with_queued_title(self, entry: Entry) -> Entry:
        """A row renamed by the user keeps its new name while the rename is queued or just landed."""
        if self.writes is None:
            return entry
        _, title = self.writes.view(entry.uid, None, entry.title)
        if title == entry.title:
            return entry
        return Entry(
            entry.kind,
            entry.uid,
            title,
            entry.mime_type,
            entry.handle,
            entry.size,
            entry.ctime,
            entry.mtime,
            entry.fields,
            entry.client_metadata,
        )

    def _load_groups(self, dataset_ino: int, first: Node) -> None:
        """Members of every not-yet-loaded group of a dataset (and ``first``), in one batch. A group
        that cannot be listed becomes an empty folder with the reason (``ERROR_FIELD``), never a
        failed listing; only a whole-batch failure (Encord unreachable) raises."""
        now = self.clock()
        wanted = [first] + [
            g
            for g in self.catalog.groups(dataset_ino)
            if g.ino != first.ino
            and ((loaded := self.catalog.loaded_at(g.ino)) is None or now - loaded >= self.options.metadata_ttl_s)
        ]
        found = self.backend.list_children([_group_ref(g) for g in wanted])
        for group in wanted:
            members = found.get(group.uid)
            if members is None:
                self.catalog.sync_children(group.ino, (), now, error="Encord did not answer for this row")
                continue
            listed = list(members.children) + ([members.video] if members.video is not None else [])
            for kid in listed:
                if kid.signed_url:
                    self.urls.put(kid.handle, kid.signed_url)
            entries = [_child_entry(k) for k in members.children]
            if members.video is not None:
                entries.append(_video_entry(members.video))
            if members.error:
                log.warning("members of %s could not be listed: %s", group.name, members.error)
            changes = self._changes(group.ino)
            self.catalog.sync_children(group.ino, entries, now, changes, error=members.error)
            self._announce(group.ino, changes)

    # -- reading ----------------------------------------------------------------------------------
    def open(self, ino: int, writable: bool, held_key: str | None = None) -> OpenFile:
        """``held_key``: the content of a backing file the binding still holds for this inode (from an
        earlier open's ``backing_key``). If it is this file's and still complete in the cache, no
        backing file is opened: the answer carries the key alone (an open, an fstat and a close saved)."""
        if ino >= CONTROL_INO:
            return self._open_control(ino, writable)
        if is_view_ino(ino):
            raise errors.IsADirectory(f"view folder {ino}")
        node = self.node(ino)
        if node.kind.is_dir:
            raise errors.IsADirectory(node.name)
        if writable:
            raise errors.ReadOnly(f"{node.name}: file contents are read-only")
        if not node.handle:
            raise errors.RemoteIOError(f"{node.name}: nothing to read from")
        if node.size == UNKNOWN_SIZE:  # the metadata has no size: ask the object before the reader needs it
            self._learn_size(ino)
            node = self.node(ino)
            if node.size == UNKNOWN_SIZE:
                raise errors.RemoteIOError(f"{node.name}: its size is unknown and the object could not be asked")
        key, source = self._content_key(node), self._url_source(node)
        handle = self.reader.open(key, node.size, source)
        backing_fd, held = None, False
        if self.backing_files:
            try:
                held = held_key == key and self.reader.backing_still_complete(key, node.size)
                if not held:
                    backing_fd = self.reader.open_backing(key, node.size)
            except BaseException:
                handle.close()
                raise
        backed = backing_fd is not None or held
        # a file complete on disk is news to the prefetcher only where a stream could move
        if self.prefetcher is not None:
            on_disk = backed if self.backing_files else not self.reader.backing_may_wait(key, node.size)
            if not on_disk or self.prefetcher.follows(node.parent):
                self.prefetcher.opened(node.parent, node.ino, key)
        fh = self._add_handle(node, handle, backing_fd)
        cold_big = (
            not backed
            and 0 < self.options.direct_io_min <= node.size
            and node.ino not in self._small_readers
            and self.reader.backing_may_wait(key, node.size)
        )
        return OpenFile(
            fh, direct_io=False, backing_fd=backing_fd, backing_key=key if backed else None, bypass_page_cache=cold_big
        )

    def _add_handle(self, node: Node | None, handle: Handle, backing_fd: int | None = None) -> int:
        with self._handles_lock:
            fh = next(self._next_fh)
            self._handles[fh] = (node, handle)
            if backing_fd is not None:
                self._backing_fds[fh] = backing_fd
        return fh

    def _open_control(self, ino: int, writable: bool) -> OpenFile:
        if ino == CONTROL_INO:
            raise errors.IsADirectory(CONTROL_NAME)
        if ino == HINTS_INO:
            if not writable:
                return OpenFile(self._add_handle(None, _BytesHandle(b"")), direct_io=True)
            if self.prefetcher is None:
                raise errors.ReadOnly("prefetch is off (--no-prefetch): hints are not taken")
            return OpenFile(self._add_handle(None, _HintWriter(self.prefetcher)), direct_io=True)
        if writable:
            raise errors.ReadOnly("control files are read-only")
        content = (json.dumps(self.status(), indent=2, sort_keys=True) + "\n").encode()
        return OpenFile(self._add_handle(None, _BytesHandle(content)), direct_io=True)

    def link_floor_s(self) -> float:
        """The byte server's first-byte latency without queueing: the least this core measured
        (``LinkEstimate.floor_s``; 0 before any GET)."""
        link = self.reader.link
        return link.floor_s if link is not None else 0.0

    def status(self) -> dict[str, Any]:
        """What ``encordfs status`` and ``/.encordfs/status.json`` show."""
        out: dict[str, Any] = {
            "open_handles": self.open_handles(),
            "read_only": self.writes is None,
            "path_cache": self.paths.stats(),
        }
        out["writes"] = self.writes.status() if self.writes is not None else None
        out["prefetch"] = self.prefetcher.status() if self.prefetcher is not None else None
        out["direct_io"] = {"opens": self._direct_opens, "small_readers": len(self._small_readers)}
        if self.status_extra is not None:
            out.update(self.status_extra())
        if self.binding_status is not None:
            out.update(self.binding_status())
        out["folders"] = {
            "refresh_failures": self._refresh_failures,
            "last_errors": {self._folder_label(ino): why for ino, why in list(self._refresh_errors.items())},
        }
        return out

    def read(self, fh: int, offset: int, length: int) -> bytes | memoryview:
        """Bytes of an open file: ``bytes``, or a view of a cached block that must not be written
        through (see ``ReadHandle.read``)."""
        try:
            _, handle = self._handles[fh]
        except KeyError:
            raise errors.Stale(f"file handle {fh} is not open") from None
        if self._direct:
            self._direct_read(fh, length)
        try:
            return handle.read(offset, length)
        except errors.Stale:
            # The object changed size on the server (grew or shrank): reload its folder now, so the next
            # lookup and open see what it is; this read fails with ESTALE.
            node = self._handles.get(fh, (None, None))[0]
            if node is not None:
                self._refresh_in_background(node.parent, force=True)
            raise

    def read_held(self, fh: int, offset: int, length: int) -> bytes | memoryview | None:
        """``read`` when it cannot wait: bytes held in memory now (a small file's, or a fetched part of a
        big file's), else None (then call ``read``, which may fetch). Never raises for a handle that is
        gone: ``read`` says so."""
        entry = self._handles.get(fh)
        data = entry[1].read_held(offset, length) if entry is not None else None
        if data is not None and self._direct:  # (else ``read`` counts it)
            self._direct_read(fh, length)
        return data

    def opened_direct(self, fh: int) -> None:
        """The binding answered this open (``OpenFile.bypass_page_cache``) in direct-io mode: its reads
        are counted in windows of ``SMALL_DIRECT_READS``."""
        entry = self._handles.get(fh)
        if entry is not None and entry[0] is not None:
            self._direct[fh] = [entry[0].ino, 0, 0]
            self._direct_opens += 1

    def _direct_read(self, fh: int, length: int) -> None:
        """Count a read of a direct-io handle: a window of ``SMALL_DIRECT_READS`` reads averaging under
        ``SMALL_DIRECT_READ_BYTES`` puts its file among the small readers (then the next window starts)."""
        counted = self._direct.get(fh)
        if counted is None:
            return
        counted[1] += 1
        counted[2] += length
        if counted[1] < SMALL_DIRECT_READS:
            return
        if counted[2] < SMALL_DIRECT_READS * SMALL_DIRECT_READ_BYTES:
            self._small_readers[counted[0]] = None
            while len(self._small_readers) > MAX_SMALL_READERS:
                self._small_readers.popitem(last=False)
        counted[1] = counted[2] = 0

    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        """Bytes written to an open file: only the ``hints`` control file takes any (see the module
        docstring); everything else is ``EROFS``."""
        try:
            _, handle = self._handles[fh]
        except KeyError:
            raise errors.Stale(f"file handle {fh} is not open") from None
        if not isinstance(handle, _HintWriter):
            raise errors.ReadOnly("file contents are read-only")
        return handle.write(data)

    def truncate(self, ino: int, size: int) -> None:
        """``truncate``: a no-op on the ``hints`` control file (``echo ... > hints``), else ``EROFS``."""
        if ino != HINTS_INO:
            raise errors.ReadOnly("file contents are read-only")

    # -- prefetch source (``core.prefetch.Source``) -------------------------------------------------
    def next_files(self, folder: int, after_ino: int, limit: int) -> list[Item]:
        """Readable files of ``folder`` listed after ``after_ino`` (lookahead)."""
        return [self._item(node) for node in self.catalog.next_files(folder, after_ino, limit)]

    def previous_file(self, folder: int, ino: int) -> int | None:
        return self.catalog.previous_file(folder, ino)

    def file_at(self, path: str) -> Item:
        """The file at ``path`` (relative to the mount root), for an order hint."""
        ino = self.resolve(path)
        if ino == ROOT_INO or ino >= CONTROL_INO:
            raise errors.IsADirectory(path) if ino in (ROOT_INO, CONTROL_INO) else errors.NotFound(path)
        node = self.node(ino)
        if node.kind.is_dir:
            raise errors.IsADirectory(path)
        if not node.handle:
            raise errors.NotFound(f"{path}: nothing to read from")
        return self._item(node)

    def url_ready(self, item: Item) -> bool:
        """Whether ``item``'s URL is signed and fresh: its prefetch can start without waiting for a call."""
        return not item.handle or self.urls.is_fresh(item.handle)

    def sign_ahead(self, items: list[Item]) -> None:
        """Start signing the URLs of ``items`` (in bulk calls of up to 1,000) and return at once: the
        prefetcher asks for the files it will fetch next, in its own order, before it gets there. Not
        with ``Options.aligned_signing`` (cluster mode): nodes must ask for the same fixed windows, so
        there a file's URL is signed with its window when it is fetched (on a prefetch worker thread)."""
        if self.options.aligned_signing:
            return
        handles = [item.handle for item in items if item.handle and not costs_a_call(item.handle)]
        if handles:
            self.urls.prime(handles, wait=False)

    def _item(self, node: Node) -> Item:
        return Item(node.ino, self._content_key(node), node.size, self._url_source(node), node.handle or "")

    def release(self, fh: int) -> None:
        with self._handles_lock:
            entry = self._handles.pop(fh, None)
            backing_fd = self._backing_fds.pop(fh, None)
            self._direct.pop(fh, None)
        if entry is not None:
            entry[1].close()
        if backing_fd is not None:
            os.close(backing_fd)

    def open_handles(self) -> int:
        return len(self._handles)

    @staticmethod
    def _content_key(node: Node) -> str:
        # Content identity: item id, size and last edit. A re-uploaded item changes one of these,
        # so blocks of the old content are never served for the new one.
        return f"{node.handle}:{node.size}:{node.mtime:.6f}"

    def _url_source(self, node: Node) -> UrlSource:
        """The reader's ``url_source`` for a file: bulk-signs its folder before the first use (a
        legacy row is signed alone: see the module docstring)."""
        item = node.handle
        assert item is not None
        # Everything is worked out at the first call: most opens and prefetches of cached files never ask
        # for a URL (the planner makes items a page at a time), and a source costs a thread-local of its own.
        made: list[Callable[[bool], str]] = []

        def url(force_resign: bool = False) -> str:
            # An item already in another reader's signing batch joins that call (in ``source``)
            # instead of starting a small batch of its own: concurrent readers of one folder then
            # still cost one signing call per 1,000 files.
            fresh = force_resign or self.urls.is_fresh(item) or self.urls.is_pending(item)
            if not fresh and not costs_a_call(item):
                self._sign_siblings(node)
            if not made:
                made.append(self.urls.source(item))
            return made[0](force_resign)  # the first one made, if two threads made one each

        return url

    def _sign_siblings(self, node: Node) -> None:
        """Sign ``node`` and up to 999 unsigned files after it in its folder, in one call (legacy rows
        left out: each would cost a call of its own); when fewer follow it, the batch is filled from the
        folder's start. A shuffled reader otherwise paid a whole call for one file (or a handful) each
        time it opened one listed before every file signed so far: 9-11 calls for an epoch over 2,000
        files instead of 2, each one API round trip that the reader (or the prefetch planner, resolving
        the URLs of a hint list) waits for. With ``Options.aligned_signing``, the unsigned
        files of ``node``'s window instead: inode offsets ``[k·1000, (k+1)·1000)`` from the folder's first
        inode, the same windows on every node that took the folder from the same published listing,
        so nodes reading in different orders still ask for the same batches (``encordfs.cluster``)."""
        item = node.handle
        assert item is not None
        siblings: Iterable[tuple[int, str]]
        if self.options.aligned_signing:
            first = self.catalog.first_ino(node.parent) or node.ino
            start = first + (node.ino - first) // BULK_LIMIT * BULK_LIMIT
            window = self.catalog.file_items(node.parent, after_ino=start, limit=BULK_LIMIT)
            siblings = [(ino, u) for ino, u in window if ino < start + BULK_LIMIT]
        else:
            after = self.catalog.file_items(node.parent, after_ino=node.ino, limit=BULK_LIMIT * 4)
            ends = len(after) < BULK_LIMIT * 4  # the folder ends within the scan: wrap around
            siblings = itertools.chain(after, self._files_before(node) if ends else ())
        unsigned = (
            u
            for _, u in siblings
            if u != item and not costs_a_call(u) and not self.urls.is_fresh(u) and not self.urls.is_pending(u)
        )
        self.urls.prime([item, *itertools.islice(unsigned, BULK_LIMIT - 1)])

    def _files_before(self, node: Node) -> Iterator[tuple[int, str]]:
        """(ino, handle) of the signable files listed before ``node`` in its folder; a generator, so the
        catalog is read only when the files after ``node`` did not fill the batch."""
        for ino, handle in self.catalog.file_items(node.parent, after_ino=0, limit=BULK_LIMIT * 4):
            if ino >= node.ino:
                return
            yield ino, handle

    # -- xattrs -----------------------------------------------------------------------------------
    def _view(self, node: Node) -> tuple[dict[str, Any] | None, str]:
        """The row's metadata and title as the user sees them: queued changes applied (read-your-writes)."""
        metadata = node.client_metadata
        if self.writes is None or not node.kind.is_row:
            return metadata, node.title
        viewed, title = self.writes.view(node.uid, metadata, node.title)
        return (dict(viewed) if viewed is not None else None), title

    def _viewed_metadata(self, uid: str, metadata: dict[str, Any] | None, title: str) -> Any:
        """A row's metadata as the user sees it, from its uid (``core.views`` filters with this)."""
        if self.writes is None:
            return metadata
        return self.writes.view(uid, metadata, title)[0]

    def _overlaid_rows(self, limit: int) -> set[str] | None:
        """The uids whose metadata ``_viewed_metadata`` may change (None: more than ``limit``)."""
        return set() if self.writes is None else self.writes.overlaid(limit)

    def _xattr_source(self, ino: int) -> tuple[dict[str, Any], str, dict[str, Any] | None, bool] | None:
        """(fields, title, metadata as the user sees it, has metadata) of a node; None for the root
        and the control folder, which have no xattrs, and view folders."""
        if ino == ROOT_INO or ino >= CONTROL_INO or is_view_ino(ino):
            return None
        node = self.node(ino)
        metadata, title = self._view(node)
        fields = node.fields
        if node.kind == Kind.GROUP and (error := self.catalog.load_error(ino)) is not None:
            fields[ERROR_FIELD] = error
        return fields, title, metadata, node.kind.is_row

    def getxattr(self, ino: int, name: str) -> bytes:
        if xattrs.is_foreign(name):
            raise errors.NotSupported(name)
        if not xattrs.is_text(name):
            raise errors.NoData("attribute name is not UTF-8")
        source = self._xattr_source(ino)
        found = None
        if source is not None:
            fields, title, metadata, has_metadata = source
            found = xattrs.value(name, fields, title, metadata, has_metadata=has_metadata)
        if found is None:
            raise errors.NoData(name)
        return found

    def all_xattrs(self, ino: int) -> dict[str, bytes]:
        """Every xattr of a node with its value, as ``listxattr`` and ``getxattr`` give them, from one
        read of the node (``encordfs cp --metadata xattr`` copies them all)."""
        source = self._xattr_source(ino)
        if source is None:
            return {}
        fields, title, metadata, has_metadata = source
        out = {}
        for name in xattrs.names(fields, title, metadata, has_metadata=has_metadata):
            value = xattrs.value(name, fields, title, metadata, has_metadata=has_metadata)
            if value is not None:
                out[name] = value
        return out

    def listxattr(self, ino: int) -> list[str]:
        source = self._xattr_source(ino)
        if source is None:
            return []
        fields, title, metadata, has_metadata = source
        return xattrs.names(fields, title, metadata, has_metadata=has_metadata)

    def _writable_row(self, ino: int, what: str) -> Node:
        if ino == ROOT_INO or ino >= CONTROL_INO or is_view_ino(ino):
            raise errors.NotPermitted(f"{what}: not a data row")
        node = self.node(ino)
        if not node.kind.is_row:
            raise errors.NotPermitted(f"{what}: only data rows (files and group folders) can be changed")
        if self.writes is None:
            raise errors.ReadOnly(f"{what}: the mount is read-only")
        return node

    @staticmethod
    def _ref(node: Node, title: str) -> RowRef:
        fields = node.fields
        return RowRef(
            uid=node.uid,
            dataset_uid=str(fields.get("dataset_hash") or ""),
            item_uuid=fields.get("backing_item_uuid"),
            title=title,
        )

    def setxattr(self, ino: int, name: str, value: bytes, flags: int) -> None:
        if xattrs.is_foreign(name) or not xattrs.is_text(name):
            raise errors.NotSupported("only user.encord.* names in UTF-8 can be set")
        if name in (CONTROL_XATTR_REFRESH, CONTROL_XATTR_FLUSH):
            return self._control(ino, name, value)
        if name != xattrs.CLIENT_METADATA and not name.startswith(xattrs.META_PREFIX):
            if name.startswith(xattrs.PREFIX):
                raise errors.NotPermitted(f"{name} is read-only")
            raise errors.NotSupported(f"{name}: only user.encord.client_metadata and user.encord.meta.<key> can be set")
        node = self._writable_row(ino, name)
        metadata, title = self._view(node)
        current = dict(metadata or {})
        parsed = _parse_json(value, name)
        assert self.writes is not None
        if name == xattrs.CLIENT_METADATA:
            if not isinstance(parsed, dict):
                raise errors.InvalidValue(f"{name} must be a JSON object")
            if flags & XATTR_CREATE:
                raise errors.Exists(name)
            self._check_size(parsed, name)
            self.writes.set_metadata(self._ref(node, title), parsed, base_version=node.mtime)
            self._row_changed(node)
            return None
        key = name[len(xattrs.META_PREFIX) :]
        if not key:
            raise errors.InvalidValue("empty metadata key")
        if flags & XATTR_CREATE and key in current:
            raise errors.Exists(name)
        if flags & XATTR_REPLACE and key not in current:
            raise errors.NoData(name)
        current[key] = parsed
        self._check_size(current, name)
        self.writes.set_key(self._ref(node, title), key, parsed, base_version=node.mtime)
        self._row_changed(node)
        return None

    def removexattr(self, ino: int, name: str) -> None:
        if xattrs.is_foreign(name):
            raise errors.NotSupported(name)
        if not xattrs.is_text(name):
            raise errors.NoData("attribute name is not UTF-8")
        if not name.startswith(xattrs.META_PREFIX):
            if name.startswith((xattrs.PREFIX, CONTROL_XATTR_PREFIX)):
                raise errors.NotPermitted(f"{name} cannot be removed")
            raise errors.NoData(name)
        node = self._writable_row(ino, name)
        metadata, title = self._view(node)
        key = name[len(xattrs.META_PREFIX) :]
        if key not in (metadata or {}):
            raise errors.NoData(name)
        assert self.writes is not None
        self.writes.del_key(self._ref(node, title), key, base_version=node.mtime)
        self._row_changed(node)

    def _row_changed(self, node: Node, *other_names: str) -> None:
        """Tell the binding which kernel entries under views a change of this row may have made wrong:
        through ``invalidate_entry`` if set, else the binding's invalidation listener (``on_invalidate``)."""
        if (self.invalidate_entry is None and self.on_invalidate is None) or node.kind not in (Kind.ROW, Kind.GROUP):
            return
        for name in (node.name, *other_names):
            for folder, entry in self.views.entries(node.parent, name):
                if self.invalidate_entry is not None:
                    self.invalidate_entry(folder, entry)
                else:
                    self.invalidate(INVALIDATE_ENTRY, folder, entry)

    def _check_size(self, metadata: dict[str, Any], name: str) -> None:
        size = len(xattrs.compact_json(metadata).encode())
        if size > self.options.max_metadata_bytes:
            raise errors.TooBig(
                f"{name}: client metadata would be {size} bytes, over the {self.options.max_metadata_bytes}-byte limit"
            )

    def _control(self, ino: int, name: str, value: bytes) -> None:
        if name == CONTROL_XATTR_REFRESH:
            if is_view_ino(ino):
                ino = self.views.dataset_of(ino)
            if ino != ROOT_INO and (ino >= CONTROL_INO or not self.node(ino).kind.is_dir):
                raise errors.InvalidValue("refresh a folder, not a file")
            self.refresh(ino)
        elif self.writes is not None:  # flush: kick the queue; the CLI polls status.json
            writes = self.writes
            threading.Thread(target=writes.flush, args=(_parse_timeout(value),), daemon=True).start()

    def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        """``mv`` of a row inside its folder: a queued title change. The new name shows at once.
        With a view folder on either side, ``Views.rename`` decides (a move between value folders
        sets the key)."""
        if is_view_ino(old_parent) or is_view_ino(new_parent):
            return self.views.rename(old_parent, old_name, new_parent, new_name)
        node = self.lookup(old_parent, old_name)
        if new_parent != old_parent:
            raise errors.CrossDevice(
                "moving rows between folders is not supported; rename within a folder changes the title"
            )
        self._writable_row(node.ino, "rename")
        self._check_new_name(node, new_name)
        assert self.writes is not None
        self.writes.set_title(self._ref(node, new_name), new_name, base_version=node.mtime)
        self.catalog.rename(node.ino, new_name, new_name)
        self.invalidate(INVALIDATE_ENTRY, old_parent, old_name)
        self.invalidate(INVALIDATE_ENTRY, old_parent, new_name)
        self._row_changed(node, new_name)
        return None

    def _check_new_name(self, node: Node, new_name: str) -> None:
        """EPERM or EEXIST if ``node`` may not be renamed to ``new_name`` in its folder."""
        # The new name must be what every mount would show for that title (a fixed point of the naming
        # rules, with the row's own MIME type: "notes" for a text row would show as "notes.txt").
        # EPERM, not EINVAL: GNU mv reports EINVAL as "cannot move ... to a subdirectory of itself".
        mime = node.fields.get("file_type") if not node.kind.is_dir else None
        if names.base_name(new_name, mime, is_dir=node.kind.is_dir) != new_name:
            raise errors.NotPermitted(
                f"{new_name!r} is not a name encordfs would show for that title "
                f"(it would show as {names.base_name(new_name, mime, is_dir=node.kind.is_dir)!r})"
            )
        existing = self.catalog.lookup_key(node.parent, new_name)
        if existing is not None and existing.ino != node.ino:
            raise errors.Exists(f"{new_name} already exists (or differs only in case)")

    def fsync(self, fh: int) -> None:
        """Waits until the row's queued changes have landed (or fails with EIO after the timeout)."""
        node = self._handles.get(fh, (None, None))[0]
        if node is None or self.writes is None:
            return
        if not self.writes.wait_row(node.uid, self.options.fsync_timeout_s):
            reason = self.writes.parked_reason(node.uid)
            raise errors.RemoteIOError(f"{node.name}: changes not pushed" + (f" ({reason})" if reason else " yet"))

    def statfs(self) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": 0,
            "f_ffree": 0,
            "f_namemax": names.MAX_NAME_BYTES,
        }

    def close(self) -> None:
        with self._handles_lock:
            handles = list(self._handles.values())
            self._handles.clear()
            backing_fds, self._backing_fds = list(self._backing_fds.values()), {}
        for _, handle in handles:
            handle.close()
        for fd in backing_fds:
            os.close(fd)


@dataclass(slots=True)
class _Load:
    """A folder's first load: waiters watch ``progress_at`` (monotonic) and wait for ``done``."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    rows: int = 0
    progress_at: float = field(default_factory=time.monotonic)

    def step(self, n: int = 1) -> None:
        self.rows += n
        self.progress_at = time.monotonic()


class _HintWriter:
    """A write handle of the ``hints`` control file: one hint list, fed line by line as it is written."""

    def __init__(self, prefetcher: Prefetcher) -> None:
        self._prefetcher = prefetcher
        self._number = prefetcher.hints_open()

    def read(self, offset: int, length: int) -> bytes:
        return b""

    def read_held(self, offset: int, length: int) -> None:
        return None

    def write(self, data: bytes | memoryview) -> int:
        self._prefetcher.hints_write(self._number, data)
        return len(data)

    def close(self) -> None:
        self._prefetcher.hints_close(self._number)


class _BytesHandle:
    """A read handle over bytes generated at open (control files)."""

    def __init__(self, content: bytes) -> None:
        self._content = content

    def read(self, offset: int, length: int) -> bytes:
        return self._content[offset : offset + length]

    def read_held(self, offset: int, length: int) -> bytes:
        return self.read(offset, length)

    def close(self) -> None:
        pass


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _parse_json(value: bytes, name: str) -> Any:
    """Strict JSON: ``NaN``/``Infinity`` and numbers that overflow to infinity are refused (Encord's
    JSON would reject them later, parking the row), as is nesting past the parser's depth."""
    try:
        parsed = json.loads(value.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise errors.InvalidValue(f"{name}: value is not valid JSON (strings need quotes: '\"train\"')") from None
    try:  # "\ud800" is valid JSON, but a lone surrogate is no text Encord (or UTF-8) can hold
        xattrs.compact_json(parsed).encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidValue(f"{name}: value holds a lone UTF-16 surrogate, which is not text") from None
    return parsed


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return number


def _parse_timeout(value: bytes) -> float:
    try:
        return max(0.0, min(float(value.decode() or 60), 3600.0))
    except ValueError:
        return 60.0
