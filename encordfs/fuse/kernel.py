"""The kernel binding (``--binding kernel``): speaks the FUSE protocol on ``/dev/fuse`` itself,
inode-based, over the core ``EncordFS``; no libfuse. Message layouts are in ``encordfs.fuse._abi``.

**Owns** the mount (``mount(2)`` as root; else ``fusermount3 -o auto_unmount``, which hands the
``/dev/fuse`` fd back over a socketpair with SCM_RIGHTS and unmounts when this process dies, with
``encordfs.fuse.watchdog`` for the fusermount3 versions that cannot tell a user's dead mount), the INIT
negotiation, the request loop, backing ids for passthrough (and the lookup counts that bound their
life), and the notifications that tell the kernel a cached name or attribute went stale. It
translates and nothing else: no caching, policy or network call. A kernel node id is the core's
inode (root 1, generation 0: the catalog never reuses an inode).

**Negotiated**, each only when the kernel offers it (an older kernel is logged once at INFO and served
with what it has, down to protocol 7.23): 1 MiB reads (``MAX_PAGES``, 256 pages); ``ASYNC_READ`` and
``PARALLEL_DIROPS``; ``DO_READDIRPLUS`` with ``READDIRPLUS_AUTO`` (libfuse's default: attributes with
a folder's first batch and whenever its entries are being looked up, names only for a plain
``find``); ``AUTO_INVAL_DATA`` (pages go when a refreshed mtime or size says the bytes changed, on
top of explicit content invalidations); ``ATOMIC_O_TRUNC`` (``O_TRUNC`` reaches OPEN, refused there);
``SETXATTR_EXT``; ``INIT_EXT``; and unless disabled ``PASSTHROUGH`` with ``max_stack_depth`` 2 (the
cache may sit on overlayfs). Never ``WRITEBACK_CACHE`` (it excludes passthrough; nothing is written),
locks (the kernel keeps POSIX and BSD locks locally, as with libfuse) or export support.

**Answers** match the mfusepy binding's: content writes and truncate (the core takes both only for
the ``.encordfs/hints`` control file), create, mkdir, unlink, rmdir, link, symlink, mknod, chmod, chown,
utimes → ``EROFS``; ACCESS, READLINK, locks, ioctl, poll, bmap, lseek,
fallocate, copy_file_range, statx, tmpfile, syncfs → ``ENOSYS`` (the kernel falls back for good, as
with libfuse); xattr calls never ``ENOSYS`` (the kernel would stop sending them for good); a
``getxattr`` of a name outside ``user.`` → ``ENOTSUP`` before anything else. A failed lookup is a
negative entry (node id 0) cached for ``timeouts.negative_s``. Readdir offsets: "." 1, ".." 2, a
child its inode + 2, so a listing resumes exactly. Opens set ``FOPEN_NOFLUSH`` (read-only files have
nothing to flush; libfuse's mount stops FLUSH with one ENOSYS instead) and ``FOPEN_KEEP_CACHE``
(normal files), ``FOPEN_DIRECT_IO`` (control files) or ``FOPEN_PASSTHROUGH``.

**Errors** are mapped in one place (``_Session._serve``): ``errors.FsError`` → its errno, logged by
``log_level``; a request that cannot be parsed → ``EIO``, logged; any other exception → ``EIO``,
logged once with its traceback. Every request that expects an answer gets one, whatever happened.
An INTERRUPT of a request still waiting in a worker answers it ``EINTR`` at once when that changes
nothing (``INTERRUPTIBLE_OPS``: reads, opens, lookups and listings that wait, fsync); the worker's own
answer is then refused by the kernel. The kernel waits for an answer to a request it handed over,
whatever the signal, so a Ctrl-C would otherwise wait out a slow fetch.

**Threads.** ``WORKERS`` workers, each with its own clone of the session fd (``FUSE_DEV_IOC_CLONE``;
the shared fd when cloning is refused, e.g. without access to ``/dev/fuse``) and preallocated
buffers, answering on the fd the request came from with ``os.write``/``os.writev`` (a READ's bytes,
a view of a cached block included, go out without a copy). Leader/follower (``_Session._loop``):
one worker reads and serves inline whatever cannot wait (lookups, attributes, listings of loaded
folders, opens, xattr reads: SQLite or memory; READs whose bytes are in memory, a small file's or a
part of a big one that readahead fetched, ``EncordFS.read_held``); before a request that may wait
(any other READ, a journaled change, fsync, a folder never loaded, an OPEN that may read the disk
cache's index or check its file: ``EncordFS.open_may_wait``) it hands reading to a parked worker. A handoff per request
cost a wakeup and two GIL transfers, which doubled the CPU of a small request. One notifier thread
writes invalidations, never a worker: the kernel takes the folder's lock for an entry invalidation,
which the request being served may hold (a ``setfattr`` refresh holds the folder's), so
``EncordFS.on_invalidate`` only queues. The main thread waits for a signal (SIGTERM, SIGINT, SIGHUP:
unmount, then return) or for the kernel to end the connection (``fusermount3 -u``, ``umount``: the
workers read ENODEV).

**One process.** Measured with 1, 2 and 4 client processes doing lookups: the mount used 37-52% of
one core while the 2-core machine was 100% busy (clients, the kernel's FUSE work): a second serving
process would find no idle core, and it would have to share the catalog, caches and write queue.
Revisit on machines where the mount sits at 100% of one core with cores idle.

**Lock order:** ``_Session._lead`` (held while reading and serving inline; never taken while holding
another lock here) → ``_Passthrough._lock`` (a leaf; the backing ioctls are made under it).

**Passthrough** (protocol 7.40+, CAP_SYS_ADMIN): when the core's ``open`` hands a backing file (an fd),
the binding registers it (``FUSE_DEV_IOC_BACKING_OPEN``) and answers ``FOPEN_PASSTHROUGH`` with its
id; the kernel then reads that file itself and no READ reaches Python. One backing id per inode,
reused by later opens while the core's file holds the same content (``OpenFile.backing_key``): the
binding tells the core's ``open`` what its file holds (``held_key``), and the core opens no file when
its cache still has that content complete. An id is closed when the kernel forgets the inode and no
handle uses it, when its content changed or the disk cache dropped its file (evicted: the id would
keep the file's blocks allocated) and no handle uses it, or at the end. Lookups are counted
only for inodes with such a state, so memory does not grow with what the kernel lists. Decided per
inode, not per open: while a passthrough handle is open every open is passthrough with that id, while
a cached handle is open none is (the kernel fails either mix with EIO), and ``FOPEN_KEEP_CACHE`` never
goes with it. Off when asked (``--no-passthrough``), when INIT does not offer it, or from the first
backing file the kernel refuses (EPERM: not root, a container): reads are then served here, and
``status`` says which (``passthrough.off``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import queue
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from encordfs import errors
from encordfs.core.blockcache import item_name
from encordfs.core.fs import INVALIDATE_CONTENT, INVALIDATE_ENTRY, INVALIDATE_LISTING, Attr, EncordFS, OpenFile
from encordfs.core.xattrs import is_foreign as is_foreign_xattr
from encordfs.fuse import BLKSIZE, MountFlags, Timeouts, blocks, log_level, timespec
from encordfs.fuse import _abi as abi
from encordfs.fuse._abi import Op
from encordfs.fuse.watchdog import Watchdog
from encordfs.libc import libc

log = logging.getLogger(__name__)

# Workers reading requests. Most requests are answered from SQLite in microseconds under the GIL;
# more threads only help while some wait on the network (a read of bytes not cached yet), and 16
# keeps that many fetches in flight (libfuse's default allows 10).
WORKERS = 16
MAX_PAGES = 256  # 1 MiB per READ (the kernel caps it at /proc/sys/fs/fuse/max_pages_limit)
# Writes are refused at OPEN, so max_write only sizes the request buffer the kernel insists on
# (header + write_in + max_write); 128 KiB also holds the largest SETXATTR (64 KiB value + name).
MAX_WRITE = 128 * 1024
IN_BUFFER_BYTES = MAX_WRITE + 4096
OUT_BUFFER_BYTES = 256 * 1024  # readdir replies; the kernel asks for at most a few pages
MAX_BACKGROUND = 16  # readahead requests in flight (the kernel's default is 12)
MAX_STACK_DEPTH = 2  # backing files may sit on overlayfs (a container's root)
UNMOUNT_GRACE_S = 5.0  # after a signal: how long open files may keep the lazily unmounted fs busy
# Backing ids kept for inodes with no open handle (``_Passthrough``): enough for a working set that is
# reopened soon; each costs ~0.7 KB here and one open file in the kernel, and an evicted cache file's id
# is closed at once (its blocks are not held). Beyond it a reopen registers its backing file again
# (~10 us more mount CPU, ``benchmarks/op_costs.py``). 16,384 keeps a 5,000-file reopen free of that;
# with it the 1M-row soak epoch peaked at 306.7 MB (298.3 with 1,024; limit 400) once the catalog
# gave a big sync's memory back.
MAX_IDLE_BACKING_IDS = 16384

WANTED = (
    abi.ASYNC_READ
    | abi.ATOMIC_O_TRUNC
    | abi.BIG_WRITES
    | abi.AUTO_INVAL_DATA
    | abi.DO_READDIRPLUS
    | abi.READDIRPLUS_AUTO
    | abi.ASYNC_DIO
    | abi.PARALLEL_DIROPS
    | abi.MAX_PAGES
    | abi.SETXATTR_EXT
    | abi.INIT_EXT
    | abi.DIRECT_IO_ALLOW_MMAP
)
# Requests that may wait (see ``_Session._may_wait``); everything else is answered from SQLite or
# memory in microseconds and is served by the reading worker itself.
SLOW_OPS = frozenset({Op.READ, Op.SETXATTR, Op.REMOVEXATTR, Op.RENAME, Op.RENAME2, Op.FSYNC})
FOLDER_OPS = frozenset({Op.LOOKUP, Op.READDIR, Op.READDIRPLUS})
# Of the requests that may wait, those answered EINTR at once when the kernel interrupts them (a reader's
# Ctrl-C): they change nothing (fsync: the change lands anyway), so the answer a worker makes later is
# simply refused by the kernel. Not renames and xattr changes: their answer says whether the change was taken.
INTERRUPTIBLE_OPS = frozenset({Op.READ, Op.OPEN, Op.FSYNC}) | FOLDER_OPS
_HEAD = struct.Struct("=IIQQ")  # the in header's len, opcode, unique, nodeid
DT_SHIFT = 12  # dirent type = (st_mode & S_IFMT) >> 12
DT_DIR, DT_REG = stat.S_IFDIR >> DT_SHIFT, stat.S_IFREG >> DT_SHIFT
READ_ONLY_OPS = (Op.CREATE, Op.MKNOD, Op.MKDIR, Op.SYMLINK, Op.LINK, Op.UNLINK, Op.RMDIR)
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MNT_DETACH = 2


class _Malformed(Exception):
    """A request the binding cannot parse (answered EIO)."""


def _name(raw: memoryview) -> str:
    """A NUL-terminated name from the kernel."""
    data = raw.tobytes()
    end = data.find(b"\0")
    if end < 0:
        raise _Malformed("name without NUL")
    return os.fsdecode(data[:end])


def _two_names(raw: memoryview) -> tuple[str, str]:
    parts = raw.tobytes().split(b"\0")
    if len(parts) < 3:
        raise _Malformed("expected two NUL-terminated names")
    return os.fsdecode(parts[0]), os.fsdecode(parts[1])


def _valid(seconds: float) -> tuple[int, int]:
    """A cache timeout as (seconds, nanoseconds)."""
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def _attr_fields(a: Attr) -> tuple[int, ...]:
    """``fuse_attr`` in ``_abi.ATTR`` order: the same values as ``stat_dict`` (atime = mtime)."""
    msec, mnsec = timespec(a.mtime)
    csec, cnsec = timespec(a.ctime)
    # ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev blksize flags
    return (a.ino, a.size, blocks(a.size), msec, msec, csec, mnsec, mnsec, cnsec, a.mode, a.nlink, a.uid, a.gid, 0,
            BLKSIZE, 0)  # fmt: skip


_NO_ATTR = (0,) * 16


# -- mounting ------------------------------------------------------------------------------------------


@dataclass
class _Mount:
    """A mounted FUSE connection: its fd, and the fusermount3 and watchdog that watch it (auto_unmount)."""

    path: str
    fd: int
    fusermount: subprocess.Popen[bytes] | None = None
    watch: socket.socket | None = None  # closing it makes fusermount3 unmount (auto_unmount)
    watchdog: Watchdog | None = None

    def unmount(self) -> None:
        """Detach the mount (lazily: open files keep it until closed); the kernel then ends the connection."""
        if self.fusermount is None and libc().umount2(os.fsencode(self.path), MNT_DETACH) == 0:
            return
        tool = shutil.which("fusermount3") or "fusermount3"
        subprocess.run([tool, "-u", "-z", "-q", self.path], capture_output=True, check=False)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        if self.watch is not None:
            self.watch.close()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.fusermount is not None:
            try:
                self.fusermount.wait(10)
            except subprocess.TimeoutExpired:
                self.fusermount.kill()
                self.fusermount.wait()


def _mount(mountpoint: str, *, read_only: bool, allow_other: bool) -> _Mount:
    """Mount with mount(2) when allowed (root), else through fusermount3. Shows in /proc/mounts as
    ``encordfs MOUNTPOINT fuse.encordfs``, like the libfuse mount."""
    flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    extra = ["allow_other", "default_permissions"] if allow_other else []
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM):
            raise errors.FsError(f"cannot open /dev/fuse: {exc.strerror}") from None
    else:
        st = os.stat(mountpoint)
        data = ",".join(
            [f"fd={fd}", f"rootmode={stat.S_IFMT(st.st_mode):o}", f"user_id={os.getuid()}", f"group_id={os.getgid()}"]
            + extra
        )
        if libc().mount(b"encordfs", os.fsencode(mountpoint), b"fuse.encordfs", flags, data.encode()) == 0:
            return _Mount(mountpoint, fd)
        err = ctypes.get_errno()
        os.close(fd)
        if err != errno.EPERM:
            raise errors.FsError(f"cannot mount {mountpoint}: {os.strerror(err)}")
    return _mount_with_fusermount(mountpoint, read_only=read_only, extra=extra)


def _mount_with_fusermount(mountpoint: str, *, read_only: bool, extra: list[str], auto_unmount: bool = True) -> _Mount:
    """``fusermount3 -o ...,auto_unmount`` mounts and passes the /dev/fuse fd back over a socketpair
    (``_FUSE_COMMFD``, SCM_RIGHTS), then stays to unmount when this process's end of the socket
    closes; ``watchdog.Watchdog`` does it where that fusermount3 cannot tell a dead mount: a killed mount
    process leaves no dead mount behind. (``auto_unmount=False``: tests, the watchdog alone.)"""
    tool = shutil.which("fusermount3")
    if tool is None:
        raise errors.FsError("not allowed to mount(2) and fusermount3 is not installed (package fuse3)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    base = ["fsname=encordfs", "subtype=encordfs"] + (["auto_unmount"] if auto_unmount else [])
    options = ",".join(base + (["ro"] if read_only else []) + extra)
    # fusermount3 outlives the mount; its stderr goes to a file, never to a pipe that could close on it
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(
                [tool, "-o", options, "--", mountpoint],
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        finally:
            theirs.close()
        try:
            _, ancillary, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(4))
        except OSError:
            ancillary = []
        fds = [
            struct.unpack_from("=i", data)[0]
            for level, kind, data in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4
        ]
        if not fds:
            ours.close()
            proc.wait(10)
            stderr.seek(0)
            reason = stderr.read().decode(errors="replace").strip() or "no fd received"
            raise errors.FsError(f"fusermount3 could not mount {mountpoint}: {reason}")
    os.set_inheritable(fds[0], False)
    mounted = _Mount(mountpoint, fds[0], proc, ours)
    mounted.watchdog = Watchdog.start_or_warn(mountpoint, tool)
    return mounted


# -- passthrough -------------------------------------------------------------------------------------


class _Backed:
    """One inode's passthrough state: its backing id (0: none), the handles open on it and the kernel's
    lookups of it since the state was made (the kernel held at least one then: it opened the inode)."""

    __slots__ = ("backing_id", "key", "dropped", "passthrough_handles", "cached_handles", "lookups")

    def __init__(self) -> None:
        self.backing_id = 0
        self.key: str | None = None  # what the registered file holds (``OpenFile.backing_key``)
        self.dropped = False  # the disk cache dropped that file: the id goes with the last handle
        self.passthrough_handles = 0
        self.cached_handles = 0
        self.lookups = 1


class _Passthrough:
    """Backing ids per inode (see the module docstring), their handles and lookup counts.

    Only inodes opened while passthrough is on have a state, so nothing here grows with what the
    kernel has listed. A count that started at 1 may be lower than the kernel's: an id is then
    closed early (a FORGET after an error path), which costs a registration at the next open, never
    a wrong answer: the per-inode rule depends on open handles only, and those are exact.

    Idle ids are bounded: the kernel forgets inodes only under memory pressure, so an epoch over a
    million files would otherwise keep a million states here (and a million backing files open in
    the kernel). An inode with an id and no open handle is *idle*; past ``max_idle`` idle inodes the
    least recently released one loses its id and its state (a registration at its next open, a few
    microseconds). An id whose cache file the disk cache dropped (``dropped``, from the notifier
    thread) is closed once no handle uses it: it would keep the evicted file's blocks allocated.
    Closing an idle id never races the kernel: it looked the id up while it opened the handles that
    have all been released since.

    Lock: ``_lock``, a leaf; the BACKING_OPEN/CLOSE ioctls are made under it (a few microseconds).
    """

    def __init__(self, fd: int, on_refused: Callable[[], None] | None = None, max_idle: int | None = None) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._inodes: dict[int, _Backed] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # inodes with an id and no handle, least recent first
        # the disk cache's name of a registered file (``item_name(key)``) -> the inodes with an id on it (a row
        # seen in a view too: two inodes, one file)
        self._by_name: dict[str, set[int]] = {}
        self.max_idle = MAX_IDLE_BACKING_IDS if max_idle is None else max_idle
        self._handles: dict[int, tuple[int, bool]] = {}  # fh -> (inode, passthrough?)
        self._on_refused = on_refused  # the kernel will not take backing files from this process
        self.refused: str | None = None  # why, once it did not (then nothing is registered again)
        self.opens = 0

    def looked_up(self, inos: list[int], delta: int = 1) -> list[int]:
        """The kernel now holds ``delta`` more lookups of each inode (negative: a reply that never
        arrived). Returns the inodes counted (those with a state), to undo with ``-delta``."""
        tracked = [ino for ino in inos if ino in self._inodes]  # a racing open only lowers a count
        if tracked:
            with self._lock:
                for ino in tracked:
                    if (state := self._inodes.get(ino)) is not None:
                        state.lookups += delta
        return tracked

    def forget(self, ino: int, count: int) -> None:
        if ino not in self._inodes:
            return
        with self._lock:
            state = self._inodes.get(ino)
            if state is not None:
                state.lookups -= count
                self._drop_if_unused_locked(ino, state)

    def probe(self) -> None:
        """Register a backing file once and release it, right after INIT: a kernel that refuses them to
        this process (EPERM: not root, a container) is then known, logged and shown in ``status`` from
        the start, not at the first open of a cached file. No temporary file to probe with (an unwritable
        temporary dir): the first open finds out, as before."""
        try:
            probe = tempfile.TemporaryFile()
        except OSError as exc:
            log.debug("passthrough: no file to probe with (%s); the first cached open will tell", exc.strerror)
            return
        with probe, self._lock:
            self._unregister_locked(self._register_locked(probe.fileno()))

    def held_key(self, ino: int) -> str | None:
        """What the backing file registered for ``ino`` holds, if one is (for ``EncordFS.open``)."""
        state = self._inodes.get(ino)
        return state.key if state is not None and state.backing_id and self.usable else None

    @property
    def usable(self) -> bool:
        return self.refused is None

    def open(self, ino: int, fh: int, backing_fd: int | None, key: str | None) -> int:
        """Record an open of a regular file; the backing id to answer with (0: serve reads here). The id
        registered for the inode is kept while the core's answer names the same content (``key``; with no
        ``backing_fd``: the core found the held file still complete)."""
        with self._lock:
            state = self._inodes.get(ino)
            if state is None:
                state = self._inodes[ino] = _Backed()
            self._idle.pop(ino, None)
            if state.passthrough_handles == 0 and state.cached_handles == 0:  # nothing open: follow the core
                # (a dropped state with no handle is gone already: ``dropped``, ``_drop_if_unused_locked``)
                if state.backing_id and (key is None or state.key != key or not self.usable):
                    self._close_locked(ino, state)
                if backing_fd is not None and self.usable and not state.backing_id:
                    state.backing_id, state.key = self._register_locked(backing_fd), key
                    if state.backing_id and key is not None:
                        self._by_name.setdefault(item_name(key), set()).add(ino)
            passthrough = state.passthrough_handles > 0 or (state.cached_handles == 0 and state.backing_id > 0)
            if passthrough:
                state.passthrough_handles += 1
                self.opens += 1
            else:
                state.cached_handles += 1
            self._handles[fh] = (ino, passthrough)
            return state.backing_id if passthrough else 0

    def release(self, fh: int) -> None:
        with self._lock:
            found = self._handles.pop(fh, None)
            if found is None:
                return
            ino, passthrough = found
            state = self._inodes.get(ino)
            if state is None:
                return
            if passthrough:
                state.passthrough_handles -= 1
            else:
                state.cached_handles -= 1
            self._drop_if_unused_locked(ino, state)

    def content_changed(self, ino: int) -> None:
        """The bytes changed: the next open registers the new backing file (once no handle uses the old)."""
        with self._lock:
            state = self._inodes.get(ino)
            if state is not None and state.passthrough_handles == 0:
                self._close_locked(ino, state)
                self._drop_if_unused_locked(ino, state)

    def dropped(self, name: str) -> None:
        """The disk cache dropped the file named ``name``: an id registered on it goes now, or with the
        last handle open on it."""
        with self._lock:
            for ino in list(self._by_name.get(name, ())):
                state = self._inodes[ino]  # (an inode is in ``_by_name`` while its state holds that id)
                state.dropped = True
                self._drop_if_unused_locked(ino, state)

    def close_all(self) -> None:
        with self._lock:
            for ino, state in self._inodes.items():
                self._close_locked(ino, state)
            self._inodes.clear()
            self._idle.clear()
            self._by_name.clear()

    def status(self) -> dict[str, int]:
        """Opens answered in passthrough, backing ids held, inodes with a state (bounded by the inodes with
        an open handle plus ``max_idle``)."""
        with self._lock:
            ids = sum(1 for s in self._inodes.values() if s.backing_id)
            return {"opens": self.opens, "backing_ids": ids, "inodes": len(self._inodes)}

    def _drop_if_unused_locked(self, ino: int, state: _Backed) -> None:
        """Forget an inode's state once no handle is open and it holds no backing id, or the kernel forgot
        the inode, or the disk cache dropped its file; else keep it idle, within ``max_idle``."""
        if state.passthrough_handles or state.cached_handles:
            return
        if state.backing_id and state.lookups > 0 and not state.dropped:
            self._idle[ino] = None  # kept for the next open: the most recent idle one
            self._idle.move_to_end(ino)
            while len(self._idle) > self.max_idle:
                oldest, _ = self._idle.popitem(last=False)
                self._close_locked(oldest, self._inodes.pop(oldest))
            return
        self._idle.pop(ino, None)
        self._close_locked(ino, state)
        del self._inodes[ino]

    def _register_locked(self, fd: int) -> int:
        """The kernel's backing id for the file ``fd`` has open (it keeps its own reference), 0 if refused."""
        try:
            arg = bytearray(abi.BACKING_MAP.pack(fd, 0, 0))
            backing_id = fcntl.ioctl(self._fd, abi.FUSE_DEV_IOC_BACKING_OPEN, arg, True)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.ENOTTY):
                self.refused = exc.strerror or f"errno {exc.errno}"
                log.info("kernel passthrough refused (%s): reads are served by this process", exc.strerror)
                if self._on_refused is not None:
                    self._on_refused()
            else:  # e.g. ELOOP: the backing file's filesystem is stacked too deep
                log.debug("passthrough: backing file refused: %s", exc.strerror)
            return 0
        return int(backing_id)

    def _close_locked(self, ino: int, state: _Backed) -> None:
        if state.backing_id and state.key is not None:
            name = item_name(state.key)
            inos = self._by_name.get(name)
            if inos is not None:
                inos.discard(ino)
                if not inos:
                    del self._by_name[name]
        self._unregister_locked(state.backing_id)
        state.backing_id, state.key, state.dropped = 0, None, False

    def _unregister_locked(self, backing_id: int) -> None:
        if backing_id:
            try:
                fcntl.ioctl(self._fd, abi.FUSE_DEV_IOC_BACKING_CLOSE, abi.U32.pack(backing_id))
            except OSError as exc:
                log.debug("passthrough: closing backing id %d: %s", backing_id, exc.strerror)


# -- notifications ---------------------------------------------------------------------------------


_BACKING_DROPPED = "backing-dropped"  # not the kernel's: a cache file an id may hold was dropped


class _Notifier:
    """Writes the core's invalidations to the kernel from its own thread (never from a request), and lets
    go of the backing ids of cache files the disk cache dropped (told under its lock: only queued there)."""

    def __init__(self, fd: int, passthrough: _Passthrough | None) -> None:
        self._fd = fd
        self._passthrough = passthrough
        self._queue: queue.SimpleQueue[tuple[str, int, str | int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="encordfs-notify", daemon=True)
        self.sent = 0

    def start(self) -> None:
        self._thread.start()

    def put(self, kind: str, parent: int, what: str | int) -> None:
        self._queue.put((kind, parent, what))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, parent, what = item
            try:
                if kind == _BACKING_DROPPED:
                    if self._passthrough is not None:
                        self._passthrough.dropped(str(what))
                    continue
                if kind == INVALIDATE_ENTRY:
                    raw = os.fsencode(str(what))
                    head = abi.NOTIFY_INVAL_ENTRY_OUT.pack(
                        abi.NOTIFY_INVAL_ENTRY_OUT.size + len(raw) + 1, abi.NOTIFY_INVAL_ENTRY, 0, parent, len(raw), 0
                    )
                    os.write(self._fd, head + raw + b"\0")
                else:
                    ino = int(what)
                    if kind == INVALIDATE_CONTENT and self._passthrough is not None:
                        self._passthrough.content_changed(ino)
                    # 0: attributes and pages (a file's bytes, a folder's kept listing); -1: attributes only
                    offset = 0 if kind in (INVALIDATE_CONTENT, INVALIDATE_LISTING) else -1
                    os.write(
                        self._fd,
                        abi.NOTIFY_INVAL_INODE_OUT.pack(
                            abi.NOTIFY_INVAL_INODE_OUT.size, abi.NOTIFY_INVAL_INODE, 0, ino, offset, 0
                        ),
                    )
                self.sent += 1
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.EBADF):
                    return
                if exc.errno != errno.ENOENT:  # ENOENT: the kernel holds nothing of it
                    log.debug("invalidation %s %s/%s: %s", kind, parent, what, exc.strerror)
            except Exception:
                log.exception("invalidation %s %s/%s failed", kind, parent, what)


# -- listing ahead -------------------------------------------------------------------------------------

AHEAD_PAGES = 8  # pages made ahead and not asked for yet, at most (each at most OUT_BUFFER_BYTES)
AHEAD_DEPTH = 3  # of one folder: the lister and the daemon each take a page at a varying pace
AHEAD_FRESH_S = 2.0  # a page made ahead is used within this long of being made, or made again
AHEAD_WAIT_S = 10.0  # a request waits this long at most for the page being made for it


class _Page:
    __slots__ = ("key", "done", "body", "linked", "next_offset", "version", "made_at", "failed", "dropped")

    def __init__(self, key: tuple[int, int, int, bool]) -> None:
        self.key = key
        self.done = threading.Event()
        self.body = b""
        self.linked: list[int] = []
        self.next_offset = 0
        self.version = -1
        self.made_at = 0.0
        self.failed = False
        self.dropped = False  # by ``clear`` or for room: not made, or not used


class _ListAhead:
    """The next page of a listing, made on its own thread while the lister reads the page before
    (``_Session._list``): the daemon then packs page N+1 while ``ls`` stats page N's entries and the
    kernel links them, side by side on two CPUs instead of in turn (the first ``ls -l`` of 80k rows
    of a view took 1.1 s in turn). A page is used once, by the request that asks for exactly its
    (folder, offset, size, kind), if it was made within ``AHEAD_FRESH_S`` and the catalog did not
    change meanwhile (``version``); any invalidation drops every page (``clear``). Anything else (a
    failure, a page not asked for) is made again by the request itself, as without this."""

    def __init__(
        self, make: Callable[[int, int, int, bool, bytearray], tuple[int, list[int], int]], version: Callable[[], int]
    ) -> None:
        self._make = make
        self._version = version
        self._lock = threading.Lock()
        self._pages: OrderedDict[tuple[int, int, int, bool], _Page] = OrderedDict()
        self._queue: queue.SimpleQueue[_Page | None] = queue.SimpleQueue()
        self._buf = bytearray(OUT_BUFFER_BYTES)
        self._thread = threading.Thread(target=self._run, name="encordfs-list-ahead", daemon=True)
        self.used = self.unused = 0
        self._running = False

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(5)
        self.clear()

    def want(self, nodeid: int, offset: int, size: int, plus: bool) -> None:
        """Make this page on the listing-ahead thread (if it runs), or if it is made already the first
        page after it that is not, while fewer than ``AHEAD_DEPTH`` pages of the folder wait."""
        key = (nodeid, offset, size, plus)
        if not self._running:
            return
        with self._lock:
            while (made := self._pages.get(key)) is not None:  # offsets only grow: this ends
                if not made.done.is_set() or not made.next_offset:
                    return
                key = (nodeid, made.next_offset, size, plus)
            if sum(1 for k in self._pages if k[0] == nodeid) >= AHEAD_DEPTH:
                return
            page = self._pages[key] = _Page(key)
            while len(self._pages) > AHEAD_PAGES:
                self._pages.popitem(last=False)[1].dropped = True
                self.unused += 1
        self._queue.put(page)

    def take(self, nodeid: int, offset: int, size: int, plus: bool) -> _Page | None:
        """The page made for this request, or None: make it yourself."""
        with self._lock:
            page = self._pages.pop((nodeid, offset, size, plus), None)
        if page is None or not page.done.wait(AHEAD_WAIT_S):
            return None
        if (
            page.failed
            or page.dropped
            or page.version != self._version()
            or time.monotonic() - page.made_at > AHEAD_FRESH_S
        ):
            self.unused += 1
            return None
        self.used += 1
        return page

    def clear(self) -> None:
        with self._lock:
            self.unused += len(self._pages)
            for page in self._pages.values():
                page.dropped = True
            self._pages.clear()

    def _run(self) -> None:
        while (page := self._queue.get()) is not None:
            try:
                if page.dropped:
                    continue
                page.version = self._version()
                nodeid, offset, size, plus = page.key
                pos, page.linked, page.next_offset = self._make(nodeid, offset, size, plus, self._buf)
                page.body = bytes(self._buf[:pos])
                page.made_at = time.monotonic()
            except Exception as exc:  # the request makes the page itself, and answers the error
                log.debug("listing ahead of %s failed: %s", page.key, exc)
                page.failed = True
            finally:
                page.done.set()
            if page.next_offset and not page.failed:
                self.want(nodeid, page.next_offset, size, plus)  # up to AHEAD_DEPTH pages ahead


# -- the session ---------------------------------------------------------------------------------------


_FS_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())  # what os.fsencode uses


class _Worker:
    """A reader thread's fd and buffers (reused for every request it serves)."""

    __slots__ = ("fd", "buf", "view", "out", "out_view")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray(IN_BUFFER_BYTES)
        self.view = memoryview(self.buf)
        self.out = bytearray(OUT_BUFFER_BYTES)
        self.out_view = memoryview(self.out)


Handler = Callable[[_Worker, int, int, memoryview], Any]


class _Session:
    """One FUSE connection: INIT, the workers, the handlers. See the module docstring."""

    def __init__(self, fs: EncordFS, fd: int, timeouts: Timeouts, *, passthrough: bool, debug: bool) -> None:
        self.fs = fs
        self.fd = fd
        self.want_passthrough = passthrough
        self.debug = debug
        self.entry_valid = _valid(timeouts.entry_s)
        self.attr_valid = _valid(timeouts.attr_s)
        self.negative_valid = _valid(timeouts.negative_s)
        self.minor = 0
        self.flags = 0
        self.setxattr_ext = False
        # Folders whose last listing through us went on without attributes past its first page (a plain
        # READDIR: ``ls -f``, ``find``): the kernel holds no entry for most of their children (``_opendir``).
        self.listed_plain: set[int] = set()
        self.ahead = _ListAhead(self._fill_page, lambda: self.fs.listing_version)
        self.passthrough: _Passthrough | None = None
        self.notifier: _Notifier | None = None
        self.workers: list[threading.Thread] = []
        self.worker_fds: list[int] = []
        self.finished = threading.Event()
        self._alive = 0
        self._alive_lock = threading.Lock()
        self._lead = threading.Lock()  # held by the one worker reading requests (see ``_loop``)
        # Interruptible requests being served off the reading thread (they may wait): unique -> the fd
        # they came on (a reply is taken only there), for ``_interrupt``. Plain dict operations: atomic.
        self._waiting: dict[int, int] = {}
        self._handlers: dict[int, Handler] = {}

    # -- INIT ------------------------------------------------------------------------------------------
    def init(self) -> None:
        """Read the kernel's INIT and answer it (on the calling thread, before any worker starts)."""
        worker = _Worker(self.fd)
        while True:
            try:
                n = os.readv(self.fd, [worker.buf])
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                raise errors.FsError(f"the kernel ended the FUSE connection before INIT: {exc.strerror}") from None
            _, opcode, unique, _, _, _, _, _, _ = abi.IN_HEADER.unpack_from(worker.buf)
            if opcode != Op.INIT:
                raise errors.FsError(f"expected INIT from the kernel, got opcode {opcode}")
            if self._answer_init(unique, worker.view[abi.IN_HEADER.size : n]):
                if self.passthrough is not None:  # (the kernel took our INIT reply: it may now take backing files)
                    self.passthrough.probe()
                return

    def _answer_init(self, unique: int, arg: memoryview) -> bool:
        major, minor, max_readahead, flags = abi.INIT_IN.unpack_from(arg)
        if major > abi.KERNEL_MAJOR:  # the kernel sends INIT again with our major
            self._write_init(unique, abi.KERNEL_MAJOR, abi.KERNEL_MINOR, 0, 0)
            return False
        if major < abi.KERNEL_MAJOR or minor < abi.MIN_MINOR:
            os.write(self.fd, abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno.EPROTO, unique))
            raise errors.FsError(f"the kernel's FUSE protocol {major}.{minor} is older than 7.{abi.MIN_MINOR}")
        if flags & abi.INIT_EXT and len(arg) >= abi.INIT_IN.size + 4:
            flags |= abi.INIT_IN_FLAGS2.unpack_from(arg, abi.INIT_IN.size)[0] << 32
        wanted = WANTED | (abi.PASSTHROUGH if self.want_passthrough else 0)
        granted = wanted & flags
        if not flags & abi.INIT_EXT:
            granted &= 0xFFFFFFFF
        self.minor = min(minor, abi.KERNEL_MINOR)
        self.flags = granted
        self.setxattr_ext = bool(granted & abi.SETXATTR_EXT)
        if granted & abi.PASSTHROUGH:
            self.passthrough = _Passthrough(self.fd, on_refused=self._passthrough_refused)
            self.fs.backing_files = True  # the core now hands out complete cache files at open
        missing = [name for bit, name in abi.INIT_FLAG_NAMES.items() if wanted & bit and not granted & bit]
        log.info(
            "kernel binding: FUSE protocol 7.%d (kernel 7.%d), passthrough %s%s",
            self.minor,
            minor,
            "offered" if granted & abi.PASSTHROUGH else "off",
            f"; not offered, served without: {', '.join(missing)}" if missing else "",
        )
        log.debug(
            "INIT: kernel offered flags %#x; granted %s; max_readahead %d, max_pages %d, %d workers",
            flags,
            ", ".join(name for bit, name in abi.INIT_FLAG_NAMES.items() if granted & bit),
            max_readahead,
            MAX_PAGES if granted & abi.MAX_PAGES else 32,
            WORKERS,
        )
        self._write_init(unique, abi.KERNEL_MAJOR, self.minor, max_readahead, granted)
        return True

    def _write_init(self, unique: int, major: int, minor: int, max_readahead: int, flags: int) -> None:
        body = abi.INIT_OUT.pack(
            major,
            minor,
            max_readahead,
            flags & 0xFFFFFFFF,
            MAX_BACKGROUND,
            MAX_BACKGROUND * 3 // 4,
            MAX_WRITE,
            1,  # time_gran: nanoseconds
            MAX_PAGES if flags & abi.MAX_PAGES else 0,
            0,
            flags >> 32,
            MAX_STACK_DEPTH if flags & abi.PASSTHROUGH else 0,
            0,
        )
        os.write(self.fd, abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(body), 0, unique) + body)

    # -- serving ---------------------------------------------------------------------------------------
    def start(self, workers: int = WORKERS) -> None:
        self._handlers = self._handler_table()
        self.notifier = _Notifier(self.fd, self.passthrough)
        self.notifier.start()
        self.fs.on_invalidate = self._invalidated
        if self.passthrough is not None:
            notifier = self.notifier
            self.fs.watch_backing_drops(lambda name: notifier.put(_BACKING_DROPPED, 0, name))
        self.ahead.start()
        self.fs.binding_status = self.status
        fds = self._clone_fds(workers)
        self._alive = len(fds)
        for i, fd in enumerate(fds):
            thread = threading.Thread(target=self._loop, args=(_Worker(fd),), name=f"encordfs-fuse-{i}", daemon=True)
            self.workers.append(thread)
            thread.start()

    def _clone_fds(self, count: int) -> list[int]:
        fds: list[int] = []
        for _ in range(count):
            try:
                fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                log.info("cannot clone the FUSE fd (%s): the workers share one", exc.strerror)
                break
            try:
                fcntl.ioctl(fd, abi.FUSE_DEV_IOC_CLONE, abi.U32.pack(self.fd))
            except OSError as exc:
                os.close(fd)
                log.info("cannot clone the FUSE fd (%s): the workers share one", exc.strerror)
                break
            fds.append(fd)
        self.worker_fds = list(fds)
        return fds + [self.fd] * (count - len(fds))

    def stop(self) -> None:
        """After the workers: no more invalidations, backing ids closed, cloned fds closed."""
        self.fs.on_invalidate = None
        self.fs.binding_status = None
        self.ahead.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if self.passthrough is not None:
            self.passthrough.close_all()
        for fd in self.worker_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.worker_fds = []

    def status(self) -> dict[str, Any]:
        pt = self.passthrough
        enabled = pt is not None and pt.usable
        if not self.want_passthrough:
            off = "turned off (--no-passthrough)"
        elif pt is None:
            off = f"not offered by the kernel (FUSE 7.{self.minor})"
        else:
            off = f"refused by the kernel ({pt.refused})"
        return {
            "binding": "kernel",
            "passthrough": {
                "enabled": enabled,
                **({} if enabled else {"off": off}),
                **(pt.status() if pt is not None else {"opens": 0, "backing_ids": 0, "inodes": 0}),
            },
            "listing_ahead": {"used": self.ahead.used, "unused": self.ahead.unused},
        }

    def _invalidated(self, kind: str, parent: int, what: str | int) -> None:
        """``EncordFS.on_invalidate``: pages made ahead may hold what changed; the kernel is told."""
        self.ahead.clear()
        if self.notifier is not None:
            self.notifier.put(kind, parent, what)

    def _loop(self, w: _Worker) -> None:
        """Leader/follower: the worker holding ``_lead`` reads the next request and serves it inline
        when it cannot wait on anything slow, so a stream of lookups, getattrs and listings costs no
        thread switch at all (handing every request to another thread doubled the CPU per request:
        a wakeup and two GIL transfers each). Before a request that may wait (``_may_wait``) it hands
        reading to a parked worker and serves it on its own; then it parks until it leads again."""
        lead = self._lead
        lead.acquire()
        try:
            while True:
                try:
                    n = os.readv(w.fd, [w.buf])
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue  # ENOENT: the request was interrupted before we read it
                    if exc.errno != errno.ENODEV:  # ENODEV: unmounted, the connection is over
                        log.error("reading /dev/fuse failed: %s", exc.strerror)
                    return  # the next leader reads ENODEV too, and so on
                if n < abi.IN_HEADER.size or not self._may_wait(w.buf):
                    self._serve_safely(w, n)
                elif not self._read_held(w, n):  # else answered already
                    _, opcode, unique, _ = _HEAD.unpack_from(w.buf)
                    if opcode in INTERRUPTIBLE_OPS:
                        self._waiting[unique] = w.fd  # before another worker can read its INTERRUPT
                    lead.release()
                    try:
                        self._serve_safely(w, n)
                    finally:
                        self._waiting.pop(unique, None)
                        lead.acquire()
        finally:
            lead.release()
            with self._alive_lock:
                self._alive -= 1
                if self._alive == 0:
                    self.finished.set()

    def _passthrough_refused(self) -> None:
        self.fs.backing_files = False  # no more backing fds per open for nothing

    def _may_wait(self, buf: bytearray) -> bool:
        """Whether a request may wait for the network, the disk or another request: reads (bytes may
        have to be fetched), journaled changes, fsync, names or listings of a folder never loaded, and opens
        whose file is not known complete on disk (``EncordFS.open_may_wait``)."""
        _, opcode, _, nodeid = _HEAD.unpack_from(buf)
        if opcode in SLOW_OPS:
            return True
        if opcode == Op.OPEN:
            return self.fs.open_may_wait(nodeid)
        return opcode in FOLDER_OPS and self.fs.would_wait(nodeid)

    def _read_held(self, w: _Worker, n: int) -> bool:
        """Answer a READ here if its bytes are in memory now (``EncordFS.read_held``: a small file read
        through the mount, prefetched or read before, or a part of a big file that readahead has
        fetched): True when answered, and then only here. Handing such a read to another worker cost a
        wakeup and two GIL handoffs for a copy from memory. A cold 1 GiB read made 10,229 thread switches
        before this and the aligned part buffers, 6,020 after (scratch ``p1ab.py``, medians of four)."""
        _, opcode, unique, _ = _HEAD.unpack_from(w.buf)
        if opcode != Op.READ or n < abi.IN_HEADER.size + abi.READ_IN.size:
            return False
        fh, offset, size, _ = abi.READ_IN.unpack_from(w.buf, abi.IN_HEADER.size)
        try:
            data = self.fs.read_held(fh, offset, size)
        except Exception:  # (never expected: the normal path answers, with the errno)
            log.exception("internal error in a READ answered from memory")
            return False
        if data is None:
            return False
        self._send(w, _data_reply(unique, data))
        return True

    def _serve_safely(self, w: _Worker, n: int) -> None:
        try:
            self._serve(w, n)
        except Exception:  # a failure to answer must neither end the worker nor leave the kernel waiting
            log.exception("FUSE worker error")
            if n >= abi.IN_HEADER.size:  # (a second answer to a request is refused by the kernel: harmless)
                self._send(w, abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno.EIO, _HEAD.unpack_from(w.buf)[2]))

    def _serve(self, w: _Worker, n: int) -> None:
        """One request: the one place where errors become errnos."""
        if n < abi.IN_HEADER.size:
            log.error("short FUSE request (%d bytes) ignored", n)
            return
        _, opcode, unique, nodeid, _, _, _, _, _ = abi.IN_HEADER.unpack_from(w.buf)
        arg = w.view[abi.IN_HEADER.size : n]
        if self.debug:
            log.debug("%s node %d (unique %d)", _op_name(opcode), nodeid, unique)
        try:
            reply = self._handlers.get(opcode, self._enosys)(w, unique, nodeid, arg)
        except errors.FsError as exc:
            log.log(log_level(exc), "%s: %s", _op_name(opcode), exc)
            reply = abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -exc.errno, unique)
        except (_Malformed, struct.error, UnicodeError) as exc:
            log.error("cannot parse a %s request (%d bytes): %s", _op_name(opcode), n, exc)
            reply = abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno.EIO, unique)
        except Exception:
            log.exception("internal error in %s", _op_name(opcode))
            reply = abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno.EIO, unique)
        if reply is not None:
            self._send(w, reply)

    def _send(self, w: _Worker, reply: Any) -> bool:
        """Write a reply; False when the kernel no longer waits for it (interrupted, or unmounted)."""
        try:
            if isinstance(reply, list):
                os.writev(w.fd, reply)
            else:
                os.write(w.fd, reply)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("writing a FUSE reply failed: %s", exc.strerror)
            return False

    def _handler_table(self) -> dict[int, Handler]:
        table: dict[int, Handler] = {
            Op.LOOKUP: self._lookup,
            Op.FORGET: self._forget,
            Op.BATCH_FORGET: self._batch_forget,
            Op.GETATTR: self._getattr,
            Op.SETATTR: self._setattr,
            Op.OPEN: self._open,
            Op.READ: self._read,
            Op.RELEASE: self._release,
            Op.FLUSH: self._ok,
            Op.FSYNC: self._fsync,
            Op.OPENDIR: self._opendir,
            Op.READDIR: self._readdir,
            Op.READDIRPLUS: self._readdirplus,
            Op.RELEASEDIR: self._ok,
            Op.FSYNCDIR: self._ok,
            Op.STATFS: self._statfs,
            Op.GETXATTR: self._getxattr,
            Op.LISTXATTR: self._listxattr,
            Op.SETXATTR: self._setxattr,
            Op.REMOVEXATTR: self._removexattr,
            Op.RENAME: self._rename,
            Op.RENAME2: self._rename2,
            Op.INTERRUPT: self._interrupt,
            Op.NOTIFY_REPLY: self._no_reply,
            Op.DESTROY: self._destroy,
        }
        for op in READ_ONLY_OPS:
            table[op] = self._read_only
        table[Op.WRITE] = self._write  # the core refuses it for anything but the hints control file
        return table

    # -- replies shared by several opcodes -------------------------------------------------------------
    @staticmethod
    def _ok(w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)

    @staticmethod
    def _no_reply(w: _Worker, unique: int, nodeid: int, arg: memoryview) -> None:
        return None

    @staticmethod
    def _enosys(w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno.ENOSYS, unique)

    @staticmethod
    def _read_only(w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        raise errors.ReadOnly("the mount mirrors Encord: contents and the tree cannot be changed")

    def _entry(self, unique: int, attr: Attr) -> bytes:
        ev, evn = self.entry_valid
        av, avn = self.attr_valid
        return abi.ENTRY_REPLY.pack(abi.ENTRY_REPLY.size, 0, unique, attr.ino, 0, ev, av, evn, avn, *_attr_fields(attr))

    def _attr(self, unique: int, attr: Attr) -> bytes:
        av, avn = self.attr_valid
        return abi.ATTR_REPLY.pack(abi.ATTR_REPLY.size, 0, unique, av, avn, 0, *_attr_fields(attr))

    # -- names and attributes --------------------------------------------------------------------------
    def _lookup(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes | None:
        name = _name(arg)
        try:
            attr = self.fs.lookup_attr(nodeid, name)
        except errors.NotFound:
            nv, nvn = self.negative_valid
            if nv == 0 and nvn == 0:
                raise
            return abi.ENTRY_REPLY.pack(abi.ENTRY_REPLY.size, 0, unique, 0, 0, nv, 0, nvn, 0, *_NO_ATTR)
        reply = self._entry(unique, attr)
        pt = self.passthrough
        if pt is None:
            return reply
        counted = pt.looked_up([attr.ino])  # before the kernel can forget it; undone if the reply is lost
        if not self._send(w, reply) and counted:
            pt.looked_up(counted, -1)
        return None

    def _interrupt(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> None:
        """INTERRUPT (no answer of its own): a request still waiting here whose opcode is in
        ``INTERRUPTIBLE_OPS`` is answered EINTR now, on the fd it came from, so its caller returns at
        once (the kernel waits for an answer to a request it has handed over, whatever the signal). Its
        worker goes on and its answer is refused (ENOENT, ignored): an OPEN's handle is then closed, as
        for any open whose caller went away. Other requests run to completion."""
        (interrupted,) = abi.INTERRUPT_IN.unpack_from(arg)
        fd = self._waiting.get(interrupted)
        if fd is None:
            return None
        try:
            os.write(fd, abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno.EINTR, interrupted))
        except OSError:  # answered meanwhile (ENOENT), or unmounted
            pass
        return None

    def _forget(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> None:
        if self.passthrough is not None:
            self.passthrough.forget(nodeid, abi.FORGET_IN.unpack_from(arg)[0])

    def _batch_forget(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> None:
        pt = self.passthrough
        if pt is None:
            return
        count, _ = abi.BATCH_FORGET_IN.unpack_from(arg)
        for i in range(count):
            ino, nlookup = abi.FORGET_ONE.unpack_from(arg, abi.BATCH_FORGET_IN.size + i * abi.FORGET_ONE.size)
            pt.forget(ino, nlookup)

    def _getattr(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        return self._attr(unique, self.fs.getattr(nodeid))

    def _setattr(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        valid, _, _, size = abi.SETATTR_IN.unpack_from(arg)
        changes = valid & abi.FATTR_CHANGES
        if changes == abi.FATTR_SIZE:  # truncate: the core refuses it but for the hints control file
            self.fs.truncate(nodeid, size)
        elif changes:  # chmod, chown, utimes: refused, as with libfuse
            raise errors.ReadOnly("attributes cannot be changed")
        return self._attr(unique, self.fs.getattr(nodeid))

    def _statfs(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        s = self.fs.statfs()
        return abi.STATFS_REPLY.pack(
            abi.STATFS_REPLY.size,
            0,
            unique,
            s["f_blocks"],
            s["f_bfree"],
            s["f_bavail"],
            s["f_files"],
            s["f_ffree"],
            s["f_bsize"],
            s["f_namemax"],
            s["f_frsize"],
            0,
            *(0,) * 6,
        )

    # -- files -----------------------------------------------------------------------------------------
    def _open(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> None:
        flags, _ = abi.OPEN_IN.unpack_from(arg)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        pt = self.passthrough
        opened = self.fs.open(nodeid, writable, pt.held_key(nodeid) if pt is not None else None)
        try:
            open_flags, backing_id = self._open_mode(nodeid, opened)
        except BaseException:
            self.fs.release(opened.fh)
            raise
        reply = abi.OPEN_REPLY.pack(abi.OPEN_REPLY.size, 0, unique, opened.fh, open_flags, backing_id)
        if not self._send(w, reply):  # the opener is gone: nobody will release this handle
            self._close_handle(opened.fh)
        return None

    def _open_mode(self, ino: int, opened: OpenFile) -> tuple[int, int]:
        if opened.direct_io:
            return abi.FOPEN_DIRECT_IO | abi.FOPEN_NOFLUSH, 0
        backing_id = 0
        if self.passthrough is not None:
            backing_id = self.passthrough.open(ino, opened.fh, opened.backing_fd, opened.backing_key)
        if backing_id:
            return abi.FOPEN_PASSTHROUGH | abi.FOPEN_NOFLUSH, backing_id
        if opened.bypass_page_cache and self.flags & abi.DIRECT_IO_ALLOW_MMAP:  # shared mmaps keep working
            self.fs.opened_direct(opened.fh)
            return abi.FOPEN_DIRECT_IO | abi.FOPEN_NOFLUSH, 0
        # content identity is in the block cache key; unchanged files stay in the page cache
        return abi.FOPEN_KEEP_CACHE | abi.FOPEN_NOFLUSH, 0

    def _read(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> list[Any]:
        fh, offset, size, _ = abi.READ_IN.unpack_from(arg)
        data = self.fs.read(fh, offset, size)
        return _data_reply(unique, data)

    def _write(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        fh, offset, size, _, _, _, _ = abi.WRITE_IN.unpack_from(arg)
        data = arg[abi.WRITE_IN.size : abi.WRITE_IN.size + size]
        if len(data) != size:
            raise _Malformed(f"WRITE of {size} bytes carries {len(data)}")
        written = self.fs.write(fh, offset, data)
        return abi.WRITE_REPLY.pack(abi.WRITE_REPLY.size, 0, unique, written, 0)

    def _release(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        fh, _, _ = abi.RELEASE_IN.unpack_from(arg)
        self._close_handle(fh)
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)

    def _close_handle(self, fh: int) -> None:
        if self.passthrough is not None:
            self.passthrough.release(fh)
        self.fs.release(fh)

    def _fsync(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        fh, _, _ = abi.FSYNC_IN.unpack_from(arg)
        self.fs.fsync(fh)
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)

    # -- folders ---------------------------------------------------------------------------------------
    def _opendir(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        """A fresh catalog folder's listing is kept by the kernel (``FOPEN_CACHE_DIR``) and reused by the
        next opens while it stays fresh (``FOPEN_KEEP_CACHE``): a warm ``find`` or ``ls`` lists from the
        page cache. Anything else is listed here each time (and drops a kept copy): ``EncordFS.listing_cache``.

        A kept listing is names only: an ``ls -l`` of it stats every entry, one LOOKUP each unless the kernel
        still holds the entry. It does after a listing that carried attributes (READDIRPLUS: the kernel asks
        for them after its first page only when the lister stats what it reads), not after a plain one
        (``ls -f``, ``find``): then the copy is dropped and the next listing comes here, where an ``ls -l``
        gets READDIRPLUS pages (a million LOOKUPs took 7 times as long)."""
        how = self.fs.listing_cache(nodeid)
        if how == "keep" and nodeid in self.listed_plain:
            how = "fill"
        flags = 0 if how is None else abi.FOPEN_CACHE_DIR | (abi.FOPEN_KEEP_CACHE if how == "keep" else 0)
        return abi.OPEN_REPLY.pack(abi.OPEN_REPLY.size, 0, unique, 0, flags, 0)

    def _readdir(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> memoryview | None:
        return self._list(w, unique, nodeid, arg, plus=False)

    def _readdirplus(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> memoryview | None:
        return self._list(w, unique, nodeid, arg, plus=True)

    def _list(self, w: _Worker, unique: int, nodeid: int, arg: memoryview, *, plus: bool) -> memoryview | None:
        """Entries from the kernel's offset into the worker's buffer, as many as fit in ``size``.
        Offsets: "." 1, ".." 2, a child its inode + 2 (children come in inode order). A full page has
        the next one made ahead (``_ListAhead``)."""
        _, offset, size, _ = abi.READ_IN.unpack_from(arg)
        size = min(size, OUT_BUFFER_BYTES - abi.OUT_HEADER.size)
        if offset == 0:
            self.listed_plain.discard(nodeid)
        out, start = w.out, abi.OUT_HEADER.size
        page = self.ahead.take(nodeid, offset, size, plus) if offset > 2 else None
        if page is not None:
            pos = start + len(page.body)
            out[start:pos] = page.body
            linked, next_offset = page.linked, page.next_offset
        else:
            pos, linked, next_offset = self._fill_page(nodeid, offset, size, plus, out, start)
        if next_offset:
            self.ahead.want(nodeid, next_offset, size, plus)
        if not plus and offset > 0 and pos > start:  # a page of names past the first
            self.listed_plain.add(nodeid)
        abi.OUT_HEADER.pack_into(out, 0, pos, 0, unique)
        reply = w.out_view[:pos]
        pt = self.passthrough
        if pt is None or not linked:
            return reply
        counted = pt.looked_up(linked)  # the kernel links every entry it is given (ignoring "." and "..")
        if not self._send(w, reply) and counted:
            pt.looked_up(counted, -1)
        return None

    def _fill_page(
        self, nodeid: int, offset: int, size: int, plus: bool, out: bytearray, start: int = 0
    ) -> tuple[int, list[int], int]:
        """A listing page from ``offset`` into ``out`` from ``start``, at most ``size`` bytes: (its end,
        the inodes whose entries the kernel will link, and the offset of the page after it when this
        one is full, else 0). Errors are raised before anything is written."""
        after = max(0, offset - 2)
        stats = self.fs.readdir_stats(nodeid, after) if plus else None
        children: Iterator[Any] = cast(  # readdir_stats: a catalog folder or a value folder, see _pack_stats
            "Iterator[Any]",
            stats
            if stats is not None
            else self.fs.readdir(nodeid, after)
            if plus
            else self.fs.readdir_names(nodeid, after),
        )
        end = start + size
        pos = start
        linked: list[int] = []
        full = False
        last = 0  # the inode of the last child packed: the next page starts after it
        fixed = abi.DIRENTPLUS if plus else abi.DIRENT
        # (name, d_ino, type, offset); as libfuse lists them: ".." has no inode or type of its own here
        dots = [(b".", nodeid, stat.S_IFDIR >> DT_SHIFT, 1), (b"..", abi.UNKNOWN_INO, 0, 2)][offset:]
        ev, evn = self.entry_valid
        av, avn = self.attr_valid
        try:
            for raw, ino, dtype, off in dots:
                reclen = abi.align8(fixed.size + len(raw))
                if pos + reclen > end:
                    break
                if plus:  # node id 0: the kernel links no entry for these
                    fixed.pack_into(out, pos, 0, 0, 0, 0, 0, 0, *_NO_ATTR, ino, off, len(raw), dtype)
                else:
                    fixed.pack_into(out, pos, ino, off, len(raw), dtype)
                out[pos + fixed.size : pos + fixed.size + len(raw)] = raw
                pos += reclen
            else:
                if stats is not None:
                    pos, full = self._pack_stats(stats, out, pos, end, linked)
                elif plus:
                    for name, attr in children:
                        raw = os.fsencode(name)
                        reclen = abi.align8(fixed.size + len(raw))
                        if pos + reclen > end:
                            full = True
                            break
                        dtype = stat.S_IFMT(attr.mode) >> DT_SHIFT
                        fixed.pack_into(
                            out, pos, attr.ino, 0, ev, av, evn, avn, *_attr_fields(attr),
                            attr.ino, attr.ino + 2, len(raw), dtype,
                        )  # fmt: skip
                        linked.append(attr.ino)
                        out[pos + fixed.size : pos + fixed.size + len(raw)] = raw
                        pos += reclen
                else:
                    pos, full, last = self._pack_names(children, out, pos, end)
        finally:
            close = getattr(children, "close", None)
            if close is not None:
                close()  # gives the catalog's connection back now
        if plus and linked:
            last = linked[-1]
        return pos, linked, last + 2 if full and last else 0

    @staticmethod
    def _pack_names(names: Iterator[tuple[str, int, int]], out: bytearray, pos: int, end: int) -> tuple[int, bool, int]:
        """READDIR entries from ``EncordFS.readdir_names`` into ``out`` from ``pos`` up to ``end``: (the new
        end, whether an entry was left out for want of room, the inode of the last entry packed). No call
        per entry but the two packs (``ls -f`` of a million rows spends its time here)."""
        fixed = abi.DIRENT
        size_fixed, pack = fixed.size, fixed.pack_into
        encoding, errors_ = _FS_ENCODING
        last = 0
        for name, ino, is_dir in names:
            raw = name.encode(encoding, errors_)  # os.fsencode without its Python frame
            n = len(raw)
            reclen = (size_fixed + n + 7) & ~7  # abi.align8
            if pos + reclen > end:
                return pos, True, last
            pack(out, pos, ino, ino + 2, n, DT_DIR if is_dir else DT_REG)
            out[pos + size_fixed : pos + size_fixed + n] = raw
            pos += reclen
            last = ino
        return pos, False, last

    def _pack_stats(
        self, stats: Iterator[tuple[str, int, bool, int, float]], out: bytearray, pos: int, end: int, linked: list[int]
    ) -> tuple[int, bool]:
        """READDIRPLUS entries from ``EncordFS.readdir_stats`` into ``out`` from ``pos`` up to ``end``;
        returns the new end and whether an entry was left out for want of room. The same fields as ``_attr_fields`` of the entry's ``Attr``, packed without
        building one (a third of the cost per entry: 1 µs against 2.8 here)."""
        fixed = abi.DIRENTPLUS
        size_fixed, pack = fixed.size, fixed.pack_into
        ev, evn = self.entry_valid
        av, avn = self.attr_valid
        dir_mode, file_mode, uid, gid = self.fs.entry_modes
        encoding, errors_ = _FS_ENCODING
        for name, ino, is_dir, size, mtime in stats:
            raw = name.encode(encoding, errors_)  # os.fsencode without its Python frame
            n = len(raw)
            reclen = (size_fixed + n + 7) & ~7  # abi.align8
            if pos + reclen > end:
                return pos, True
            sec, nsec = divmod(int(mtime * 1e9), 1_000_000_000)  # timespec()
            if is_dir:
                pack(out, pos, ino, 0, ev, av, evn, avn, ino, 0, 0, sec, sec, sec, nsec, nsec, nsec, dir_mode, 2,
                     uid, gid, 0, BLKSIZE, 0, ino, ino + 2, n, DT_DIR)  # fmt: skip
            else:
                pack(out, pos, ino, 0, ev, av, evn, avn, ino, size, (size + 511) >> 9, sec, sec, sec, nsec, nsec,
                     nsec, file_mode, 1, uid, gid, 0, BLKSIZE, 0, ino, ino + 2, n, DT_REG)  # fmt: skip
            linked.append(ino)
            out[pos + size_fixed : pos + size_fixed + n] = raw
            pos += reclen
        return pos, False

    # -- extended attributes ---------------------------------------------------------------------------
    @staticmethod
    def _sized(unique: int, value: bytes, size: int) -> Any:
        """The getxattr/listxattr size protocol: 0 asks for the size; too small is ERANGE."""
        if size == 0:
            return abi.GETXATTR_REPLY.pack(abi.GETXATTR_REPLY.size, 0, unique, len(value), 0)
        if len(value) > size:
            return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno.ERANGE, unique)
        return [abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(value), 0, unique), value]

    def _getxattr(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> Any:
        size, _ = abi.GETXATTR_IN.unpack_from(arg)
        name = _name(arg[abi.GETXATTR_IN.size :])
        if is_foreign_xattr(name):  # security.*, system.*: ls -l asks for every entry
            return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno.ENOTSUP, unique)
        return self._sized(unique, self.fs.getxattr(nodeid, name), size)

    def _listxattr(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> Any:
        size, _ = abi.GETXATTR_IN.unpack_from(arg)
        names = b"".join(os.fsencode(n) + b"\0" for n in self.fs.listxattr(nodeid))
        return self._sized(unique, names, size)

    def _setxattr(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        head = abi.SETXATTR_EXT_IN if self.setxattr_ext else abi.SETXATTR_IN
        size, flags = head.unpack_from(arg)[:2]
        rest = arg[head.size :].tobytes()
        end = rest.find(b"\0")
        if end < 0 or len(rest) < end + 1 + size:
            raise _Malformed("setxattr: name or value cut short")
        self.fs.setxattr(nodeid, os.fsdecode(rest[:end]), rest[end + 1 : end + 1 + size], flags)
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)

    def _removexattr(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        self.fs.removexattr(nodeid, _name(arg))
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)

    # -- renames and the end -----------------------------------------------------------------------------
    def _rename(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        (newdir,) = abi.RENAME_IN.unpack_from(arg)
        old, new = _two_names(arg[abi.RENAME_IN.size :])
        self.fs.rename(nodeid, old, newdir, new)
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)

    def _rename2(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        newdir, flags, _ = abi.RENAME2_IN.unpack_from(arg)
        if flags & ~abi.RENAME_NOREPLACE:  # RENAME_EXCHANGE, RENAME_WHITEOUT
            raise errors.InvalidValue("renameat2: only RENAME_NOREPLACE is supported")
        old, new = _two_names(arg[abi.RENAME2_IN.size :])
        self.fs.rename(nodeid, old, newdir, new)  # an existing target is refused anyway (EEXIST)
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)

    def _destroy(self, w: _Worker, unique: int, nodeid: int, arg: memoryview) -> bytes:
        if self.passthrough is not None:
            self.passthrough.close_all()
        return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, 0, unique)


def _data_reply(unique: int, data: bytes | memoryview) -> list[Any]:
    """A READ's answer: the header and the bytes, written together (``os.writev``, no copy)."""
    return [abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(data), 0, unique), data]


def _op_name(opcode: int) -> str:
    try:
        return Op(opcode).name
    except ValueError:
        return f"opcode {opcode}"


# -- entry point -----------------------------------------------------------------------------------------


def run(fs: EncordFS, mountpoint: str, *, timeouts: Timeouts, flags: MountFlags) -> None:
    """Mount and serve until unmounted (or SIGTERM/SIGINT/SIGHUP, which unmount). Raises
    ``errors.FsError`` when the mount cannot start. ``flags.foreground`` is always true here: the CLI
    detaches by starting a foreground process."""
    signalled = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # from before the mount serves anything
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[sig] = signal.signal(sig, lambda *_: signalled.set())
    try:
        mounted = _mount(mountpoint, read_only=flags.read_only, allow_other=flags.allow_other)
        session = _Session(fs, mounted.fd, timeouts, passthrough=flags.passthrough, debug=flags.debug)
        try:
            session.init()
            session.start()
            _wait(session, mounted, signalled)
        finally:
            session.stop()
            mounted.close()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _wait(session: _Session, mounted: _Mount, signalled: threading.Event) -> None:
    """Until the kernel ends the connection; a signal unmounts first."""
    while not session.finished.wait(0.2):
        if signalled.is_set():
            log.info("signal received: unmounting %s", mounted.path)
            mounted.unmount()
            if not session.finished.wait(UNMOUNT_GRACE_S):
                log.warning("files are still open on %s: exiting anyway", mounted.path)
            return
