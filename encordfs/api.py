"""The Python API: ``encordfs.mount(...)`` for notebooks, scripts and tests.

``mount`` starts the same detached ``encordfs mount --foreground`` process the CLI starts
(``cli.spawn_mount``) and returns once the mount serves, so the mounting process never runs FUSE
threads itself (a notebook kernel that dies or forks cannot take the mount with it, and the
mount cannot deadlock the kernel). Options go through ``encordfs.config``, like the CLI's:
arguments > ``ENCORDFS_*`` environment > ``ENCORDFS_CONFIG`` file > defaults.

The returned ``RunningMount`` is a context manager; leaving the block (or ``unmount()``) waits up to
``flush_timeout_s`` for queued metadata changes, unmounts and reaps the process.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from encordfs import errors
from encordfs.mountpoint import check_usable, mounted_at, unmount

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
        return self._proc.poll() is None and mounted_at(self.path) is not None

    def status(self) -> dict[str, Any]:
        """What ``encordfs status --json`` prints: open handles, write queue, counters."""
        from encordfs.cli import _read_status

        return _read_status(self.path)

    def flush(self, timeout: float = 60.0) -> bool:
        """Push queued metadata changes now; True once none is pending (False when ``timeout`` s passed)."""
        from encordfs.cli import _flush

        ok, _ = _flush(self.path, timeout)
        return ok

    def unmount(self, flush_timeout_s: float = 10.0) -> None:
        """Flush (up to ``flush_timeout_s``), unmount, and wait for the mount process to end."""
        if self._proc.poll() is None and mounted_at(self.path):
            if flush_timeout_s > 0 and not (self.status().get("read_only")):
                self.flush(flush_timeout_s)
            try:
                unmount(self.path)
            except errors.Busy:
                unmount(self.path, lazy=True)
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


def mount(
    mountpoint: str | Path,
    *,
    domain: str | None = None,
    ssh_key_file: str | Path | None = None,
    cache_dir: str | Path | None = None,
    read_only: bool | None = None,
    allow_other: bool | None = None,
    metadata_ttl: str | float | None = None,
    cache_size: str | None = None,
    uid: int | None = None,
    gid: int | None = None,
    file_mode: int | None = None,
    dir_mode: int | None = None,
    log_file: str | Path | None = None,
    verbose: int | None = None,
    config: str | Path | None = None,
    http_client: str | None = None,
    ca_file: str | Path | None = None,
) -> RunningMount:
    """Mount Encord at ``mountpoint`` (an empty directory) and return once it serves.

    ``domain`` defaults to ``$ENCORDFS_DOMAIN`` or Encord's; ``ssh_key_file`` to
    ``$ENCORD_SSH_KEY_FILE``; the process logs to ``log_file`` (default ``CACHE_DIR/mount.log``).
    """
    from encordfs import cli

    args = argparse.Namespace(
        mountpoint=str(mountpoint),
        config=str(config) if config else None,
        domain=domain,
        ssh_key_file=str(ssh_key_file) if ssh_key_file else None,
        cache_dir=str(cache_dir) if cache_dir else None,
        read_only=read_only,
        allow_other=allow_other,
        include_org_access=None,
        metadata_ttl=None if metadata_ttl is None else str(metadata_ttl),
        cache_size=cache_size,
        max_metadata_bytes=None,
        uid=uid,
        gid=gid,
        file_mode=file_mode,
        dir_mode=dir_mode,
        log_file=str(log_file) if log_file else None,
        log_format=None,
        verbose=verbose,
        metrics_port=None,
        http_client=http_client,
        ca_file=str(ca_file) if ca_file else None,
    )
    cli._apply_config(args)
    cli._check_ca_file(args)
    path = check_usable(Path(args.mountpoint).expanduser())
    log_path = cli._detached_log_path(args)
    return RunningMount(path, cli.spawn_mount(cli._mount_argv(args, path), path, log_path), log_path)
