"""The pyfuse3 FUSE adapter: the only module that imports pyfuse3 and trio (optional extra ``pyfuse3``).

Same contract as ``encordfs.fuse`` (mfusepy), but over libfuse's low-level, inode-based API, so the
kernel's inode numbers go straight to ``EncordFS`` with no path resolution, and directory listings
are answered with READDIRPLUS: every entry carries its full attributes and entry/attr timeouts,
so ``ls -l`` of a folder costs its readdir calls and no lookup per entry.

It translates and nothing else. Errno is decided in one place (``_translated``): ``errors.FsError``
becomes ``pyfuse3.FUSEError(errno)``; anything else is logged once and answers EIO.

Concurrency: pyfuse3 runs every request as a trio task on one thread. The core is synchronous and
may block on the network (loading a folder, fetching a block), so core calls run in worker
threads (``trio.to_thread.run_sync``, at most ``WORKER_THREADS`` at once): a slow call never stalls
the loop. The exceptions run inline, on the loop: ``getattr``, ``opendir``, ``open`` and ``release``
only read one catalog row or touch the handle table (no network: a file's URL is signed at its
first read), and a thread hop costs ten times the call (measured here: a catalog ``getattr`` 7.6 µs
inline, 79 µs through ``trio.to_thread``; ``cat`` of 2,000 cached files with 8 readers 1.0–1.5 s with
open/release in threads). Everything that may load a folder or fetch bytes goes to a thread.

Readdir offsets: "." → 1, ".." → 2, a child → its inode + 2 (the core lists children in inode order
and resumes after an inode, so offsets only grow and survive inserts and deletes between calls).
Each call streams from the core in batches of ``READDIR_BATCH`` entries until the kernel's buffer
is full (``readdir_reply`` returns False), then drops the stream. "." and ".." carry the folder's
own attributes: the kernel never links them from a READDIRPLUS reply (``stat ..`` looks the real
parent up), only ``ls -ai`` shows the folder's inode for "..".

Lookup counts: the catalog keeps inodes for the life of the mount, so ``forget`` has nothing to do.

Shutdown: ``fusermount3 -u`` makes ``pyfuse3.main`` return; SIGINT, SIGTERM and SIGHUP end it
through ``pyfuse3.terminate``. Either way the session is closed (and unmounted if still mounted)
and the core closed, as the mfusepy adapter does in ``destroy``.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from encordfs import errors
from encordfs.core.fs import Attr, EncordFS
from encordfs.core.xattrs import is_foreign as is_foreign_xattr

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")

# Core calls in flight at once. Each may wait on the network (a folder load, a block fetch); 16 keeps
# a few slow calls from starving the rest while staying far below what the GIL can make use of.
WORKER_THREADS = 16
# Request tasks pyfuse3 may run at once (each mostly waits on a worker thread).
MAX_TASKS = 64
# Entries taken from the core per worker-thread call while filling one readdir reply.
READDIR_BATCH = 512
_OFFSET_BASE = 2  # readdir offsets 1 and 2 are "." and ".."; a child's is its inode + 2
_BLKSIZE = 131072


def _translated(func: F) -> F:
    """Run a request handler; FsError → FUSEError(errno); anything else is logged once and answers EIO."""

    @functools.wraps(func)
    async def wrapper(*args: Any) -> Any:
        try:
            return await func(*args)
        except pyfuse3.FUSEError:
            raise
        except errors.FsError as exc:
            # A user's mistake (EINVAL, EPERM, EROFS, ...) is answered, not logged loudly; failures of
            # ours or of the network are.
            level = logging.WARNING if exc.errno in (errno.EIO, errno.ESTALE, errno.EACCES) else logging.DEBUG
            log.log(level, "%s: %s", func.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("internal error in %s", func.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _read_only_op(name: str) -> Callable[..., Awaitable[Any]]:
    async def refuse(self: Any, *_: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    refuse.__name__ = name
    return refuse


class Pyfuse3Operations(pyfuse3.Operations):
    supports_dot_lookup = False  # no NFS export: "." and ".." are never looked up by name
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: EncordFS, *, attr_timeout_s: float, entry_timeout_s: float, negative_timeout_s: float) -> None:
        super().__init__()
        self.fs = fs
        self.attr_timeout_s = attr_timeout_s
        self.entry_timeout_s = entry_timeout_s
        self.negative_timeout_s = negative_timeout_s
        self._limiter: trio.CapacityLimiter | None = None  # made inside the trio run

    async def _core(self, func: Callable[..., T], *args: Any) -> T:
        """Run a (possibly blocking) core call in a worker thread."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(WORKER_THREADS)
        return await trio.to_thread.run_sync(func, *args, limiter=self._limiter)

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.entry_timeout = self.entry_timeout_s
        e.attr_timeout = self.attr_timeout_s
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_size = a.size
        e.st_blksize = _BLKSIZE
        e.st_blocks = (a.size + 511) // 512
        mtime_ns = int(a.mtime * 1e9)
        e.st_mtime_ns = mtime_ns
        e.st_atime_ns = mtime_ns
        e.st_ctime_ns = int(a.ctime * 1e9)
        return e

    # -- names and attributes ---------------------------------------------------------------------
    def _lookup_attr(self, parent: int, name: str) -> Attr | None:
        try:
            return self.fs.getattr(self.fs.lookup_ino(parent, name))
        except errors.NotFound:
            return None

    @_translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        found = await self._core(self._lookup_attr, parent_inode, os.fsdecode(name))
        if found is None:  # a negative entry (inode 0), cached by the kernel for the negative timeout
            e = pyfuse3.EntryAttributes()
            e.st_ino = 0
            e.entry_timeout = self.negative_timeout_s
            return e
        return self._entry(found)

    @_translated
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(self.fs.getattr(inode))  # inline: one catalog row

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass  # the catalog keeps inodes for the life of the mount

    # -- directories ------------------------------------------------------------------------------
    @_translated
    async def opendir(self, inode: int, ctx: Any) -> int:
        attr = self.fs.getattr(inode)  # inline: one catalog row
        if not attr.mode & 0o040000:
            raise errors.NotADirectory(str(inode))
        return inode  # the handle is the folder's inode: readdir keeps no state between calls

    @_translated
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        ino = fh
        if start_id < _OFFSET_BASE:
            # Errors (a folder gone, a failed load) surface here, before the first entry.
            own = self._entry(self.fs.getattr(ino))  # inline: one catalog row
            for dot, offset in ((b".", 1), (b"..", 2))[start_id:]:
                if not pyfuse3.readdir_reply(token, dot, own, offset):
                    return
        children: Iterator[tuple[str, Attr]] = await self._core(self.fs.readdir, ino, max(0, start_id - _OFFSET_BASE))
        try:
            while True:
                batch = await self._core(lambda: list(itertools.islice(children, READDIR_BATCH)))
                for name, attr in batch:
                    if not pyfuse3.readdir_reply(token, os.fsencode(name), self._entry(attr), attr.ino + _OFFSET_BASE):
                        return
                if len(batch) < READDIR_BATCH:
                    return
        finally:
            close = getattr(children, "close", None)
            if close is not None:
                close()  # give the catalog's read connection back now, not at garbage collection

    async def releasedir(self, fh: int) -> None:
        pass

    # -- files ------------------------------------------------------------------------------------
    @_translated
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        opened = self.fs.open(inode, writable)  # inline: a catalog row and a handle, no network
        # keep_cache: content identity is in the block cache key, unchanged files stay cached.
        return pyfuse3.FileInfo(fh=opened.fh, direct_io=opened.direct_io, keep_cache=not opened.direct_io)

    @_translated
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._core(self.fs.read, fh, off, size)

    @_translated
    async def release(self, fh: int) -> None:
        self.fs.release(fh)  # inline: drops the handle and its held blocks, no network

    async def flush(self, fh: int) -> None:
        pass  # nothing is written through a file handle

    @_translated
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._core(self.fs.fsync, fh)

    @_translated
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: Any) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        # RENAME_NOREPLACE needs nothing: the core never replaces an existing name (EEXIST).
        await self._core(self.fs.rename, parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new))

    @_translated
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        for key, value in self.fs.statfs().items():
            setattr(st, key, value)
        st.f_favail = st.f_ffree
        return st

    # -- extended attributes ----------------------------------------------------------------------
    # ``ls -l`` asks security.selinux and system.posix_acl_access of every entry: getxattr refuses
    # names outside ``user.`` (ENOTSUP, never ENOSYS) before a thread hop or the translating wrapper.
    # setxattr and removexattr are rare: the core refuses those names for them.
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        text = os.fsdecode(name)
        if is_foreign_xattr(text):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        return await self._getxattr(inode, text)

    @_translated
    async def _getxattr(self, inode: int, name: str) -> bytes:
        return await self._core(self.fs.getxattr, inode, name)

    @_translated
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [os.fsencode(n) for n in await self._core(self.fs.listxattr, inode)]

    @_translated
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        # XATTR_CREATE / XATTR_REPLACE were already checked by pyfuse3 (through getxattr).
        await self._core(self.fs.setxattr, inode, os.fsdecode(name), value, 0)

    @_translated
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        await self._core(self.fs.removexattr, inode, os.fsdecode(name))

    # Content and tree changes are refused: the mount mirrors Encord, it does not upload.
    write = _read_only_op("write")  # type: ignore[assignment]
    create = _read_only_op("create")  # type: ignore[assignment]
    mkdir = _read_only_op("mkdir")  # type: ignore[assignment]
    mknod = _read_only_op("mknod")  # type: ignore[assignment]
    unlink = _read_only_op("unlink")  # type: ignore[assignment]
    rmdir = _read_only_op("rmdir")  # type: ignore[assignment]
    symlink = _read_only_op("symlink")  # type: ignore[assignment]
    link = _read_only_op("link")  # type: ignore[assignment]
    setattr = _read_only_op("setattr")  # type: ignore[assignment]


def _options(read_only: bool, allow_other: bool, debug: bool) -> set[str]:
    options = {"fsname=encordfs", "subtype=encordfs"}
    if read_only:
        options.add("ro")
    if allow_other:
        options |= {"allow_other", "default_permissions"}
    if debug:
        options.add("debug")
    return options


async def _serve_until_done() -> None:
    """pyfuse3's loop, ended by an unmount (main returns) or by SIGINT/SIGTERM/SIGHUP (terminate)."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("signal %s: unmounting", signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return

            nursery.start_soon(on_signal)
            await pyfuse3.main(max_tasks=MAX_TASKS)
            nursery.cancel_scope.cancel()


def run(fs: EncordFS, mountpoint: str, *, foreground: bool = True, read_only: bool = False, allow_other: bool = False, attr_timeout_s: float = 60.0, entry_timeout_s: float = 60.0, negative_timeout_s: float = 5.0, debug: bool = False) -> None:
    """Mount and serve until unmounted (always in the foreground). Raises ``errors.FsError`` when the
    mount cannot start."""
    ops = Pyfuse3Operations(fs, attr_timeout_s=attr_timeout_s, entry_timeout_s=entry_timeout_s, negative_timeout_s=negative_timeout_s)
    try:
        pyfuse3.init(ops, mountpoint, _options(read_only, allow_other, debug))
    except RuntimeError as exc:
        raise errors.FsError(f"libfuse could not mount {mountpoint} ({exc})") from None
    try:
        trio.run(_serve_until_done)
    finally:
        # Unmount if still mounted (a signal or a crash ended the loop; after fusermount3 -u this
        # finds the mount gone and only frees the session), then close the core like destroy does.
        pyfuse3.close(unmount=True)
        fs.close()
