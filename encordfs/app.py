"""Assembling a mount: settings in, a ready ``EncordFS`` (and what must be closed) out.

The CLI, the fsspec filesystem and tests build mounts through ``build``; nothing else wires the
backend, catalog, signed-URL cache, block caches and reader together, so each piece stays
replaceable. ``Mount.control_handlers`` are what the control socket (``encordfs.control.Server``)
answers: status, flush, refresh, stop.

Cluster mode (``settings.shared``; ``encordfs.cluster``) wraps four seams and nothing else: the
backend (shared signing), the block cache (a shared tier behind the local ones, ``--shared-blocks``),
the core's ``FolderLoader`` (shared listings) and the write queue's ``on_landed`` (landed writes
published; other nodes' applied by a subscriber). It needs the account's key fingerprint
(``account_id``) for its key namespace.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encordfs import errors
from encordfs.backend import Backend
from encordfs.core.blockcache import BlockCache, DiskFileCache, MemoryBlockCache, TieredBlockCache
from encordfs.core.catalog import Catalog
from encordfs.core.counters import Counters
from encordfs.core.fetch import HttpFetcher
from encordfs.core.fs import INVALIDATE_INODE, EncordFS, Options
from encordfs.core.link import LinkEstimate
from encordfs.core.prefetch import Item, PrefetchConfig, Prefetcher
from encordfs.core.reader import ReadPipeline
from encordfs.core.urls import SignedUrlCache
from encordfs.core.writes import QueueConfig, WriteQueue
from encordfs.settings import Settings

if TYPE_CHECKING:
    from encordfs.cluster import Cluster

log = logging.getLogger(__name__)


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
    _closers: list[Callable[[], None]] = field(default_factory=list)
    # How long closing waits for queued metadata changes (``stop`` lowers it: the caller flushed already).
    flush_timeout_s: float = 10.0

    def control_handlers(self) -> dict[str, Callable[..., dict[str, Any]]]:
        """The control socket's requests (see ``encordfs.control.Server``)."""
        fs = self.fs

        def status() -> dict[str, Any]:
            return {"status": fs.status()}

        def flush(timeout_s: float = 60.0) -> dict[str, Any]:
            if fs.writes is None:
                return {"ok": True, "writes": {}}
            ok = fs.writes.flush(max(0.0, min(float(timeout_s), 3600.0)))
            return {"ok": ok, "writes": fs.writes.status()}

        def refresh(path: str = "/") -> dict[str, Any]:
            fs.refresh_path(path)
            return {"ok": True}

        def stop(timeout_s: float = 10.0) -> dict[str, Any]:
            reply = flush(timeout_s)
            self.flush_timeout_s = 0.0  # the unmount that follows must not wait again
            return reply

        def hints(lines: list[str], list_id: int | None = None, final: bool = True) -> dict[str, Any]:
            """Order hints through the socket (a read-only mount refuses writes to ``.encordfs/hints``):
            ``lines`` appended to hint list ``list_id`` (a new one when None), ended when ``final``."""
            prefetcher = fs.prefetcher
            if prefetcher is None:
                raise errors.ReadOnly("prefetch is off (--no-prefetch): hints are not taken")
            if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
                raise errors.InvalidValue("hints: lines must be a list of paths")
            number = prefetcher.hints_open() if list_id is None else int(list_id)
            if lines:
                prefetcher.hints_write(
                    number, "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
                )
            if final:
                prefetcher.hints_close(number)
            return {"ok": True, "list_id": number}

        return {"status": status, "flush": flush, "refresh": refresh, "stop": stop, "hints": hints}

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # closing must finish even if one part fails
                log.exception("error while closing")
        self._closers.clear()


def build(
    backend: Backend, settings: Settings, mountpoint: Path | None = None, *, account_id: str | None = None
) -> Mount:
    """Everything a mount serves from. ``mountpoint`` (when known) lets order hints name absolute paths;
    ``account_id``: the Encord account's key fingerprint (``SdkBackend.account_id``), needed by ``--shared``
    to keep each account's data apart in Redis."""
    cache_dir = prepare_cache_dir(settings.cache_path)
    counters = Counters()
    closers: list[Callable[[], None]] = []
    mount = Mount(None, counters, cache_dir, closers, flush_timeout_s=settings.unmount_flush_timeout_s)  # type: ignore[arg-type]
    cluster = None
    try:
        if settings.shared:
            cluster = _cluster(settings, account_id, counters, cache_dir)
            closers.append(cluster.close)
            backend = cluster.backend(backend)
        retire_block_cache(cache_dir)
        disk = DiskFileCache(cache_dir / "files", settings.cache_size, settings.cache_min_free_bytes, counters=counters)
        closers.append(disk.close)
        cache: BlockCache = TieredBlockCache(MemoryBlockCache(settings.memory_cache_bytes, counters=counters), disk)
        if cluster is not None:
            cache = cluster.block_tier(cache)
        catalog = Catalog(cache_dir / "catalog.sqlite")
        closers.append(catalog.close)
        urls = SignedUrlCache(backend.sign, counters=counters)
        link = LinkEstimate()
        fetcher = HttpFetcher(settings.http_client, ca_file=settings.ca_file, counters=counters, link=link)
        closers.append(fetcher.close)
        reader = ReadPipeline(fetcher, cache, counters, background_fetcher=fetcher.background(), link=link)
        closers.append(reader.close)
        writes = None
        built: list[EncordFS] = []  # the fs, once it exists: landed writes are announced to its binding
        if not settings.read_only:
            queue_config = QueueConfig()
            if settings.write_reassert_after_s is not None:
                queue_config = dataclasses.replace(queue_config, reassert_after_s=settings.write_reassert_after_s)
            writes = WriteQueue.open(
                cache_dir / "journal.sqlite",
                backend.push,
                config=queue_config,
                on_landed=lambda outcomes: _landed(catalog, outcomes, built[0] if built else None, cluster),
            )
            closers.append(lambda: _close_writes(writes, mount.flush_timeout_s))
        options = Options.from_settings(settings)
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
                "sign_refusals": urls.failures(),
                "disk_cache": disk.stats(),
                **({"shared": cluster.status()} if cluster is not None else {}),
                "link": link.snapshot(),
                "gc": gc_status(),
            },
            loader=cluster.folder_loader(catalog) if cluster is not None else None,
        )
        built.append(fs)
        closers.append(fs.close)
        if cluster is not None:
            queue = writes
            cluster.start_feed(catalog, (lambda uid, title: queue.view(uid, None, title)[1]) if queue else None)
            closers.append(cluster.stop_feed)  # closers run last first: the feed stops before the catalog closes
        if settings.prefetch:
            fs.prefetcher = _prefetcher(fs, reader, counters, settings, mountpoint)
            closers.append(fs.prefetcher.close)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    closers.insert(0, backend.close)
    mount.fs = fs
    return mount


def settle_heap() -> None:
    """Before serving: move what is alive now (modules, the SDK and pydantic's schemas, the root
    listing: 93k objects in a mount of a small workspace) out of the cyclic collector's reach
    (``gc.freeze``).

    A mount is a long-lived server whose requests allocate and free (reference counting frees nearly
    all of it) while each file read adds a few long-lived objects (its disk cache item, its signed
    URL, its catalog node); these push the collector into full collections, each of which walked
    every object the mount had made at startup. An epoch of 10,000 cold 100 KiB files (P2) spent
    565-780 ms in collections with the GIL held (three epochs, timed with ``gc.callbacks``), 3-4 full
    ones of 70-110 ms each stopping every thread; ~290 ms after this, the longest pause ~27 ms. What is frozen stays for the mount's life
    (it is the mount's own machinery); later garbage is collected as before. The thresholds stay
    CPython's: young collections every 10,000 allocations instead of 700 saved another ~170 ms per
    epoch, but paused 3 ms at the median and up to 25 ms, where a ``setxattr`` p99 is held to 5 ms."""
    gc.collect()
    gc.freeze()


def gc_status() -> dict[str, Any]:
    """The collector, for ``status.json``: objects frozen by ``settle_heap``, the thresholds, collections
    per generation so far (young first), and the objects they found unreachable."""
    stats = gc.get_stats()
    return {
        "frozen_objects": gc.get_freeze_count(),
        "thresholds": list(gc.get_threshold()),
        "collections": [s["collections"] for s in stats],
        "collected": sum(s["collected"] for s in stats),
    }


def _prefetcher(
    fs: EncordFS, reader: ReadPipeline, counters: Counters, settings: Settings, mountpoint: Path | None
) -> Prefetcher:
    """Lookahead and hints, bounded so that what is fetched ahead is still cached when it is opened."""
    ahead = min(settings.prefetch_ahead_bytes, settings.memory_cache_bytes // 2 or settings.prefetch_ahead_bytes)
    if settings.cache_size:
        ahead = min(ahead, settings.cache_size // 4)
    config = PrefetchConfig(
        parallel=settings.prefetch_parallel, ahead_bytes=ahead, file_bytes_cap=reader.small_file_bytes
    )

    def fetch(item: Item) -> int:
        return reader.prefetch_file(item.key, item.size, item.url_source)

    def fetch_async(item: Item, done: Callable[[int, errors.FsError | None], None]) -> bool:
        return reader.prefetch_file_async(item.key, item.size, item.url_source, done)

    def cached(item: Item) -> bool:
        return reader.has_first_part(item.key)

    link = reader.link
    return Prefetcher(
        fs,
        fetch,
        counters,
        config,
        mountpoint=str(mountpoint) if mountpoint else None,
        fetch_async=fetch_async,
        cached=cached,
        link=link,
    )


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


def _cluster(settings: Settings, account_id: str | None, counters: Counters, cache_dir: Path) -> Cluster:
    if not account_id:
        raise errors.InvalidValue("--shared: this mount has no account fingerprint to keep its data apart in Redis")
    from encordfs.cluster import Cluster

    cluster = Cluster(settings, account_id, counters, cache_dir)
    try:
        cluster.connect()
    except BaseException:
        cluster.close()
        raise
    return cluster


def _landed(catalog: Catalog, outcomes: list[Any], fs: EncordFS | None = None, cluster: Cluster | None = None) -> None:
    touched: list[tuple[int, int]] | None = [] if fs is not None and fs.on_invalidate is not None else None
    catalog.set_rows_state(
        [(o.row_uid, dict(o.metadata) if o.metadata is not None else None, o.title) for o in outcomes if o.ok],
        touched,
    )
    for parent, ino in touched or ():
        assert fs is not None
        fs.invalidate(INVALIDATE_INODE, parent, ino)
    if cluster is not None:
        cluster.landed(outcomes)


def _close_writes(writes: WriteQueue, timeout_s: float) -> None:
    # A stop that already flushed (``encordfs unmount``: timeout 0) does not wait long for a push in
    # flight either: the unmount's caller is waiting for this process to end.
    left = writes.close(flush_timeout_s=timeout_s, join_s=1.0 if timeout_s <= 0 else None)
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
