"""Writes that skip the page cache (``O_DIRECT``), and the way back to it when a filesystem refuses them.

Shared by the disk cache (big files' parts, ``core.blockcache``) and a joining node's listing image
(``cluster.folders``); each says why it writes direct. ``O_DIRECT`` wants offsets, lengths and buffer
addresses on ``ALIGN`` boundaries: callers pad a last piece with zeros and cut the file back. A
filesystem without direct I/O (older tmpfs) refuses it with ``EINVAL``, at open or at the first write.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

ALIGN = 4096  # O_DIRECT offsets and lengths: a multiple of any logical block size in use
O_DIRECT = getattr(os, "O_DIRECT", 0)


def padded(length: int) -> int:
    """``length`` rounded up to whole ``ALIGN`` blocks."""
    return -(-length // ALIGN) * ALIGN


def open_for_write(path: str | Path, flags: int, direct: bool = True) -> tuple[int, bool]:
    """(fd, opened with ``O_DIRECT``): ``path`` opened with ``flags``, direct when asked and possible."""
    if direct and O_DIRECT:
        try:
            return os.open(path, flags | O_DIRECT, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o600), False


def to_buffered(fd: int) -> None:
    """Writes through ``fd`` go through the page cache from now on."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """``pwrite`` looped on short writes."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if not written:
            raise OSError(errno.EIO, "short write")
        view, offset = view[written:], offset + written
