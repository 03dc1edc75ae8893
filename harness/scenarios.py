"""The soak suites: real emulator, real mounts, faults injected by the emulator, every byte checked.

A ``Workspace`` owns one emulator process (restartable on the same port and data dir) serving three
datasets whose bytes are known independently of encordfs:

    soak-large   synthetic IMAGE rows of ``large_bytes`` (multi-part files); bytes by formula
    soak-small   synthetic rows of ``small_bytes`` (single-part files); the writes suites' targets
    soak-real    real files imported from a source folder of random bytes (compared with the source)

Synthetic bytes are ``emulator.synthetic.read(seed, size, offset, length)``; the seed is read from
the row's ``user.encord.file_link`` (``.../synthetic:<seed>:<size>``), so a mixed-up block or item
in any cache shows as wrong bytes.

Suites (each returns a dict of figures; ``MUST_BE_ZERO`` names the ones that must be 0):

``bytes_suite``        read ``total_bytes`` through a mount under ``mixed_blob_faults`` (5xx, 429 +
                       Retry-After, resets and truncations mid-body, short and long stalls, 403s),
                       2-second URL lifetimes and a skewed emulator clock; every file read once,
                       sequential with varied chunk sizes, every fourth one also by random ``pread``.
``writes_suite``       ``trials`` kill -9s of the mount process at random points of metadata write
                       streams (set/replace/remove of keys, two writer threads), the same cache dir each
                       time; then one more mount flushes and the server's state must be exactly the
                       last acknowledged value of every key, or a value written (durably) but not yet
                       acknowledged when the mount died.
``network_suite``      the emulator is stopped: reads of uncached bytes fail with EIO within the retry
                       budget (the worst time is reported), listings, ``stat`` and xattrs keep working
                       from the catalog; the emulator comes back on the same port and data dir and the
                       same mount reads again, by itself.
``hostile_suite``      random xattr names/values/flags, path components and renames through a real
                       mount: every call returns or fails with an expected errno, the mount survives,
                       and a failed call queues nothing.
``epoch_suite``        one epoch over a generated dataset (1M tiny rows in the full soak): every file
                       read once; the mount's RSS must stay under ``EPOCH_RSS_LIMIT_MB`` (400).
``stall_suite``        Encord and the bucket stall: a first listing, a read that signs and a read
                       of a signed file each answer within ``MAX_OP_WAIT_S`` (35 s): ``max_op_wait_s``.
``siblings_suite``     rows deleted on the server after the listing: every other row stays readable.
``stale_suite``        a push held by the server past the mount's timeout lands after newer values:
                       the newest value must be back once the late-duplicate window has passed.
``names_suite``        titles that used to fail a folder's load (NFC/NFD pairs, a base name and every
                       ``~id`` form of another row's name): every load lists every row, uniquely named.
``concurrency_suite``  ``threads`` threads of readers (bytes checked), writers (setxattr) and refreshers
                       (``encordfs refresh`` and the refresh xattr, then a listing) for ``duration_s``
                       under light faults: no error, no hang, RSS of the mount process bounded.

Hangs: every operation runs under a ``Watchdog``; one that takes longer than its deadline (generous:
twice the read budget) counts as a hang, and so does a thread still stuck when its suite ends.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from encordfs.control import mounted_at
from encordfs.emulator import synthetic
from harness.emulator import RunningEmulator
from harness.mount import MountedFS, encordfs_cli

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

META = "user.encord.meta."
RSS_LIMIT_MB = 1536  # 256 MiB memory block cache + read budget + interpreter, with room to spare
OP_DEADLINE_S = 75.0  # a read may take the 30 s retry budget plus a 10 s stall; 75 s is a hang
MUST_BE_ZERO = (
    "names_failed_loads",
    "sibling_sign_failures",
    "epoch_read_errors",
    "stale_overwrites",
    "wrong_bytes",
    "read_errors",
    "lost_writes",
    "hangs",
    "op_errors",
    "hostile_failures",
    "network_failures",
)
ABSENT = object()

__all__ = [
    "GiB",
    "KiB",
    "MUST_BE_ZERO",
    "MiB",
    "RSS_LIMIT_MB",
    "RunningEmulator",
    "Workspace",
    "WorkspaceSpec",
    "bytes_suite",
    "concurrency_suite",
    "hostile_suite",
    "mixed_blob_faults",
    "network_suite",
    "writes_suite",
]


def mixed_blob_faults(scale: float = 1.0) -> list[dict[str, Any]]:
    """The bytes suite's blob faults; ``scale`` multiplies every rate but the 403s' (the tests use more,
    briefly): a 403 right after a re-sign is EACCES by design, and at three times the rate two in a row came
    often enough to fail one read in a short test now and then."""
    rules: list[dict[str, Any]] = [
        {"status": 500, "rate": 0.015},
        {"status": 502, "rate": 0.01},
        {"status": 503, "rate": 0.015},
        {"status": 429, "retry_after": 1, "rate": 0.01},
        {"status": 403, "rate": 0.005},  # re-signed once; two in a row would be EACCES by design: rare
        {"drop_after_bytes": 64 * KiB, "rate": 0.02},
        {"drop_after_bytes": 0, "rate": 0.01},
        {"truncate_after_bytes": 300 * KiB, "rate": 0.02},
        {"stall_ms": 1500, "rate": 0.01},  # shorter than the stall timeout: only slows the body
        {"stall_ms": 12000, "rate": 0.002},  # longer: abandoned after 10 s, retried
    ]
    for rule in rules:
        rule["endpoint"] = "blob.get"
        if rule.get("status") != 403:
            rule["rate"] = min(1.0, rule["rate"] * scale)
    return rules


# ---------------------------------------------------------------------------------------------- workspace


@dataclass(frozen=True)
class WorkspaceSpec:
    large_rows: int
    large_bytes: int
    small_rows: int = 40
    small_bytes: int = 150_000
    real_files: int = 8
    seed: int = 1


class Workspace:
    """An emulator with the soak datasets, restartable in place; mounts made under ``root``."""

    def __init__(self, root: Path, spec: WorkspaceSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        self.src = self.root / "src"
        self.data_dir = self.root / "emulator"
        self.emu: RunningEmulator | None = None
        self.port = 0
        self.real: dict[str, Path] = {}  # title -> source file
        self._faults_before = 0  # fault firings counted by emulator runs that have ended
        self._mounts = 0

    def __enter__(self) -> Workspace:
        self._make_sources()
        self.start_emulator()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_emulator()

    def _make_sources(self) -> None:
        rng = random.Random(self.spec.seed)
        folder = self.src / "soak-real"
        folder.mkdir(parents=True, exist_ok=True)
        sizes = [0, 1, 4095, 65_537, 1 * MiB + 3, 3 * MiB + 333, 9 * MiB + 7, 200_000]
        for n in range(self.spec.real_files):
            path = folder / f"real_{n:03d}.txt"
            path.write_bytes(rng.randbytes(sizes[n % len(sizes)]))
            self.real[path.name] = path

    @property
    def domain(self) -> str:
        assert self.emu is not None, "emulator not running"
        return self.emu.domain

    @property
    def key_file(self) -> Path:
        assert self.emu is not None and self.emu.key_file is not None
        return self.emu.key_file

    def start_emulator(self) -> None:
        s = self.spec
        args = [
            "--import",
            str(self.src),
            "--generate",
            f"soak-large:{s.large_rows}:{s.large_bytes}",
            "--generate",
            f"soak-small:{s.small_rows}:{s.small_bytes}",
        ]
        if self.port:
            args += ["--port", str(self.port)]
        self.emu = RunningEmulator(args, data_dir=self.data_dir).__enter__()
        self.port = int(self.emu.domain.rsplit(":", 1)[1])

    def stop_emulator(self) -> None:
        if self.emu is not None:
            try:
                self._faults_before += self.emu.stats().get("faults.injected", 0)
            except httpx.HTTPError:
                pass
            self.emu.__exit__(None, None, None)
            self.emu = None

    def faults_injected(self) -> int:
        now = self.emu.stats().get("faults.injected", 0) if self.emu is not None else 0
        return self._faults_before + int(now)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, f"{self.domain}/_emulator/{path}", json=body, timeout=30, trust_env=False)
        r.raise_for_status()
        return r.json()

    def reset(self, data: bool = False) -> None:
        """Faults, settings and counters back to nothing (the count so far is kept here)."""
        self._faults_before = self.faults_injected()
        assert self.emu is not None
        self.emu.reset(data=data)

    @contextmanager
    def mount(self, *extra: str, workdir: Path | None = None, env: dict[str, str] | None = None) -> Iterator[MountedFS]:
        self._mounts += 1
        work = workdir or self.root / f"mount-{self._mounts}"
        own = workdir is None
        try:
            with MountedFS(self.domain, self.key_file, work, *extra, env=env) as mounted:
                yield mounted
        finally:
            logs = self.root / "logs"
            logs.mkdir(exist_ok=True)
            if (work / "mount.log").exists():  # kept for --keep: the work dir itself goes
                shutil.copy(work / "mount.log", logs / f"mount-{self._mounts}.log")
            if own:
                shutil.rmtree(work, ignore_errors=True)

    def expected(self, path: Path) -> Callable[[int, int], bytes]:
        """``(offset, length) -> bytes`` as the file must read, known without encordfs's help."""
        source = self.real.get(path.name) if path.parent.name == "soak-real" else None
        if source is not None:
            data = source.read_bytes()
            return lambda offset, length: data[offset : offset + length]
        link = os.getxattr(path, "user.encord.file_link").decode()
        parsed = synthetic.parse_key(link.rsplit("/", 1)[-1])
        assert parsed is not None, f"{path} is not synthetic: {link}"
        seed, size = parsed
        return lambda offset, length: synthetic.read(seed, size, offset, length)


def files_of(mnt: Path, *datasets: str) -> list[Path]:
    out: list[Path] = []
    for name in datasets:
        folder = mnt / name
        out.extend(sorted(folder / entry for entry in os.listdir(folder)))
    return out


# ---------------------------------------------------------------------------------------------- watching


class Watchdog:
    """Times operations; one over ``deadline_s`` is a hang (also when it never returns)."""

    def __init__(self, deadline_s: float = OP_DEADLINE_S) -> None:
        self.deadline_s = deadline_s
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[str, float]] = {}
        self._next = 0
        self.hangs = 0
        self.worst_s = 0.0
        self.hung: list[str] = []

    @contextmanager
    def op(self, what: str) -> Iterator[None]:
        with self._lock:
            self._next += 1
            token = self._next
            self._inflight[token] = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                _, started = self._inflight.pop(token)
                took = time.monotonic() - started
                self.worst_s = max(self.worst_s, took)
                if took > self.deadline_s:
                    self.hangs += 1
                    self.hung.append(f"{what} took {took:.1f} s")

    def stuck(self) -> int:
        """Operations still in flight past their deadline (their threads are stuck): counted as hangs."""
        now = time.monotonic()
        with self._lock:
            stuck = [what for what, started in self._inflight.values() if now - started > self.deadline_s]
            self.hangs += len(stuck)
            self.hung.extend(f"{what} never returned" for what in stuck)
            return len(stuck)


class RssSampler:
    """Max resident set size of the processes it is given, sampled every ``interval_s``."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.max_kb = 0
        self._pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def watch(self, mounted: MountedFS) -> None:
        if mounted.proc is not None:
            self._pids.add(mounted.proc.pid)

    @property
    def max_mb(self) -> float:
        return round(self.max_kb / 1024, 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        for pid in list(self._pids):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:") or line.startswith("VmRSS:"):
                            self.max_kb = max(self.max_kb, int(line.split()[1]))
            except OSError:
                self._pids.discard(pid)


def _run_threads(targets: list[Callable[[], None]], join_s: float) -> int:
    """Run each target in a thread; return how many are still running after ``join_s``."""
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    end = time.monotonic() + join_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return sum(t.is_alive() for t in threads)


def _count_wrong(got: bytes, want: bytes) -> int:
    if got == want:
        return 0
    n = min(len(got), len(want))
    diff = int(np.count_nonzero(np.frombuffer(got[:n], np.uint8) != np.frombuffer(want[:n], np.uint8)))
    return diff + abs(len(got) - len(want))


def _status(mnt: Path) -> dict[str, Any]:
    return json.loads((mnt / ".encordfs" / "status.json").read_text())  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------- bytes


def _check_file(
    path: Path, want: Callable[[int, int], bytes], size: int, rng: random.Random, dog: Watchdog
) -> tuple[int, int]:
    """Read ``path`` (random preads for some files, then sequentially); (bytes read, wrong bytes)."""
    read = wrong = 0
    with open(path, "rb", buffering=0) as f:
        if rng.random() < 0.25 and size > 0:
            for _ in range(8):
                offset, length = rng.randrange(size), rng.randrange(1, 512 * KiB)
                with dog.op(f"pread {path.name}@{offset}"):
                    got = os.pread(f.fileno(), length, offset)
                read += len(got)
                wrong += _count_wrong(got, want(offset, length))
        pos = 0
        while True:
            length = rng.choice((64 * KiB, 128 * KiB, 1 * MiB, 4 * MiB)) + rng.randrange(2) * rng.randrange(1, 4096)
            with dog.op(f"read {path.name}@{pos}"):
                got = f.read(length)
            if not got:
                break
            read += len(got)
            wrong += _count_wrong(got, want(pos, len(got)))
            pos += len(got)
        wrong += abs(size - pos)  # a file that reads short (or long) is wrong by that much
    return read, wrong


def bytes_suite(
    ws: Workspace,
    total_bytes: int,
    threads: int = 4,
    fault_scale: float = 1.0,
    url_ttl_s: int = 2,
    clock_skew_s: float = 1.0,
    seed: int = 2,
) -> dict[str, Any]:
    """Read ``total_bytes`` through a fresh mount under mixed blob faults; see the module docstring."""
    ws.reset()
    faults_before = ws.faults_injected()
    ws.admin("POST", "faults", mixed_blob_faults(fault_scale))
    ws.admin("POST", "settings", {"url_ttl_s": url_ttl_s, "clock_skew_s": clock_skew_s})
    dog = Watchdog()
    totals: Counter[str] = Counter()
    errnos: Counter[str] = Counter()
    lock = threading.Lock()
    started = time.monotonic()
    with RssSampler() as rss, ws.mount("--cache-size", "1G") as m:
        rss.watch(m)
        work = _bytes_plan(ws, m.path, total_bytes, seed)
        cursor = iter(enumerate(work))

        def worker() -> None:
            while True:
                with lock:
                    item = next(cursor, None)
                if item is None:
                    return
                n, (path, size) = item
                try:
                    want = ws.expected(path)
                    got, bad = _check_file(path, want, size, random.Random(seed * 1_000_003 + n), dog)
                except OSError as exc:
                    with lock:
                        totals["read_errors"] += 1
                        errnos[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
                    continue
                with lock:
                    totals["bytes_read"] += got
                    totals["wrong_bytes"] += bad
                    totals["files"] += 1

        still = _run_threads([worker] * threads, join_s=3600)
        dog.stuck()
        counters = _status(m.path).get("counters", {})
        why = _warnings_logged(m.log()) if totals["read_errors"] else []
    ws.admin("DELETE", "faults")
    seconds = time.monotonic() - started
    return {
        "bytes_read": totals["bytes_read"],
        "wrong_bytes": totals["wrong_bytes"],
        "read_errors": totals["read_errors"],
        "read_errnos": dict(errnos),
        "read_errors_logged": why,
        "files": totals["files"],
        "hangs": dog.hangs + still,
        "hung": dog.hung[:5],
        "faults_injected": ws.faults_injected() - faults_before,
        "seconds": round(seconds, 1),
        "mb_per_s": round(totals["bytes_read"] / MiB / max(seconds, 1e-9), 1),
        "worst_op_s": round(dog.worst_s, 2),
        "max_rss_mb": rss.max_mb,
        "fetch": {k: v for k, v in counters.items() if k.startswith("fetch.") or k.startswith("urls.")},
    }


def _warnings_logged(log: str, keep: int = 8) -> list[str]:
    """The mount log's last WARNING and ERROR lines (``logs.TEXT_FORMAT``): why a read failed, in the
    figures of a failed test (the log itself goes with the test's temp dir)."""
    levels = (" WARNING ", " ERROR ", " CRITICAL ")
    return [line[-400:] for line in log.splitlines() if any(level in line for level in levels)][-keep:]


def _bytes_plan(ws: Workspace, mnt: Path, total_bytes: int, seed: int) -> list[tuple[Path, int]]:
    """Files to read once each: every real file, small ones, then large ones up to ``total_bytes``."""
    plan = [(p, p.stat().st_size) for p in files_of(mnt, "soak-real", "soak-small")]
    planned = sum(size for _, size in plan)
    for path in files_of(mnt, "soak-large"):
        if planned >= total_bytes:
            break
        size = path.stat().st_size
        plan.append((path, size))
        planned += size
    if planned < total_bytes:
        raise ValueError(f"the workspace holds {planned} bytes, fewer than the {total_bytes} to read once each")
    random.Random(seed).shuffle(plan)
    return plan


# ---------------------------------------------------------------------------------------------- writes


class _KeyModel:
    """Per (row, key): the last acknowledged state, and states written since but not acknowledged."""

    def __init__(self) -> None:
        self.acked: dict[tuple[str, str], Any] = {}
        self.unacked: dict[tuple[str, str], list[Any]] = {}
        self.lock = threading.Lock()
        self.writes = 0

    def attempt(self, slot: tuple[str, str], value: Any) -> None:
        with self.lock:
            self.unacked.setdefault(slot, []).append(value)

    def ack(self, slot: tuple[str, str], value: Any) -> None:
        with self.lock:
            self.acked[slot] = value
            self.unacked[slot] = []
            self.writes += 1

    def allowed(self, slot: tuple[str, str]) -> list[Any]:
        return [self.acked.get(slot, ABSENT), *self.unacked.get(slot, [])]


def _writer(
    files: list[Path], uids: dict[Path, str], model: _KeyModel, stop: threading.Event, rng: random.Random, tag: int
) -> None:
    i = 0
    while not stop.is_set():
        f = rng.choice(files)
        op = rng.random()
        key = "counter" if op < 0.6 else "note"
        slot = (uids[f], key)
        i += 1
        value: Any = tag * 1_000_000 + i if key == "counter" else f"n-{tag}-{i}-" + "x" * rng.randrange(200)
        with model.lock:
            present = model.acked.get(slot, ABSENT) is not ABSENT or any(
                v is not ABSENT for v in model.unacked.get(slot, [])
            )
        remove = key == "note" and op > 0.9 and present
        model.attempt(slot, ABSENT if remove else value)
        try:
            if remove:
                os.removexattr(f, META + key)
            else:
                os.setxattr(f, META + key, json.dumps(value).encode())
        except OSError as exc:
            if remove and exc.errno == errno.ENODATA:
                continue  # the key was not there after all (an unacknowledged removal landed)
            return  # the mount died under us: this write was not acknowledged
        model.ack(slot, ABSENT if remove else value)


def writes_suite(ws: Workspace, trials: int, seed: int = 7, files_n: int = 12) -> dict[str, Any]:
    """``trials`` kill -9s during metadata write streams; then the server's state must be exact."""
    ws.reset(data=True)
    rng = random.Random(seed)
    work = ws.root / "writes-mount"
    model = _KeyModel()
    kill_points: list[float] = []
    started = time.monotonic()
    try:
        with RssSampler() as rss:
            for trial in range(trials):
                with ws.mount(workdir=work) as m:
                    rss.watch(m)
                    files = files_of(m.path, "soak-small")[:files_n]
                    uids = {f: os.getxattr(f, "user.encord.uid").decode() for f in files}
                    if trial == 0:
                        for f in files:  # the starting state, as the mount shows it
                            for key in ("counter", "note"):
                                try:
                                    model.ack((uids[f], key), json.loads(os.getxattr(f, META + key)))
                                except OSError:
                                    model.ack((uids[f], key), ABSENT)
                        model.writes = 0
                    stop = threading.Event()
                    threads = [
                        threading.Thread(
                            target=_writer, args=(files, uids, model, stop, random.Random(rng.random()), trial * 10 + k)
                        )
                        for k in range(2)
                    ]
                    for t in threads:
                        t.start()
                    wait = rng.choice((rng.uniform(0.02, 0.25), rng.uniform(0.25, 1.0), rng.uniform(1.0, 2.0)))
                    kill_points.append(wait)
                    time.sleep(wait)
                    assert m.proc is not None
                    os.kill(m.proc.pid, 9)
                    stop.set()
                    for t in threads:
                        t.join(30)
            with ws.mount(workdir=work) as m:
                rss.watch(m)
                done = encordfs_cli("flush", str(m.path), "--timeout", "120", timeout=180)
                flush_ok = done.returncode == 0
        state = _server_metadata(ws, "soak-small")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lost = []
    for slot in list(model.acked):
        uid, key = slot
        got = state.get(uid, {}).get(key, ABSENT)
        if not any(got is v or got == v for v in model.allowed(slot)):
            lost.append(
                {
                    "row": uid,
                    "key": key,
                    "server": None if got is ABSENT else got,
                    "acked": None if model.acked[slot] is ABSENT else model.acked[slot],
                }
            )
    return {
        "kill_trials": trials,
        "writes": model.writes,
        "lost_writes": len(lost),
        "lost": lost[:5],
        "final_flush_ok": flush_ok,
        "op_errors": 0 if flush_ok else 1,
        "seconds": round(time.monotonic() - started, 1),
        "kill_after_s": {"min": round(min(kill_points), 3), "max": round(max(kill_points), 3)} if kill_points else {},
        "max_rss_mb": rss.max_mb,
    }


EPOCH_RSS_LIMIT_MB = 400.0  # a whole epoch over a 1M-row dataset: URLs, paths and writes all bounded


def epoch_suite(root: Path, rows: int, threads: int = 8, row_bytes: int = 64) -> dict[str, Any]:
    """One epoch over a generated dataset of ``rows`` tiny rows (every file opened and read once, by
    ``threads`` readers), with the mount's resident memory sampled throughout (``epoch_max_rss_mb``,
    must stay under ``EPOCH_RSS_LIMIT_MB``): nothing may grow with the number of files read."""
    from concurrent.futures import ThreadPoolExecutor

    errors_seen = 0
    started = time.monotonic()
    with RunningEmulator(["--generate", f"epoch:{rows}:{row_bytes}"], data_dir=root / "epoch-emulator") as emu:
        assert emu.key_file is not None
        with RssSampler(interval_s=1.0) as rss, MountedFS(emu.domain, emu.key_file, root / "epoch-mount") as m:
            rss.watch(m)
            folder = m.path / "epoch"

            def read(name: str) -> int:
                try:
                    with open(folder / name, "rb") as f:
                        return len(f.read())
                except OSError:
                    return -1

            with ThreadPoolExecutor(threads) as pool:
                sizes = list(pool.map(read, os.listdir(folder), chunksize=256))
            errors_seen = sum(1 for n in sizes if n != row_bytes)
    return {
        "epoch_rows": rows,
        "epoch_read_errors": errors_seen,
        "epoch_seconds": round(time.monotonic() - started, 1),
        "epoch_max_rss_mb": rss.max_mb,
    }


MAX_OP_WAIT_S = 35.0  # the longest a FUSE operation may take while Encord and the bucket stall


def stall_suite(ws: Workspace, hold_s: float = 120.0) -> dict[str, Any]:
    """The API and the blob server stall (every API call held ``hold_s``, every blob body stalled from its
    first byte): a first listing, a read that must sign, and a read of a signed file each answer (EIO)
    within the retry budget. ``max_op_wait_s`` is the longest any of them took (must be <= 35)."""
    ws.reset(data=True)
    dog = Watchdog(deadline_s=MAX_OP_WAIT_S)
    errnos: Counter[str] = Counter()
    with ws.mount() as m:
        os.listdir(m.path)
        unsigned = files_of(m.path, "soak-small")[0]
        real = sorted(files_of(m.path, "soak-real"), key=lambda f: f.stat().st_ino)
        real[0].read_bytes()  # signs it and the files after it (one bulk call), reading only this one
        signed = next(f for f in real[1:] if f.stat().st_size > 0)
        hold = int(hold_s * 1000)
        ws.admin("POST", "faults", [
            {"endpoint": "v2.*", "latency_ms": hold},
            {"endpoint": "legacy.*", "latency_ms": hold},
            {"endpoint": "blob.get", "stall_ms": hold, "stall_after_bytes": 0},
        ])  # fmt: skip
        ops: list[tuple[str, Callable[[], object]]] = [
            ("first listing", lambda: os.listdir(m.path / "soak-large")),
            ("read that signs", lambda: unsigned.read_bytes()),
            ("read of a signed file", lambda: signed.read_bytes()),
        ]

        def run(what: str, call: Callable[[], object]) -> None:
            try:
                with dog.op(what):
                    call()
                errnos[f"{what}: ok"] += 1
            except OSError as exc:
                errnos[f"{what}: {errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1

        threads = [threading.Thread(target=run, args=op, daemon=True) for op in ops]
        for t in threads:
            t.start()
        for t in threads:
            t.join(MAX_OP_WAIT_S + 30)
        dog.stuck()
        ws.admin("DELETE", "faults")
    ws.reset(data=True)
    return {"max_op_wait_s": round(dog.worst_s, 1), "stall_outcomes": dict(errnos), "hangs": dog.hangs}


def siblings_suite(ws: Workspace, every: int = 5) -> dict[str, Any]:
    """Rows deleted on the server after a mount listed them: every other row must stay readable
    (the real bulk signing call refuses all its ids when one is gone). ``sibling_sign_failures``
    counts reads of existing rows that failed."""
    ws.reset(data=True)
    assert ws.emu is not None
    failures = 0
    with ws.mount() as m:
        files = files_of(m.path, "soak-small")
        doomed = set(files[::every])
        for f in doomed:
            ws.emu.delete_row(os.getxattr(f, "user.encord.uid").decode())
        for f in files:
            if f in doomed:
                continue
            try:
                want = ws.expected(f)
                size = f.stat().st_size
                if f.read_bytes() != want(0, size):
                    failures += 1
            except OSError:
                failures += 1
    ws.reset(data=True)
    return {"sibling_reads": len(files) - len(doomed), "sibling_sign_failures": failures}


def stale_suite(ws: Workspace, rounds: int = 2, files_n: int = 3, held_s: float = 4.0) -> dict[str, Any]:
    """Late duplicates: the emulator holds a push longer than the mount's API timeout and applies it
    after the mount's retry and a newer value have landed (a stale overwrite, seen as ``stale_seen``).
    The mount must re-assert the newest value once its window has passed: ``stale_overwrites`` counts
    rows whose server value is not the last acknowledged one at the end."""
    ws.reset()
    window_s = held_s + 4.0
    env = {**os.environ, "ENCORDFS_API_TIMEOUT_S": "1.5", "ENCORDFS_WRITE_REASSERT_AFTER_S": str(window_s)}
    seen = stale = 0
    with ws.mount(env=env) as m:
        files = files_of(m.path, "soak-small")[:files_n]
        uids = {f: os.getxattr(f, "user.encord.uid").decode() for f in files}
        for r in range(rounds):
            hold = [
                {"endpoint": e, "latency_ms": int(held_s * 1000)} for e in ("v2.items.patch*", "legacy.datarow.post")
            ]
            ws.admin("POST", "faults", hold)
            for f in files:
                os.setxattr(f, META + "stale", json.dumps(f"old-{r}").encode())
            time.sleep(1.0)  # the push is out and held by the server
            ws.admin("DELETE", "faults")  # the mount's retry goes through at once
            encordfs_cli("flush", str(m.path), "--timeout", "30")
            for f in files:
                os.setxattr(f, META + "stale", json.dumps(f"new-{r}").encode())
            encordfs_cli("flush", str(m.path), "--timeout", "30")
            time.sleep(held_s)  # the held request has been applied by now
            server = _server_metadata(ws, "soak-small")
            seen += sum(1 for f in files if server[uids[f]].get("stale") == f"old-{r}")
            deadline = time.monotonic() + window_s + 20
            while time.monotonic() < deadline:
                server = _server_metadata(ws, "soak-small")
                if all(server[uids[f]].get("stale") == f"new-{r}" for f in files):
                    break
                time.sleep(0.5)
            stale += sum(1 for f in files if server[uids[f]].get("stale") != f"new-{r}")
        reasserts = _status(m.path)["writes"].get("reasserts_total", 0)
    ws.reset(data=True)
    return {"stale_rounds": rounds * len(files), "stale_seen": seen, "stale_overwrites": stale, "reasserts": reasserts}


def _server_metadata(ws: Workspace, dataset_title: str) -> dict[str, dict[str, Any]]:
    """Row uid -> client metadata, read with a plain SDK client (the second party)."""
    from encord.orm.dataset import DatasetAccessSettings

    assert ws.emu is not None
    client = ws.emu.client()
    ds_hash = next(d["dataset"].dataset_hash for d in client.get_datasets() if d["dataset"].title == dataset_title)
    ds = client.get_dataset(ds_hash, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True))
    return {r.uid: dict(r.client_metadata or {}) for r in ds.data_rows}


# ---------------------------------------------------------------------------------------------- network loss


def _timed_read(path: Path, offset: int, length: int) -> tuple[float, int | None, bytes]:
    started = time.monotonic()
    try:
        with open(path, "rb", buffering=0) as f:
            data = os.pread(f.fileno(), length, offset)
        return time.monotonic() - started, None, data
    except OSError as exc:
        return time.monotonic() - started, exc.errno, b""


def network_suite(ws: Workspace, budget_s: float = 45.0, recover_within_s: float = 60.0) -> dict[str, Any]:
    """Stop the emulator under a mount, then start it again on the same port and data dir."""
    ws.reset()
    failures: list[str] = []
    with RssSampler() as rss, ws.mount("--metadata-ttl", "2") as m:
        rss.watch(m)
        large = files_of(m.path, "soak-large")
        files_of(m.path, "soak-small", "soak-real")  # every folder loaded: the outage finds them in the catalog
        warm, cold = large[0], large[1]  # warm: opened and partly read (URL cached); cold: never opened
        size = warm.stat().st_size
        with open(warm, "rb") as f:
            f.read(256 * KiB)
        want_warm, want_cold = ws.expected(warm), ws.expected(cold)
        ws.stop_emulator()
        down_at = time.monotonic()
        outcomes: dict[str, tuple[float, int | None, bytes]] = {}

        def read(name: str, path: Path, offset: int) -> Callable[[], None]:
            return lambda: outcomes.__setitem__(name, _timed_read(path, offset, 64 * KiB))

        still = _run_threads([read("warm", warm, size - 64 * KiB), read("cold", cold, 0)], join_s=budget_s + 30)
        for name, (took, err, _) in outcomes.items():
            if err != errno.EIO:
                failures.append(f"{name} read during the outage: errno {err}, expected EIO")
            if took > budget_s:
                failures.append(f"{name} read took {took:.1f} s, over the {budget_s:g} s bound")
        if still:
            failures.append(f"{still} read(s) still blocked after {budget_s + 30:g} s")
        time.sleep(2.5)  # past the metadata TTL: listings now also try (and fail) to refresh
        ls_ok = _catalog_still_serves(m.path, failures)
        ws.start_emulator()
        up_at = time.monotonic()
        recovered_s = _wait_recovered(warm, cold, size, want_warm, want_cold, recover_within_s, failures)
        if recovered_s is None:
            failures.append(f"the mount did not recover within {recover_within_s:g} s of the emulator's return")
        alive = m.proc is not None and m.proc.poll() is None and mounted_at(m.path)
        if not alive:
            failures.append("the mount process died")
    worst = max((took for took, _, _ in outcomes.values()), default=0.0)
    return {
        "network_eio_worst_s": round(worst, 2),
        "network_eio": {
            name: {"seconds": round(took, 2), "errno": errno.errorcode.get(err or 0, err)}
            for name, (took, err, _) in outcomes.items()
        },
        "network_outage_s": round(up_at - down_at, 1),
        "network_ls_ok": ls_ok,
        "network_recovered_s": None if recovered_s is None else round(recovered_s, 2),
        "network_failures": len(failures),
        "failures": failures,
        "hangs": still,
        "max_rss_mb": rss.max_mb,
    }


def _catalog_still_serves(mnt: Path, failures: list[str]) -> bool:
    try:
        for name in ("soak-large", "soak-small", "soak-real"):
            entries = os.listdir(mnt / name)
            if not entries:
                failures.append(f"ls {name} is empty during the outage")
                return False
            for entry in entries[:20]:
                os.stat(mnt / name / entry)
            os.getxattr(mnt / name / entries[0], "user.encord.uid")
        os.listdir(mnt)
    except OSError as exc:
        failures.append(f"listing from the catalog failed during the outage: {exc}")
        return False
    return True


def _wait_recovered(
    warm: Path,
    cold: Path,
    size: int,
    want_warm: Callable[[int, int], bytes],
    want_cold: Callable[[int, int], bytes],
    within_s: float,
    failures: list[str],
) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        _, err_w, got_w = _timed_read(warm, size - 64 * KiB, 64 * KiB)
        _, err_c, got_c = _timed_read(cold, 0, 64 * KiB)
        if err_w is None and err_c is None:
            if got_w != want_warm(size - 64 * KiB, 64 * KiB) or got_c != want_cold(0, 64 * KiB):
                failures.append("wrong bytes after recovery")
            return time.monotonic() - started
        time.sleep(0.5)
    return None


# ---------------------------------------------------------------------------------------------- hostile input

# What a hostile call may answer; anything else (or a dead mount) is a failure.
HOSTILE_ERRNOS = frozenset(
    {
        errno.EINVAL,
        errno.EPERM,
        errno.ENOTSUP,
        errno.ENODATA,
        errno.EEXIST,
        errno.E2BIG,
        errno.ERANGE,
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.EXDEV,
        errno.EROFS,
        errno.EACCES,
        errno.EILSEQ,
    }
)


def _hostile_name(rng: random.Random) -> str:
    prefixes = ["user.encord.meta.", "user.encord.", "user.", "security.", "trusted.", "system.", "", "user.encordfs."]
    alphabet = [
        "a",
        "Z",
        "0",
        ".",
        "-",
        " ",
        "\u00e9",
        "\u2215",
        "\U0001f600",
        "\t",
        "\x7f",
        "'",
        '"',
        "\\",
        "%",
        "\u200b",
        "\ufffd",
    ]
    body = "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 3, 12, 60, 240))))
    if rng.random() < 0.3:
        body = rng.choice(["client_metadata", "title", "uid", "meta", "refresh", "flush", "split"]) + body[:5]
    return rng.choice(prefixes) + body


def _hostile_value(rng: random.Random) -> bytes:
    choices: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randrange(0, 300)),
        lambda: json.dumps(rng.choice([1, -1.5e308, True, None, "s", [1, [2, [3]]], {"a": {"b": 1}}])).encode(),
        lambda: b"[" * rng.randrange(1, 3000) + b"]" * rng.randrange(0, 3000),  # deep nesting
        lambda: b'"' + ("x" * rng.randrange(0, 70_000)).encode() + b'"',  # near and over the limit
        lambda: b"\xff\xfe\x00" + rng.randbytes(10),
        lambda: b'{"a": NaN}',
        lambda: b"",
        lambda: json.dumps({"k" * rng.randrange(1, 300): "v"}).encode(),
    ]
    return rng.choice(choices)()


def hostile_suite(ws: Workspace, cases: int = 400, seed: int = 11) -> dict[str, Any]:
    """Random xattr calls, lookups and renames on a real mount; see the module docstring."""
    ws.reset(data=True)
    # Nothing may land while we count queued changes: every push is refused (and retried) meanwhile.
    ws.admin(
        "POST",
        "faults",
        [{"endpoint": e, "status": 503} for e in ("v2.items.patch*", "v2.items.get_bulk", "legacy.datarow.post")],
    )
    rng = random.Random(seed)
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    dog = Watchdog()
    with RssSampler() as rss, ws.mount() as m:
        rss.watch(m)
        folder = m.path / "soak-small"
        names = sorted(os.listdir(folder))[:5]
        for case in range(cases):
            kind = rng.choice(("setxattr", "setxattr", "getxattr", "removexattr", "lookup", "rename"))
            target = folder / rng.choice(names)
            before = _status(m.path)["writes"]["pending_ops"] if kind in ("setxattr", "removexattr", "rename") else None
            failed = None
            call, what = _hostile_call(kind, target, folder, rng, names)
            try:
                with dog.op(f"{kind} #{case}"):
                    call()
                outcomes[f"{kind}:ok"] += 1
            except OSError as exc:
                failed = exc
                outcomes[f"{kind}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
                if exc.errno not in HOSTILE_ERRNOS:
                    failures.append(f"{what}: unexpected {exc!r}")
            if m.proc is None or m.proc.poll() is not None:
                failures.append(f"the mount died at case {case} ({kind})")
                break
            if before is not None and isinstance(failed, OSError):
                after = _status(m.path)["writes"]["pending_ops"]
                if after != before:
                    failures.append(f"a failed {kind} changed the queue: {before} -> {after} pending ops")
        alive = m.proc is not None and m.proc.poll() is None and os.listdir(folder)
        if not alive:
            failures.append("the mount does not answer after the fuzz")
    ws.admin("DELETE", "faults")
    return {
        "hostile_cases": cases,
        "hostile_failures": len(failures),
        "failures": failures[:10],
        "outcomes": dict(sorted(outcomes.items())),
        "hangs": dog.hangs,
        "max_rss_mb": rss.max_mb,
    }


def names_suite(ws: Workspace, rounds: int = 6, seed: int = 13) -> dict[str, Any]:
    """Hostile titles that used to break a folder's load: NFC/NFD pairs of one title (and case
    variants), and sets that take a base name and every ``~id`` form of another row's name before
    that row is (re)named. A load fails when the listing errors, misses a row the server has, or
    shows two names that collide (case or normalization). Loads happen through ``encordfs refresh``
    on a live mount, then once more on a fresh mount."""
    import unicodedata

    from encordfs.core.names import name_key

    ws.reset(data=True)
    assert ws.emu is not None
    rng = random.Random(seed)
    client = ws.emu.client()
    dataset = "soak-real"
    ds_hash = next(d["dataset"].dataset_hash for d in client.get_datasets() if d["dataset"].title == dataset)
    failed: list[str] = []
    loads = 0

    def check(mnt: Path, what: str) -> None:
        nonlocal loads
        loads += 1
        folder = mnt / dataset
        try:
            shown = os.listdir(folder)
            for name in shown:
                os.stat(folder / name)
                for spelling in {unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)}:
                    os.stat(folder / spelling)  # any normalization of a shown name finds it
        except OSError as exc:
            failed.append(f"{what}: {exc!r}")
            return
        server = client.get_dataset(ds_hash).data_rows
        if len(shown) != len(server):
            failed.append(f"{what}: {len(shown)} names for {len(server)} rows")
        if len({name_key(n) for n in shown}) != len(shown):
            failed.append(f"{what}: two names collide")

    with ws.mount() as m:
        check(m.path, "first load")
        for r in range(rounds):
            word = "".join(rng.choice("aeiouéèñüçåø") for _ in range(rng.randint(2, 6)))
            title = f"{word}-{r}.jpg"
            for variant in {unicodedata.normalize("NFC", title), unicodedata.normalize("NFD", title), title.upper()}:
                ws.emu.add_row(dataset, variant, rng.randbytes(rng.randint(1, 2000)))
            victim = ws.emu.add_row(dataset, f"victim-{r}-{rng.random()}.jpg", b"v" * 10)["data_hash"]
            tag = "".join(c for c in victim if c.isalnum())
            base = f"shot-{r}.jpg"
            for crafted in [base, *(f"shot-{r}~{tag[:w]}.jpg" for w in (8, 16, 64))]:
                ws.emu.add_row(dataset, crafted, b"a" * 10)
            subprocess.run([sys.executable, "-m", "encordfs", "refresh", str(m.path / dataset)], check=False,
                           capture_output=True, timeout=120)  # fmt: skip
            check(m.path, f"round {r}: after adding")
            row = next(row for row in client.get_dataset(ds_hash).data_rows if row.uid == victim)
            row.title = base  # the victim now wants a name whose every ~id form is taken
            row.save()
            done = subprocess.run([sys.executable, "-m", "encordfs", "refresh", str(m.path / dataset)],
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            if done.returncode != 0:
                failed.append(f"round {r}: refresh failed: {done.stderr.strip()[-300:]}")
            check(m.path, f"round {r}: after the rename")
    with ws.mount() as fresh:
        check(fresh.path, "fresh mount")
    ws.reset(data=True)
    return {"names_loads": loads, "names_failed_loads": len(failed), "names_failures": failed[:10]}


def _hostile_call(
    kind: str, target: Path, folder: Path, rng: random.Random, names: list[str]
) -> tuple[Callable[[], object], str]:
    """One random call, not yet made, and a description of it for failure messages."""
    if kind in ("setxattr", "getxattr", "removexattr"):
        name = _hostile_name(rng)
        if kind == "getxattr":
            return lambda: os.getxattr(target, name), f"getxattr({target.name!r}, {name!r})"
        if kind == "removexattr":
            return lambda: os.removexattr(target, name), f"removexattr({target.name!r}, {name!r})"
        flags, value = rng.choice((0, 0, os.XATTR_CREATE, os.XATTR_REPLACE)), _hostile_value(rng)
        return (
            lambda: os.setxattr(target, name, value, flags),
            f"setxattr({target.name!r}, {name!r}, {value[:60]!r}{'...' if len(value) > 60 else ''}, {flags})",
        )
    if kind == "lookup":
        component = (_hostile_name(rng).replace("/", "\u2215").replace("\x00", "") or "x")[:300]
        return lambda: os.stat(folder / component), f"stat({component!r})"
    new = (_hostile_name(rng) + ".jpg").replace("/", "_").replace("\x00", "")

    def rename() -> None:
        os.rename(target, folder / new)
        names[names.index(target.name)] = new  # it worked: the row is called that now

    return rename, f"rename({target.name!r}, {new!r})"


# ---------------------------------------------------------------------------------------------- concurrency


def concurrency_suite(
    ws: Workspace, duration_s: float, threads: int = 16, seed: int = 5, fault_scale: float = 0.3
) -> dict[str, Any]:
    """Readers, writers and refreshers on one mount for ``duration_s``; see the module docstring."""
    ws.reset()
    ws.admin("POST", "faults", mixed_blob_faults(fault_scale))
    dog = Watchdog()
    ops: Counter[str] = Counter()
    errors: list[str] = []
    wrong = Counter[str]()
    lock = threading.Lock()
    stop = threading.Event()
    with RssSampler() as rss, ws.mount("--metadata-ttl", "5") as m:
        rss.watch(m)
        readable = files_of(m.path, "soak-real", "soak-small") + files_of(m.path, "soak-large")[:20]
        writable = files_of(m.path, "soak-small")[:10]
        wants = {p: ws.expected(p) for p in readable}
        sizes = {p: p.stat().st_size for p in readable}

        def guarded(kind: str, body: Callable[[random.Random], None], rng: random.Random) -> Callable[[], None]:
            def run() -> None:
                while not stop.is_set():
                    try:
                        with dog.op(kind):
                            body(rng)
                        with lock:
                            ops[kind] += 1
                    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
                        with lock:
                            errors.append(f"{kind}: {exc!r}"[:300])

            return run

        def reader(rng: random.Random) -> None:
            path = rng.choice(readable)
            size = sizes[path]
            offset = rng.randrange(size) if size and rng.random() < 0.5 else 0
            length = rng.choice((4 * KiB, 256 * KiB, 2 * MiB, size))
            with open(path, "rb", buffering=0) as f:
                got = os.pread(f.fileno(), length, offset)
            bad = _count_wrong(got, wants[path](offset, length))
            if bad:
                with lock:
                    wrong["bytes"] += bad

        def writer(rng: random.Random) -> None:
            f = rng.choice(writable)
            os.setxattr(f, META + f"c{threading.get_ident() % 97}", str(rng.randrange(10**9)).encode())

        def refresher(rng: random.Random) -> None:
            folder = m.path / rng.choice(("soak-small", "soak-real", "soak-large"))
            if rng.random() < 0.3:
                done = encordfs_cli("refresh", str(folder), timeout=OP_DEADLINE_S)
                assert done.returncode == 0, done.stderr[-300:]
            else:
                os.setxattr(folder, "user.encordfs.refresh", b"1")
            os.listdir(folder)
            time.sleep(0.2)

        roles = [("read", reader)] * (threads // 2) + [("setxattr", writer)] * (threads // 4)
        roles += [("refresh", refresher)] * (threads - len(roles))
        targets = [guarded(kind, body, random.Random(seed * 100 + n)) for n, (kind, body) in enumerate(roles)]
        runner = threading.Thread(target=lambda: time.sleep(duration_s) or stop.set(), daemon=True)
        runner.start()
        still = _run_threads(targets, join_s=duration_s + OP_DEADLINE_S + 10)
        stop.set()
        dog.stuck()
        flushed = encordfs_cli("flush", str(m.path), "--timeout", "60", timeout=120)
        if flushed.returncode != 0:
            errors.append(f"flush after the run: {flushed.stdout[-300:]} {flushed.stderr[-300:]}")
    ws.admin("DELETE", "faults")
    return {
        "threads": threads,
        "duration_s": duration_s,
        "ops": dict(ops),
        "op_errors": len(errors),
        "errors": errors[:5],
        "wrong_bytes": wrong["bytes"],
        "hangs": dog.hangs + still,
        "hung": dog.hung[:5],
        "worst_op_s": round(dog.worst_s, 2),
        "max_rss_mb": rss.max_mb,
    }


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
