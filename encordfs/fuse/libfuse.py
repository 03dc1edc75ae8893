"""The mfusepy binding (``--binding mfusepy``): the only module that imports mfusepy (libfuse 3's
high-level, path-based API).

It translates and nothing else: a path becomes an inode through the core, the core's answer becomes
what mfusepy expects, and ``errors.FsError`` becomes its errno in one place (``_translated``). No
caching, policy or network call lives here.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # libfuse 3; must precede the import

import mfusepy  # noqa: E402

from encordfs import errors  # noqa: E402
from encordfs.control import mounted_at  # noqa: E402
from encordfs.core.fs import Attr, EncordFS  # noqa: E402
from encordfs.core.xattrs import is_foreign as is_foreign_xattr  # noqa: E402
from encordfs.fuse import BLKSIZE, MountFlags, Timeouts, blocks, log_level, stat_dict, timespec  # noqa: E402
from encordfs.fuse.watchdog import Watchdog  # noqa: E402

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _translated(func: F) -> F:
    """Run a FUSE operation; FsError → its errno; anything else is logged once and answers EIO."""

    @functools.wraps(func)
    def wrapper(*args: Any) -> Any:
        try:
            return func(*args)
        except errors.FsError as exc:
            # A user's mistake (EINVAL, EPERM, EROFS, ...) is answered, not logged loudly; failures of
            # ours or of the network are.
            log.log(log_level(exc), "%s: %s", func.__name__, exc)
            raise mfusepy.FuseOSError(exc.errno) from None
        except mfusepy.FuseOSError:
            raise
        except Exception:
            log.exception("internal error in %s", func.__name__)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


_OFFSET_BASE = 2  # readdir offsets 1 and 2 are "." and ".."; a child's is its inode + 2


def _read_only(*_: Any) -> int:
    raise mfusepy.FuseOSError(errno.EROFS)


class FuseOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, fs: EncordFS, timeouts: Timeouts) -> None:
        self.fs = fs
        self.served = False  # the kernel's INIT arrived: the mount was up
        self._timeouts = (timeouts.attr_s, timeouts.entry_s, timeouts.negative_s)

    def init_with_config(self, conn: Any, config: Any) -> None:
        self.served = True
        if config is not None:
            config.use_ino = 1
            config.attr_timeout, config.entry_timeout, config.negative_timeout = self._timeouts

    @_translated
    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        return stat_dict(self.fs.getattr(self.fs.resolve(path)))

    @_translated
    def readdir_with_offset(self, path: str, offset: int, fh: Any) -> Iterator[Any]:
        # Plain READDIR (the kernel asks for it when it does not want attributes): mfusepy keeps only
        # st_mode and st_ino of each entry, so nothing else is built.
        return (
            (name, None if attr is None else {"st_ino": attr.ino, "st_mode": attr.mode}, off)
            for name, attr, off in self.readdir_plus(path, offset)
        )

    @_translated
    def readdir_plus(self, path: str, offset: int) -> Iterator[tuple[str, Attr | None, int]]:
        """(name, attributes, offset) of a folder's entries from ``offset``. Resumable and streamed:
        with an offset per entry libfuse passes each batch straight to the kernel instead of buffering
        the whole folder (for a million entries its buffer was ~200 MB); the kernel asks again from
        the last offset it took. Offsets: "." → 1, ".." → 2, a child → its inode + 2 (inodes are ≥ 2
        and listed in inode order, so offsets only grow). Errors surface before the first entry."""
        ino = self.fs.resolve(path)
        children = self.fs.readdir(ino, max(0, offset - _OFFSET_BASE))
        head = [(".", self.fs.getattr(ino), 1), ("..", None, 2)][offset:] if offset < _OFFSET_BASE else []
        return itertools.chain(head, ((name, attr, attr.ino + _OFFSET_BASE) for name, attr in children))

    @_translated
    def open(self, path: str, fi: Any) -> int:
        writable = (fi.flags & os.O_ACCMODE) != os.O_RDONLY or bool(fi.flags & os.O_TRUNC)
        opened = self.fs.open(self.fs.resolve(path), writable)
        fi.fh = opened.fh
        if opened.direct_io:
            fi.direct_io = 1
        else:
            fi.keep_cache = 1  # content identity is in the block cache key; unchanged files stay cached
        return 0

    @_translated
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        self.fs.fsync(fi.fh)
        return 0

    @_translated
    def rename(self, old: str, new: str) -> int:
        old_dir, _, old_name = old.rpartition("/")
        new_dir, _, new_name = new.rpartition("/")
        self.fs.rename(self.fs.resolve(old_dir), old_name, self.fs.resolve(new_dir), new_name)
        return 0

    @_translated
    def read(self, path: str, size: int, offset: int, fi: Any) -> Any:
        data = self.fs.read(fi.fh, offset, size)
        if isinstance(data, memoryview):
            # mfusepy memmoves the reply into libfuse's buffer: a ctypes array over the cached block
            # gives it the block's address, so the bytes are copied once, not twice.
            if data.readonly or not data.c_contiguous:
                return data.tobytes()
            return (ctypes.c_char * len(data)).from_buffer(data)
        return data

    @_translated
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        return self.fs.write(fi.fh, offset, data)  # the core refuses it but for the hints control file

    @_translated
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self.fs.truncate(self.fs.resolve(path), length)
        return 0

    @_translated
    def release(self, path: str, fi: Any) -> int:
        self.fs.release(fi.fh)
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        # ``ls -l`` asks security.selinux and system.posix_acl_access of every entry: refuse foreign
        # names before resolving the path or entering the translating wrapper.
        if is_foreign_xattr(name):
            raise mfusepy.FuseOSError(errno.ENOTSUP)
        return self._getxattr(path, name)

    @_translated
    def _getxattr(self, path: str, name: str) -> bytes:
        return self.fs.getxattr(self.fs.resolve(path), name)

    @_translated
    def listxattr(self, path: str) -> list[str]:
        return self.fs.listxattr(self.fs.resolve(path))

    @_translated
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self.fs.setxattr(self.fs.resolve(path), name, value, options)
        return 0

    @_translated
    def removexattr(self, path: str, name: str) -> int:
        self.fs.removexattr(self.fs.resolve(path), name)
        return 0

    @_translated
    def statfs(self, path: str) -> dict[str, int]:
        return self.fs.statfs()

    def destroy(self, path: str) -> None:
        self.fs.close()

    # Content and tree changes are refused: the mount mirrors Encord, it does not upload.
    create = mkdir = unlink = rmdir = symlink = link = mknod = _read_only
    chmod = chown = utimens = _read_only


FUSE_READDIR_PLUS = 1  # libfuse 3: readdir's flags (the kernel sent READDIRPLUS)
FUSE_FILL_DIR_PLUS = 2  # libfuse 3: the filler's flags (this entry carries full attributes)


class _FUSE(mfusepy.FUSE):
    """mfusepy with readdirplus. mfusepy fills READDIRPLUS replies with names only (``flags=0``), so
    the kernel drops them and sends a LOOKUP per entry: a first ``ls -l`` of 100k rows cost 100k
    round trips through Python. Here the entries carry their full attributes with
    ``FUSE_FILL_DIR_PLUS``; libfuse's high-level ``fill_dir_plus`` records the node (the lookup
    count the kernel now holds) and the kernel caches entry and attributes for their timeouts."""

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        if not flags & FUSE_READDIR_PLUS or path is None:
            return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)
        st = mfusepy.c_stat()
        encoding, errs = self.encoding, self.errors
        for name, attr, off in self.operations.readdir_plus(path.decode(encoding, errs), offset):
            if attr is None:
                if filler(buf, name.encode(encoding, errs), None, off, 0) != 0:
                    break
                continue
            st.st_ino = attr.ino
            st.st_mode = attr.mode
            st.st_nlink = attr.nlink
            st.st_size = attr.size
            st.st_uid = attr.uid
            st.st_gid = attr.gid
            st.st_blocks = blocks(attr.size)
            st.st_blksize = BLKSIZE
            # the same nanoseconds as getattr's (``stat_dict``)
            st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec = sec, nsec = timespec(attr.mtime)
            st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec = sec, nsec
            st.st_ctimespec.tv_sec, st.st_ctimespec.tv_nsec = timespec(attr.ctime)
            if filler(buf, name.encode(encoding, errs), st, off, FUSE_FILL_DIR_PLUS) != 0:
                break
        return 0


def _status() -> dict[str, Any]:
    """``EncordFS.binding_status``: the same keys as the kernel binding's, passthrough always off."""
    off = "the mfusepy binding cannot use it (libfuse's high-level API)"
    return {
        "binding": "mfusepy",
        "passthrough": {"enabled": False, "off": off, "opens": 0, "backing_ids": 0, "inodes": 0},
    }


def run(fs: EncordFS, mountpoint: str, *, timeouts: Timeouts, flags: MountFlags) -> None:
    """Mount and serve until unmounted. Raises ``errors.FsError`` when the mount cannot start.
    ``flags.passthrough`` is ignored: libfuse 3.14's high-level API has no passthrough."""
    ops = FuseOperations(fs, timeouts)
    options: dict[str, Any] = {
        "fsname": "encordfs",
        "subtype": "encordfs",
        "foreground": flags.foreground,
        "debug": flags.debug,
    }
    if flags.read_only:
        options["ro"] = True
    if flags.allow_other:
        options["allow_other"] = True
        options["default_permissions"] = True
    fs.binding_status = _status
    if os.geteuid() != 0:  # libfuse mounts through fusermount3 here, which unmounts when this process dies
        options["auto_unmount"] = True
    guard = _watchdog(mountpoint)
    try:
        _FUSE(ops, mountpoint, raw_fi=True, **options)
    except RuntimeError as exc:
        # libfuse returns non-zero when a signal (SIGINT, SIGTERM, SIGHUP) ended its loop, after it has
        # unmounted: a requested stop that unmounted cleanly is a success, not "could not mount".
        if ops.served and not mounted_at(mountpoint):
            log.info("stopped by a signal; %s is unmounted", mountpoint)
            return
        raise errors.FsError(f"libfuse could not mount {mountpoint} (status {exc})") from None
    finally:
        if guard is not None:
            guard.stop()


def _watchdog(mountpoint: str) -> Watchdog | None:
    """A normal user's mount gets the unmount watchdog (``encordfs.fuse.watchdog``: fusermount3 3.14's
    own auto_unmount leaves a killed user's mount dead); root mounts with mount(2) and has none."""
    tool = shutil.which("fusermount3")
    if os.geteuid() == 0 or tool is None:
        return None
    return Watchdog.start_or_warn(mountpoint, tool)
