"""encordfs: Encord datasets as a local filesystem.

Datasets are directories, data rows are files, metadata is in extended attributes.

The public surface is ``__all__``, pinned by ``tests/test_operate.py``: ``mount`` (a mount served by a
child process, see ``encordfs.api``), ``RunningMount`` (what it returns) and ``EncordFileSystem``
(``encord://`` for fsspec, see ``encordfs.fsspec_impl``). They load on first use, so ``import
encordfs`` (and the ``encordfs`` command) imports neither fsspec nor the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["EncordFileSystem", "RunningMount", "__version__", "mount"]

if TYPE_CHECKING:
    from encordfs.api import RunningMount, mount
    from encordfs.fsspec_impl import EncordFileSystem

_LAZY = {"mount": "encordfs.api", "RunningMount": "encordfs.api", "EncordFileSystem": "encordfs.fsspec_impl"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'encordfs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
