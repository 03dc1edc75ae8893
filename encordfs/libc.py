"""The C library through ctypes, loaded once for the process: the calls Python's ``os`` module lacks
(``mount`` and ``umount2`` for the kernel binding and ``encordfs unmount``, ``syncfs`` for the disk
cache, ``malloc_trim`` for ``core.heap``), and, through ``libc_keeping_gil``, short calls on memory
made while keeping the GIL (the libcurl transport's ``fmemopen`` streams). Loaded with
``use_errno``: a caller reads a failed call's errno with ``ctypes.get_errno()``."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def libc_keeping_gil() -> ctypes.PyDLL:
    """The same library for short calls that neither block nor wait (``fmemopen``, ``ftell``): the caller
    keeps the GIL through the call. Taking the GIL back after a call that let it go is what costs when
    other threads want it: a wait, and often a thread switch (7a88bf6: ~1.5 fewer switches per cold
    small file; files/s within noise)."""
    return ctypes.PyDLL(None, use_errno=True)
