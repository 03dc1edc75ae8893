"""The unmount watchdog: a normal user's mount that is killed (``kill -9``) leaves no dead mount behind.

Both bindings mount as a normal user through ``fusermount3 -o auto_unmount``, which stays to unmount
when the mount process's end of its socket closes. fusermount3 before libfuse 3.15 (3.14 is Debian
12's) checks the mountpoint with an ``open()`` as root first; the kernel refuses root on a user's
mount without ``allow_other`` (``EACCES``), and fusermount3 then leaves the dead mount there
(libfuse#586): every later access answers "Transport endpoint is not connected".

**Owns** a small process, started by the mount process and run as the mount's own user, in a session
of its own (a Ctrl-C of the terminal does not reach it), reading the read end of a pipe whose write
end only the mount process holds. At EOF (the mount process ended, killed or not) it opens the
mountpoint: one that fails with ``ENOTCONN``/``ECONNABORTED`` is a dead mount, and ``fusermount3 -u
-z`` takes it away; a mountpoint still served, or unmounted cleanly, is left as it is. About 11 MB of
memory per user mount; none as root (the kernel binding mounts with mount(2) there, and ``encordfs
unmount`` cleans up after a kill).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

_SCRIPT = """
import errno, os, subprocess, sys
mountpoint, tool = sys.argv[1], sys.argv[2]
os.chdir("/")
while os.read(0, 64):
    pass
try:
    os.close(os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY))
except OSError as exc:
    if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
        subprocess.run([tool, "-u", "-z", "-q", mountpoint], stdin=subprocess.DEVNULL, capture_output=True)
"""


@dataclass
class Watchdog:
    """A started watchdog: its process, and the pipe's write end this process holds until it has unmounted."""

    proc: subprocess.Popen[bytes]
    fd: int | None

    @classmethod
    def start(cls, mountpoint: str, tool: str) -> Watchdog:
        """Raises OSError when the process cannot start."""
        read_end, write_end = os.pipe()  # neither inheritable: the watchdog gets the read end as stdin
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _SCRIPT, mountpoint, tool],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        return cls(proc, write_end)

    @classmethod
    def start_or_warn(cls, mountpoint: str, tool: str) -> Watchdog | None:
        """``start``, or None with one warning: serving matters more, only a kill would leave the mount behind."""
        try:
            return cls.start(mountpoint, tool)
        except OSError as exc:
            log.warning("cannot start the unmount watchdog (%s): a killed mount process may leave %s behind",
                        exc.strerror, mountpoint)  # fmt: skip
            return None

    def stop(self) -> None:
        """After unmounting: the watchdog finds the mountpoint unmounted and ends."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
