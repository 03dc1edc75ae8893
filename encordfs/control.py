"""Control of mounts from outside the mount process: check a mount point, start a mount and wait for
it, find it, ask it for its status, flush it, refresh folders, unmount it. The CLI, the Python API
(``encordfs.api``) and the test harness all go through here.

Finding a mount never touches its mount point. What is mounted where comes from
``/proc/self/mountinfo`` (``find``); a path is compared as text (``os.path.abspath``, its parent's
``realpath``), never ``stat``-ed inside the mount, so a stopped, dead or deadlocked mount cannot hang a
control command.

Talking to a mount goes through its control socket, not the mount: each serving mount registers
itself in a runtime directory (``/run/encordfs`` for root, else ``$XDG_RUNTIME_DIR/encordfs`` or
``/tmp/encordfs-UID``) as ``<hash of mount point>.json`` (pid, mount point, cache dir, socket) beside a
Unix socket ``<hash>.sock`` that ``Server`` answers (one JSON request per connection, one JSON reply).
This works on read-only mounts (where the kernel refuses any setxattr before it reaches us) and on
mounts whose FUSE threads are all busy. Every request has a deadline: a stopped daemon (``kill
-STOP``) is reported as not answering, within the command's timeout.

A mount's state (``probe``): ``alive`` (registered pid running), ``stopped`` (pid in state T),
``dead`` (mounted, no process serves it: "Transport endpoint is not connected"). A dead mount of
ours is cleaned by ``unmount`` and, with a warning, by ``check_mountpoint`` before a new mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encordfs import errors
from encordfs.libc import libc

if TYPE_CHECKING:
    from encordfs.settings import Settings

log = logging.getLogger(__name__)

FSTYPE = "fuse.encordfs"
READY_TIMEOUT_S = 60.0
# glibc gives every allocation >= 128 KiB back to the kernel at free(); the read path allocates
# MiB-sized buffers per read: a fresh 1 MiB buffer per read measured 3.5x slower without these.
# MALLOC_ARENA_MAX: glibc gives each new thread its own arena (up to 8 per core) and memory freed in one
# is not reused by the others; with ~40 threads (FUSE workers, read pool, SQLite with the GIL released)
# an epoch over 100k files left 135 MB free but resident in arenas, against 70 MB with 2 arenas (mount
# RSS 504 -> 425 MB, same sitting). Most allocations are made under the GIL anyway, so fewer arenas
# cost no measurable contention.
# Set for the mount process only; values already in the environment win.
MOUNT_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    "MALLOC_ARENA_MAX": "2",
}


class NotAMount(errors.InvalidValue):
    """A path the user gave is not (under) an encordfs mount; the CLI exits 2 for it."""


class NotResponding(errors.FsError):
    """The mount's process did not answer its control socket in time."""


# -- mount table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    fstype: str
    device: tuple[int, int]  # major, minor (the FUSE connection is /sys/fs/fuse/connections/<minor>)
    source: str


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts() -> list[MountInfo]:
    """Every mount of this namespace, from ``/proc/self/mountinfo`` (later mounts last)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        major, _, minor = fields[2].partition(":")
        out.append(MountInfo(_unescape(fields[4]), rest[0], (int(major or 0), int(minor or 0)), _unescape(rest[1])))
    return out


def canonical(path: str | Path) -> str:
    """An absolute path for comparing with the mount table, resolving symlinks of the parent only
    (resolving the last component would enter the mount it names)."""
    absolute = os.path.abspath(os.path.expanduser(str(path)))
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) if name else absolute


def mounted_at(path: str | Path) -> str | None:
    """The filesystem type mounted exactly at ``path`` (e.g. ``fuse.encordfs``), or None."""
    target = canonical(path)
    found = None
    for m in mounts():
        if m.mountpoint == target:
            found = m.fstype
    return found


def find(path: str | Path, *, exact: bool = False) -> MountInfo | None:
    """The encordfs mount at ``path`` (``exact``) or the innermost one containing it."""
    target = canonical(path)
    best: MountInfo | None = None
    for m in mounts():
        inside = target == m.mountpoint or target.startswith(m.mountpoint.rstrip("/") + "/")
        if not inside or (exact and target != m.mountpoint):
            continue
        if best is None or len(m.mountpoint) >= len(best.mountpoint):
            best = m
    return best if best is not None and best.fstype == FSTYPE else None


# -- registry -------------------------------------------------------------------------------------


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/encordfs")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "encordfs" if xdg else Path(f"/tmp/encordfs-{os.geteuid()}")


def _key(mountpoint: str) -> str:
    return hashlib.sha256(mountpoint.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Registration:
    pid: int
    mountpoint: str
    socket: str
    cache_dir: str
    read_only: bool

    @property
    def state(self) -> str:
        return process_state(self.pid)


def registration(mountpoint: str | Path) -> Registration | None:
    path = runtime_dir() / f"{_key(canonical(mountpoint))}.json"
    try:
        data = json.loads(path.read_text())
        return Registration(
            int(data["pid"]), data["mountpoint"], data["socket"], data["cache_dir"], bool(data["read_only"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def process_state(pid: int) -> str:
    """``alive``, ``stopped`` (SIGSTOP, or traced) or ``gone`` (no such process, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "gone"
    return {"T": "stopped", "t": "stopped", "Z": "gone", "X": "gone"}.get(state, "alive")


def probe(info: MountInfo) -> tuple[str, Registration | None]:
    """(``alive`` | ``stopped`` | ``dead``, its registration) of a mounted encordfs."""
    reg = registration(info.mountpoint)
    if reg is not None:
        state = reg.state
        return ("dead" if state == "gone" else state), reg
    # Not registered here (another user's runtime dir, an older version): ask the kernel, with a deadline.
    try:
        _bounded(lambda: os.stat(info.mountpoint), 2.0)
    except OSError as exc:
        if exc.errno == 107:  # ENOTCONN: "Transport endpoint is not connected"
            return "dead", None
    except TimeoutError:
        return "stopped", None
    return "alive", None


def _bounded(call: Callable[[], Any], timeout_s: float) -> Any:
    """``call()`` on a daemon thread; ``TimeoutError`` if it has not returned within ``timeout_s``
    (the thread is abandoned: it may be stuck in the kernel on a hung mount)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- the mount point ------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def check_mountpoint(path: str | Path, settings: Settings | None = None) -> Path:
    """The mount point must exist, be an empty directory, not be mounted (a dead encordfs mount left
    there is cleaned), /dev/fuse must exist, and neither the cache dir nor the log file may lie inside
    it (a mount thread would then wait on its own mount). Checked before anything is created."""
    if not os.path.exists("/dev/fuse"):
        raise errors.FsError(
            "/dev/fuse does not exist: FUSE is not available here "
            "(load the fuse module, or run the container with --device /dev/fuse)"
        )
    where = canonical(path)
    info = find(where, exact=True)
    if info is None and mounted_at(where):
        raise errors.Busy(f"{where} is already a mount point of another filesystem")
    if info is not None:
        state, _ = probe(info)
        if state != "dead":
            raise errors.Busy(f"{where} is already an encordfs mount (unmount it first: encordfs unmount {where})")
        log.warning("%s: cleaning up an encordfs mount whose process is gone", where)
        detach(Path(where), lazy=True)
    mountpoint = Path(where)
    try:
        if not mountpoint.is_dir():
            if not mountpoint.exists():
                raise errors.NotFound(
                    f"mount point {mountpoint} does not exist (create it with: mkdir -p {mountpoint})"
                )
            raise errors.NotADirectory(f"mount point {mountpoint} is not a directory")
        if any(os.scandir(mountpoint)):
            raise errors.NotEmpty(f"mount point {mountpoint} is not empty")
    except PermissionError:
        raise errors.PermissionDenied(f"cannot read mount point {mountpoint}") from None
    except OSError as exc:
        raise errors.FsError(f"mount point {mountpoint}: {exc.strerror}") from None
    mountpoint = mountpoint.resolve()
    if settings is not None:
        for what, candidate in (("--cache-dir", settings.cache_path), ("--log-file", settings.detached_log_path())):
            if _inside(Path(candidate), mountpoint):
                raise errors.InvalidValue(
                    f"{what} {candidate} is inside the mount point {mountpoint}: choose a path outside it"
                )
    return mountpoint


# -- starting a mount -----------------------------------------------------------------------------


def spawn(
    settings: Settings,
    mountpoint: Path,
    log_path: Path | None = None,
    *,
    env: dict[str, str] | None = None,
    extra_argv: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a detached foreground mount process serving ``settings``; return once it serves."""
    from encordfs.settings import mount_argv, mount_env

    return spawn_argv(
        mount_argv(settings, mountpoint) + list(extra_argv or []),
        mountpoint,
        log_path or settings.detached_log_path(),
        env={**(os.environ if env is None else env), **mount_env(settings)},
    )


def spawn_argv(
    argv: list[str], mountpoint: Path, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (a foreground mount command) detached, logging to ``log_path``; wait until it serves."""
    env = {**MOUNT_MALLOC_ENV, **(os.environ if env is None else env)}
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                start_new_session=True, env=env)  # fmt: skip
    if wait_mounted(mountpoint, READY_TIMEOUT_S, lambda: proc.poll() is None):
        raise_read_ahead(mountpoint)
        return proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise errors.FsError(f"mount did not become ready within {READY_TIMEOUT_S:.0f} s (log: {log_path})")
    raise errors.FsError(
        last_error(log_path) or f"mount process exited with status {proc.returncode} (log: {log_path})"
    )


def wait_mounted(path: Path, timeout_s: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if mounted_at(path):
            return True
        if not alive():
            return False
        time.sleep(0.05)
    return False


def last_error(log_path: Path) -> str | None:
    """The mount process's last ``encordfs: error:`` line, else the last line of its log."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[-50:]):
        if line.startswith("encordfs: error: "):
            return line.removeprefix("encordfs: error: ")
    tail = [line for line in lines[-50:] if line.strip()]
    return f"mount process failed: {tail[-1].strip()[:300]} (log: {log_path})" if tail else None


def raise_read_ahead(path: Path, kb: int = 1024) -> bool:
    """Let the kernel read ahead ``kb`` KiB on this mount (FUSE's default is 128 KiB): with libfuse 3
    the kernel then sends reads of up to 1 MiB. Root only (a sysfs knob); best effort."""
    info = find(path, exact=True)
    if info is None:
        return False
    try:
        Path(f"/sys/class/bdi/{info.device[0]}:{info.device[1]}/read_ahead_kb").write_text(str(kb))
        return True
    except OSError:
        return False


# -- talking to a mount ---------------------------------------------------------------------------


def _registered(path: str | Path) -> tuple[MountInfo, Registration]:
    info = find(path, exact=True)
    if info is None:
        raise NotAMount(f"{canonical(path)} is not an encordfs mount")
    state, reg = probe(info)
    if state == "dead":
        raise errors.NotFound(
            f"{info.mountpoint}: the mount's process is gone (clean it up: encordfs unmount {info.mountpoint})"
        )
    if reg is None:
        raise errors.FsError(f"{info.mountpoint}: no control socket (mounted by another user or an older encordfs)")
    return info, reg


def request(reg: Registration, op: str, wait_s: float, **args: Any) -> dict[str, Any]:
    """One request to a mount's control socket; ``NotResponding`` past ``wait_s``."""
    deadline = time.monotonic() + wait_s
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.05, wait_s))
            sock.connect(reg.socket)
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            chunks = []
            while True:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    except TimeoutError:
        why = "is stopped" if reg.state == "stopped" else "did not answer"
        raise NotResponding(f"{reg.mountpoint}: the mount process (pid {reg.pid}) {why} within {wait_s:g} s") from None
    except OSError as exc:
        raise NotResponding(
            f"{reg.mountpoint}: cannot reach the mount process (pid {reg.pid}): {exc.strerror}"
        ) from None
    try:
        reply: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        raise NotResponding(f"{reg.mountpoint}: the mount process gave no answer") from None
    if "error" in reply:
        raise errors.FsError(str(reply["error"]))
    return reply


def status(path: str | Path, timeout_s: float = 10.0) -> dict[str, Any]:
    """What ``encordfs status --json`` prints: open handles, write queue, counters."""
    _, reg = _registered(path)
    return request(reg, "status", timeout_s)["status"]


def flush(path: str | Path, timeout_s: float) -> tuple[bool, dict[str, Any]]:
    """Push queued metadata changes now; (True once none is pending, the write queue's status)."""
    _, reg = _registered(path)
    reply = request(reg, "flush", timeout_s + 5.0, timeout_s=timeout_s)
    return bool(reply["ok"]), reply.get("writes") or {}


def refresh(path: str | Path, timeout_s: float = 120.0) -> None:
    """Reload the folder at ``path`` (inside an encordfs mount) from Encord now."""
    info = find(path)
    if info is None:
        raise NotAMount(f"{canonical(path)} is not inside an encordfs mount")
    _, reg = _registered(info.mountpoint)
    relative = os.path.relpath(canonical(path), info.mountpoint)
    request(reg, "refresh", timeout_s, path="/" if relative == "." else "/" + relative)


HINTS_REQUEST_BYTES = 48 * 1024  # paths per control request: the socket reads at most 64 KiB of request


def hints(mountpoint: str | Path, paths: list[str], timeout_s: float = 30.0) -> int:
    """Send order hints (paths inside the mount, relative to its root or absolute) through the control
    socket, as one hint list; for read-only mounts, whose ``.encordfs/hints`` file the kernel will not
    let anyone write. Returns the number of paths sent."""
    _, reg = _registered(mountpoint)
    list_id: int | None = None
    batch: list[str] = []
    size = 0
    for i, path in enumerate(paths):
        batch.append(path)
        size += len(json.dumps(path)) + 2
        if size >= HINTS_REQUEST_BYTES or i == len(paths) - 1:
            final = i == len(paths) - 1
            reply = request(reg, "hints", timeout_s, lines=batch, list_id=list_id, final=final)
            list_id = int(reply["list_id"])
            batch, size = [], 0
    if list_id is None:  # no path: an empty list, which clears the hints
        request(reg, "hints", timeout_s, lines=[], list_id=None, final=True)
    return len(paths)


def detach(path: Path, *, lazy: bool = False, timeout_s: float = 10.0) -> None:
    """Unmount ``path`` (``lazy``: detach now even if busy). Never waits on the mount's process."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    commands = []
    if tool:
        commands.append([tool, "-u", *(["-z"] if lazy else []), str(path)])
    commands.append(["umount", *(["-l"] if lazy else []), str(path)])
    reason = "unknown error"
    for cmd in commands:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
            continue
        if done.returncode == 0 or not mounted_at(path):
            return
        reason = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
    if lazy and os.geteuid() == 0 and _umount2(path, 2) == 0:  # MNT_DETACH
        return
    if "busy" in reason.lower():
        raise errors.Busy(f"cannot unmount {path}: it is busy (a process uses it); --lazy detaches it anyway")
    raise errors.Busy(f"cannot unmount {path}: {reason}")


def _umount2(path: Path, flags: int) -> int:
    return int(libc().umount2(os.fsencode(str(path)), flags))


@dataclass
class Unmounted:
    pending_rows: int = 0
    parked_rows: int = 0
    released: bool = True  # the mount process ended (its cache dir is free)
    notes: tuple[str, ...] = ()


def unmount(path: str | Path, *, timeout_s: float = 10.0, lazy: bool = False) -> Unmounted:
    """Flush (within ``timeout_s``), unmount, and wait for the mount process to end (within the same
    timeout), so the cache dir is free when this returns. ``lazy`` detaches at once, busy or not.
    A dead mount is cleaned up. Never takes longer than ``timeout_s`` plus a few seconds."""
    deadline = time.monotonic() + timeout_s
    info = find(path, exact=True)
    if info is None:
        if mounted_at(path):
            raise NotAMount(f"{canonical(path)} is not an encordfs mount")
        raise errors.NotFound(f"{canonical(path)} is not mounted")
    mountpoint = Path(info.mountpoint)
    state, reg = probe(info)
    if state == "dead":
        detach(mountpoint, lazy=True)
        return Unmounted(notes=(f"cleaned up {mountpoint}: its mount process was gone",))
    out = Unmounted()
    notes: list[str] = []
    if reg is not None and not lazy and state == "alive":
        try:
            reply = request(
                reg,
                "stop",
                max(0.5, deadline - time.monotonic() - 0.5),
                timeout_s=max(0.0, deadline - time.monotonic() - 1.0),  # leaves a second to unmount and exit
            )
            writes = reply.get("writes") or {}
            out.pending_rows, out.parked_rows = int(writes.get("pending_rows") or 0), len(writes.get("parked") or [])
        except NotResponding as exc:
            notes.append(f"{exc}; unmounting without flushing (queued changes stay in the journal)")
    elif state == "stopped":
        notes.append(f"the mount process (pid {reg.pid if reg else '?'}) is stopped; detaching without flushing")
    detach(mountpoint, lazy=lazy or state == "stopped", timeout_s=max(1.0, deadline - time.monotonic()))
    if reg is not None:
        while process_state(reg.pid) != "gone" and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_state(reg.pid) != "gone":
            out.released = False
            notes.append(f"the mount process (pid {reg.pid}) is still releasing {reg.cache_dir}")
    out.notes = tuple(notes)
    return out


# -- the mount process's side ----------------------------------------------------------------------


class Server:
    """The control socket of a serving mount: registers it, answers requests, unregisters on close.

    Requests (one JSON object per connection, answered with one): ``status``; ``flush`` (``timeout_s``;
    blocks until the write queue is empty or time is up); ``refresh`` (``path`` inside the mount);
    ``stop`` (flush within ``timeout_s``, then let the mount close without waiting again); ``hints``
    (``lines``, ``list_id``, ``final``: order hints, as written to ``.encordfs/hints``). Each
    connection is served on its own thread, never a FUSE thread.
    """

    def __init__(
        self, mountpoint: Path, cache_dir: Path, read_only: bool, handlers: dict[str, Callable[..., dict[str, Any]]]
    ) -> None:
        self.mountpoint = canonical(mountpoint)
        self._handlers = handlers
        self._dir = runtime_dir()
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = _key(self.mountpoint)
        self.socket_path = self._dir / f"{key}.sock"
        self._record = self._dir / f"{key}.json"
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        self._sock.listen(16)
        record = {"pid": os.getpid(), "mountpoint": self.mountpoint, "socket": str(self.socket_path),
                  "cache_dir": str(cache_dir), "read_only": read_only}  # fmt: skip
        tmp = self._record.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self._record)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="encordfs-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), name="encordfs-control-req", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10.0)
                data = b""
                while not data.endswith(b"\n") and len(data) < 1 << 16:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                req = json.loads(data)
                handler = self._handlers.get(str(req.pop("op", "")))
                if handler is None:
                    reply: dict[str, Any] = {"error": "unknown request"}
                else:
                    reply = handler(**req)
            except errors.FsError as exc:
                reply = {"error": exc.message or type(exc).__name__, "errno": exc.errno}
            except Exception as exc:  # a bad request must not end the control thread
                log.exception("control request failed")
                reply = {"error": f"internal error: {type(exc).__name__}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        owner = registration(self.mountpoint)
        if owner is not None and owner.pid != os.getpid():
            return  # a newer mount at the same place registered meanwhile: leave its files alone
        for path in (self._record, self.socket_path):
            with contextlib.suppress(OSError):
                path.unlink()
