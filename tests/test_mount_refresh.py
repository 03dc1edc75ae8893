"""Freshness through a real mount: rows added or deleted on the server show up after the metadata TTL
or ``encordfs refresh`` without a remount; names and inodes of the other rows stay put; an open
handle to a deleted row keeps reading what it can and then fails with ESTALE (docs/SEMANTICS.md,
"Consistency and TTLs").

The kernel caches entries and attributes for the TTL, so a *lookup* of a deleted name may still
succeed until the entry times out: these tests observe the folder through ``readdir`` (``os.listdir``),
which always reaches the filesystem.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from encordfs.emulator import synthetic
from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount

# Every mount here runs once per FUSE binding (kernel, mfusepy): see conftest ``binding``.
pytestmark = pytest.mark.usefixtures("binding")

BIG_BYTES = 64 * 1024 * 1024  # big enough that reading its start does not fetch its end


EMULATOR_ARGS = ["--generate", "fresh:20:1000", "--generate", f"big:2:{BIG_BYTES}"]  # for conftest's ``emulator``


def _mount(emu: RunningEmulator, *extra: str) -> AbstractContextManager[MountedFS]:
    return temporary_mount(emu.domain, emu.key_file, *extra, prefix="encordfs-refresh-")


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _refresh(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "encordfs", "refresh", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _data_hash(path: Path) -> str:
    return os.getxattr(path, "user.encord.uid").decode()


def test_rows_appear_and_disappear_after_the_ttl(emulator: RunningEmulator) -> None:
    with _mount(emulator, "--metadata-ttl", "1") as mounted:
        folder = mounted.path / "fresh"
        before = sorted(os.listdir(folder))
        inodes = {name: os.stat(folder / name).st_ino for name in before}
        added = emulator.add_row("fresh", "ttl-new.jpg", b"\xff\xd8 new bytes")
        assert _wait_for(lambda: "ttl-new.jpg" in os.listdir(folder)), "added row never appeared"
        assert (folder / "ttl-new.jpg").read_bytes() == b"\xff\xd8 new bytes"
        emulator.delete_row(added["data_hash"])
        assert _wait_for(lambda: "ttl-new.jpg" not in os.listdir(folder)), "deleted row never disappeared"
        after = sorted(os.listdir(folder))
        assert after == before  # names stable across refreshes
        assert {name: os.stat(folder / name).st_ino for name in after} == inodes


def test_refresh_command_without_remount(emulator: RunningEmulator) -> None:
    with _mount(emulator) as mounted:  # default TTL: 60 s, longer than this test
        folder = mounted.path / "fresh"
        before = sorted(os.listdir(folder))
        first = folder / before[0]
        first_ino = os.stat(first).st_ino
        added = emulator.add_row("fresh", "cmd-new.jpg", b"\xff\xd8 cmd")
        assert "cmd-new.jpg" not in os.listdir(folder)  # within the TTL: the listing is kept
        _refresh(folder)
        assert "cmd-new.jpg" in os.listdir(folder)
        victim = folder / before[-1]
        emulator.delete_row(_data_hash(victim))
        emulator.delete_row(added["data_hash"])
        _refresh(folder)
        names = os.listdir(folder)
        assert "cmd-new.jpg" not in names and before[-1] not in names
        assert sorted(names) == before[:-1]
        assert os.stat(first).st_ino == first_ino


def test_open_handle_to_a_deleted_row(emulator: RunningEmulator) -> None:
    with _mount(emulator) as mounted:
        folder = mounted.path / "big"
        name = min(os.listdir(folder))
        seed = os.getxattr(folder / name, "user.encord.file_link").decode().rsplit("/", 1)[1]
        parsed = synthetic.parse_key(seed)
        assert parsed is not None
        expected_head = synthetic.read(parsed[0], BIG_BYTES, 0, 4096)
        with open(folder / name, "rb", buffering=0) as handle:
            assert handle.read(4096) == expected_head
            emulator.delete_row(_data_hash(folder / name))
            _refresh(folder)
            assert name not in os.listdir(folder)
            handle.seek(0)
            assert handle.read(4096) == expected_head  # what was read stays readable
            handle.seek(BIG_BYTES - 4096)
            with pytest.raises(OSError) as failure:  # never fetched: the byte server has nothing
                handle.read(4096)
            assert failure.value.errno == errno.ESTALE
