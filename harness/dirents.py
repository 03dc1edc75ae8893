"""Reading a folder the way the kernel's callers can: ``getdents64`` with a tiny buffer.

A buffer that holds only a few entries makes the kernel ask the filesystem again from each offset
it returned, so a listing that skips or repeats entries when resumed shows up.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

SYS_GETDENTS64 = 217  # x86_64


def getdents_small(folder: Path, buffer_bytes: int = 1024) -> list[str]:
    """Names from getdents64 with a buffer that holds only a few entries per call."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(buffer_bytes)
    names: list[str] = []
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while True:
            n = libc.syscall(SYS_GETDENTS64, fd, buf, buffer_bytes)
            if n < 0:
                raise OSError(ctypes.get_errno(), "getdents64")
            if n == 0:
                return names
            pos = 0
            while pos < n:
                reclen = int.from_bytes(buf.raw[pos + 16 : pos + 18], "little")
                raw = buf.raw[pos + 19 : pos + reclen]
                names.append(os.fsdecode(raw[: raw.index(b"\0")]))
                pos += reclen
    finally:
        os.close(fd)
