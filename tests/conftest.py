"""Shared fixtures: a sample emulator for the session, real mounts that always clean up."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.emulator import RunningEmulator
from tests.support.mount import MountedFS

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def _our_mounts() -> set[str]:
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f if " fuse.encordfs " in line}


@pytest.fixture(scope="session", autouse=True)
def no_mount_left_behind() -> Iterator[None]:
    before = _our_mounts()
    yield
    left = _our_mounts() - before
    assert not left, f"tests left mounts behind: {left}"


@pytest.fixture(scope="session")
def sample_emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(["--sample"]) as emu:
        yield emu


@pytest.fixture(scope="module")
def sample_mount(sample_emulator: RunningEmulator) -> Iterator[MountedFS]:
    workdir = Path(tempfile.mkdtemp(prefix="encordfs-mnt-"))
    try:
        assert sample_emulator.key_file is not None
        with MountedFS(sample_emulator.domain, sample_emulator.key_file, workdir) as mounted:
            yield mounted
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
