"""Cluster mode through real mounts: several ``encordfs mount --shared`` processes on this machine, each
with its own cache dir, against one emulator and one real ``redis-server`` (no persistence; killed at
the end even on failure). Encord's cost is read from the emulator's per-endpoint counters:
``legacy.dataset`` is ``get_dataset``, ``v2.items.get_bulk`` bulk signing, ``blob.*`` the origin."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import pytest

from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount
from harness.redis import RunningRedis

ROWS = 60
SIZE = 3000


EMULATOR_ARGS = ["--generate", f"shared:{ROWS}:{SIZE}"]  # for conftest's ``emulator``


@pytest.fixture()
def redis_server() -> Iterator[RunningRedis]:
    with RunningRedis(maxmemory="256mb") as server:
        yield server


def _node(emulator: RunningEmulator, redis_server: RunningRedis, *extra: str) -> AbstractContextManager[MountedFS]:
    return temporary_mount(
        emulator.domain, emulator.key_file, "--shared", redis_server.url, *extra, prefix="encordfs-cluster-"
    )


def _status(m: MountedFS) -> dict[str, Any]:
    return json.loads((m.path / ".encordfs" / "status.json").read_text())  # type: ignore[no-any-return]


def _counter(m: MountedFS, name: str) -> int:
    return int(_status(m)["counters"].get(name, 0))


def _wait(ok: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _listing(m: MountedFS) -> list[tuple[str, int]]:
    folder = m.path / "shared"
    return [(e.name, e.stat().st_size) for e in sorted(os.scandir(folder), key=lambda e: e.name)]


def _digests(m: MountedFS, names: list[str]) -> list[str]:
    return [hashlib.sha256((m.path / "shared" / n).read_bytes()).hexdigest() for n in names]


def test_nodes_share_the_listing_the_signing_and_the_bytes(
    emulator: RunningEmulator, redis_server: RunningRedis
) -> None:
    emulator.reset()
    with ExitStack() as stack:
        a = stack.enter_context(_node(emulator, redis_server, "--shared-blocks"))
        listing = _listing(a)
        names = [n for n, _ in listing]
        assert len(names) == ROWS
        expected = _digests(a, names)
        _wait(lambda: _counter(a, "shared.snapshot_publishes") >= 2, "the listings to be published")
        _wait(lambda: _counter(a, "shared.blocks_published") >= ROWS, "the blocks to be published")
        before = emulator.stats()
        assert before["legacy.dataset"] == 1 and before["v2.items.get_bulk"] == 1
        assert before["blob.requests"] == ROWS

        b = stack.enter_context(_node(emulator, redis_server, "--shared-blocks"))
        c = stack.enter_context(_node(emulator, redis_server, "--shared-blocks"))
        assert _listing(b) == listing and _listing(c) == listing
        seen: dict[str, list[str]] = {}
        threads = [threading.Thread(target=lambda m=m, k=k: seen.__setitem__(k, _digests(m, names))) for k, m in
                   (("b", b), ("c", c))]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert seen == {"b": expected, "c": expected}
        after = emulator.stats()
        # nodes b and c cost Encord nothing: no listing, no signing, no byte from the origin
        for endpoint in ("legacy.dataset", "v2.datasets.list", "v2.items.get_bulk", "blob.requests", "blob.bytes"):
            assert after[endpoint] == before[endpoint], endpoint
        # every block came from Redis (a prefetch and a demand read of one file may both fetch it there)
        assert _counter(b, "shared.block_hits") >= ROWS and _counter(b, "shared.snapshot_loads") == 2
        done = subprocess.run([sys.executable, "-m", "encordfs", "status", str(b.path)], capture_output=True, text=True)
        assert f"shared: {redis_server.url} (up), blocks too" in done.stdout


def test_signing_happens_once_per_cluster_without_shared_blocks(
    emulator: RunningEmulator, redis_server: RunningRedis
) -> None:
    emulator.reset()
    with ExitStack() as stack:
        nodes = [stack.enter_context(_node(emulator, redis_server)) for _ in range(3)]
        names = [n for n, _ in _listing(nodes[0])]
        results: list[list[str]] = []
        threads = [threading.Thread(target=lambda m=m: results.append(_digests(m, names))) for m in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 3 and results[0] == results[1] == results[2]
        stats = emulator.stats()
        assert stats["v2.items.get_bulk"] == 1 and stats["legacy.dataset"] == 1
        assert stats["blob.requests"] == 3 * ROWS  # without --shared-blocks every node reads the origin


def test_a_landed_write_on_one_node_shows_on_another_before_its_ttl(
    emulator: RunningEmulator, redis_server: RunningRedis
) -> None:
    with _node(emulator, redis_server) as a, _node(emulator, redis_server) as b:
        names = [n for n, _ in _listing(a)]
        _listing(b)
        target = names[5]
        os.setxattr(a.path / "shared" / target, "user.encord.meta.split", b'"cluster"')
        done = subprocess.run([sys.executable, "-m", "encordfs", "flush", str(a.path), "--timeout", "30"],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        path_b = b.path / "shared" / target

        def shows() -> bool:
            try:
                return os.getxattr(path_b, "user.encord.meta.split") == b'"cluster"'
            except OSError:
                return False

        _wait(shows, "the write to show on the other node", timeout_s=15)  # the TTL is 60 s


def test_redis_killed_mid_read_costs_no_read_error_and_nodes_rejoin(
    emulator: RunningEmulator, redis_server: RunningRedis
) -> None:
    with _node(emulator, redis_server, "--shared-blocks") as a, _node(emulator, redis_server, "--shared-blocks") as b:
        names = [n for n, _ in _listing(a)]
        _listing(b)
        failures: list[BaseException] = []

        def reader(m: MountedFS) -> None:
            for name in names:  # ~3 s in all: Redis dies after 0.5 s and comes back after 2 s
                try:
                    (m.path / "shared" / name).read_bytes()
                except OSError as exc:
                    failures.append(exc)
                time.sleep(0.05)

        threads = [threading.Thread(target=reader, args=(m,)) for m in (a, b)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        redis_server.kill()
        time.sleep(1.5)
        redis_server.start()
        for t in threads:
            t.join(120)
        _wait(lambda: _counter(a, "shared.rejoins") >= 1 and _counter(b, "shared.rejoins") >= 1, "the nodes to rejoin")
        assert failures == []
        for m in (a, b):
            assert _counter(m, "shared.degraded_events") >= 1
            log = m.log()
            assert log.count("is not answering") == _counter(m, "shared.degraded_events")
            assert "answers again; rejoining the cluster" in log
            assert "Traceback" not in log


def _mount_cli(emulator: RunningEmulator, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    (tmp / "mnt").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "encordfs", "mount", str(tmp / "mnt"), "--domain", emulator.domain, "--ssh-key-file",
         str(emulator.key_file), "--cache-dir", str(tmp / "cache"), *extra],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_a_mount_that_cannot_share_fails_with_one_line(emulator: RunningEmulator, tmp_path: Path) -> None:
    bad = _mount_cli(emulator, tmp_path, "--shared", "redis://:hunter2@127.0.0.1:notaport/0")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("encordfs: error: --shared: has a port") and "hunter2" not in bad.stderr
    nobody = _mount_cli(emulator, tmp_path, "--shared", "redis://127.0.0.1:1/0")
    assert nobody.returncode == 1 and nobody.stderr.count("\n") == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in nobody.stderr
    with RunningRedis(password="sesame") as locked:
        wrong = _mount_cli(emulator, tmp_path, "--shared", f"redis://:hunter2@127.0.0.1:{locked.port}/0")
        assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1
        assert "refused the password" in wrong.stderr and "hunter2" not in wrong.stderr + wrong.stdout
        # the right one from the environment: mounts, and the password is on no command line
        done = _mount_cli(emulator, tmp_path, "--shared", locked.url, env={"ENCORDFS_REDIS_PASSWORD": "sesame"})
        assert done.returncode == 0, done.stderr
        try:
            pid = int(done.stdout.split("(pid ", 1)[1].split(",", 1)[0])
            assert b"sesame" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        finally:
            subprocess.run([sys.executable, "-m", "encordfs", "unmount", str(tmp_path / "mnt")], capture_output=True)
    for text in (bad.stderr, nobody.stderr, wrong.stderr):
        assert "Traceback" not in text
