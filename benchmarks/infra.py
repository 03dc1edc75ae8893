"""The moving parts of a benchmark run: nginx, the emulator, encordfs and rclone mounts, cleanup.

Everything started here registers its own teardown on one ``Cleanup`` (an ``ExitStack``), so a
finished, failed or interrupted run (Ctrl-C, SIGTERM, SIGHUP: all turned into ``KeyboardInterrupt``)
unmounts, stops every process it started -- by pid, never by name -- and removes its temp dirs.

Byte server: one nginx on 127.0.0.1 whose root is the emulator's blob dir (``sendfile off;
output_buffers 2 1m`` were the fastest loopback settings measured; keep-alive on; ``autoindex`` so
that rclone's http backend can list it). The emulator runs with ``--blob-base-url`` pointing at it,
so encordfs, the direct downloads and rclone all read the same files from the same server.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from encordfs.control import mounted_at
from encordfs.control import spawn_argv as spawn_mount

REPO = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 15.0


class Cleanup(contextlib.ExitStack):
    """An ExitStack that also turns SIGTERM/SIGHUP into KeyboardInterrupt while it is open."""

    def __enter__(self) -> Cleanup:
        super().__enter__()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.signal(sig, _interrupt)
            self.callback(signal.signal, sig, previous)
        return self

    def temp_dir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self.callback(_rmtree, path)
        return path


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> int:
    """Context switches of a process's live threads so far, voluntary (a thread blocked: on the GIL, a
    lock, a queue, a read) and involuntary (preempted). Threads that have ended are not counted."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


@contextlib.contextmanager
def per_unit(pid: int, units: int, fig: dict[str, float], prefix: str, cpu_unit: str = "us") -> Any:
    """Over the block, the process's CPU and context switches per unit (a file, a MiB):
    ``{prefix}_cpu_{cpu_unit}`` (``us`` or ``ms``) and ``{prefix}_switches``. A mount shares the 2 cores
    here with its readers and the byte server, so its CPU per file bounds its rate; switches count how
    often its threads blocked (the GIL, a lock, a queue, a read) or were preempted."""
    scale = {"us": 1e6, "ms": 1e3}[cpu_unit]
    cpu0, switches0 = cpu_s(pid), switches(pid)
    yield
    fig[f"{prefix}_cpu_{cpu_unit}"] = (cpu_s(pid) - cpu0) * scale / max(1, units)
    fig[f"{prefix}_switches"] = (switches(pid) - switches0) / max(1, units)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _rmtree(path: Path) -> None:
    for _ in range(3):
        if not path.exists():
            return
        # Never descend into a mount left behind: unmount whatever lies under the tree first.
        for mnt in _mounts_under(path):
            _unmount(mnt)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)


def _mounts_under(path: Path) -> list[Path]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    prefix = str(path).rstrip("/") + "/"
    found = [Path(line.split()[1].replace("\\040", " ")) for line in lines if len(line.split()) > 1]
    return [m for m in found if str(m).startswith(prefix)]


def _unmount(mnt: Path) -> None:
    for attempt in range(10):
        if not mounted_at(mnt):
            return
        if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1 * (attempt + 1))
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    if mounted_at(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by pid: ``sig``, then SIGKILL after a grace period."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drop_caches() -> bool:
    """Drop the page cache (root only); False when not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def wait_for(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- nginx

_NGINX_CONF = """\
{head}user root;
daemon off;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    sendfile off;
    output_buffers 2 1m;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
{http}}}
"""

_FILE_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
        autoindex_exact_size on;
    }}
"""


def run_nginx(
    stack: Cleanup,
    work: Path,
    http: str,
    ready: Callable[[], bool],
    *,
    head: str = "",
    connections: int = 1024,
    what: str = "nginx",
) -> None:
    """Start nginx (one master, one worker) with its files under ``work``: the settings every benchmark
    server shares, then ``http`` (the rest of the ``http`` block: servers, upstreams, TLS) and ``head``
    before it all (``load_module``). Waits until ``ready()``; stopped gracefully at exit."""
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(head=head, work=work, connections=connections, http=http))
    stderr = open(work / "stderr.log", "wb")
    stack.callback(stderr.close)
    proc = subprocess.Popen(
        ["nginx", "-p", str(work), "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    stack.callback(stop_process, proc, signal.SIGQUIT)  # graceful: the master stops its workers

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(work / 'stderr.log').read_text()[-500:]}")
        return ready()

    wait_for(up, 15, what)


def start_nginx(stack: Cleanup, root: Path, work: Path) -> str:
    """Serve ``root`` (created if missing) on a free loopback port; returns the base URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/", timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    run_nginx(stack, work, _FILE_SERVER.format(port=port, root=root), ready)
    return url


# ---------------------------------------------------------------------------------------------- direct reads


def get_parallel(urls: Sequence[str], threads: int = 8, verify: ssl.SSLContext | bool = True) -> tuple[float, int]:
    """(seconds, bytes) to GET every URL whole with ``threads`` threads over one pooled httpx client."""
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with httpx.Client(limits=limits, timeout=60, verify=verify) as client:

        def one(url: str) -> int:
            response = client.get(url)
            response.raise_for_status()
            return len(response.content)

        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            total = sum(pool.map(one, urls))
            return time.perf_counter() - t0, total


def sdk_loop(rows: Sequence[Any], size: int, verify: ssl.SSLContext | bool = True) -> float:
    """Files a second of the naive SDK loop: each data row's pre-signed URL fetched, then its file (``size``
    bytes) GET whole, one after the other."""
    with httpx.Client(timeout=60, verify=verify) as http:
        t0 = time.perf_counter()
        for row in rows:
            row.refetch_data(signed_url=True)
            response = http.get(row.signed_url)
            response.raise_for_status()
            assert len(response.content) == size
        return len(rows) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- redis


def start_redis(stack: Cleanup, maxmemory: str) -> Any:
    """A fresh ``redis-server`` on a free loopback port (no persistence, ``allkeys-lru``), stopped at exit."""
    from harness.redis import RunningRedis

    return stack.enter_context(RunningRedis(maxmemory=maxmemory))


# ---------------------------------------------------------------------------------------------- emulator


class Emulator:
    def __init__(self, proc: subprocess.Popen[str], domain: str, key_file: str) -> None:
        self.proc = proc
        self.domain = domain
        self.key_file = key_file

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.domain}/_emulator/stats", timeout=30).json()  # type: ignore[no-any-return]

    def api_calls(self) -> int:
        return int(self.stats()["api_calls"])

    def sdk(self) -> Any:
        from encord import EncordUserClient

        return EncordUserClient.create_with_ssh_private_key(ssh_private_key_path=self.key_file, domain=self.domain)


def start_emulator(stack: Cleanup, data_dir: Path, args: list[str], log: Path, timeout_s: float = 600) -> Emulator:
    from encordfs.emulator import launch

    try:
        launched = launch.start(data_dir, args, stderr=open(log, "w"), timeout_s=timeout_s, new_session=True)
    except launch.NotReady as exc:
        raise RuntimeError(f"{exc}: {log.read_text()[-2000:]}") from None
    stack.callback(stop_process, launched.proc)
    return Emulator(launched.proc, launched.domain, str(launched.key_file or data_dir / "demo_ed25519"))


def encordfs_cp(emu: Emulator, source: str, dest: Path, cache: Path, *extra: str) -> tuple[float, float, int, str]:
    """One ``encordfs cp SOURCE DEST`` with its defaults (and ``extra`` options): (copy phase seconds
    as cp reports them, the whole command's seconds, files copied, its summary line). RuntimeError
    when it fails."""
    argv = [sys.executable, "-m", "encordfs", "cp", "--domain", emu.domain, "--ssh-key-file", emu.key_file,
            "--cache-dir", str(cache), "-q", *extra, source, str(dest)]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"encordfs cp failed: {done.stderr.strip()[-500:]}")
    copied = re.search(r"([0-9,]+) copied \(.*? in ([0-9.]+) s", done.stderr)
    if copied is None:
        raise RuntimeError(f"encordfs cp printed no summary: {done.stderr.strip()[-500:]}")
    return float(copied.group(2)), wall, int(copied.group(1).replace(",", "")), done.stderr.strip().splitlines()[0]


def emulator_has_flag(flag: str) -> bool:
    done = subprocess.run([sys.executable, "-m", "encordfs.emulator", "--help"], capture_output=True, text=True)
    return flag in done.stdout


# ---------------------------------------------------------------------------------------------- mounts


class EncordMount:
    """``encordfs mount --foreground`` in its own process (through the CLI's own ``spawn_mount``)."""

    def __init__(self, emu: Emulator, path: Path, cache_dir: Path, log: Path, *extra: str) -> None:
        self.path = path
        self.cache_dir = cache_dir
        argv = [
            sys.executable,
            "-m",
            "encordfs",
            "mount",
            str(path),
            "--foreground",
            "--domain",
            emu.domain,
            "--ssh-key-file",
            emu.key_file,
            "--cache-dir",
            str(cache_dir),
            *extra,
        ]
        path.mkdir(parents=True, exist_ok=True)
        self.proc = spawn_mount(argv, path, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        """Unmount, then let the process finish closing by itself (its disk cache drains its write queue
        and commits its index, as after a user's ``fusermount3 -u``) before stopping it."""
        _unmount(self.path)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        stop_process(self.proc)


class RcloneMount:
    """``rclone mount :http:`` of the nginx root, default VFS settings (no VFS cache)."""

    def __init__(self, url: str, path: Path, work: Path, *extra: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        conf = work / "rclone.conf"
        conf.touch()
        argv = [
            "rclone",
            "mount",
            ":http:",
            str(path),
            "--http-url",
            url + "/",
            "--read-only",
            "--config",
            str(conf),
            "--dir-cache-time",
            "1h",
            "--attr-timeout",
            "60s",
            *extra,
        ]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "rclone.log", "wb"),
            start_new_session=True,
        )
        try:
            wait_for(lambda: self.proc.poll() is None and mounted_at(path) or self._died(work), 60, "rclone mount")
        except BaseException:
            self.stop()
            raise

    def _died(self, work: Path) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"rclone exited: {(work / 'rclone.log').read_text()[-1000:]}")
        return False

    def stop(self) -> None:
        _unmount(self.path)
        stop_process(self.proc)


@contextlib.contextmanager
def mounted(make: Callable[[], Any]) -> Any:
    m = make()
    try:
        yield m
    finally:
        m.stop()


# ---------------------------------------------------------------------------------------------- profiling


@contextlib.contextmanager
def profiled(pid: int | None, out: Path, rate_hz: int = 200) -> Any:
    """``py-spy record`` of ``pid`` while the block runs (raw collapsed stacks in ``out``); no-op if None."""
    if pid is None:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    proc = subprocess.Popen(
        [str(spy), "record", "-p", str(pid), "-r", str(rate_hz), "--nonblocking", "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.5)
    try:
        yield
    finally:
        stop_process(proc, signal.SIGINT)
