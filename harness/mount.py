"""A real encordfs mount for tests: a separate process, always unmounted and reaped on exit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from encordfs.control import mounted_at
from encordfs.control import spawn_argv as spawn_mount


class MountedFS:
    def __init__(
        self, domain: str, key_file: str | Path, workdir: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.domain = domain
        self.key_file = str(key_file)
        self.workdir = workdir
        self.path = workdir / "mnt"
        self.cache_dir = workdir / "cache"
        self.log_path = workdir / "mount.log"
        self.extra = list(extra)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "encordfs",
            "mount",
            str(self.path),
            "--foreground",
            "--domain",
            self.domain,
            "--ssh-key-file",
            self.key_file,
            "--cache-dir",
            str(self.cache_dir),
            "-v",
            *self.extra,
        ]

    def __enter__(self) -> MountedFS:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.proc = spawn_mount(self.argv(), self.path, self.log_path, env=self.env)
        except BaseException:  # e.g. interrupted (a test timeout) after the mount came up: not left behind
            self.stop()
            raise
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        for attempt in range(20):
            if not mounted_at(self.path):
                break
            done = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))
        else:
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if mounted_at(self.path):
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def encordfs_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m encordfs ARGS`` run to its end: output captured as text, stdin from /dev/null."""
    return subprocess.run(
        [sys.executable, "-m", "encordfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


@contextmanager
def temporary_mount(
    domain: str,
    key_file: str | Path | None,
    *extra: str,
    prefix: str = "encordfs-mnt-",
    env: dict[str, str] | None = None,
) -> Iterator[MountedFS]:
    """A mount in a fresh temp dir (mount point, cache, log), removed with it afterwards."""
    assert key_file is not None, "the emulator made no demo key"
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with MountedFS(domain, key_file, workdir, *extra, env=env) as mounted:
            yield mounted
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
