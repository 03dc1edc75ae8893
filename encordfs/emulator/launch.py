"""Starting the emulator as a child process and waiting for its ready lines.

The emulator prints ``ssh_key_file=PATH`` (when it made the demo key) and then ``domain=URL`` on
stdout once it serves. ``start`` runs ``python -m encordfs.emulator`` with the caller's arguments,
reads those lines (stderr goes where the caller says), and returns the process with what it printed.
Used by ``encordfs demo``, the tests' ``RunningEmulator`` and the benchmarks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class NotReady(RuntimeError):
    """The emulator exited or did not print its domain in time."""


@dataclass
class Launched:
    proc: subprocess.Popen[str]
    domain: str
    key_file: Path | None  # None when keys were given with --authorized-key


def start(
    data_dir: Path,
    args: list[str],
    *,
    stderr: IO[Any] | int | None = None,
    timeout_s: float = 120,
    new_session: bool = False,
) -> Launched:
    argv = [sys.executable, "-m", "encordfs.emulator", "--data-dir", str(data_dir), *args]
    # Loopback must never go through a proxy configured for the outside world.
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        start_new_session=new_session,
    )
    found: dict[str, str] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            found[key] = value
            if key == "domain":
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if "domain" not in found:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise NotReady(f"the emulator did not start (exit status {proc.returncode})")
    key = found.get("ssh_key_file")
    return Launched(proc, found["domain"], Path(key) if key else None)
