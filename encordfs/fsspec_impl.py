"""``encord://`` for fsspec: the filesystem core without FUSE, as an ``fsspec.AbstractFileSystem``.

``fsspec.open("encord://street-scenes/cat.jpg", domain=..., ssh_key_file=...)``, ``ls``, ``info``,
``cat_file`` and ``open`` are answered by the same ``EncordFS`` a mount uses (``app.build`` over
``SdkBackend``): the same tree and names (``encord://<dataset>/<row>``,
``encord://<dataset>/<group>/<member>``), the same signed-URL batching, the same reader and block
caches. There is no second implementation: this module only translates paths to inodes, ``Attr`` and
catalog fields to fsspec info dicts, and ``errors.FsError`` to ``OSError`` by its errno.

Read-only: every write (``open(.., "wb")``, ``pipe``, ``put``, ``rm``, ``mkdir``, ``mv``, ...) raises
``PermissionError`` (EROFS). Metadata is read through ``info(path)["client_metadata"]`` and
``getxattr``; changing it is what a read-write mount is for.

Info dicts: ``name``, ``size``, ``type`` (``file``/``directory``), ``mtime`` and ``created`` (epoch s),
``ino``, ``mode``; ``encord``: every field the mount shows as ``user.encord.<field>`` xattr, typed
(``title``, ``uid``, ``data_type``, ``width``, ...); rows and groups also ``client_metadata`` (a dict).

Files: ``EncordFile._fetch_range`` reads through one core handle per open file, so the core's block
cache and read-ahead apply; fsspec's own cache defaults to ``none`` (a second read-ahead cache would
only copy the same bytes again). Pass ``cache_type=...`` to ``open`` to choose another.

Processes: the core is built on first use and rebuilt in a forked child (a PyTorch DataLoader worker),
whose copy of the parent's threads and SQLite connections is not usable. The disk block cache belongs
to one process at a time (``DiskFileCache`` holds a lock): the first process uses ``cache_dir``
(default ``<the mount's default cache dir>/fsspec``); any other process that finds it taken (a forked
worker, a mount on the same dir) caches in a private temporary directory, removed at close or, if
the process was killed, by the next process that needs one.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing.util
import os
import stat
import threading
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import fsspec
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from encordfs import errors
from encordfs.core.catalog import ROOT_INO, Kind
from encordfs.core.fs import CONTROL_NAME, Attr, EncordFS
from encordfs.core.views import is_view_ino
from encordfs.core.xattrs import PREFIX
from encordfs.settings import resolve
from encordfs.standalone import PRIVATE_CACHE_PREFIX, Core, open_core

__all__ = ["PRIVATE_CACHE_PREFIX", "PROTOCOL", "EncordFile", "EncordFileSystem"]

log = logging.getLogger(__name__)

PROTOCOL = "encord"


def _oserror(exc: errors.FsError, path: str) -> OSError:
    # OSError(errno, ...) becomes FileNotFoundError, IsADirectoryError, PermissionError, ... by errno.
    return OSError(exc.errno, str(exc), path)


def _read_only(path: str = "") -> NoReturn:
    raise PermissionError(errno.EROFS, "encord:// is read-only", path)


class EncordFileSystem(AbstractFileSystem):
    """Storage options: ``domain`` (default ``$ENCORDFS_DOMAIN`` or Encord's), ``ssh_key_file``
    (default ``$ENCORD_SSH_KEY_FILE``; or the key text in ``$ENCORD_SSH_KEY``), ``cache_dir``,
    ``metadata_ttl`` (seconds; default as for a mount), ``include_org_access``."""

    protocol = (PROTOCOL,)
    root_marker = ""
    cachable = True

    def __init__(
        self,
        domain: str | None = None,
        ssh_key_file: str | None = None,
        cache_dir: str | None = None,
        metadata_ttl: float | str | None = None,
        include_org_access: bool | None = None,
        **storage_options: Any,
    ) -> None:
        ttl = storage_options.pop("metadata_ttl_s", metadata_ttl)  # the older name
        super().__init__(**storage_options)
        try:
            self.settings = resolve({"domain": domain, "ssh_key_file": ssh_key_file, "cache_dir": cache_dir,
                                     "metadata_ttl": ttl, "include_org_access": include_org_access, "read_only": True})  # fmt: skip
        except errors.FsError as exc:
            raise ValueError(f"encord://: {exc}") from None
        self.domain = self.settings.domain
        self.ssh_key_file = self.settings.ssh_key_file
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._core: Core | None = None
        self._core_lock = threading.Lock()
        self._finalizer: weakref.finalize[[], EncordFileSystem] | None = None

    # -- the core ---------------------------------------------------------------------------------
    def _fs(self) -> EncordFS:
        core = self._core
        if core is not None and core.pid == os.getpid():
            return core.fs
        with self._core_lock:
            if self._core is None or self._core.pid != os.getpid():
                try:
                    self._core = open_core(self.settings, "fsspec")
                except errors.FsError as exc:
                    raise _oserror(exc, self.domain) from None
                self._finalizer = weakref.finalize(self, self._core.close)
                # multiprocessing children (DataLoader workers, Pool) end with os._exit, skipping atexit:
                # its own finalizers still run, so the private cache dir is removed there too.
                multiprocessing.util.Finalize(self, self._core.close, exitpriority=10)
            return self._core.fs

    def close(self) -> None:
        """Stop the core's threads and close its caches (also done when the object is collected)."""
        with self._core_lock:
            if self._finalizer is not None:
                self._finalizer()
            self._core = self._finalizer = None

    def status(self) -> dict[str, Any]:
        """The core's status, as a mount's ``.encordfs/status.json``: open handles and ``counters``
        (signed-URL cache, fetcher, block caches, reader)."""
        return self._fs().status()

    # -- paths ------------------------------------------------------------------------------------
    def _resolve(self, path: str) -> tuple[str, int, Attr]:
        path = self._strip_protocol(path)
        if path.split("/", 1)[0] == CONTROL_NAME:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        fs = self._fs()
        try:
            ino = fs.resolve("/" + path)
            return path, ino, fs.getattr(ino)
        except errors.FsError as exc:
            raise _oserror(exc, path) from None

    def _details(self, path: str, attr: Attr) -> dict[str, Any]:
        is_dir = stat.S_ISDIR(attr.mode)
        out: dict[str, Any] = {
            "name": path,
            "size": attr.size,
            "type": "directory" if is_dir else "file",
            "mtime": attr.mtime,
            "created": attr.ctime,
            "ino": attr.ino,
            "mode": attr.mode,
        }
        if attr.ino == ROOT_INO or is_view_ino(attr.ino):  # view folders (DATASET/@KEY/...) have no fields
            return out
        node = self._fs().node(attr.ino)
        out["encord"] = {**node.fields, "title": node.title}
        if node.kind in (Kind.ROW, Kind.GROUP):
            out["client_metadata"] = node.client_metadata or {}
        return out

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path, ino, attr = self._resolve(path)
        if not stat.S_ISDIR(attr.mode):
            entries = [self._details(path, attr)]
        else:
            try:
                children = list(self._fs().readdir(ino))
            except errors.FsError as exc:
                raise _oserror(exc, path) from None
            entries = [self._details(f"{path}/{name}" if path else name, child) for name, child in children]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path, _, attr = self._resolve(path)
        return self._details(path, attr)

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], UTC)

    def created(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["created"], UTC)

    def invalidate_cache(self, path: str | None = None) -> None:
        """Reload a folder (default: the dataset list) from Encord now, whatever its age."""
        if self._core is None:
            return
        target = path or ""
        _, ino, attr = self._resolve(target)
        if stat.S_ISDIR(attr.mode):
            try:
                self._fs().refresh(ino)
            except errors.FsError as exc:
                raise _oserror(exc, target) from None

    def getxattr(self, path: str, name: str) -> bytes:
        """An xattr's value as the mount shows it; ``name`` with or without ``user.encord.``."""
        path, ino, _ = self._resolve(path)
        try:
            return self._fs().getxattr(ino, name if name.startswith("user.") else PREFIX + name)
        except errors.FsError as exc:
            raise _oserror(exc, path) from None

    def listxattr(self, path: str) -> list[str]:
        path, ino, _ = self._resolve(path)
        try:
            return self._fs().listxattr(ino)
        except errors.FsError as exc:
            raise _oserror(exc, path) from None

    # -- reading ----------------------------------------------------------------------------------
    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path, ino, attr = self._resolve(path)
        if stat.S_ISDIR(attr.mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        start, end = _span(start, end, attr.size)
        with _Handle(self._fs(), ino, path) as handle:
            return handle.read(start, end)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | str | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> EncordFile:
        if mode != "rb":
            _read_only(path)
        path, ino, attr = self._resolve(path)
        if stat.S_ISDIR(attr.mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return EncordFile(
            self,
            path,
            ino,
            attr.size,
            block_size=block_size or "default",
            cache_type=kwargs.get("cache_type", "none"),
            cache_options=cache_options,
        )

    # -- writes: refused ---------------------------------------------------------------------------
    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        _read_only(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        _read_only(path)

    def rmdir(self, path: str) -> None:
        _read_only(path)

    def rm_file(self, path: str) -> None:
        _read_only(path)

    def _rm(self, path: str) -> None:
        _read_only(path)

    def rm(self, path: str, recursive: bool = False, maxdepth: int | None = None) -> None:
        _read_only(path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        _read_only(path2)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        _read_only(path1)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        _read_only(path)

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite", **kwargs: Any) -> None:
        _read_only(rpath)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        _read_only(path)


def _span(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    """fsspec's range rules: None = the file's start/end, negative = from the end, clipped to the file."""
    start = 0 if start is None else start if start >= 0 else max(0, size + start)
    end = size if end is None else end if end >= 0 else max(0, size + end)
    return min(start, size), max(min(end, size), min(start, size))


class _Handle:
    """An open core file handle; ``read(start, end)`` returns exactly that span (short only at EOF)."""

    def __init__(self, fs: EncordFS, ino: int, path: str) -> None:
        self.fs, self.path = fs, path
        try:
            self.fh: int | None = fs.open(ino, writable=False).fh
        except errors.FsError as exc:
            raise _oserror(exc, path) from None

    def read(self, start: int, end: int) -> bytes:
        if self.fh is None:
            raise ValueError("I/O operation on closed file")
        parts, pos = [], start
        try:
            while pos < end:
                chunk = self.fs.read(self.fh, pos, end - pos)
                if not chunk:
                    break
                parts.append(chunk)
                pos += len(chunk)
        except errors.FsError as exc:
            raise _oserror(exc, self.path) from None
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            self.fs.release(fh)

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EncordFile(AbstractBufferedFile):
    """A read-only file whose ranges come from the core's reader (block cache, read-ahead)."""

    def __init__(self, fs: EncordFileSystem, path: str, ino: int, size: int, **kwargs: Any) -> None:
        self._handle = _Handle(fs._fs(), ino, path)
        super().__init__(fs, path, mode="rb", size=size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self._handle.read(start, min(end, self.size))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._handle.close()


fsspec.register_implementation(PROTOCOL, EncordFileSystem, clobber=True)
