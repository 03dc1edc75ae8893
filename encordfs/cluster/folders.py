"""Shared listings: the root and each dataset folder are loaded from Encord once per cluster per refresh
period, and every other node takes the result from Redis (``core.fs.FolderLoader``).

What is shared
    A *folder image* (``core.images``): the loading node's catalog folder, names and order included,
    as a SQLite file, zstd-compressed (level 1: the ~800 MB image of 1M rows becomes ~100 MB) in chunks
    that are independent frames of ``BLOCK_BYTES`` each, so that a joining node fetches, checks and
    decompresses them in parallel. A manifest (JSON) names the version, the row count, the chunks'
    sha256 digests, the load time and what the load cost. A node that joins serves a big image at
    once (``Catalog.adopt_image``: no ``get_dataset`` call and no catalog sync on the way to the first
    ``ls``); a folder it already has is synced from the image (``sync_children``: sticky names and
    inodes), in the background when it is a TTL refresh.

Algorithm (``load``), per folder
    1. A fresh manifest (its version under ``fresh``) that this node already holds: only the load time
       is stamped. A fresh one it does not hold, or any one at all for a folder never loaded here
       (stale-while-revalidate: the folder is served at once and refreshed next): download, check,
       adopt or sync.
    2. Otherwise (no manifest, a stale one, an unusable image, or ``encordfs refresh``): take the
       folder's lease (``SET NX PX``, renewed while held), look at the manifest once more (a holder that
       published and let go after the first look: back to 1), and load from Encord; publish the image
       in the background while still holding the lease, then release it. Content unchanged since the
       last version (same compressed digest) republishes only the manifest.
    3. If another node holds the lease: wait for its manifest (polling; ``shared.leases_waited``).
       If the lease vanishes without one (its holder died: the TTL ran out), take it (step 2).

Refresh period, cluster-wide
    Fresh means ``{folder}:fresh`` exists: it is set with PX = max(metadata TTL, ``REFRESH_COST_FACTOR``
    × the load's cost), the rule a lone mount uses, so Redis's clock, not each node's, decides when a
    folder is due. A node stamps its folder's load time so that its own TTL runs out when that key
    does (``_aligned``); every node then asks at about the same time and one of them reloads.

Trust
    A manifest of another format, with wrong types, or whose image fails a chunk digest, is ignored
    (``shared.snapshot_rejected``, one log line per version) and the folder is loaded from Encord; so
    are chunks that Redis evicted. ``images.open_image`` checks the file itself again (format, schema,
    row count) before anything is served.

Degrade
    Any ``SharedDown`` makes this load a plain load from Encord (``from_encord`` runs at most once).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zstandard

from encordfs.cluster.keys import Keys
from encordfs.cluster.link import Lease, RedisLink, SharedDown
from encordfs.core import directio, images
from encordfs.core.catalog import Catalog, Entry, Kind
from encordfs.core.counters import Counters
from encordfs.core.fs import REFRESH_COST_FACTOR, FolderLoad

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
CODEC = "zstd"
# Each chunk in Redis is one zstd frame of this much of the image (~4 MB compressed for catalog rows;
# Redis takes values up to 512 MB, but one big value blocks its single thread while it is copied), so
# a joining node decompresses chunks in parallel.
BLOCK_BYTES = 32 << 20
DOWNLOAD_THREADS = 2
# Lease on a folder's load from Encord: renewed every third of it while the load and the publication
# run, so a holder that dies is replaced within 30 s; a live one keeps it however long a 1M-row load takes.
LEASE_MS = 30_000
# How often a waiting node looks for the holder's manifest; a load takes seconds at least.
WAIT_POLL_S = 0.25
# The longest a node waits for others before it loads the folder itself, whatever the lease says.
MAX_WAIT_S = 30 * 60.0
# How long an image version stays in Redis without being republished (LRU may drop it sooner), and how
# long a replaced version stays for nodes still downloading it.
IMAGE_TTL_MS = 7 * 24 * 3600 * 1000
REPLACED_TTL_MS = 5 * 60 * 1000
# Folders with at least this many rows are adopted (served from the image); smaller ones are synced,
# which costs well under a second and leaves nothing to copy in later.
ADOPT_MIN_ROWS = 10_000


@dataclass(frozen=True)
class Manifest:
    format: int
    folder: str
    version: str
    rows: int
    size_bytes: int  # the image's size uncompressed
    chunks: list[str]  # sha256 of each compressed chunk, in order
    codec: str
    loaded_at: float  # Redis time when the load from Encord began
    load_s: float  # what that load cost (for the refresh period)

    @property
    def stamp(self) -> tuple[str, float]:
        return self.version, self.loaded_at

    @staticmethod
    def parse(raw: bytes | None, folder: str) -> Manifest | None:
        """A manifest from Redis, or None for anything malformed or of another format."""
        if raw is None:
            return None
        try:
            d = json.loads(raw)
            m = Manifest(
                format=d["format"], folder=d["folder"], version=d["version"], rows=d["rows"], size_bytes=d["size_bytes"],
                chunks=d["chunks"], codec=d["codec"], loaded_at=float(d["loaded_at"]), load_s=float(d["load_s"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None
        ok = (
            m.format == MANIFEST_FORMAT
            and m.folder == folder
            and m.codec == CODEC
            and isinstance(m.version, str)
            and isinstance(m.rows, int)
            and isinstance(m.size_bytes, int)
            and isinstance(m.chunks, list)
            and all(isinstance(c, str) and len(c) == 64 for c in m.chunks)
            and m.load_s >= 0
        )
        return m if ok else None


class _Once:
    """``from_encord`` guarded: whatever fails around it, Encord is asked at most once per load."""

    def __init__(self, fn: Callable[[], float]) -> None:
        self._fn = fn
        self.result: float | None = None

    def __call__(self) -> float:
        if self.result is None:
            self.result = self._fn()
        return self.result


class SharedFolders:
    """``core.fs.FolderLoader`` over Redis (module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        catalog: Catalog,
        counters: Counters,
        work_dir: Path,
        metadata_ttl_s: float,
        adopt_min_rows: int | None = None,
        on_image: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.keys = keys
        self.catalog = catalog
        self.counters = counters
        self.work_dir = work_dir
        self.metadata_ttl_s = metadata_ttl_s
        self.adopt_min_rows = ADOPT_MIN_ROWS if adopt_min_rows is None else adopt_min_rows
        self.on_image = on_image  # called with the image's load time after one is taken (landed catch-up)
        self.clock = clock
        self._have: dict[int, str] = {}  # folder ino -> the version this node holds
        self._rejected: set[str] = set()  # versions already logged as unusable
        self._closing = threading.Event()
        self._publishing: set[threading.Thread] = set()

    # -- FolderLoader

    def load(self, job: FolderLoad) -> float | None:
        once = _Once(job.from_encord)
        try:
            return self._load(job, once)
        except SharedDown:
            return once()

    def _load(self, job: FolderLoad, once: _Once) -> float | None:
        deadline = time.monotonic() + MAX_WAIT_S
        force = job.force
        while True:
            m = self._manifest(job.key)
            fresh_ms = self._fresh_ms(job.key, m)
            if m is not None and not force:
                local = self.catalog.loaded_at(job.ino)
                if self._have.get(job.ino) == m.version and local is not None:
                    if fresh_ms > 0:
                        self.catalog.mark_loaded(job.ino, self._aligned(m, fresh_ms))
                        self.counters.inc("shared.catalog_hits")
                        return m.load_s
                elif (fresh_ms > 0 or local is None) and self._take(job, m, fresh_ms):
                    return m.load_s
            lease = Lease(self.link, self.keys.folder_lease(job.key), LEASE_MS)
            if lease.acquire():
                if self._published_since(job.key, m):  # its holder published and let go after we looked
                    lease.release()
                    force = False
                    continue
                self.counters.inc("shared.leases_taken")
                return self._load_and_publish(job, once, lease)
            self.counters.inc("shared.leases_waited")
            if not self._wait(job.key, m, lease, deadline):
                return once()
            force = False  # what the other node loaded is at least as new as what was asked for

    def _wait(self, folder: str, seen: Manifest | None, lease: Lease, deadline: float) -> bool:
        """Until another node publishes ``folder`` anew (True), its lease vanishes (True: try to take
        it), or ``deadline`` (False)."""
        while time.monotonic() < deadline and not self._closing.is_set():
            time.sleep(WAIT_POLL_S)
            if self._published_since(folder, seen) or not lease.held_by_someone():
                return True
        return False

    def _published_since(self, folder: str, seen: Manifest | None) -> bool:
        """A manifest of ``folder`` other than ``seen`` is there now. Asked again once the lease is ours:
        a holder publishes, then lets go, so one that did both between our look at the manifest and our
        lease would otherwise have us load the folder from Encord a second time."""
        m = self._manifest(folder)
        return m is not None and (seen is None or m.stamp != seen.stamp)

    # -- reading what others published

    def _manifest(self, folder: str) -> Manifest | None:
        raw = self.link.run(lambda r: r.get(self.keys.manifest(folder)))
        m = Manifest.parse(raw, folder)
        if raw is not None and m is None:
            self._reject(folder, "?", "its manifest is malformed or of another format")
        return m

    def _fresh_ms(self, folder: str, m: Manifest | None) -> int:
        """Milliseconds ``m`` stays fresh cluster-wide; 0 if it is not fresh (or not the fresh version)."""
        if m is None:
            return 0
        version, ttl = self.link.pipeline(lambda p: (p.get(self.keys.fresh(folder)), p.pttl(self.keys.fresh(folder))))
        return int(ttl) if version is not None and version.decode(errors="replace") == m.version and ttl > 0 else 0

    def _aligned(self, m: Manifest, fresh_ms: int) -> float:
        """The local load time that makes this node's TTL run out when the cluster's ``fresh`` key does."""
        due = max(self.metadata_ttl_s, REFRESH_COST_FACTOR * m.load_s)
        return self.clock() + fresh_ms / 1000 - due

    def _take(self, job: FolderLoad, m: Manifest, fresh_ms: int) -> bool:
        """Download, check and use ``m``'s image for the folder; False (and nothing changed) if unusable."""
        path = self._download(job.key, m)
        if path is None:
            return False
        try:
            image = images.open_image(path, expect_rows=m.rows)
        except images.ImageError as exc:
            images.remove(path)
            self._reject(job.key, m.version, str(exc))
            return False
        when = self._aligned(m, fresh_ms)
        adopted = False
        if self.catalog.loaded_at(job.ino) is None and image.rows >= self.adopt_min_rows:
            adopted = self.catalog.adopt_image(job.ino, image, when)
        if not adopted:
            try:
                entries = (
                    job.adjust(Entry(Kind(k), uid, title, mime, handle, size, ctime, mtime, fields, meta))
                    for k, uid, title, mime, handle, size, ctime, mtime, fields, meta in images.entries_of(image)
                )
                self.catalog.sync_children(job.ino, entries, when)
            finally:
                image.close()
                images.remove(path)
        self._have[job.ino] = m.version
        self.counters.inc("shared.snapshot_loads")
        if self.on_image is not None:
            self.on_image(m.loaded_at)
        return True

    def _download(self, folder: str, m: Manifest) -> Path | None:
        """The image of ``m`` in the work dir. Each chunk is an independent zstd frame of ``BLOCK_BYTES``
        of the image: ``DOWNLOAD_THREADS`` fetch, check (sha256, before anything is decompressed),
        decompress and write them at their offsets in parallel (zstd and the writes release the GIL).

        Fresh memory is what a join waits on, so each thread decompresses into one page-aligned buffer
        of its own, reused for its chunks, and the image is written with ``O_DIRECT`` (chunks padded
        to whole 4 KiB blocks, the file cut back to its size at the end), not through the page cache.
        On this VM kind (free memory handed back to the host), filling new page-cache pages ran at
        ~100 MB/s, nearly all of it the kernel's copy into them, against ~1.2 GB/s direct; 900 MB
        written direct and then read back took ~2 s, written through the page cache 6-9 s
        (scratch ``wr.py``). Buffered writes in 1 MiB pieces (the kernel sizes page-cache folios by the
        write) were as fast as direct ones in a lone process, but not in a joining node after a
        1M-row load: first entry 9.3-11.3 s (direct 0.7-1.1 s, before 9.4-10.0 s; scratch
        ``joinab.py``, 12 s pauses, 3 alternated rounds), perf showing the time in the copy into new
        folios. A fresh 32 MiB ``bytes`` per chunk also faulted in ~230,000 pages per image. A
        filesystem that refuses ``O_DIRECT`` (``EINVAL``) is written through the page cache."""
        path = self.work_dir / f"{_safe(folder)}-{secrets.token_hex(4)}.image"
        blocks = -(-m.size_bytes // BLOCK_BYTES) if m.size_bytes else 0
        if blocks != len(m.chunks):
            self._reject(folder, m.version, f"its manifest has {len(m.chunks)} chunks for {m.size_bytes} bytes")
            return None
        fd, _ = directio.open_for_write(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
        buffers = threading.local()  # each pool thread's output buffer, unmapped with this call's threads
        try:
            with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
                for _ in pool.map(lambda i: self._unpack(fd, folder, m, i, buffers), range(blocks)):
                    pass
            os.ftruncate(fd, m.size_bytes)  # a padded last chunk cut back
        except (_Unusable, zstandard.ZstdError) as exc:
            os.close(fd)
            images.remove(path)
            self._reject(folder, m.version, str(exc))
            return None
        except BaseException:
            os.close(fd)
            images.remove(path)
            raise
        os.close(fd)
        return path

    def _unpack(self, fd: int, folder: str, m: Manifest, index: int, buffers: threading.local) -> None:
        data = self._get(self.keys.chunk(folder, m.version, index))
        if data is None:
            raise _Unusable(f"chunk {index} is missing (evicted?)")
        if hashlib.sha256(data).hexdigest() != m.chunks[index]:
            raise _Unusable(f"chunk {index} fails its checksum")
        want = min(BLOCK_BYTES, m.size_bytes - index * BLOCK_BYTES)
        if zstandard.frame_content_size(data) != want:  # checked before anything is decompressed
            raise _Unusable(f"chunk {index} does not hold {want} bytes")
        buf = getattr(buffers, "out", None)
        if buf is None:  # anonymous memory is page-aligned, as O_DIRECT wants it
            buf = buffers.out = memoryview(mmap.mmap(-1, BLOCK_BYTES + directio.ALIGN))
        got = _decompress_into(data, buf[: want + 1])  # one byte of room: a longer frame shows
        if got != want:
            raise _Unusable(f"chunk {index} holds {got} bytes or more, not {want}")
        padded = directio.padded(want)
        buf[want:padded] = bytes(padded - want)
        _write_chunk(fd, buf[:padded], index * BLOCK_BYTES, want)

    def _reject(self, folder: str, version: str, why: str) -> None:
        self.counters.inc("shared.snapshot_rejected")
        if f"{folder}/{version}" not in self._rejected:
            self._rejected.add(f"{folder}/{version}")
            log.warning("shared: ignoring the published listing of %s: %s; loading it from Encord", folder, why)

    # -- loading from Encord and publishing

    def _load_and_publish(self, job: FolderLoad, once: _Once, lease: Lease) -> float:
        try:
            started = self.link.server_time()
        except SharedDown:
            lease.release()
            raise
        stop_renewing = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(lease, stop_renewing), daemon=True)
        renewer.start()
        try:
            seconds = once()
        except BaseException:
            stop_renewing.set()
            lease.release()
            raise
        publisher = threading.Thread(
            target=self._publish, args=(job.ino, job.key, seconds, started, lease, stop_renewing),
            name=f"encordfs-publish-{job.ino}", daemon=True,
        )  # fmt: skip
        self._publishing.add(publisher)
        publisher.start()
        return seconds

    def _renew(self, lease: Lease, stop: threading.Event) -> None:
        while not stop.wait(LEASE_MS / 3000):
            try:
                if not lease.renew():
                    return
            except SharedDown:
                continue

    def _publish(
        self, ino: int, folder: str, load_s: float, started: float, lease: Lease, stop: threading.Event
    ) -> None:
        """Export the folder just loaded, upload it unless unchanged, then the manifest; release the lease."""
        image = self.work_dir / f"export-{ino}-{secrets.token_hex(4)}.image"
        packed = image.with_suffix(".zst")
        try:
            rows = images.export(self.catalog.path, ino, image)
            size = image.stat().st_size
            frames = _compress(image, packed)
            digests = [digest for digest, _, _ in frames]
            old = self._manifest(folder)
            if old is not None and old.chunks == digests and self._chunks_exist(folder, old):
                version = old.version
            else:
                version = f"{int(started * 1000)}-{secrets.token_hex(4)}"
                self._upload(folder, version, packed, frames)
            m = Manifest(MANIFEST_FORMAT, folder, version, rows, size, digests, CODEC, started, load_s)
            due_ms = int(max(self.metadata_ttl_s, REFRESH_COST_FACTOR * load_s) * 1000)
            self._commit(folder, m, old, due_ms)
            self._have[ino] = version
            self.counters.inc("shared.snapshot_publishes")
        except SharedDown:
            pass
        except Exception:  # a thread boundary: the load itself succeeded; only sharing it failed
            log.exception("shared: publishing the listing of %s failed", folder)
        finally:
            stop.set()
            lease.release()
            images.remove(image)
            images.remove(packed)
            self._publishing.discard(threading.current_thread())

    def _upload(self, folder: str, version: str, packed: Path, frames: list[tuple[str, int, int]]) -> None:
        with open(packed, "rb") as f:
            for index, (_, offset, length) in enumerate(frames):
                if self._closing.is_set():
                    raise SharedDown("closing")
                self._set(self.keys.chunk(folder, version, index), os.pread(f.fileno(), length, offset), IMAGE_TTL_MS)

    def _get(self, key: str) -> bytes | None:
        raw = self.link.run(lambda r: r.get(key))
        return raw if isinstance(raw, bytes) else None

    def _set(self, key: str, value: bytes, ttl_ms: int) -> None:
        self.link.run(lambda r: r.set(key, value, px=ttl_ms))

    def _chunks_exist(self, folder: str, m: Manifest) -> bool:
        keys = [self.keys.chunk(folder, m.version, i) for i in range(len(m.chunks))]
        return not keys or int(self.link.run(lambda r: r.exists(*keys))) == len(keys)

    def _commit(self, folder: str, m: Manifest, old: Manifest | None, due_ms: int) -> None:
        def fill(p: Any) -> None:
            p.set(self.keys.manifest(folder), json.dumps(asdict(m)), px=IMAGE_TTL_MS)
            p.set(self.keys.fresh(folder), m.version, px=max(1, due_ms))
            for i in range(len(m.chunks)):  # the version in use lives as long as its manifest
                p.pexpire(self.keys.chunk(folder, m.version, i), IMAGE_TTL_MS)
            if old is not None and old.version != m.version:
                for i in range(len(old.chunks)):
                    p.pexpire(self.keys.chunk(folder, old.version, i), REPLACED_TTL_MS)

        self.link.pipeline(fill, transaction=True)

    def close(self) -> None:
        self._closing.set()
        for thread in list(self._publishing):
            thread.join(10)


class _Unusable(Exception):
    pass


def _compress(src: Path, out: Path) -> list[tuple[str, int, int]]:
    """``src`` as independent zstd frames (level 1) of ``BLOCK_BYTES`` each, one after another in
    ``out``; (sha256, offset, length) of each frame: the chunks of a published image."""
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)
    frames = []
    offset = 0
    with open(src, "rb") as fin, open(out, "wb") as fout:
        for block in iter(lambda: fin.read(BLOCK_BYTES), b""):
            frame = compressor.compress(block)
            fout.write(frame)
            frames.append((hashlib.sha256(frame).hexdigest(), offset, len(frame)))
            offset += len(frame)
    return frames


def _write_chunk(fd: int, data: memoryview, offset: int, length: int) -> None:
    """``data`` (``length`` bytes padded to whole blocks for ``O_DIRECT``) at ``offset``. If the
    filesystem refuses the direct write, ``fd`` goes through the page cache from then on and the
    ``length`` bytes are written there."""
    try:
        directio.pwrite_all(fd, data, offset)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        directio.to_buffered(fd)
        directio.pwrite_all(fd, data[:length], offset)


def _decompress_into(frame: bytes, out: memoryview) -> int:
    """Decompress one zstd frame into ``out``; the number of bytes it filled (``len(out)`` when the
    frame holds that much or more)."""
    got = 0
    with zstandard.ZstdDecompressor().stream_reader(frame) as reader:
        while got < len(out):
            n = reader.readinto(out[got:])
            if not n:
                break
            got += n
    return got


def _safe(folder: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in folder)[:80]
