"""The Python API: ``encordfs.mount(...)`` for notebooks, scripts and tests.

``mount`` starts the same detached ``encordfs mount --foreground`` process the CLI starts
(``control.spawn``) and returns once the mount serves, so the calling process never runs FUSE threads
itself (a notebook kernel that dies or forks cannot take the mount with it, and the mount cannot
deadlock the kernel). Options fill the one ``encordfs.settings.Settings``, like the CLI's:
arguments > ``ENCORDFS_*`` environment > ``ENCORDFS_CONFIG`` file > defaults; any option of
``encordfs mount`` is accepted as a keyword (``read_only=True``, ``cache_size="20G"``, ...).

The returned ``RunningMount`` is a context manager; leaving the block (or ``unmount()``) waits up to
``flush_timeout_s`` for queued metadata changes, unmounts and reaps the process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from encordfs import control, errors, settings

STOP_TIMEOUT_S = 30.0


class RunningMount:
    """A mount served by a child process: ``path``, ``pid``, ``status()``, ``flush()``, ``unmount()``."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.path = path
        self.log_path = log_path
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def mounted(self) -> bool:
        return self._proc.poll() is None and control.mounted_at(self.path) is not None

    def status(self) -> dict[str, Any]:
        """What ``encordfs status --json`` prints: open handles, write queue, counters."""
        return control.status(self.path)

    def flush(self, timeout: float = 60.0) -> bool:
        """Push queued metadata changes now; True once none is pending (False when ``timeout`` s passed)."""
        ok, _ = control.flush(self.path, timeout)
        return ok

    def unmount(self, flush_timeout_s: float = 10.0) -> None:
        """Flush (up to ``flush_timeout_s``), unmount, and wait for the mount process to end."""
        if self._proc.poll() is None and control.find(self.path, exact=True) is not None:
            try:
                control.unmount(self.path, timeout_s=flush_timeout_s)
            except errors.Busy:
                control.unmount(self.path, timeout_s=flush_timeout_s, lazy=True)
        try:
            self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> RunningMount:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.unmount()

    def __repr__(self) -> str:
        return f"<RunningMount {self.path} pid={self.pid}{'' if self.mounted else ' (ended)'}>"


def mount(mountpoint: str | Path, *, config: str | Path | None = None, **options: Any) -> RunningMount:
    """Mount Encord at ``mountpoint`` (an empty directory) and return once it serves.

    ``options`` are the options of ``encordfs mount`` with underscores (``domain``, ``ssh_key_file``,
    ``cache_dir``, ``read_only``, ``metadata_ttl``, ...); unknown names raise ``errors.InvalidValue``.
    The process logs to ``log_file`` (default ``CACHE_DIR/mount.log``).
    """
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    s = settings.resolve(given, config)
    path = control.check_mountpoint(mountpoint, s)
    log_path = s.detached_log_path()
    return RunningMount(path, control.spawn(s, path, log_path), log_path)
