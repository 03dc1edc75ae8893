"""Handing memory that big transient work freed back to the operating system.

glibc's ``free`` keeps freed chunks in the process's heaps for reuse: after a folder of a million
rows was synced (the catalog writer's page cache, the staged listing, the batches), tens of MB stay
resident although nothing uses them, and a long mount carries them to its end. ``trim`` asks
glibc to return the free pages (``malloc_trim(0)``: whole free pages anywhere in its heaps, not only
at their top). It costs a walk of the free lists (a few ms), so callers use it after work that
freed a lot, not per request. Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

_malloc_trim: Callable[[int], int] | None = None
_looked_up = False


def trim() -> bool:
    """Return free heap pages to the OS; whether glibc's ``malloc_trim`` ran and released any."""
    global _malloc_trim, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            func = ctypes.CDLL(None).malloc_trim
            func.argtypes = [ctypes.c_size_t]
            func.restype = ctypes.c_int
            _malloc_trim = func
        except (OSError, AttributeError):
            log.debug("malloc_trim is not available: freed memory stays with the allocator")
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
