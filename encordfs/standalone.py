"""The filesystem core in this process, without a mount: what ``encord://`` (fsspec) and ``encordfs cp``
are built on.

``open_core(settings, subdir)`` builds a read-only ``EncordFS`` with ``app.build`` over ``SdkBackend``:
the same tree, names, signed-URL batching, reader and caches a mount uses. The cache dir is
``settings.cache_dir`` when given, else ``<the mount's default cache dir>/<subdir>``. The disk block
cache belongs to one process at a time (``DiskBlockCache`` holds a lock): a process that finds it
taken (a mount on the same dir, a forked DataLoader worker, a second ``encordfs cp``) caches in a
private temporary directory instead, removed at close or, if the process was killed, by the next
process that needs one (``PRIVATE_CACHE_PREFIX``).

``Core`` is owned by the process that built it: closing it in a forked child does nothing (the
parent's threads and SQLite connections are not the child's to close).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from encordfs import errors
from encordfs.app import Mount, build
from encordfs.core.fs import EncordFS
from encordfs.settings import Settings

log = logging.getLogger(__name__)

PRIVATE_CACHE_PREFIX = "encordfs-fsspec-"


class Core:
    """One built core and what closing it takes; owned by one process (``pid``)."""

    def __init__(self, mount: Mount, temp_dir: Path | None) -> None:
        self.mount = mount
        self.fs: EncordFS = mount.fs
        self.pid = os.getpid()
        self.temp_dir = temp_dir
        self.closed = False

    def close(self) -> None:
        if self.pid != os.getpid() or self.closed:
            return  # a forked child's copy: its threads and connections belong to the parent
        self.closed = True
        self.mount.close()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def key_text(ssh_key_file: str | None) -> str:
    """The private key's text: from ``ssh_key_file``, else ``$ENCORD_SSH_KEY``; AuthError if neither."""
    from encordfs.backend.sdk import load_key

    if ssh_key_file:
        return load_key(Path(ssh_key_file).expanduser())
    text = os.environ.get("ENCORD_SSH_KEY")
    if text:
        return text
    raise errors.AuthError("no SSH key: pass --ssh-key-file FILE (ssh_key_file=) or set ENCORD_SSH_KEY_FILE")


def sweep_private_caches() -> None:
    """Remove private cache dirs of processes that are gone (a Pool's workers are killed, not closed)."""
    for path in Path(tempfile.gettempdir()).glob(PRIVATE_CACHE_PREFIX + "*-*"):
        pid = path.name.removeprefix(PRIVATE_CACHE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def open_core(settings: Settings, subdir: str) -> Core:
    """A read-only core for ``settings`` (see the module docstring). Raises ``errors.FsError``."""
    settings = settings.model_copy(update={"read_only": True})
    own = settings.cache_dir or str(settings.cache_path / subdir)
    settings = settings.model_copy(update={"cache_dir": own})
    try:
        return Core(_build_at(settings), None)
    except errors.Busy:
        # Another process (a mount, the DataLoader's parent, another copy) owns that block cache.
        sweep_private_caches()
        temp = Path(tempfile.mkdtemp(prefix=f"{PRIVATE_CACHE_PREFIX}{os.getpid()}-"))
        log.info("%s is in use by another process; caching in %s for this one", settings.cache_dir, temp)
        settings = settings.model_copy(update={"cache_dir": str(temp)})
        try:
            return Core(_build_at(settings), temp)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise


def _build_at(settings: Settings) -> Mount:
    from encordfs.backend.sdk import SdkBackend

    backend = SdkBackend(
        settings.domain,
        key_text(settings.ssh_key_file),
        include_org_access=settings.include_org_access,
        read_timeout_s=settings.api_timeout_s,
    )
    try:
        return build(backend, settings, account_id=backend.account_id)
    except BaseException:
        backend.close()
        raise
