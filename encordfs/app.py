"""Assembling a mount: settings in, a ready ``EncordFS`` (and what must be closed) out.

The CLI, the Python API and tests build mounts through ``build``; nothing else wires the backend,
catalog, signed-URL cache, block caches and reader together, so each piece stays replaceable.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from encordfs import errors
from encordfs.backend import Backend
from encordfs.core.blockcache import DiskFileCache, MemoryBlockCache, TieredBlockCache
from encordfs.core.catalog import Catalog
from encordfs.core.counters import Counters
from encordfs.core.fetch import HttpFetcher
from encordfs.core.fs import EncordFS, Options
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from encordfs.core.writes import WriteQueue

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass
class Settings:
    domain: str = "https://api.encord.com"
    cache_dir: Path | None = None
    # Disk block cache cap. 10 GiB holds an epoch of a mid-sized image dataset; --cache-size changes it.
    cache_size_bytes: int = 10 * GiB
    # Keep this much free on the cache's filesystem whatever the cap says, so a full disk never
    # follows from a mount (mountpoint-s3 does the same with its free-space floor).
    cache_min_free_bytes: int = 1 * GiB
    # In-memory block cache: recent blocks of open and recently read files.
    memory_cache_bytes: int = 256 * MiB
    metadata_ttl_s: float = 60.0
    read_only: bool = False
    max_metadata_bytes: int = 65536
    # Unmount waits this long for queued metadata changes to land; what is left stays in the journal.
    unmount_flush_timeout_s: float = 10.0
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    # Permission bits of files and folders as stat shows them; Encord is the authority on access,
    # these only matter to other local users of an --allow-other mount (default_permissions).
    file_mode: int = 0o444
    dir_mode: int = 0o555
    # Hand out the disk cache's complete files at open (``OpenFile.backing``) for a binding that can
    # open files in FUSE passthrough mode; that binding turns it on (mfusepy cannot, so: off).
    backing_files: bool = False


def default_cache_dir(domain: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = hashlib.sha256(domain.encode()).hexdigest()[:12]
    return base / "encordfs" / tag


def prepare_cache_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise errors.FsError(f"cannot use cache dir {path}: {exc.strerror}") from None
    return path


@dataclass
class Mount:
    fs: EncordFS
    counters: Counters
    cache_dir: Path
    _closers: list = field(default_factory=list)  # type: ignore[type-arg]

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # closing must finish even if one part fails
                log.exception("error while closing")
        self._closers.clear()


def build(backend: Backend, settings: Settings) -> Mount:
    cache_dir = prepare_cache_dir(settings.cache_dir or default_cache_dir(settings.domain))
    counters = Counters()
    closers: list = []  # type: ignore[type-arg]
    try:
        retire_block_cache(cache_dir)
        disk = DiskFileCache(
            cache_dir / "files", settings.cache_size_bytes, settings.cache_min_free_bytes, counters=counters
        )
        closers.append(disk.close)
        cache = TieredBlockCache(MemoryBlockCache(settings.memory_cache_bytes, counters=counters), disk)
        catalog = Catalog(cache_dir / "catalog.sqlite")
        closers.append(catalog.close)
        urls = SignedUrlCache(backend.sign, counters=counters)
        fetcher = HttpFetcher(counters=counters)
        closers.append(fetcher.close)
        reader = ReadPipeline(fetcher, cache, counters)
        closers.append(reader.close)
        writes = None
        if not settings.read_only:
            writes = WriteQueue.open(
                cache_dir / "journal.sqlite", backend.push, on_landed=lambda outcomes: _landed(catalog, outcomes)
            )
            closers.append(lambda: _close_writes(writes, settings.unmount_flush_timeout_s))
        options = Options(
            uid=settings.uid,
            gid=settings.gid,
            file_mode=settings.file_mode,
            dir_mode=settings.dir_mode,
            metadata_ttl_s=settings.metadata_ttl_s,
            max_metadata_bytes=settings.max_metadata_bytes,
            backing_files=settings.backing_files,
        )
        fs = EncordFS(
            backend,
            catalog,
            reader,
            urls,
            options,
            writes=writes,
            status_extra=lambda: {
                "counters": counters.snapshot(),
                "cache_dir": str(cache_dir),
                "disk_cache": disk.stats(),
            },
        )
        closers.append(fs.close)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    closers.insert(0, backend.close)
    return Mount(fs, counters, cache_dir, closers)


def retire_block_cache(cache_dir: Path) -> None:
    """Delete ``CACHE/blocks``, the disk cache of versions before the file cache (a file per block, behind
    a header: no kernel can read through it), in the background. Its blocks are never served; the file
    cache starts empty. Left alone while a mount of such a version still holds its LOCK."""
    old = cache_dir / "blocks"
    if not old.is_dir():
        return
    try:
        fd = os.open(old / "LOCK", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    except OSError:
        return
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until deleted: an old mount now gets Busy
    except OSError:
        os.close(fd)
        log.info("%s is in use by a mount of an earlier encordfs version; left alone", old)
        return

    def remove() -> None:
        try:
            shutil.rmtree(old, ignore_errors=True)
        finally:
            if fd >= 0:
                os.close(fd)

    log.info("deleting the block cache of an earlier encordfs version (%s) in the background", old)
    threading.Thread(target=remove, name="encordfs-retire-blocks", daemon=True).start()


def _landed(catalog: Catalog, outcomes: list) -> None:  # type: ignore[type-arg]
    catalog.set_rows_state(
        [(o.row_uid, dict(o.metadata) if o.metadata is not None else None, o.title) for o in outcomes if o.ok]
    )


def _close_writes(writes: WriteQueue, timeout_s: float) -> None:
    left = writes.close(flush_timeout_s=timeout_s)
    pending, parked = left.get("pending_rows", 0), len(left.get("parked", []))
    if pending or parked:
        log.warning(
            "unmount: %d row(s) with queued changes and %d parked row(s) left in the journal; "
            "they are pushed at the next mount with the same --cache-dir",
            pending,
            parked,
        )
    else:
        log.info("unmount: every queued change has landed")
