"""A real ``redis-server`` for cluster tests and benchmarks: a free loopback port, no persistence,
always killed at exit (even when the body raised), and restartable on the same port.

``RunningRedis(password=..., maxmemory=...)`` starts ``redis-server --port P --bind 127.0.0.1 --save ''
--appendonly no`` (plus ``--requirepass`` / ``--maxmemory`` with ``allkeys-lru`` when given) in its
own temp dir, waits (15 s max) until it answers PING, and exposes ``url``. ``kill()`` stops it at once
(SIGKILL: what a crash looks like to clients); ``start()`` brings a fresh, empty server back on the
same port. ``client()`` is a redis-py client for assertions.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningRedis:
    def __init__(self, password: str | None = None, maxmemory: str | None = None, port: int | None = None) -> None:
        self.password = password
        self.maxmemory = maxmemory
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="encordfs-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (the password, if any, is not in it: pass it separately)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RunningRedis:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def argv(self) -> list[str]:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.maxmemory:
            argv += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        return argv

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (scripts/setup installs it)")
        self._proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()[-500:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("redis-server did not answer PING within 15 s")
            time.sleep(0.05)

    def kill(self) -> None:
        """Stop the server now (SIGKILL, by pid); its data is gone (no persistence)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
            return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)
