"""``encordfs cp``: rows as local files, without FUSE, through the core a mount uses.

``encordfs cp [encord://]DATASET[/PATH]... DEST`` builds a read-only core in this process
(``standalone.open_core``: the same tree, names, signed-URL batching, reader and transport as a mount),
walks each source with it and copies every file under it to ``DEST/<the source's name>/...`` (the
whole account when the source is ``encord://``). A source may be a dataset, a group folder, one file,
or a view (``encord://DATASET/@split/train``).

Plan, then copy
    The walk (catalog reads, no bytes) makes every folder and lists every file with its size and
    modification time, so the progress shows totals and an ETA from the start. ``-j N`` threads then
    copy whole files, in listing order (neighbours are signed together: one signing call per 1,000
    files, as for a mount). Bytes are read through the core in 1 MiB pieces and written as they come.

Files in flight: the copying threads are the prefetch
    Each thread waits one first-byte latency per file, so behind 25 ms it copies at most 40 files per
    second, whatever the bandwidth. A mount hides that with prefetch across files (``core.prefetch``);
    a copy does not use it (the core is built with ``prefetch`` off unless asked): its processes take
    files from one shared counter, so one process's lookahead fetched the other's next files, which
    were then fetched again (2,000 files of 100 KiB over 2 processes: 3,066 GETs, 314 MB for 205 MB).
    Instead, without ``-j``, each process starts with its share of
    ``DEFAULT_JOBS`` threads and, while the link's first-byte latency (``EncordFS.link_floor_s``: the
    least of the core's GETs, so not the queueing its own transfers add, which would ask for ever
    more threads) is above ``GROW_LATENCY_S``, adds threads up to that share × latency ÷
    ``GROW_LATENCY_S`` (at most ``MAX_THREADS`` per process): enough files in flight to cover the
    latency, and on a fast link (loopback, a LAN) no more threads than the CPUs can use. ``-j N`` is
    exactly N threads, never grown.

Processes (``--processes P``, default: one per CPU, at most ``MAX_PROCESSES``)
    A copy of small files is bound by Python's GIL (HTTP parsing, the reader), not the network: one
    process used about one core, and a mount, whose reads are parsed in its own process while the
    reader's process does the file system work, read as fast. So a copy forks ``P - 1`` helpers before
    anything else starts (after the SDK import, which they then share): each builds its own core (its
    block cache elsewhere, ``standalone``), walks the same sources, and takes files from one shared
    counter, so the ``-j`` threads (split over the processes) share the work wherever they run. A
    helper whose walk differs from the parent's (the dataset changed between the two listings) copies
    nothing. Only the parent writes folders and their metadata and draws the progress; helpers report
    their failures to it at the end. A stop (Ctrl-C, a full disk) reaches all of them through a shared
    flag; a helper whose parent is gone stops too.

Never a wrong file that looks complete
    A file is written to ``NAME.encordfs-part`` (a hashed hidden name when that would be over 255
    bytes), checked by size and only then renamed to ``NAME``. A file whose size and modification time
    equal the row's is complete and skipped (its metadata is written again). A part file carries the
    row's modification time (set after every piece written, so a part whose last piece was cut short
    shows another time): one with the row's time and no more bytes than the row has is resumed from its
    length, any other is started over. The row's time is its content's identity (as in the block
    cache's key), so a prefix of other content is never resumed. (An xattr would say it too, but any
    xattr on a file costs ext4 a block of its own: it halved the copy rate.) So an interrupted copy
    (Ctrl-C, a kill, a full disk) leaves only complete files and part files, and the same command
    finishes it.

Metadata (``--metadata``)
    ``none`` (default, as ``cp`` and ``rsync`` copy no xattrs unless asked): bytes only. ``xattr``: every
    ``user.encord.*`` attribute the mount shows, on the copied file or folder (a destination without
    user xattrs gets a one-line warning and plain files); on ext4 a file with xattrs costs a block of
    its own, which halved the rate of a copy of 100 KiB files. ``sidecar``: the
    emulator's import format, so a copy can be imported again (``encordfs emulator --import DEST``):
    ``NAME.metadata.json`` beside each row whose client metadata is not empty (a group's beside its
    folder; one whose name would be over 255 bytes is a failure of that row), and
    an ``.image-sequence`` marker in an image sequence's folder. A rerun with another mode writes only
    the metadata (complete files are skipped).

Exit status: 0 when every file is complete and verified by size; 1 with a summary of what failed (and
at once, with one line, when the destination is not writable or full: part files stay resumable);
130 on Ctrl-C, after the threads have stopped and the core has closed (rerun to resume).

Progress on stderr: a line redrawn in place on a terminal (files, bytes, rate, ETA), plain lines every
``PLAIN_EVERY_S`` otherwise; ``-q`` only the summary. Messages name paths, never signed URLs or keys.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import multiprocessing
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from encordfs import errors
from encordfs.core import names
from encordfs.core.catalog import ROOT_INO, Kind
from encordfs.core.fs import CONTROL_NAME, EncordFS
from encordfs.core.views import is_view_ino
from encordfs.standalone import Core

log = logging.getLogger(__name__)

PROTOCOL_PREFIX = "encord://"
METADATA_MODES = ("xattr", "sidecar", "none")
PART_SUFFIX = ".encordfs-part"
SIDECAR_SUFFIX = ".metadata.json"  # the emulator importer's (``encordfs.emulator.importer``)
SEQUENCE_MARKER = ".image-sequence"
CHUNK_BYTES = 1 << 20
PLAIN_EVERY_S = 5.0  # progress lines when stderr is not a terminal
REDRAW_EVERY_S = 0.2
# A stop (Ctrl-C, a full disk) waits this long for copying threads to finish their current piece.
STOP_JOIN_S = 10.0
# More processes than this gain nothing here: HTTP per file, not CPU, then limits a copy.
MAX_PROCESSES = 4
DEFAULT_JOBS = 8  # files copied at once when -j is not given, before latency adds threads
GROW_LATENCY_S = 0.005  # a first-byte floor above this adds threads (loopback here: median 1-2.4 ms)
MAX_THREADS = 64  # copying threads per process, grown (files in flight behind a slow link)
COUNTERS = ("copied", "skipped", "bytes_done", "bytes_present", "failed")
# What the destination answers when nothing more can be written there: stop everything, say it once.
DEST_FATAL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


@dataclass(frozen=True, slots=True)
class FileJob:
    source: str  # encord://... as the user would write it (messages)
    ino: int
    size: int
    mtime: float
    dest: Path


@dataclass
class Plan:
    files: list[FileJob] = field(default_factory=list)
    total_bytes: int = 0
    folders: int = 0

    def digest(self) -> bytes:
        """What two processes compare to know they walked the same tree (destination, size, time)."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.dest}\0{f.size}\0{f.mtime!r}\n".encode("utf-8", "surrogateescape"))
        return h.digest()


@dataclass
class Outcome:
    copied: int = 0
    skipped: int = 0
    bytes_done: int = 0  # bytes written by this run
    bytes_present: int = 0  # bytes found at the destination already (complete files, resumed parts)
    failed: int = 0  # len(failures), also for totals over processes (which carry no list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    fatal: str | None = None
    interrupted: bool = False
    warnings: set[str] = field(default_factory=set)


class Stop(Exception):
    """Raised inside a copying thread when the run is stopping (Ctrl-C, a fatal destination error)."""


class Shared:
    """What the processes of one copy share, made before they fork: the next file to take, each
    process's counters (a row of ``COUNTERS`` per process, written by that process only, so the parent
    sums them for the progress without a lock), a stop flag, and the parent's plan digest."""

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.ctx = ctx
        self.processes = processes
        self._next = ctx.Value("q", 0)
        self.counts = ctx.RawArray("q", processes * len(COUNTERS))
        self.stop = ctx.Event()
        self.planned = ctx.Event()
        self.digest = ctx.RawArray("c", 32)

    def take(self) -> int:
        with self._next.get_lock():
            index = int(self._next.value)
            self._next.value = index + 1
        return index

    def set(self, slot: int, counter: str, value: int) -> None:
        self.counts[slot * len(COUNTERS) + COUNTERS.index(counter)] = value

    def totals(self) -> Outcome:
        n = len(COUNTERS)
        sums = [sum(self.counts[slot * n + i] for slot in range(self.processes)) for i in range(n)]
        return Outcome(**{name: sums[i] for i, name in enumerate(COUNTERS)})


def parse_source(text: str) -> str:
    """``encord://DATASET/PATH`` or ``DATASET/PATH`` → ``DATASET/PATH`` (``""``: every dataset)."""
    path = text[len(PROTOCOL_PREFIX) :] if text.startswith(PROTOCOL_PREFIX) else text
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == CONTROL_NAME:
        raise errors.NotFound(f"{text}: no such dataset, folder or file")
    return "/".join(parts)


def part_path(final: Path) -> Path:
    name = final.name + PART_SUFFIX
    if len(name.encode("utf-8", "surrogateescape")) > names.MAX_NAME_BYTES:
        digest = hashlib.sha256(final.name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        name = f".{digest}{PART_SUFFIX}"
    return final.with_name(name)


def sidecar_path(final: Path) -> Path:
    return final.with_name(final.name + SIDECAR_SUFFIX)


# --- the walk ----------------------------------------------------------------------------------------


class Copier:
    """One ``encordfs cp`` run over a built core. ``plan`` walks, ``run`` copies."""

    def __init__(
        self,
        fs: EncordFS,
        dest: Path,
        metadata: str = "none",
        jobs: int = 8,
        shared: Shared | None = None,
        slot: int = 0,
        grow: bool = False,
    ) -> None:
        self.fs = fs
        self.dest = dest
        self.metadata = metadata
        self.jobs = jobs
        self.grow = grow  # more threads while the link's latency keeps them waiting (no -j given)
        self.shared = shared or Shared(1)
        self.slot = slot  # this process's row of counters; 0 is the parent, which writes folders
        self.outcome = Outcome()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._running = 0
        self._lock = threading.Lock()
        self._xattrs_ok = metadata == "xattr"  # cleared when the destination refuses user xattrs

    def plan(self, sources: list[str]) -> Plan:
        """Resolve every source first (a missing one is an error before anything is written), then walk
        (the parent also makes the folders and writes their metadata)."""
        resolved = []
        for text in sources:
            path = parse_source(text)
            try:
                ino = self.fs.resolve("/" + path)
            except errors.NotFound:
                raise errors.NotFound(f"{PROTOCOL_PREFIX}{path}: no such dataset, folder or file") from None
            resolved.append((path, ino))
        plan = Plan()
        self._make_dir(self.dest, None)
        for path, ino in resolved:
            attr = self.fs.getattr(ino)
            if not stat.S_ISDIR(attr.mode):
                self._add_file(plan, path, ino, attr.size, attr.mtime, self.dest / path.rsplit("/", 1)[-1])
                continue
            top = self.dest if ino == ROOT_INO else self.dest / path.rsplit("/", 1)[-1]
            self._walk(plan, path, ino, top)
        plan.total_bytes = sum(f.size for f in plan.files)
        return plan

    def _walk(self, plan: Plan, path: str, ino: int, target: Path) -> None:
        if target != self.dest:
            self._make_dir(target, ino)
        plan.folders += 1
        for name, attr in list(self.fs.readdir(ino)):
            child = f"{path}/{name}" if path else name
            if stat.S_ISDIR(attr.mode):
                self._walk(plan, child, attr.ino, target / name)
            else:
                self._add_file(plan, child, attr.ino, attr.size, attr.mtime, target / name)

    def _add_file(self, plan: Plan, path: str, ino: int, size: int, mtime: float, dest: Path) -> None:
        plan.files.append(FileJob(PROTOCOL_PREFIX + path, ino, size, mtime, dest))

    def _make_dir(self, target: Path, ino: int | None) -> None:
        if self.slot != 0:
            return
        try:
            target.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise errors.Exists(f"{target} exists and is not a folder") from None
        except OSError as exc:
            raise errors.FsError(f"{target}: {exc.strerror or exc}") from None
        if ino is not None and not is_view_ino(ino):
            self._folder_metadata(target, ino)

    # -- metadata ---------------------------------------------------------------------------------
    def _folder_metadata(self, target: Path, ino: int) -> None:
        node = self.fs.node(ino)
        if self.metadata == "xattr":
            self._set_xattrs(target, ino)
        elif self.metadata == "sidecar" and node.kind == Kind.GROUP:
            self._write_sidecar(target, node.client_metadata)
            if node.fields.get("is_image_sequence"):
                marker = target / SEQUENCE_MARKER
                if not marker.exists():
                    marker.write_bytes(b"")

    def _file_metadata(self, part: Path, final: Path, ino: int) -> None:
        if self.metadata == "xattr":
            self._set_xattrs(part, ino)
        elif self.metadata == "sidecar":
            node = self.fs.node(ino)
            if node.kind == Kind.ROW:
                self._write_sidecar(final, node.client_metadata)

    def _set_xattrs(self, target: Path, ino: int) -> None:
        if not self._xattrs_ok:
            return
        try:
            for name, value in self.fs.all_xattrs(ino).items():
                os.setxattr(target, name, value)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            self._xattrs_ok = False
            self._warn(f"{self.dest} does not keep user xattrs: files are copied without metadata")

    def _write_sidecar(self, final: Path, metadata: dict[str, Any] | None) -> None:
        if not metadata:  # none or {}: a row imported without a sidecar shows the same
            return
        sidecar = sidecar_path(final)
        text = (json.dumps(metadata, ensure_ascii=False, indent=2) + "\n").encode()
        if len(sidecar.name.encode("utf-8", "surrogateescape")) > names.MAX_NAME_BYTES:
            raise OSError(errno.ENAMETOOLONG, "the metadata sidecar's name would be over 255 bytes", str(sidecar))
        try:
            if sidecar.read_bytes() == text:
                return
        except OSError:
            pass
        tmp = part_path(sidecar)
        tmp.write_bytes(text)
        os.replace(tmp, sidecar)

    def _warn(self, message: str) -> None:
        with self._lock:
            if message in self.outcome.warnings:
                return
            self.outcome.warnings.add(message)
        log.info("%s", message)  # shown in the summary, not over the progress line

    # -- copying ----------------------------------------------------------------------------------
    def run(self, plan: Plan, progress: Progress | None = None, parent: int | None = None) -> Outcome:
        """Copy the plan's files with ``jobs`` threads, taking them from the shared counter. Ctrl-C
        (KeyboardInterrupt in this thread) stops every process after its current piece and marks the
        outcome interrupted. ``parent``: a helper's parent pid (it stops when that process is gone)."""
        self._running = max(1, min(self.jobs, len(plan.files)))
        threads = [self._thread(plan, i) for i in range(self._running)]
        for t in threads:
            t.start()
        try:
            while not self._finished.wait(REDRAW_EVERY_S):
                if self.shared.stop.is_set() or (parent is not None and os.getppid() != parent):
                    self._stop.set()
                if self.grow:
                    threads += self._more_threads(plan, len(threads))
                if progress is not None:
                    progress.tick(self.shared.totals())
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            self._stop.set()
            self.shared.stop.set()
            deadline = time.monotonic() + STOP_JOIN_S
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        return self.outcome

    def _thread(self, plan: Plan, i: int) -> threading.Thread:
        return threading.Thread(target=self._worker, args=(plan,), name=f"encordfs-cp-{i}", daemon=True)

    def _more_threads(self, plan: Plan, have: int) -> list[threading.Thread]:
        """Threads started to cover the link's latency (see the module docstring); [] when none."""
        floor = self.fs.link_floor_s()
        if floor <= GROW_LATENCY_S:
            return []
        want = min(MAX_THREADS, math.ceil(self.jobs * floor / GROW_LATENCY_S))
        added = []
        with self._lock:
            if self._running == 0 or self._stopping():
                return []  # the last thread has ended: the run is over
            for i in range(have, want):
                self._running += 1
                added.append(self._thread(plan, i))
        for t in added:
            t.start()
        return added

    def _worker(self, plan: Plan) -> None:
        try:
            self._work(plan)
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._finished.set()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self.shared.stop.is_set()

    def _count(self, counter: str, n: int) -> None:
        with self._lock:
            value = getattr(self.outcome, counter) + n
            setattr(self.outcome, counter, value)
            self.shared.set(self.slot, counter, value)

    def _work(self, plan: Plan) -> None:
        while not self._stopping():
            index = self.shared.take()
            if index >= len(plan.files):
                return
            job = plan.files[index]
            try:
                copied = self._copy(job)
            except Stop:
                return
            except errors.FsError as exc:
                self._fail(job, str(exc) or type(exc).__name__)
            except OSError as exc:
                self._dest_error(job, exc)
            except Exception as exc:  # a bug must not hang the run: report the file, keep going
                log.exception("copying %s failed", job.source)
                self._fail(job, f"internal error: {type(exc).__name__}")
            else:
                if copied:
                    self._count("copied", 1)
                else:
                    self._count("skipped", 1)
                    self._count("bytes_present", job.size)

    def _fail(self, job: FileJob, reason: str) -> None:
        with self._lock:
            self.outcome.failures.append((job.source, reason))
            self.outcome.failed = len(self.outcome.failures)
            self.shared.set(self.slot, "failed", self.outcome.failed)

    def _dest_error(self, job: FileJob, exc: OSError) -> None:
        where = exc.filename or job.dest
        reason = f"{where}: {exc.strerror or exc}"
        if exc.errno in DEST_FATAL:
            with self._lock:
                if self.outcome.fatal is None:
                    self.outcome.fatal = reason
            self._stop.set()
            self.shared.stop.set()
        self._fail(job, reason)

    def _copy(self, job: FileJob) -> bool:
        """Copy one file; False when it was already complete. Raises Stop, FsError or OSError."""
        final, part = job.dest, part_path(job.dest)
        if _complete(final, job):
            self._file_metadata(final, final, job.ino)
            return False
        offset = _resume_offset(part, job)
        self._count("bytes_present", offset)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | (0 if offset else os.O_TRUNC), 0o644)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            self._transfer(job, fd, offset)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size != job.size:
            raise errors.RemoteIOError(f"got {size} bytes of {job.size}; the part file is kept for a rerun")
        self._file_metadata(part, final, job.ino)
        os.replace(part, final)
        return True

    def _transfer(self, job: FileJob, fd: int, offset: int) -> None:
        fh = self.fs.open(job.ino, writable=False).fh
        try:
            pos = offset
            while pos < job.size:
                if self._stopping():
                    raise Stop()
                data = self.fs.read(fh, pos, min(CHUNK_BYTES, job.size - pos))
                if not data:
                    break
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.utime(fd, (job.mtime, job.mtime))  # the part's identity: see the module docstring
                pos += len(data)
                self._count("bytes_done", len(data))
        finally:
            self.fs.release(fh)


def _complete(final: Path, job: FileJob) -> bool:
    try:
        st = final.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == job.size and abs(st.st_mtime - job.mtime) < 1e-3


def _resume_offset(part: Path, job: FileJob) -> int:
    """How much of ``part`` is this row's (its time is the row's, see the module docstring): 0 if none."""
    try:
        st = part.stat()
    except OSError:
        return 0
    ours = stat.S_ISREG(st.st_mode) and st.st_size <= job.size and abs(st.st_mtime - job.mtime) < 1e-3
    return st.st_size if ours else 0


# --- progress ----------------------------------------------------------------------------------------


class Progress:
    """Files, bytes, rate and ETA on ``stream``: redrawn in place on a terminal, plain lines otherwise."""

    def __init__(
        self,
        plan: Plan,
        stream: IO[str],
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        quiet: bool = False,
    ) -> None:
        self.plan = plan
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.quiet = quiet
        self.started = clock()
        self._last = self.started  # the first plain line comes after PLAIN_EVERY_S

    def line(self, o: Outcome) -> str:
        total_files, total_bytes = len(self.plan.files), self.plan.total_bytes
        done_files = o.copied + o.skipped + o.failed
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = o.bytes_done / elapsed
        left = max(0, total_bytes - o.bytes_done - o.bytes_present)
        eta = f"{left / rate:.0f} s" if rate > 0 and done_files < total_files else "-"
        return (
            f"cp: {done_files:,}/{total_files:,} files, {_mb(o.bytes_done + o.bytes_present)}/{_mb(total_bytes)} MB, "
            f"{rate / 1e6:.1f} MB/s, ETA {eta}"
        )

    def tick(self, o: Outcome, final: bool = False) -> None:
        if self.quiet:
            return
        now = self.clock()
        every = REDRAW_EVERY_S if self.tty else PLAIN_EVERY_S
        if not final and now - self._last < every:
            return
        self._last = now
        text = self.line(o)
        try:
            if self.tty:
                self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
            elif not final:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def summary(plan: Plan, o: Outcome, seconds: float, listing_s: float = 0.0, max_listed: int = 20) -> list[str]:
    """What the run ends with: one line of totals (``seconds``: the copy, after ``listing_s`` of
    walking), then warnings and what failed (at most ``max_listed`` files)."""
    rate = o.bytes_done / max(seconds, 1e-6) / 1e6
    lines = [
        f"cp: {o.copied:,} copied ({_mb(o.bytes_done)} MB in {seconds:.2f} s, {rate:.1f} MB/s), "
        f"{o.skipped:,} already complete, {o.failed:,} failed, of {len(plan.files):,} files "
        f"(listed in {listing_s:.2f} s)"
    ]
    lines += [f"cp: warning: {w}" for w in sorted(o.warnings)]
    if o.fatal is not None:
        lines.append(f"cp: stopped: {o.fatal}; part files are kept: rerun the same command to resume")
    for source, reason in o.failures[:max_listed]:
        lines.append(f"cp: failed: {source}: {reason}")
    if len(o.failures) > max_listed:
        lines.append(f"cp: ... and {len(o.failures) - max_listed:,} more")
    if o.interrupted:
        left = len(plan.files) - o.copied - o.skipped
        lines.append(f"cp: interrupted with {left:,} file(s) left; rerun the same command to resume")
    return lines


def default_processes() -> int:
    return max(1, min(MAX_PROCESSES, os.cpu_count() or 1))


def main(
    open_core: Callable[[], Core],
    sources: list[str],
    dest: Path,
    *,
    metadata: str = "none",
    jobs: int | None = None,
    processes: int = 1,
    quiet: bool = False,
    stream: IO[str] | None = None,
) -> int:
    """Plan and copy; the exit status (see the module docstring). Ctrl-C during the copy → 130.
    ``open_core`` builds a core; it is called once in each process (after the helpers fork).
    ``jobs``: files copied at once; None: ``DEFAULT_JOBS``, grown while the link is slow."""
    stream = stream or sys.stderr
    grow = jobs is None
    jobs = DEFAULT_JOBS if jobs is None else jobs
    if jobs < 1:
        raise errors.InvalidValue(f"--jobs must be at least 1, not {jobs}")
    if processes < 1:
        raise errors.InvalidValue(f"--processes must be at least 1, not {processes}")
    if metadata not in METADATA_MODES:
        raise errors.InvalidValue(f"--metadata must be one of {', '.join(METADATA_MODES)}")
    processes = min(processes, jobs)
    threads = -(-jobs // processes)
    shared = Shared(processes)
    task = _Task(open_core, sources, dest, metadata, threads, grow)
    helpers = [_fork_helper(task, shared, slot) for slot in range(1, processes)]
    try:
        started = time.monotonic()
        core = open_core()
        try:
            copier = Copier(core.fs, dest, metadata, threads, shared, 0, grow)
            plan = copier.plan(sources)
            shared.digest[:] = plan.digest()
            shared.planned.set()
            listed = time.monotonic()
            progress = Progress(plan, stream, quiet=quiet)
            outcome = copier.run(plan, progress)
            reports, interrupted = _collect(helpers, shared, progress)
            outcome.interrupted |= interrupted
        finally:
            core.close()
    except BaseException:
        shared.stop.set()
        shared.planned.set()
        _collect(helpers, shared, None)
        raise
    totals = shared.totals()
    _merge(outcome, totals, reports)
    progress.tick(totals, final=True)
    for line in summary(plan, outcome, time.monotonic() - listed, listed - started):
        _say(line, stream)
    if outcome.interrupted:
        return 130
    return 1 if outcome.failures or outcome.fatal else 0


@dataclass(frozen=True)
class _Task:
    """What every process of one copy is given (``main``'s arguments)."""

    open_core: Callable[[], Core]
    sources: list[str]
    dest: Path
    metadata: str
    threads: int
    grow: bool


def _fork_helper(task: _Task, shared: Shared, slot: int) -> tuple[Any, Connection]:
    receive, send = shared.ctx.Pipe(duplex=False)
    proc = shared.ctx.Process(
        target=_helper,
        args=(task, shared, slot, send, os.getpid()),
        name=f"encordfs-cp-{slot}",
        daemon=True,
    )
    proc.start()
    send.close()
    return proc, receive


def _helper(task: _Task, shared: Shared, slot: int, send: Connection, parent: int) -> None:
    """A helper process: its own core, the same walk, files from the shared counter; its outcome goes
    back through ``send`` (never raises: a helper's failure is the parent's to report)."""
    report: dict[str, Any] = {}
    try:
        core = task.open_core()
        try:
            copier = Copier(core.fs, task.dest, task.metadata, task.threads, shared, slot, task.grow)
            plan = copier.plan(task.sources)
            while not shared.planned.wait(REDRAW_EVERY_S):
                if os.getppid() != parent:
                    return
            if shared.stop.is_set():
                return
            if bytes(shared.digest) != plan.digest():
                report["note"] = "its listing differed from the parent's (the dataset changed); it copied nothing"
                return
            report.update(asdict(copier.run(plan, parent=parent)))
        finally:
            core.close()
    except KeyboardInterrupt:
        report["interrupted"] = True
    except BaseException as exc:  # the parent's own walk meets the same problem and reports it
        report["note"] = f"stopped: {type(exc).__name__}: {exc}"
    finally:
        try:
            send.send(report)
        except (OSError, ValueError):
            pass
        send.close()


def _collect(
    helpers: list[tuple[Any, Connection]], shared: Shared, progress: Progress | None
) -> tuple[list[dict[str, Any]], bool]:
    """Wait for the helpers (drawing the progress: the parent's own threads may be done first) and
    read their reports as they come (a big one must not fill the pipe and stall its sender). Returns
    the reports and whether Ctrl-C came meanwhile (the helpers are then stopped too)."""
    reports: list[dict[str, Any]] = []
    waiting = list(helpers)
    interrupted = False
    stopped_at: float | None = None
    while waiting:
        try:
            if progress is not None:
                progress.tick(shared.totals())
            for proc, receive in list(waiting):
                if receive.poll(0):
                    try:
                        reports.append(receive.recv())
                    except (EOFError, OSError):
                        pass
                    waiting.remove((proc, receive))
                elif not proc.is_alive():
                    waiting.remove((proc, receive))
            if stopped_at is not None and time.monotonic() - stopped_at > STOP_JOIN_S + 5:
                break  # a helper that does not stop is killed below
            time.sleep(REDRAW_EVERY_S if waiting else 0)
        except KeyboardInterrupt:
            interrupted = True
            shared.stop.set()
            stopped_at = stopped_at or time.monotonic()
    for proc, _ in helpers:
        proc.join(STOP_JOIN_S if stopped_at is None else 1.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return reports, interrupted


def _merge(outcome: Outcome, totals: Outcome, reports: list[dict[str, Any]]) -> None:
    """The parent's outcome plus its helpers': counters from the shared totals, lists from the reports."""
    for counter in COUNTERS:
        setattr(outcome, counter, getattr(totals, counter))
    for report in reports:
        outcome.failures.extend((str(a), str(b)) for a, b in report.get("failures", []))
        outcome.warnings.update(report.get("warnings", []))
        outcome.interrupted = outcome.interrupted or bool(report.get("interrupted"))
        if outcome.fatal is None and report.get("fatal"):
            outcome.fatal = str(report["fatal"])
        if report.get("note"):
            log.info("a helper process: %s", report["note"])
    outcome.failed = len(outcome.failures)


def _say(line: str, stream: IO[str]) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass
