"""Prefetch across files through real mounts, over both transports (libcurl and httpx).

The emulator answers every blob GET 15 ms late (a fault rule) and every API call 20 ms late, as a
real bucket and API are; the tests check behaviour (which files the mount fetched before they were
opened, from ``status.json``'s counters), never speed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encordfs.emulator import synthetic
from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount

ROWS, SIZE = 200, 20_000


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(["--generate", f"seq:{ROWS}:{SIZE}", "--latency-ms", "20"]) as emu:
        emu.add_faults([{"endpoint": "blob.get", "latency_ms": 15}])
        yield emu


def counters(m: MountedFS) -> dict[str, Any]:
    status = json.loads((m.path / ".encordfs" / "status.json").read_text())
    return status["counters"]  # type: ignore[no-any-return]


def expected(folder: Path, name: str) -> bytes:
    tag = os.getxattr(folder, "user.encord.dataset_hash").decode().replace("-", "")[:12]
    n = int(name.removeprefix("img_").removesuffix(".jpg"))
    return synthetic.read(f"{tag}.{n}", SIZE, 0, SIZE)


def read_in_order(folder: Path, names: list[str]) -> None:
    for name in names:
        with open(folder / name, "rb") as f:
            assert f.read() == expected(folder, name), name


@pytest.fixture
def mount(slow_emulator: RunningEmulator, http_client: str) -> Iterator[MountedFS]:
    with temporary_mount(slow_emulator.domain, slow_emulator.key_file, "--http-client", http_client) as m:
        yield m


def test_a_sequential_reader_is_served_ahead(mount: MountedFS) -> None:
    folder = mount.path / "seq"
    names = os.listdir(folder)  # readdir order: what tar and cp -r follow
    read_in_order(folder, names)
    c = counters(mount)
    assert c["lookahead.streams"] >= 1
    ahead = c.get("prefetch.used", 0) + c.get("prefetch.used_in_flight", 0)
    # all but the run that started it and the ramp, and a few the reader reaches before the planner
    # hands them out: how many depends on scheduling (2 CPUs, the whole suite running), not on the design
    assert ahead >= ROWS * 3 // 4, c
    assert c.get("prefetch.failed", 0) == 0


@pytest.mark.parametrize("extra", [[], ["--binding", "mfusepy"]], ids=["passthrough", "mfusepy"])
def test_an_epoch_over_files_cached_on_disk_leaves_prefetch_idle(
    slow_emulator: RunningEmulator, tmp_path: Path, extra: list[str]
) -> None:
    """Files complete on disk are opened without a word to the prefetcher (no lookahead stream would
    find anything to fetch), whether the kernel then reads them itself or the mount does; a file that
    is not on disk is still news to it."""
    with MountedFS(slow_emulator.domain, slow_emulator.key_file, tmp_path, "--no-prefetch") as m:
        folder = m.path / "seq"
        names = os.listdir(folder)
        read_in_order(folder, names[:100])  # demand reads: each small file lands on disk
    with MountedFS(slow_emulator.domain, slow_emulator.key_file, tmp_path, *extra) as m:
        folder = m.path / "seq"
        read_in_order(folder, names[:100])
        c = counters(m)
        assert c.get("lookahead.streams", 0) == 0 and c.get("prefetch.files", 0) == 0, c
        if not extra:
            assert c.get("cache.backing_opens", 0) >= 100, c
        read_in_order(folder, names[100:])  # not on disk: the sequential reader is served ahead again
        c = counters(m)
        assert c["lookahead.streams"] >= 1, c
        assert c.get("prefetch.used", 0) + c.get("prefetch.used_in_flight", 0) >= (ROWS - 100) // 2, c


def test_a_random_reader_is_not_prefetched(mount: MountedFS) -> None:
    folder = mount.path / "seq"
    names = os.listdir(folder)
    random.Random(11).shuffle(names)
    read_in_order(folder, names)
    c = counters(mount)
    assert c.get("lookahead.streams", 0) == 0 and c.get("prefetch.files", 0) == 0, c


def test_hinted_order_is_fetched_ahead_and_bad_lines_are_counted(mount: MountedFS) -> None:
    folder = mount.path / "seq"
    names = os.listdir(folder)
    random.Random(5).shuffle(names)
    lines = [f"{mount.path}/seq/{n}" for n in names]  # absolute paths
    lines[10:10] = ["seq/no-such-file.jpg", "/no-such-dataset/x.jpg", "/seq"]  # two missing, one folder
    with open(mount.path / ".encordfs" / "hints", "w") as f:  # usable from any language
        f.write("\n".join(lines) + "\n")
    read_in_order(folder, names)
    c = counters(mount)
    assert c["hints.lists"] == 1 and c["hints.lines"] == ROWS + 3
    assert c["hints.unknown_paths"] == 2 and c["hints.not_files"] == 1
    ahead = c.get("prefetch.used", 0) + c.get("prefetch.used_in_flight", 0)
    assert ahead >= ROWS * 3 // 4, c  # the window starts at once (less a few the reader can overtake)
    assert c.get("prefetch.files", 0) >= ROWS * 3 // 4, c  # fetched ahead, in the hinted (shuffled) order
    assert c.get("lookahead.streams", 0) == 0  # hinted opens start no lookahead of their own


def test_hints_reach_a_read_only_mount_through_the_control_socket(slow_emulator: RunningEmulator) -> None:
    from encordfs import control

    with temporary_mount(slow_emulator.domain, slow_emulator.key_file, "--read-only") as m:
        folder = m.path / "seq"
        names = sorted(os.listdir(folder), reverse=True)[:40]
        with pytest.raises(OSError):  # the kernel refuses writes on a read-only mount
            (m.path / ".encordfs" / "hints").write_text("\n".join(names))
        assert control.hints(m.path, [f"/seq/{n}" for n in names] + ["/seq/nope.jpg"]) == 41
        read_in_order(folder, names)
        c = counters(m)
        assert c["hints.lists"] == 1 and c["hints.unknown_paths"] == 1
        assert c.get("prefetch.used", 0) + c.get("prefetch.used_in_flight", 0) >= 39
        cli = [sys.executable, "-m", "encordfs", "hints"]
        done = subprocess.run([*cli, str(m.path)], input=f"{m.path}/seq/{names[0]}\n/seq/x\n", text=True,
                              capture_output=True, timeout=60)  # fmt: skip
        assert done.returncode == 0 and "2 path(s) hinted" in done.stderr, done.stderr
        c = counters(m)
        assert c["hints.lists"] == 2 and c["hints.unknown_paths"] == 2
    for wrong in ([*cli, "/tmp"], [*cli, str(m.path.parent), "/no/such/file"]):
        done = subprocess.run(wrong, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode != 0 and done.stderr.startswith("encordfs: error: ") and "Traceback" not in done.stderr


def test_hints_file_through_the_kernel_binding(slow_emulator: RunningEmulator) -> None:
    """The kernel binding takes WRITE and truncate of the hints file too (shell redirection: O_TRUNC)."""
    with temporary_mount(slow_emulator.domain, slow_emulator.key_file, "--binding", "kernel") as m:
        folder = m.path / "seq"
        names = sorted(os.listdir(folder))[:30]
        hints = m.path / ".encordfs" / "hints"
        assert hints.stat().st_mode & 0o777 == 0o644 and hints.read_bytes() == b""
        subprocess.run(
            ["sh", "-c", f'printf "%s\\n" "$@" > {hints}', "sh", *[f"seq/{n}" for n in names], "seq/missing.jpg"],
            check=True,
            timeout=30,
        )
        read_in_order(folder, names)
        c = counters(m)
        assert c["hints.lists"] == 1 and c["hints.lines"] == 31 and c["hints.unknown_paths"] == 1
        assert c.get("prefetch.used", 0) + c.get("prefetch.used_in_flight", 0) >= 28
        with pytest.raises(OSError):
            (folder / names[0]).write_bytes(b"x")  # every other file stays read-only
