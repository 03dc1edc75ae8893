"""Shared fixtures: a sample emulator for the session, real mounts that always clean up."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.emulator import RunningEmulator
from tests.support.mount import MountedFS, temporary_mount

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
    with temporary_mount(sample_emulator.domain, sample_emulator.key_file) as mounted:
        yield mounted
