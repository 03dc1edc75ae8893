"""FUSE bindings: the adapters between a kernel and the filesystem core, and what they share.

Each binding lives in its own module and is the only place its library is imported:

- ``encordfs.fuse.kernel`` (``--binding kernel``, the default): speaks the kernel's FUSE protocol on
  ``/dev/fuse`` itself, inode-based, with kernel passthrough for cached files where the kernel allows it.
- ``encordfs.fuse.libfuse`` (``--binding mfusepy``): mfusepy over libfuse 3's high-level, path-based
  API. Portable (any libfuse 3), the fallback.

Bindings translate and nothing else (no caching, policy or network call): arguments in, a call on
``EncordFS``, the answer out, and ``errors.FsError`` turned into its errno by ``log_level`` and the
error's ``.errno``. What they share is here: attribute conversion, block counts, log levels and the
kernel cache timeouts.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from types import ModuleType

from encordfs import errors
from encordfs.core.fs import Attr

BLKSIZE = 131072  # st_blksize: the I/O size tools such as cp use for their reads
# Negative lookups are cached by the kernel this long: a name that does not exist yet (a new row) shows
# within 5 s, while tools that probe many absent names (shells, loaders looking for sidecars) do not
# make a FUSE round trip per probe.
NEGATIVE_TIMEOUT_S = 5.0

BINDINGS = ("kernel", "mfusepy")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the kernel may keep attributes, entries and negative entries (seconds)."""

    attr_s: float
    entry_s: float
    negative_s: float = NEGATIVE_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class MountFlags:
    """How a binding's ``run(fs, mountpoint, timeouts=..., flags=...)`` mounts; a binding ignores what
    it cannot do (the kernel binding always serves in the foreground: the CLI detaches by starting a
    foreground process; libfuse 3.14's high-level API has no passthrough)."""

    read_only: bool = False
    allow_other: bool = False
    foreground: bool = True
    debug: bool = False
    passthrough: bool = True  # kernel passthrough for cached files, where the kernel allows it


def blocks(size: int) -> int:
    """``st_blocks``: 512-byte units."""
    return (size + 511) // 512


def ns(seconds: float) -> int:
    """Unix seconds as integer nanoseconds, the one rounding every binding uses."""
    return int(seconds * 1e9)


def timespec(seconds: float) -> tuple[int, int]:
    """Unix seconds as (seconds, nanoseconds 0..999,999,999), by the same rounding as ``ns``."""
    return divmod(ns(seconds), 1_000_000_000)


def stat_dict(a: Attr) -> dict[str, int]:
    """An ``Attr`` as a ``stat`` mapping (times in nanoseconds)."""
    mtime_ns = ns(a.mtime)
    return {
        "st_ino": a.ino,
        "st_mode": a.mode,
        "st_nlink": a.nlink,
        "st_size": a.size,
        "st_uid": a.uid,
        "st_gid": a.gid,
        "st_mtime": mtime_ns,
        "st_ctime": ns(a.ctime),
        "st_atime": mtime_ns,
        "st_blocks": blocks(a.size),
        "st_blksize": BLKSIZE,
    }


def log_level(exc: errors.FsError) -> int:
    """How loudly an error answered to the kernel is logged: a user's mistake (EINVAL, EPERM, EROFS,
    ENOENT, ...) is answered quietly; failures of ours or of the network are warnings."""
    return logging.WARNING if exc.errno in (errno.EIO, errno.ESTALE, errno.EACCES) else logging.DEBUG


def load(name: str | None) -> ModuleType:
    """The binding module for ``name`` (``None``: the default)."""
    if name == "mfusepy":
        from encordfs.fuse import libfuse

        return libfuse
    if name in (None, "kernel"):
        import importlib

        try:
            return importlib.import_module("encordfs.fuse.kernel")
        except ImportError as exc:
            raise errors.FsError(f"--binding kernel is not available here: {exc}") from None
    raise errors.InvalidValue(f"unknown binding {name!r} (choose from {', '.join(BINDINGS)})")
