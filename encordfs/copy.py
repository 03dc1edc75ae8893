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

Never a wrong file that looks complete
    A file is written to ``NAME.encordfs-part`` (a hashed hidden name when that would be over 255
    bytes), which carries the row's identity (``user.encordfs.cp``: item, size, time) when the
    destination keeps xattrs; it is checked by size, given the row's modification time, and only then
    renamed to ``NAME``. A file whose size and modification time equal the row's is complete and skipped
    (its metadata is written again); a part file with the same identity is resumed from its length; any
    other part file is started over. So an interrupted copy (Ctrl-C, a kill, a full disk) leaves only
    complete files and part files, and the same command finishes it.

Metadata (``--metadata``)
    ``xattr`` (default): every ``user.encord.*`` attribute the mount shows, on the copied file or folder
    (a destination without user xattrs gets a one-line warning and plain files). ``sidecar``: the
    emulator's import format, so a copy can be imported again (``encordfs emulator --import DEST``):
    ``NAME.metadata.json`` beside each row whose client metadata is not empty (a group's beside its
    folder; one whose name would be over 255 bytes is a failure of that row), and
    an ``.image-sequence`` marker in an image sequence's folder. ``none``: bytes only.

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
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from encordfs import errors
from encordfs.core import names
from encordfs.core.catalog import ROOT_INO, Kind
from encordfs.core.fs import CONTROL_NAME, EncordFS
from encordfs.core.views import is_view_ino

log = logging.getLogger(__name__)

PROTOCOL_PREFIX = "encord://"
METADATA_MODES = ("xattr", "sidecar", "none")
PART_SUFFIX = ".encordfs-part"
IDENTITY_XATTR = "user.encordfs.cp"
SIDECAR_SUFFIX = ".metadata.json"  # the emulator importer's (``encordfs.emulator.importer``)
SEQUENCE_MARKER = ".image-sequence"
CHUNK_BYTES = 1 << 20
PLAIN_EVERY_S = 5.0  # progress lines when stderr is not a terminal
REDRAW_EVERY_S = 0.2
# A stop (Ctrl-C, a full disk) waits this long for copying threads to finish their current piece.
STOP_JOIN_S = 10.0
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


@dataclass
class Outcome:
    copied: int = 0
    skipped: int = 0
    bytes_done: int = 0  # bytes written by this run
    bytes_present: int = 0  # bytes found at the destination already (complete files, resumed parts)
    failures: list[tuple[str, str]] = field(default_factory=list)
    fatal: str | None = None
    interrupted: bool = False
    warnings: set[str] = field(default_factory=set)


class Stop(Exception):
    """Raised inside a copying thread when the run is stopping (Ctrl-C, a fatal destination error)."""


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

    def __init__(self, fs: EncordFS, dest: Path, metadata: str = "xattr", jobs: int = 8) -> None:
        self.fs = fs
        self.dest = dest
        self.metadata = metadata
        self.jobs = jobs
        self.outcome = Outcome()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._running = 0
        self._lock = threading.Lock()
        self._xattrs_ok = metadata == "xattr"

    def plan(self, sources: list[str]) -> Plan:
        """Resolve every source first (a missing one is an error before anything is written), then walk."""
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
            for name in self.fs.listxattr(ino):
                os.setxattr(target, name, self.fs.getxattr(ino, name))
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
    def run(self, plan: Plan, progress: Progress | None = None) -> Outcome:
        """Copy the plan's files with ``jobs`` threads. Ctrl-C (KeyboardInterrupt in this thread) stops
        them after their current piece and marks the outcome interrupted."""
        work: queue.SimpleQueue[FileJob] = queue.SimpleQueue()
        for job in plan.files:
            work.put(job)
        self._running = max(1, min(self.jobs, len(plan.files)))
        threads = [
            threading.Thread(target=self._worker, args=(work,), name=f"encordfs-cp-{i}", daemon=True)
            for i in range(self._running)
        ]
        for t in threads:
            t.start()
        try:
            while not self._finished.wait(REDRAW_EVERY_S):
                if progress is not None:
                    progress.tick(self.outcome)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            self._stop.set()
            deadline = time.monotonic() + STOP_JOIN_S
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        if progress is not None:
            progress.tick(self.outcome, final=True)
        return self.outcome

    def _worker(self, work: queue.SimpleQueue[FileJob]) -> None:
        try:
            self._work(work)
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._finished.set()

    def _work(self, work: queue.SimpleQueue[FileJob]) -> None:
        while not self._stop.is_set():
            try:
                job = work.get_nowait()
            except queue.Empty:
                return
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
                with self._lock:
                    if copied:
                        self.outcome.copied += 1
                    else:
                        self.outcome.skipped += 1
                        self.outcome.bytes_present += job.size

    def _fail(self, job: FileJob, reason: str) -> None:
        with self._lock:
            self.outcome.failures.append((job.source, reason))

    def _dest_error(self, job: FileJob, exc: OSError) -> None:
        where = exc.filename or job.dest
        reason = f"{where}: {exc.strerror or exc}"
        if exc.errno in DEST_FATAL:
            with self._lock:
                if self.outcome.fatal is None:
                    self.outcome.fatal = reason
            self._stop.set()
        self._fail(job, reason)

    def _copy(self, job: FileJob) -> bool:
        """Copy one file; False when it was already complete. Raises Stop, FsError or OSError."""
        final, part = job.dest, part_path(job.dest)
        if _complete(final, job):
            self._file_metadata(final, final, job.ino)
            return False
        identity = self._identity(job)
        offset = self._resume_offset(part, identity, job.size)
        with self._lock:
            self.outcome.bytes_present += offset
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | (0 if offset else os.O_TRUNC), 0o644)
        try:
            if not offset and self._xattrs_ok:
                _set_identity(part, identity)
            os.lseek(fd, offset, os.SEEK_SET)
            self._transfer(job, fd, offset)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size != job.size:
            raise errors.RemoteIOError(f"got {size} bytes of {job.size}; the part file is kept for a rerun")
        os.utime(part, (job.mtime, job.mtime))
        _drop_identity(part)
        self._file_metadata(part, final, job.ino)
        os.replace(part, final)
        return True

    def _identity(self, job: FileJob) -> str:
        return f"{self.fs.node(job.ino).uid}:{job.size}:{job.mtime:.6f}"

    def _resume_offset(self, part: Path, identity: str, size: int) -> int:
        try:
            have = part.stat().st_size
            ok = have <= size and os.getxattr(part, IDENTITY_XATTR).decode() == identity
        except OSError:
            return 0
        return have if ok else 0

    def _transfer(self, job: FileJob, fd: int, offset: int) -> None:
        fh = self.fs.open(job.ino, writable=False).fh
        try:
            pos = offset
            while pos < job.size:
                if self._stop.is_set():
                    raise Stop()
                data = self.fs.read(fh, pos, min(CHUNK_BYTES, job.size - pos))
                if not data:
                    break
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                pos += len(data)
                with self._lock:
                    self.outcome.bytes_done += len(data)
        finally:
            self.fs.release(fh)


def _complete(final: Path, job: FileJob) -> bool:
    try:
        st = final.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == job.size and abs(st.st_mtime - job.mtime) < 1e-3


def _set_identity(part: Path, identity: str) -> None:
    try:
        os.setxattr(part, IDENTITY_XATTR, identity.encode())
    except OSError:
        pass  # no user xattrs here: a part file is then started over by the next run


def _drop_identity(part: Path) -> None:
    try:
        os.removexattr(part, IDENTITY_XATTR)
    except OSError:
        pass


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
        self._last = 0.0

    def line(self, o: Outcome) -> str:
        total_files, total_bytes = len(self.plan.files), self.plan.total_bytes
        done_files = o.copied + o.skipped + len(o.failures)
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


def summary(plan: Plan, o: Outcome, seconds: float, max_listed: int = 20) -> list[str]:
    """What the run ends with: one line of totals, then what failed (at most ``max_listed`` files)."""
    rate = o.bytes_done / max(seconds, 1e-6) / 1e6
    lines = [
        f"cp: {o.copied:,} copied ({_mb(o.bytes_done)} MB in {seconds:.1f} s, {rate:.1f} MB/s), "
        f"{o.skipped:,} already complete, {len(o.failures):,} failed, of {len(plan.files):,} files"
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


def main(
    fs: EncordFS,
    sources: list[str],
    dest: Path,
    *,
    metadata: str = "xattr",
    jobs: int = 8,
    quiet: bool = False,
    stream: IO[str] | None = None,
) -> int:
    """Plan and copy; the exit status (see the module docstring). Ctrl-C during the copy → 130."""
    stream = stream or sys.stderr
    if jobs < 1:
        raise errors.InvalidValue(f"--jobs must be at least 1, not {jobs}")
    if metadata not in METADATA_MODES:
        raise errors.InvalidValue(f"--metadata must be one of {', '.join(METADATA_MODES)}")
    copier = Copier(fs, dest, metadata, jobs)
    started = time.monotonic()
    plan = copier.plan(sources)
    progress = Progress(plan, stream, quiet=quiet)
    outcome = copier.run(plan, progress)
    for line in summary(plan, outcome, time.monotonic() - started):
        _say(line, stream)
    if outcome.interrupted:
        return 130
    return 1 if outcome.failures or outcome.fatal else 0


def _say(line: str, stream: IO[str]) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass
