"""Handing memory that big transient work freed back to the operating system.

glibc's ``free`` keeps freed chunks in the process's heaps for reuse: after a folder of a million
rows was synced (the catalog writer's page cache, the staged listing, the batches), tens of MB stay
resident although nothing uses them, and a long mount carries them to its end. ``trim`` asks
glibc to return the free pages (``malloc_trim(0)``: whole free pages anywhere in its heaps, not only
at their top). Callers use it after work that freed a lot, not per request. Elsewhere than glibc
(musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

from encordfs.libc import libc

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        func = libc().malloc_trim
    except (OSError, AttributeError):
        log.debug("malloc_trim is not available: freed memory stays with the allocator")
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return func


def trim() -> bool:
    """Return free heap pages to the OS; whether glibc's ``malloc_trim`` ran and released any."""
    func = _malloc_trim()
    return func is not None and bool(func(0))
